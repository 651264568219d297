"""One writer per run folder: an exclusive lock for the life of a training run.

Two ``tern-jax train`` processes started on one ``--workdir`` would write the same files: the
second run's results replace the first's and their metrics interleave. :func:`held` takes the
folder's lock (``run.lock``, created with ``O_EXCL``, holding the owner's pid, host and start
time) before anything is written, and removes it when the run ends, however it ends. A second
process is refused with :class:`RunLocked`, naming the folder and the holder.

A lock left by a process that died without removing it (``kill -9``, a power cut) is taken
over when the holder ran on this host and its pid is gone, with a line saying so. A lock
held on another host cannot be checked from here: the error says how to remove it once that
run is known to be over.

Within one process the lock is re-entrant (a two-stage run holds its top folder and each
stage folder; one stage of a run is the run itself). In a job of several processes only
process 0 takes it (the others write nothing to the folder's files). Readers (``eval``,
``export``, ``report``, ``plot``) take no lock: they read only finished checkpoints and files
written atomically or line by line.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLocked", "held"]

#: The lock's file name inside a run folder.
LOCK_FILE = "run.lock"

_HELD: set[Path] = set()  # folders this process holds


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock."""


def _holder(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _create(path: Path) -> bool:
    """Creates the lock file holding this process's identity; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _acquire(folder: Path, log: Callable[[str], None]) -> None:
    lock = folder / LOCK_FILE
    host = socket.gethostname()
    for _ in range(3):  # a holder may remove its lock while this one looks
        if _create(lock):
            return
        holder = _holder(lock)
        pid, on = holder.get("pid"), holder.get("host")
        if on == host and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            log(f"{folder}: took over the lock of process {pid} on {host}, which is no longer "
                "running")
            continue
        if not holder and not lock.exists():
            continue
        who = (f"process {pid} on host {on}" if holder else
               f"another process (its {LOCK_FILE} is being written or unreadable)")
        fix = ("" if on == host else
               f"; if that run is over (the host went down), delete {lock} and start again")
        raise RunLocked(f"{folder} is in use by {who}, started {holder.get('started', '?')}: "
                        "one run folder takes one training run at a time; wait for it to end, "
                        f"or give another --workdir{fix}")
    raise RunLocked(f"{folder}: could not take its lock {lock}; another process keeps taking it")


@contextlib.contextmanager
def held(folder, *, main: bool = True, log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds ``folder``'s lock for the block (creating the folder if needed; ``main``: this
    process is the one that writes, process 0 of a job). Raises :class:`RunLocked` when
    another live process holds it. The lock is removed when the block ends, and a folder
    this call created is removed again if the block left nothing else in it."""
    folder = Path(folder).absolute()
    if not main or folder in _HELD:
        yield
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _acquire(folder, log)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    _HELD.add(folder)
    try:
        yield
    finally:
        _HELD.discard(folder)
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / LOCK_FILE)
        if created:
            with contextlib.suppress(OSError):  # only if nothing else is in it
                folder.rmdir()
