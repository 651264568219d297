"""Several processes, one run: start-up, global batches, one writer, failures that end the job.

A TPU pod slice or several GPU hosts run one process per host; JAX joins them into one
program (``jax.distributed.initialize``) whose mesh spans every device of every process.
This module holds what the loop and the command line need on top of that:

* :func:`initialize`: joins the processes with an explicit coordinator (or auto-detects a
  TPU pod / Slurm), after checking the arguments, that the coordinator can be reached, and
  that every process was started with the same process count, each a clear error within
  the ``timeout``, never a hang; CPU processes use gloo collectives;
* :func:`global_batch`: this process's share of a batch -> the global ``jax.Array``
  sharded over the mesh's ``data`` axis (``jax.make_array_from_process_local_data``);
* :func:`is_main` / :func:`barrier` / :func:`main_log`: process 0 alone writes the run's
  files and prints;
* :func:`constrain_batch`: inside a jitted step, a batch sharded over the ``data`` axis;
* :func:`failures_end_the_job`: an error in one process is posted to the coordinator, and
  every other process stops with a message naming the failed process, instead of waiting
  forever at the next collective.

With one process every function is a no-op or the single-process equivalent.

This file is slightly longer than the project's ~350-line guide: start-up checks,
global batches and failure propagation share the coordination client and its key names.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["barrier", "constrain_batch", "exit_after_failure", "failures_end_the_job",
           "global_batch", "global_batches", "in_job", "initialize", "is_main", "main_log"]

_FAILED_KEY = "tern_jax/failed"
_ACK_KEY = "tern_jax/stopped/"
_EXIT_KEY = "tern_jax/leaving/"


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def in_job() -> bool:
    """Whether this process belongs to a job of several processes."""
    return _client() is not None and jax.process_count() > 1


def is_main() -> bool:
    """Whether this is process 0, the one that writes a run's files and prints its progress."""
    return jax.process_index() == 0


def main_log(log):
    """``log`` on process 0; a function that prints nothing on every other process."""
    if is_main():
        return log
    return lambda *args, **kwargs: None


def barrier(name: str, timeout: float = 600.0) -> None:
    """Waits until every process reached the barrier ``name`` (no-op with one process)."""
    if jax.process_count() == 1:
        return
    _client().wait_at_barrier(f"tern_jax/{name}", int(timeout * 1000))


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
        sys.stderr.write(
            f"tern-jax: error: process {process_id}: not all {num_processes} processes joined "
            f"the coordinator {coordinator} within {timeout:g} s; every host must run the same "
            f"--num_processes {num_processes} and its own --process_id in 0..{num_processes - 1}"
            "\n")
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    return timer


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
        heartbeat_timeout: seconds after which a silent process counts as dead.

    Raises:
        TypeError, ValueError: missing or malformed arguments; the process count differs
            between processes.
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
        jax.distributed.initialize(initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=heartbeat_timeout)
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
    _check_same_process_count(num_processes, process_id, timeout)


def _check_same_process_count(num_processes: int, process_id: int, timeout: float) -> None:
    """Every process was started with the coordinator's process count."""
    joined = jax.process_count()
    client = _client()
    client.key_value_set(f"tern_jax/num_processes/{process_id}", str(num_processes))
    if joined != num_processes:
        _post_failure(process_id, f"started with --num_processes {num_processes}, but the "
                      f"coordinator runs {joined} processes")
        raise ValueError(f"process {process_id} was started with --num_processes "
                         f"{num_processes}, but the coordinator runs {joined} processes; start "
                         "every process with the same --num_processes")
    for other in range(joined):
        try:
            said = client.blocking_key_value_get(f"tern_jax/num_processes/{other}",
                                                 int(timeout * 1000))
        except Exception:  # noqa: BLE001 - a process that never posts fails its own check
            continue
        if int(said) != num_processes:
            raise ValueError(f"process {other} was started with --num_processes {said}, "
                             f"process {process_id} with {num_processes}; start every "
                             "process with the same --num_processes")


# --------------------------------------------------------------------------------------
# global batches
# --------------------------------------------------------------------------------------


def global_batch(local, sharding):
    """This process's rows of a batch (a pytree of NumPy arrays) -> global ``jax.Array``\\ s.

    Leading axes are concatenated over the processes in process order (the order of the
    mesh's devices), so the global batch has ``process_count`` times the local rows.
    """
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local)


