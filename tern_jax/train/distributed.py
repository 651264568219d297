"""Several processes, one run: start-up, one writer, failures that end the job.

A TPU pod slice or several GPU hosts run one process per host; JAX joins them into one
program (``jax.distributed.initialize``) whose mesh spans every device of every process.
This module holds what the loop and the command line need on top of that, with JAX's public
APIs only (``jax.distributed``, ``jax.experimental.multihost_utils``):

* :func:`initialize`: joins the processes with an explicit coordinator (or auto-detects a
  TPU pod / Slurm), after checking the arguments, that the coordinator can be reached, and
  that every process was started with the same process count, each a clear error within
  the ``timeout``, never a hang; CPU processes use gloo collectives;
* :func:`exchange`: every process's string, gathered at a point all processes reach
  (``multihost_utils.process_allgather``); :func:`barrier` and :func:`check_same_config`
  (the processes run one config, or the job stops naming the fields that differ) use it;
* :func:`failures_end_the_job`: an error in one process is handed to the others at the
  next exchange they reach, and every process stops with a line naming the failed one;
* :func:`stop_requested`: SIGTERM (a scheduler's preemption notice) in any process makes
  every process stop at the same boundary (JAX's preemption service; one process: a signal
  handler);
* :func:`is_main` / :func:`main_log`: process 0 alone writes the run's files and prints.

Each process's share of a batch becomes a global array in :mod:`tern_jax.data.inputs`.

A failure is seen by the other processes where they exchange: at start-up, after the
trainer is built, at the end of a run. A process that fails while the others are inside a
training step cannot reach them there (a collective has no way out but its partners); it
ends itself after ``wait_for_others`` seconds, and JAX's coordination service ends the
others once it misses the failed process's heartbeat (``heartbeat_timeout``, 60 s).

With one process every function is a no-op or the single-process equivalent.

This file is longer than the project's ~350-line guide: start-up checks, exchanges,
failures and stops are the one protocol the processes of a job follow, built on one
exchange primitive.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from tern_jax import fs

__all__ = ["ProcessFailed", "barrier", "check_same_config", "exchange",
           "exit_after_failure", "failures_end_the_job",
           "in_job", "initialize", "is_main", "main_log", "stop_requested"]

#: Config fields that may differ between the processes of one job (set to these values
#: before comparing): each host may keep the data at its own path, and only process 0
#: draws a progress bar.
PER_PROCESS_FIELDS = {"data.data_dir": None, "progress": False}


class ProcessFailed(RuntimeError):
    """Another process of the job failed; ``process`` and its ``message`` say which and why."""

    def __init__(self, process: int, message: str):
        super().__init__(f"process {process} failed: {message}")
        self.process, self.message = process, message


def in_job() -> bool:
    """Whether this process belongs to a job of several processes (never starts a backend)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_main() -> bool:
    """Whether this is process 0, the one that writes a run's files and prints its progress."""
    return jax.process_index() == 0


def main_log(log):
    """``log`` on process 0; a function that prints nothing on every other process."""
    if is_main():
        return log
    return lambda *args, **kwargs: None


# --------------------------------------------------------------------------------------
# exchanges: the points where the processes meet
# --------------------------------------------------------------------------------------


def _gather(row: np.ndarray) -> np.ndarray:
    """``row`` of every process, stacked in process order (one collective)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row))


def _exchange(text: str, failed: bool) -> list[tuple[bool, str]]:
    """Every process's ``(failed, text)``: two gathers, lengths first, then padded bytes."""
    data = text.encode()
    heads = _gather(np.array([int(failed), len(data)], np.int32))
    # widths rounded up to a power of two: few distinct shapes, so few compilations
    width = 1 << max(8, int(heads[:, 1].max()).bit_length())
    row = np.zeros(width, np.uint8)
    row[:len(data)] = np.frombuffer(data, np.uint8)
    rows = _gather(row)
    return [(bool(f), bytes(rows[p, :n]).decode()) for p, (f, n) in enumerate(heads)]


def exchange(value: str) -> list[str]:
    """Every process's ``value``, in process order (one value with a single process).

    Every process must call it at the same point of the program (it is a collective).

    Raises:
        ProcessFailed: another process failed before this point (see
            :func:`failures_end_the_job`).
    """
    if jax.process_count() == 1:
        return [value]
    gathered = _exchange(value, failed=False)
    for process, (failed, text) in enumerate(gathered):
        if failed:
            raise ProcessFailed(process, text)
    return [text for _, text in gathered]


def barrier(name: str) -> None:
    """Waits until every process reached the barrier ``name`` (no-op with one process)."""
    names = exchange(name)
    if len(set(names)) > 1:
        raise RuntimeError(f"the processes reached different barriers: {names}")


