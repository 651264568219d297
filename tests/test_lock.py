"""One training run per run folder: the lock of tern_jax.train.lock, with real processes."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tern_jax.train import lock

HOLD = """
import sys, time
from tern_jax.train import lock
with lock.held(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _holder(folder, seconds=60.0):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_train_on_a_held_folder_exits_2_naming_the_holder_and_writes_nothing(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tern_jax.cli", "train", "--workdir", str(folder),
             "--set", "schedule.epochs=1"], capture_output=True, text=True, env=_env(),
            timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("tern-jax: error: ")
    assert str(folder) in line and f"process {holder.pid}" in line
    assert socket.gethostname() in line
    assert sorted(p.name for p in folder.iterdir()) == [lock.LOCK_FILE]  # nothing else written


@pytest.mark.slow
def test_two_trainings_started_together_on_one_folder_leave_one_run_intact(tmp_path):
    folder = tmp_path / "run"
    common = [sys.executable, "-m", "tern_jax.cli", "train", "--workdir", str(folder),
              "--set", "schedule.epochs=3", "--set", "data.train_subset=256",
              "--set", "progress=false"]
    procs = [subprocess.Popen(common + ["--set", f"optimizer.learning_rate={lr}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for lr in (0.05, 0.02)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    winner = [0.05, 0.02][[p.returncode for p in procs].index(0)]
    loser_err = outs[[p.returncode for p in procs].index(2)][1]
    assert "is in use by process" in loser_err
    saved = json.loads((folder / "config.json").read_text())
    assert saved["optimizer"]["learning_rate"] == winner
    epochs = [json.loads(line)["epoch"] for line in
              (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # one run's records, not two interleaved
    assert not (folder / lock.LOCK_FILE).exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_line(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / lock.LOCK_FILE).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    lines = []
    with lock.held(folder, log=lines.append):
        held = json.loads((folder / lock.LOCK_FILE).read_text())
        assert held["pid"] == os.getpid()
    assert len(lines) == 1 and f"process {dead.pid}" in lines[0]
    assert "no longer running" in lines[0]
    assert not (folder / lock.LOCK_FILE).exists()


def test_a_lock_held_on_another_host_is_refused_with_how_to_clear_it(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / lock.LOCK_FILE).write_text(json.dumps(
        {"pid": 1, "host": "some-other-host", "started": "earlier"}))
    with pytest.raises(lock.RunLocked) as info:
        with lock.held(folder):
            pass
    message = str(info.value)
    assert "some-other-host" in message and f"delete {folder / lock.LOCK_FILE}" in message
    assert (folder / lock.LOCK_FILE).exists()  # another host's lock is never removed


def test_the_lock_is_reentrant_in_one_process_and_gone_after(tmp_path):
    folder = tmp_path / "run"
    with lock.held(folder):
        with lock.held(folder):  # a one-stage run: the run and its stage are one folder
            assert (folder / lock.LOCK_FILE).exists()
        assert (folder / lock.LOCK_FILE).exists()  # the inner block does not release it
    assert not folder.exists()  # created here, left empty: removed


def test_only_the_main_process_of_a_job_takes_the_lock(tmp_path):
    folder = tmp_path / "run"
    with lock.held(folder, main=False):
        assert not folder.exists()


def test_a_live_holder_keeps_the_lock_while_another_process_waits_for_nothing(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder, seconds=60.0)
    try:
        start = time.perf_counter()
        with pytest.raises(lock.RunLocked):
            with lock.held(folder):
                pass
        assert time.perf_counter() - start < 5  # refused at once, no waiting
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale and the next run takes it over
    lines = []
    with lock.held(folder, log=lines.append):
        pass
    assert lines and "no longer running" in lines[0]
