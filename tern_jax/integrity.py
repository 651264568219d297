"""One integrity scheme for every checkpoint tern_jax writes: SHA-256 of files and of arrays.

Both checkpoint kinds use it, the packed export (:mod:`tern_jax.checkpoint`) and the orbax
training checkpoints of a run folder (:mod:`tern_jax.train.run_folder`):

* after a save, :func:`file_records` lists the size and SHA-256 of every file written;
  before a load, :func:`check_files` names the first file that is missing or changed, so a
  damaged file is reported by name instead of as a storage library's traceback;
* :func:`array_digest` hashes an array's dtype, shape and bytes (:func:`tree_digests` every
  leaf of a pytree), checked again once the arrays are read back;
* :func:`check_shapes` compares a stored tree's shapes with the model's, naming the first
  parameter that differs, so weights of another architecture never reach Flax or orbax.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jax
import numpy as np

from tern_jax import fs

__all__ = ["IntegrityError", "array_digest", "check_files", "check_shapes", "file_records",
           "files_under", "tree_digests", "tree_shapes"]


class IntegrityError(ValueError):
    """A checkpoint file or array differs from what its save recorded; the message names it."""


def array_digest(*arrays) -> str:
    """SHA-256 over each array's dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tree_digests(tree) -> dict[str, str]:
    """:func:`array_digest` of every leaf, keyed by its ``jax.tree_util.keystr`` path."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): array_digest(leaf) for path, leaf in leaves}


def files_under(root) -> list[str]:
    """Every file (and symlink to a folder) below ``root``, as sorted POSIX relative paths."""
    root = Path(root)
    out = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        out += [(base / f).relative_to(root).as_posix() for f in files]
        out += [(base / d).relative_to(root).as_posix() for d in dirs if (base / d).is_symlink()]
    return sorted(out)


def file_records(root) -> dict[str, dict]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of every file below ``root``."""
    root = Path(root)
    return {name: {"size": (root / name).stat().st_size, "sha256": fs.file_digest(root / name)}
            for name in files_under(root)}


def check_files(root, files: dict) -> None:
    """Raises :class:`IntegrityError` naming the first listed file that is missing or changed.

    ``files`` is what :func:`file_records` returned at save time: per file a dict with its
    ``"size"`` and ``"sha256"``. A record of another form is refused, naming the file, since
    it cannot be checked.
    """
    root = Path(root)
    for name, expected in sorted(files.items()):
        path = root / name
        if not (isinstance(expected, dict) and isinstance(expected.get("size"), int)
                and isinstance(expected.get("sha256"), str)):
            raise IntegrityError(
                f"the record of {path} is {expected!r:.80}, not {{'size': bytes, 'sha256': "
                "hex}; the file list is damaged or was not written by file_records")
        if not path.is_file():
            raise IntegrityError(f"{path} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise IntegrityError(f"{path} is damaged ({size} bytes, expected {expected['size']})")
        if fs.file_digest(path) != expected["sha256"]:
            raise IntegrityError(f"{path} is damaged (fails its SHA-256 check)")


def tree_shapes(tree) -> dict[str, tuple]:
    """``{"a/b/kernel": shape}`` of every leaf (paths ``/``-joined as the rules write them)."""
    from tern_jax.rules import path_to_str

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_to_str(p): tuple(getattr(leaf, "shape", None) or np.shape(leaf))
            for p, leaf in leaves}


def check_shapes(expected: dict, stored: dict, what: str) -> None:
    """Raises ``ValueError`` naming the first parameter the two shape maps disagree on.

    ``expected`` is the model's (:func:`tree_shapes`), ``stored`` the checkpoint's; ``what``
    names the checkpoint in the message.
    """
    for path in sorted(expected.keys() | stored.keys()):
        if path not in stored:
            problem = "lacks parameter"
        elif path not in expected:
            problem = "holds parameter"
        elif expected[path] != stored[path]:
            raise ValueError(
                f"{what} does not fit the model: parameter {path!r} has shape "
                f"{tuple(stored[path])} there, the model expects {tuple(expected[path])}")
        else:
            continue
        extra = "" if path in stored else ", which the model has"
        extra = extra or ", which the model does not have"
        raise ValueError(f"{what} does not fit the model: it {problem} {path!r}{extra}")
