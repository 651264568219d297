"""Multi-process training on CPU: 2 processes x 2 devices train like 1 process x 4 devices.

Each test starts real processes joined by ``jax.distributed.initialize`` on localhost (gloo
collectives); see ``helpers/multihost.py`` for the jobs they run. Jobs killed or stopped by
SIGTERM and resumed reproduce the uninterrupted run's metrics (one process stopped by SIGTERM:
``tests/test_train.py``); jobs started wrongly end within seconds with a line naming the
problem.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.multihost import digits_args, launch, launch_cli, write_cifar_folder

from tern_jax.train import distributed, latest_checkpoint

TIMEOUT = 400
#: CPU devices of a job (``--xla_force_host_platform_device_count``), shared by its processes:
#: more than one per process, few enough that the CPU runs them quickly.
DEVICES = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait(procs, timeout: float = TIMEOUT) -> list[int]:
    """Exit statuses; a process still running after ``timeout`` is killed (the test fails)."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(got: list[dict], want: list[dict], num_test: int) -> None:
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want):
        for m, n in zip(a["models"], b["models"]):
            assert m["name"] == n["name"]
            np.testing.assert_allclose(m["train_loss"], n["train_loss"], rtol=2e-4)
            np.testing.assert_allclose(m["test_loss"], n["test_loss"], rtol=2e-4)
            np.testing.assert_allclose(m["test_acc"], n["test_acc"], atol=1 / num_test + 1e-6)


def _tern_jax_lines(log: Path) -> list[str]:
    """What a process printed, without gloo's connection notices (which its threads print
    interleaved: "[Gloo] Rank 6 is connected to 7 peer ranks. Expected number ...")."""
    text = log.read_text().replace("[Gloo] Rank", "\n")
    return [line for line in text.splitlines()
            if line.strip() and "peer ranks" not in line and not line.strip().isdigit()]


def _coordinated(workdir: Path, processes: int) -> list[list[str]]:
    """``tern-jax train`` flags of digits for each process of a job on a fresh port."""
    if processes == 1:
        return [digits_args(workdir)]
    flags = ["--coordinator", f"localhost:{_free_port()}", "--num_processes", str(processes),
             "--init_timeout", "60"]
    return [digits_args(workdir, *flags, "--process_id", str(p)) for p in range(processes)]


def _sigterm_job(root: Path, name: str, processes: int) -> list:
    """Digits, SIGTERM to the last process while it trains epoch 1 (of 2)."""
    devices = DEVICES // processes
    return [launch(f"cli_job({args!r}, sigterm_during_epoch={1 if p == processes - 1 else None})",
                   devices, root / f"{name}.{p}.log")
            for p, args in enumerate(_coordinated(root / name, processes))]