def global_batches(batches, sharding, size: int = 2) -> Iterator:
    """:func:`global_batch` of each local batch, keeping ``size`` batches in flight."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    pending: list = []
    for local in batches:
        pending.append(global_batch(local, sharding))
        if len(pending) > size:
            yield pending.pop(0)
    yield from pending


# --------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------


def _post_failure(process_id: int, message: str) -> None:
    try:
        _client().key_value_set(_FAILED_KEY, f"{process_id}\t{message}")
    except Exception:  # noqa: BLE001 - another process posted first; theirs is reported
        pass


def _watch(stop: threading.Event, poll: float) -> None:
    """Ends this process when another one posts a failure (runs in a daemon thread)."""
    client, me = _client(), jax.process_index()
    while not stop.wait(poll):
        try:
            posted = client.key_value_try_get(_FAILED_KEY)
        except Exception:  # noqa: BLE001 - NOT_FOUND: nobody failed
            continue
        who, _, message = posted.partition("\t")
        if who == str(me):
            continue
        sys.stdout.flush()
        sys.stderr.write(f"tern-jax: error: process {who} failed: {message}; process {me} "
                         "stops too\n")
        sys.stderr.flush()
        with contextlib.suppress(Exception):
            client.key_value_set(f"{_ACK_KEY}{me}", "1")
        exit_after_failure(1)


@contextlib.contextmanager
def failures_end_the_job(poll: float = 0.25, wait_for_others: float = 10.0):
    """Runs the body so that its failure in one process stops every process of the job.

    An exception in this process is posted to the coordinator (with this process's index)
    and re-raised once the others have stopped (at most ``wait_for_others`` seconds); a
    watcher thread ends this process (exit status 1, the failed process and its error on
    stderr) when another process posts a failure. With one process it does nothing.
    """
    if jax.process_count() == 1:
        yield
        return
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(stop, poll), daemon=True,
                               name="tern_jax-failure-watch")
    watcher.start()
    try:
        yield
    except BaseException as e:
        stop.set()
        me = jax.process_index()
        text = " ".join(str(e).split()) or type(e).__name__
        _post_failure(me, f"{type(e).__name__}: {text}"[:2000])
        with contextlib.suppress(Exception):  # this process has stopped too
            _client().key_value_set(f"{_ACK_KEY}{me}", "1")
        _wait_for_acks(me, wait_for_others)
        raise
    finally:
        stop.set()


def _wait_for_acks(me: int, timeout: float) -> None:
    """Waits until every other process stopped (process 0 serves the coordinator)."""
    client = _client()
    deadline = time.monotonic() + timeout
    others = [p for p in range(jax.process_count()) if p != me]
    while others and time.monotonic() < deadline:
        others = [p for p in others if not _acked(client, p)]
        time.sleep(0.1)


def _acked(client, process: int) -> bool:
    return _posted(client, f"{_ACK_KEY}{process}")


def _posted(client, key: str) -> bool:
    try:
        client.key_value_try_get(key)
        return True
    except Exception:  # noqa: BLE001 - NOT_FOUND
        return False


def exit_after_failure(status: int, timeout: float = 10.0) -> None:
    """Ends this process of a failed job now, skipping JAX's shutdown barrier (which would
    wait for the processes that already stopped).

    Process 0 serves the coordinator, and the others abort with an opaque message the moment
    it disappears; so the others leave first (each posts that it is leaving) and process 0
    waits for them, at most ``timeout`` seconds.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    client = _client()
    if client is not None and jax.process_count() > 1:
        me = jax.process_index()
        if me != 0:
            with contextlib.suppress(Exception):
                client.key_value_set(f"{_EXIT_KEY}{me}", "1")
        else:
            deadline = time.monotonic() + timeout
            others = list(range(1, jax.process_count()))
            while others and time.monotonic() < deadline:
                others = [p for p in others if not _posted(client, f"{_EXIT_KEY}{p}")]
                time.sleep(0.05)
            time.sleep(0.5)  # their os._exit follows their post by microseconds
    os._exit(status)


def constrain_batch(batch, mesh: Mesh, *, model_axis: bool = True):
    """Shards a batch's example axis over the mesh's ``data`` axis (inside jit; 1 device: no-op)."""
    if mesh.size == 1:
        return batch
    spec = P(None, "data") if model_axis else P("data")
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, spec))