def check_same_config(config) -> None:
    """Every process runs ``config`` (up to :data:`PER_PROCESS_FIELDS`), or all stop.

    The processes compare a digest of their configs; on a mismatch they exchange the
    configs, and every process raises the same error naming the fields that differ.
    """
    if jax.process_count() == 1:
        return
    from tern_jax.train.config import differences, flatten, from_json, override

    text = override(config, PER_PROCESS_FIELDS).to_json()
    if len(set(exchange(hashlib.sha256(text.encode()).hexdigest()))) == 1:
        return
    configs = [from_json(t) for t in exchange(text)]
    fields: dict[str, list] = {}
    for other in configs[1:]:
        for name in differences(configs[0], other):
            fields.setdefault(name, [flatten(c)[name] for c in configs])
    shown = "; ".join(f"{name} is " + ", ".join(f"{v!r} on process {p}" for p, v in
                                                 enumerate(values))
                      for name, values in fields.items())
    raise ValueError(f"the processes were started with different configs: {shown}; start "
                     "every process with the same --config and --set values")


# --------------------------------------------------------------------------------------
# start-up
# --------------------------------------------------------------------------------------


def _parse_address(coordinator: str) -> tuple[str, int]:
    if not isinstance(coordinator, str) or coordinator.count(":") < 1:
        raise ValueError(f"coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got "
                         f"{coordinator!r}")
    host, _, port = coordinator.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator must be HOST:PORT with a port in 1..65535, got "
                         f"{coordinator!r}")
    return host, int(port)


def _wait_for_coordinator(host: str, port: int, timeout: float, process_id: int) -> None:
    """Process ``process_id`` > 0: the coordinator's port accepts connections within timeout."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise ConnectionError(
        f"process {process_id}: cannot reach the coordinator {host}:{port} within {timeout:g} s "
        f"({last}); start process 0 with the same --coordinator, or check the address and that "
        "the port is open between the hosts")


def _check_port_free(host: str, port: int) -> None:
    """Process 0 serves the coordinator: its port must be free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise OSError(f"process 0 serves the coordinator on port {port}, which is in use "
                          f"({e}); choose another --coordinator port") from None


def _join_or_exit(timeout: float, num_processes: int, process_id: int, coordinator: str):
    """A timer that ends this process with a clear message if the join outlasts ``timeout``.

    JAX's own time-out aborts the interpreter with an opaque message, so ours fires first.
    """
    def expire():
        _write(f"tern-jax: error: process {process_id}: not all {num_processes} processes "
               f"joined the coordinator {coordinator} within {timeout:g} s; every host must run "
               f"the same --num_processes {num_processes} and its own --process_id in "
               f"0..{num_processes - 1}")
        os._exit(2)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    return timer


def _detect(timeout: float, heartbeat_timeout: int) -> None:
    """``jax.distributed.initialize()`` with the cluster's own settings, or a clear error."""
    try:
        jax.distributed.initialize(initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=heartbeat_timeout)
    except (ValueError, RuntimeError) as e:
        if jax.distributed.is_initialized():
            raise
        raise ValueError(
            f"--distributed found no cluster to join ({' '.join(str(e).split())}): it reads a "
            "TPU pod slice's metadata, a Slurm job (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID, "
            "run under srun) or Open MPI (OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK, run under "
            "mpirun); elsewhere pass --coordinator HOST:PORT --num_processes N --process_id I "
            "instead") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: float = 120.0,
               heartbeat_timeout: int = 60) -> None:
    """Joins this process to a multi-process JAX job.

    Pass all three of ``coordinator`` (``HOST:PORT`` of process 0, which serves it),
    ``num_processes`` and ``process_id``, or none of them to let JAX detect a TPU pod slice,
    Slurm or Open MPI. On CPU the processes exchange data with gloo collectives.

    Args:
        coordinator: ``HOST:PORT`` reachable from every host; process 0 binds the port.
        num_processes: processes in the job (one per host, usually).
        process_id: this process, in ``0 .. num_processes - 1``.
        timeout: seconds to reach the coordinator and for every process to join.
        heartbeat_timeout: seconds after which a silent process counts as dead (JAX then
            ends the others).

    Raises:
        TypeError, ValueError: missing or malformed arguments; the process count differs
            between processes; no arguments and no cluster to detect.
        ConnectionError: the coordinator cannot be reached within ``timeout``.
        OSError: process 0's coordinator port is in use.
    """
    given = [a is not None for a in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("pass all of --coordinator, --num_processes and --process_id (or none, "
                         "to detect a TPU pod or Slurm); got coordinator="
                         f"{coordinator!r}, num_processes={num_processes!r}, "
                         f"process_id={process_id!r}")
    if not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not all(given):
        _detect(timeout, heartbeat_timeout)
        return
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in 0..{num_processes - 1} for num_processes="
                         f"{num_processes}, got {process_id}")
    host, port = _parse_address(coordinator)
    if process_id == 0:
        _check_port_free(host, port)
    else:
        _wait_for_coordinator(host, port, timeout, process_id)
    timer = _join_or_exit(timeout, num_processes, process_id, coordinator)
    timer.start()
    try:
        jax.distributed.initialize(coordinator, num_processes=num_processes,
                                   process_id=process_id,
                                   initialization_timeout=int(timeout) + 60,
                                   heartbeat_timeout_seconds=heartbeat_timeout)
    finally:
        timer.cancel()
    _check_same_process_count(num_processes, process_id)