def _resume_job(root: Path, name: str, processes: int) -> list:
    devices = DEVICES // processes
    return [launch(f"cli_job({[*args, '--resume']!r})", devices, root / f"{name}.resumed.{p}.log")
            for p, args in enumerate(_coordinated(root / name, processes))]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The uninterrupted runs: one process x 4 devices trains the streamed CIFAR folder, then
    digits (device-resident), 2 epochs each. Beside it, 2 processes x 2 devices: CIFAR killed
    after the checkpoint of epoch 1 and resumed; digits stopped by SIGTERM in epoch 1 and
    resumed. The jobs run side by side: much of a job's time is spent waiting on the others
    of its processes."""
    root = tmp_path_factory.mktemp("multihost")
    write_cifar_folder(root / "data")
    one = launch(f"train_job({str(root / 'one')!r})", DEVICES, root / "one.log")
    sigterm = _sigterm_job(root, "sigterm2", 2)
    address = f"localhost:{_free_port()}"
    two = root / "two"
    killed = [launch(f"train_job({str(two)!r}, {p}, 2, {address!r}, runs=('cifar',), "
                     "kill_after_epoch=1)", DEVICES // 2, root / f"killed.{p}.log")
              for p in range(2)]
    codes = _wait(sigterm)
    (root / "sigterm2.codes").write_text(json.dumps(codes))
    stopped = codes == [143, 143]  # a job that did not stop is reported by the tests
    (root / "sigterm2.stopped").write_text(json.dumps(_metrics(root / "sigterm2")
                                                      if stopped else []))
    sigterm = _resume_job(root, "sigterm2", 2) if stopped else []
    assert _wait(killed) == [-9, -9], (root / "killed.0.log").read_text()[-3000:]
    assert latest_checkpoint(two / "cifar") == 1
    address = f"localhost:{_free_port()}"
    resumed = [launch(f"train_job({str(two)!r}, {p}, 2, {address!r}, runs=('cifar',), "
                      "resume=True)", DEVICES // 2, root / f"resumed.{p}.log")
               for p in range(2)]
    (root / "sigterm2.resumed.codes").write_text(json.dumps(_wait(sigterm)))
    assert _wait(resumed) == [0, 0], (root / "resumed.0.log").read_text()[-3000:]
    assert _wait([one]) == [0], (root / "one.log").read_text()[-3000:]
    return root


@pytest.mark.slow
def test_two_processes_stream_cifar_like_one_process_also_killed_and_resumed(jobs):
    """Each process reads its share of every global batch; all processes killed after the
    checkpoint of epoch 1, the resumed job's metrics equal those of the uninterrupted
    single-process run, epoch by epoch."""
    got, want = _metrics(jobs / "two" / "cifar"), _metrics(jobs / "one" / "cifar")
    assert len(got) == 2
    _assert_same_metrics(got, want, num_test=38)


@pytest.mark.slow
def test_killed_job_resumes_from_its_last_checkpoint(jobs):
    assert [r["epoch"] for r in _metrics(jobs / "two" / "cifar")] == [1, 2]
    assert "resumed from the checkpoint of epoch 1" in (jobs / "resumed.0.log").read_text()
    checkpoints = jobs / "two" / "cifar" / "checkpoints"
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert kept == [1, 2]
    assert all((checkpoints / str(e) / "integrity.json").is_file() for e in kept)


@pytest.mark.slow
def test_sigterm_saves_and_stops_every_process_after_the_epoch(jobs):
    """SIGTERM to one process in epoch 1: every process stops after epoch 1 with status 143,
    its checkpoint saved (checkpointing.every=0: saved for the stop alone), its metrics the
    uninterrupted run's."""
    processes = 2
    name = f"sigterm{processes}"
    logs = [(jobs / f"{name}.{p}.log").read_text() for p in range(processes)]
    assert json.loads((jobs / f"{name}.codes").read_text()) == [143] * processes, logs[0][-3000:]
    for p, text in enumerate(logs):
        assert (f"tern-jax: error: process {p}: SIGTERM stopped "
                f"{jobs / name} after epoch 1 of 2, its checkpoint saved; continue with "
                "--resume") in text
    stopped = json.loads((jobs / f"{name}.stopped").read_text())
    _assert_same_metrics(stopped, _metrics(jobs / "one" / "digits")[:1], num_test=64)
    assert (jobs / name / "checkpoints" / "1" / "integrity.json").is_file()


