"""File safety: atomic writes, and replacing or deleting only what tern_jax itself wrote.

Every place that writes a file a user might care about goes through here:

* :func:`write_text_atomic` / :func:`write_bytes_atomic`: a temporary sibling, synced, then
  renamed over the target, so a crash leaves the old file or the new one, never a torn one
  (and never a stray temporary file when the write fails); the file gets the permissions a
  plain ``open`` would give it.
* :func:`check_replaceable`: before replacing or deleting ``path``, ask a predicate whether
  tern_jax wrote it (its own metadata, never a guess from the name); anything else is refused
  with :class:`NotOwnedError`, naming the path, before a byte is touched.
* :func:`swap_in`: moves a completed staged folder (or file) into place, replacing an
  owned one, with the old copy parked inside the staging folder so no ``.old`` file is left.
* :func:`write_owned_bytes` / :func:`write_owned_text`: for single files the project writes
  into a user's folder (plots, exported data): each write is recorded with its SHA-256 in the
  folder's ``.tern_jax-files.json``, and a later write replaces the file only while it still
  holds exactly those bytes (:func:`owned_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tern_jax._args import check_path

__all__ = [
    "NotOwnedError",
    "one_line",
    "file_digest",
    "quiet_libraries",
    "MANIFEST",
    "check_replaceable",
    "owned_file",
    "owned_folder",
    "own_folder",
    "remove_tree",
    "staging_dir",
    "swap_in",
    "write_bytes_atomic",
    "write_owned_bytes",
    "write_owned_text",
    "write_text_atomic",
]

#: The file in a folder that lists the files tern_jax wrote there, with their SHA-256.
MANIFEST = ".tern_jax-files.json"
_MANIFEST_FORMAT = "tern_jax.files.v1"


class NotOwnedError(FileExistsError):
    """``path`` exists and was not written by tern_jax, so it is neither replaced nor deleted."""


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path, data: bytes) -> None:
    """Writes ``data`` to a temporary sibling, syncs it and renames it over ``path``.

    Raises ``TypeError`` for a path that is not a str/PathLike or data that is not bytes, and
    an ``OSError`` naming ``path`` when its folder is missing or not writable.
    """
    path = check_path(path, "path", "write_bytes_atomic")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes_atomic: data must be bytes, got {type(data).__name__}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise type(e)(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file 0600; give it the mode open() gives a new file (0666 less
            # the umask), so every file of a run folder has the same permissions
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _new_file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _new_file_mode() -> int:
    """The permissions ``open()`` gives a new file: 0666 less the process umask."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path, text: str) -> None:
    """Writes ``text`` (UTF-8) to a temporary sibling, syncs it and renames it over ``path``.

    A crash leaves either the old file or the new one, never a torn file; a failed write
    (disk full, interrupt) removes its temporary file.
    """
    if not isinstance(text, str):
        raise TypeError(f"write_text_atomic: text must be a str, got {type(text).__name__}")
    write_bytes_atomic(path, text.encode("utf-8"))


def check_replaceable(path, owned: Callable[[Path], bool], what: str) -> bool:
    """Returns whether ``path`` exists; raises :class:`NotOwnedError` if it is not ours.

    Args:
      path: the file or folder about to be replaced or deleted.
      owned: ``owned(path) -> bool``, true only when tern_jax's own metadata says it wrote
        ``path`` (and nothing else lives there).
      what: what tern_jax writes there, for the message (e.g. ``"a ternary checkpoint"``).
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_symlink() or not owned(path):
        kind = "folder" if path.is_dir() else "file"
        raise NotOwnedError(
            f"{path} is an existing {kind} that tern_jax did not write as {what}; it is left "
            "untouched. Choose a new path, or move that one away yourself"
        )
    return True


def staging_dir(path) -> Path:
    """A fresh hidden folder beside ``path`` (same file system, so renames are atomic)."""
    path = Path(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.saving-", dir=path.parent))


def swap_in(staged, path, staging) -> None:
    """Renames the complete ``staged`` over ``path`` (already checked as ours, or absent).

    The old ``path`` is first parked inside ``staging`` (the folder holding ``staged``), which
    the caller removes afterwards, so the replace leaves no stray ``.old`` sibling. The old
    copy is only moved once the new one is complete, so a failure up to here keeps it.
    """
    staged, path, staging = Path(staged), Path(path), Path(staging)
    parked = None
    if path.exists() or path.is_symlink():
        parked = staging / "replaced"
        os.replace(path, parked)
    try:
        os.replace(staged, path)
    except BaseException:
        if parked is not None:  # put the old one back rather than lose it
            os.replace(parked, path)
        raise
    _fsync_dir(path.parent)


def remove_tree(path) -> None:
    """Deletes a staging folder this module made (never a user's path)."""
    shutil.rmtree(path, ignore_errors=True)


def file_digest(path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``sha256``, or any ``hashlib`` name such as ``md5``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def owned_file(path) -> bool:
    """True when ``path`` is a plain file that tern_jax wrote and nobody changed since.

    Recognized by the ``.tern_jax-files.json`` beside it, which :func:`write_owned_bytes`
    keeps: the file's name with the SHA-256 of the bytes written.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    expected = _read_manifest(path.parent).get(path.name)
    return expected is not None and expected == file_digest(path)


def write_owned_bytes(path, data: bytes, *, what: str = "an output file") -> Path:
    """Writes ``data`` to ``path`` atomically; replaces an existing file only if it is ours.

    Raises :class:`NotOwnedError` (naming ``path``) when ``path`` exists and was not written
    by tern_jax (or was changed since): nothing is written then. The write is recorded in the
    folder's manifest so that the next write may replace it.
    """
    path = Path(path)
    check_replaceable(path, owned_file, what)
    write_bytes_atomic(path, data)
    files = _read_manifest(path.parent)
    files[path.name] = hashlib.sha256(data).hexdigest()
    write_text_atomic(path.parent / MANIFEST, json.dumps(
        {"format": _MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True))
    return path


def own_folder(folder) -> None:
    """Records every plain file of ``folder`` (and its subfolders), with its SHA-256, in the
    folder's manifest: the folder is then :func:`owned_folder` while nobody changes it."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.is_symlink() and p.name != MANIFEST}
    write_text_atomic(folder / MANIFEST, json.dumps(
        {"format": _MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True))


def owned_folder(folder) -> bool:
    """True when ``folder`` holds exactly the files its manifest lists (:func:`own_folder`),
    each with the bytes recorded: a folder tern_jax wrote whole and nobody changed."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    files = _read_manifest(folder)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if not p.is_dir() and p.name != MANIFEST}
    return bool(files) and present == set(files) and all(
        file_digest(folder / name) == digest for name, digest in files.items())


def write_owned_text(path, text: str, *, what: str = "an output file") -> Path:
    """:func:`write_owned_bytes` of ``text`` in UTF-8."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return write_owned_bytes(path, text.encode("utf-8"), what=what)


@contextlib.contextmanager
def quiet_libraries():
    """Keeps orbax/absl from logging their own view of an error that tern_jax reports itself."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "orbax.checkpoint")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def one_line(error: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """An error (or a warning) as one line, the one way the package shortens one: its lines
    joined, a library's how-to list (``To provide ...``) and tensorstore's spec dump dropped;
    ``Type: `` first with ``with_type``; at most ``limit`` characters of the text."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("To provide"):
            lines = lines[:i]
            break
    text = " ".join(lines).split(" [tensorstore_spec=")[0] or type(error).__name__
    if limit is not None:
        text = text[:limit]
    return f"{type(error).__name__}: {text}" if with_type else text