def _check_same_process_count(num_processes: int, process_id: int) -> None:
    """Every process was started with the coordinator's process count."""
    joined = jax.process_count()
    said = [int(n) for n in exchange(str(num_processes))]
    if joined != num_processes:
        raise ValueError(f"process {process_id} was started with --num_processes "
                         f"{num_processes}, but the coordinator runs {joined} processes; start "
                         "every process with the same --num_processes")
    for other, count in enumerate(said):
        if count != num_processes:
            raise ValueError(f"process {other} was started with --num_processes {count}, "
                             f"process {process_id} with {num_processes}; start every "
                             "process with the same --num_processes")


# --------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------


def _write(line: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def failures_end_the_job(wait_for_others: float = 30.0):
    """Runs the body so that its failure in one process stops every process of the job.

    An exception in this process is handed to the others at the next :func:`exchange` they
    reach (with this process's index), then re-raised. A process that learns there that
    another one failed writes a line naming it and ends (exit status 1). If the others do
    not reach an exchange within ``wait_for_others`` seconds (they are inside a training
    step), this process writes its error and ends (exit status 1); JAX ends the others when
    it misses this process's heartbeat. With one process it does nothing.
    """
    if jax.process_count() == 1:
        yield
        return
    me = jax.process_index()
    try:
        yield
    except ProcessFailed as e:
        _write(f"tern-jax: error: process {e.process} failed: {e.message}; process {me} stops "
               "too")
        exit_after_failure(1)
    except BaseException as e:
        text = fs.one_line(e, with_type=True, limit=4000)

        def give_up():
            _write(f"tern-jax: error: process {me}: {text} (the other processes did not stop "
                   f"within {wait_for_others:g} s; JAX ends them once it misses this process)")
            os._exit(1)

        timer = threading.Timer(wait_for_others, give_up)
        timer.daemon = True
        timer.start()
        try:
            _exchange(text, failed=True)
        finally:
            timer.cancel()
        raise


def exit_after_failure(status: int, timeout: float = 10.0) -> None:
    """Ends this process of a failed job now, once every process knows of the failure.

    With several processes it leaves through ``jax.distributed.shutdown`` (every process
    meets there, so none is left behind to be aborted when process 0, which serves the
    coordinator, goes); after ``timeout`` seconds it leaves anyway.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if jax.process_count() > 1:
        leaving = threading.Thread(target=_shutdown, daemon=True)
        leaving.start()
        leaving.join(timeout)
    os._exit(status)


def _shutdown() -> None:
    with contextlib.suppress(Exception):
        jax.distributed.shutdown()


# --------------------------------------------------------------------------------------
# SIGTERM: every process stops at the same boundary
# --------------------------------------------------------------------------------------

# Every process passes the same boundaries in the same order. JAX's sync point is one past the
# furthest boundary any process reported (0 before the first), so the first boundary is 1.
_BOUNDARIES = itertools.count(1)


@contextlib.contextmanager
def stop_requested() -> Iterator[Callable[[], bool]]:
    """Yields ``stop_here()``: whether SIGTERM asked this job to stop at this boundary.

    Call ``stop_here()`` at every boundary where stopping is safe (the loop: each epoch's
    end), on every process in the same order. After a SIGTERM to any process, every process
    gets ``True`` at the same boundary, the first one no process has passed yet: JAX's
    preemption service (``multihost_utils.reached_preemption_sync_point``, on by default)
    catches SIGTERM in every process of a job and agrees on the point. With one process a
    handler installed for the block records SIGTERM (outside the main thread: no handler);
    outside the block SIGTERM ends the process as usual, losing at most a start-up.
    """
    if jax.process_count() > 1:
        yield _reached_preemption_sync_point
        return
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def _reached_preemption_sync_point() -> bool:
    from jax.experimental import multihost_utils

    try:
        return multihost_utils.reached_preemption_sync_point(next(_BOUNDARIES))
    except RuntimeError:  # jax_enable_preemption_service=False: SIGTERM ends the process
        return False