@pytest.mark.slow
def test_a_job_stopped_by_sigterm_resumes_to_the_uninterrupted_metrics(jobs):
    assert json.loads((jobs / "sigterm2.resumed.codes").read_text()) == [0, 0], \
        (jobs / "sigterm2.resumed.0.log").read_text()[-3000:]
    assert "resumed from the checkpoint of epoch 1" in (jobs / "sigterm2.resumed.0.log").read_text()
    _assert_same_metrics(_metrics(jobs / "sigterm2"), _metrics(jobs / "one" / "digits"),
                         num_test=64)
    assert json.loads((jobs / "sigterm2" / "results.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_only_process_0_prints_and_writes_results(jobs):
    assert _tern_jax_lines(jobs / "resumed.1.log") == []
    assert _tern_jax_lines(jobs / "killed.1.log") == []
    main = (jobs / "resumed.0.log").read_text()
    assert "final test accuracy after 2 epochs" in main
    results = json.loads((jobs / "two" / "cifar" / "results.json").read_text())
    assert results["epochs"] == 2 and set(results["variants"]) == {"fp", "tern"}


def test_a_failing_process_ends_the_job_naming_it(tmp_path):
    """Process 1 has a bad data path: it fails, and process 0 stops instead of hanging."""
    address = f"localhost:{_free_port()}"
    common = ["train", "--config", "quickstart", "--workdir", str(tmp_path / "run"),
              "--set", "data.dataset=cifar10", "--set", "progress=false", "--coordinator", address,
              "--num_processes", "2", "--init_timeout", "60"]
    write_cifar_folder(tmp_path / "data")
    start = time.monotonic()
    procs = [launch_cli([*common, "--process_id", str(p), "--set",
                         f"data.data_dir={tmp_path / ('data' if p == 0 else 'missing')}"],
                        DEVICES // 2,
                        tmp_path / f"{p}.log") for p in range(2)]
    codes = _wait(procs, timeout=120)
    assert time.monotonic() - start < 120
    failed = (tmp_path / "1.log").read_text()
    stopped = (tmp_path / "0.log").read_text()
    assert codes == [1, 2], (stopped[-2000:], failed[-2000:])
    assert (f"tern-jax: error: process 1: data.data_dir {tmp_path / 'missing'} does not exist"
            in failed)
    assert "tern-jax: error: process 1 failed: UsageError: data.data_dir" in stopped
    assert "process 0 stops too" in stopped
    assert not (tmp_path / "run").exists()  # a start that fails writes nothing


def test_processes_with_different_configs_stop_naming_the_fields(tmp_path):
    """schedule.epochs=1 on one process, 2 on the other (once a hang after epoch 1): both
    stop at start-up, before writing anything, each with the line naming the field."""
    args = _coordinated(tmp_path / "run", 2)
    args[0] += ["--set", "schedule.epochs=1"]
    start = time.monotonic()
    procs = [launch_cli(a, DEVICES // 2, tmp_path / f"{p}.log") for p, a in enumerate(args)]
    codes = _wait(procs, timeout=90)
    seconds = time.monotonic() - start
    out = [(tmp_path / f"{p}.log").read_text() for p in range(2)]
    assert codes == [2, 2], out
    for p, text in enumerate(out):
        assert (f"tern-jax: error: process {p}: the processes were started with different "
                "configs: schedule.epochs is 1 on process 0, 2 on process 1; start every "
                "process with "
                "the same --config and --set values") in text
    assert seconds < 90
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bad_jobs_fail_within_seconds(tmp_path):
    """Mismatched process counts (both ways) and a global batch the devices do not divide."""
    jobs = {
        "more": [(0, 2), (1, 3)],     # process 1 believes in 3 processes, the coordinator 2
        "fewer": [(0, 3), (1, 2)],    # the coordinator waits for a third process in vain
        "batch": [(0, 2), (1, 2)],    # batch_size 30 on 2 x 2 devices
    }
    procs = {}
    start = time.monotonic()
    for name, members in jobs.items():
        address = f"localhost:{_free_port()}"
        extra = ", batch_size=30" if name == "batch" else ""
        procs[name] = [launch(f"join({address!r}, {n}, {p}, timeout=6{extra})", DEVICES // 2,
                              tmp_path / f"{name}.{p}.log") for p, n in members]
    codes = {name: _wait(p, timeout=90) for name, p in procs.items()}
    assert time.monotonic() - start < 90
    out = {name: [(tmp_path / f"{name}.{p}.log").read_text() for p in range(2)]
           for name in jobs}
    assert codes["more"] == [2, 2], out["more"]
    assert ("process 1 was started with --num_processes 3, but the coordinator runs 2 "
            "processes") in out["more"][1]
    assert "process 1 was started with --num_processes 3, process 0 with 2" in out["more"][0]
    assert codes["fewer"] == [2, 2], out["fewer"]
    assert "process 0: not all 3 processes joined the coordinator" in out["fewer"][0]
    assert "every host must run the same --num_processes" in out["fewer"][1]
    assert codes["batch"] == [2, 2], out["batch"]
    for text in out["batch"]:
        assert "data.batch_size 30 is not divisible by the 4 devices" in text


def test_coordinator_arguments_are_checked_before_joining():
    with pytest.raises(ValueError, match="pass all of --coordinator, --num_processes and"):
        distributed.initialize("localhost:1234", 2)
    with pytest.raises(ValueError, match="HOST:PORT.*got 'localhost'"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="port in 1..65535, got 'localhost:99999'"):
        distributed.initialize("localhost:99999", 2, 0)
    with pytest.raises(ValueError, match="process_id must lie in 0..1 for num_processes=2, "
                                         "got 2"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(TypeError, match="num_processes must be an int, got str"):
        distributed.initialize("localhost:1234", "2", 0)
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port}, which is in use"):
            distributed.initialize(f"localhost:{port}", 2, 0)
    start = time.monotonic()
    # nothing listens on the port any more
    with pytest.raises(ConnectionError, match=f"process 1: cannot reach the coordinator "
                                              f"localhost:{port} within 1 s"):
        distributed.initialize(f"localhost:{port}", 2, 1, timeout=1)
    assert time.monotonic() - start < 5
