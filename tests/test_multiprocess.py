"""Multi-process training on CPU: 2 processes x 4 devices train like 1 process x 8 devices.

Each test starts real processes joined by ``jax.distributed.initialize`` on localhost (gloo
collectives); see ``helpers/multihost.py`` for the jobs they run. Jobs killed, stopped by
SIGTERM (2 processes and 1) and resumed reproduce the uninterrupted run's metrics; jobs
started wrongly end within seconds with a line naming the problem.
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
    devices = 8 // processes
    return [launch(f"cli_job({args!r}, sigterm_during_epoch={1 if p == processes - 1 else None})",
                   devices, root / f"{name}.{p}.log")
            for p, args in enumerate(_coordinated(root / name, processes))]


def _resume_job(root: Path, name: str, processes: int) -> list:
    devices = 8 // processes
    return [launch(f"cli_job({[*args, '--resume']!r})", devices, root / f"{name}.resumed.{p}.log")
            for p, args in enumerate(_coordinated(root / name, processes))]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """One process x 8 devices, and 2 processes x 4 devices killed after epoch 1 of digits
    and resumed: CIFAR (streamed, 2 epochs), then digits (device-resident, 2 epochs). Digits
    stopped by SIGTERM in epoch 1 (2 processes x 4 devices, then resumed; 1 x 8)."""
    root = tmp_path_factory.mktemp("multihost")
    write_cifar_folder(root / "data")
    one = launch(f"train_job({str(root / 'one')!r})", 8, root / "one.log")
    sigterm = {n: _sigterm_job(root, f"sigterm{n}", n) for n in (2, 1)}
    address = f"localhost:{_free_port()}"
    two = root / "two"
    killed = [launch(f"train_job({str(two)!r}, {p}, 2, {address!r}, kill_after_epoch=1)", 4,
                     root / f"killed.{p}.log") for p in range(2)]
    assert _wait(killed) == [-9, -9], (root / "killed.0.log").read_text()[-3000:]
    assert latest_checkpoint(two / "digits") == 1
    address = f"localhost:{_free_port()}"
    resumed = [launch(f"train_job({str(two)!r}, {p}, 2, {address!r}, cifar=False, "
                      "resume=True)", 4, root / f"resumed.{p}.log") for p in range(2)]
    for n, procs in sigterm.items():
        (root / f"sigterm{n}.codes").write_text(json.dumps(_wait(procs)))
        stopped = json.loads((root / f"sigterm{n}.codes").read_text()) == [143] * n
        (root / f"sigterm{n}.stopped").write_text(json.dumps(_metrics(root / f"sigterm{n}")
                                                             if stopped else []))
        # one process resumes like two (the same code); a job that did not stop is reported
        # by the test, not resumed here
        sigterm[n] = _resume_job(root, f"sigterm{n}", n) if stopped and n > 1 else []
    assert _wait(resumed) == [0, 0], (root / "resumed.0.log").read_text()[-3000:]
    for n, procs in sigterm.items():
        (root / f"sigterm{n}.resumed.codes").write_text(json.dumps(_wait(procs)))
    assert _wait([one]) == [0], (root / "one.log").read_text()[-3000:]
    return root


@pytest.mark.slow
def test_two_processes_stream_cifar_like_one_process(jobs):
    one, two = _metrics(jobs / "one" / "cifar"), _metrics(jobs / "two" / "cifar")
    assert len(two) == 2
    _assert_same_metrics(two, one, num_test=38)


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_metrics(jobs):
    """All processes killed after the checkpoint of epoch 1; the resumed job's metrics equal
    those of the uninterrupted single-process run, epoch by epoch."""
    got, want = _metrics(jobs / "two" / "digits"), _metrics(jobs / "one" / "digits")
    assert len(got) == 2
    _assert_same_metrics(got, want, num_test=64)
    assert "resumed from the checkpoint of epoch 1" in (jobs / "resumed.0.log").read_text()
    checkpoints = jobs / "two" / "digits" / "checkpoints"
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert kept == [1, 2]
    assert all((checkpoints / str(e) / "integrity.json").is_file() for e in kept)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 1])
def test_sigterm_saves_and_stops_every_process_after_the_epoch(jobs, processes):
    """SIGTERM to one process in epoch 1: every process stops after epoch 1 with status 143,
    its checkpoint saved (checkpoint_every=0: saved for the stop alone), its metrics the
    uninterrupted run's."""
    name = f"sigterm{processes}"
    logs = [(jobs / f"{name}.{p}.log").read_text() for p in range(processes)]
    assert json.loads((jobs / f"{name}.codes").read_text()) == [143] * processes, logs[0][-3000:]
    for p, text in enumerate(logs):
        assert (f"tern-jax: error: {f'process {p}: ' if processes > 1 else ''}SIGTERM stopped "
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
    results = json.loads((jobs / "two" / "digits" / "results.json").read_text())
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
                         f"data.data_dir={tmp_path / ('data' if p == 0 else 'missing')}"], 4,
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
    procs = [launch_cli(a, 4, tmp_path / f"{p}.log") for p, a in enumerate(args)]
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
        "batch": [(0, 2), (1, 2)],    # batch_size 36 on 2 x 4 devices
    }
    procs = {}
    start = time.monotonic()
    for name, members in jobs.items():
        address = f"localhost:{_free_port()}"
        extra = ", batch_size=36" if name == "batch" else ""
        procs[name] = [launch(f"join({address!r}, {n}, {p}, timeout=6{extra})", 4,
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
        assert "data.batch_size 36 is not divisible by the 8 devices" in text


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
