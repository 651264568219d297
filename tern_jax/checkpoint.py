"""Packed ternary checkpoints: save a trained model at 1.6-3.2 bits per ternary weight.

Layout (an orbax-checkpoint composite directory):

* ``arrays/``: for each ternary tensor its packed uint64 words (:mod:`tern_jax.packing`,
  signed levels shifted to ``[0, 2·t_ex]``) and its float32 scales ``(t_ex, *broadcast)``;
  every other leaf unchanged.
* ``meta/``: JSON with the format tag, and per leaf its path, shape, dtype, rule (method,
  thresholds, axis) and a SHA-256 of its stored bytes, so that a corrupt file is caught.

:func:`load_ternary` rebuilds the kernels with :func:`tern_jax.core.dequantize`, the same
function the training-time forward uses, so logits match the training-time ternarized forward
bit for bit (same backend). Saving is atomic: the checkpoint is written to a temporary
sibling and renamed into place, so a crash leaves either the old checkpoint or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import jax
import numpy as np

from tern_jax import core, packing
from tern_jax.rules import match_params

__all__ = ["FORMAT", "CheckpointError", "save_ternary", "load_ternary"]

#: Written into every checkpoint's metadata; :func:`load_ternary` refuses anything else.
FORMAT = "tern_jax.ternary.v1"


class CheckpointError(ValueError):
    """A path that is not a readable tern_jax ternary checkpoint."""


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _key_entry(key):
    """A JSON-safe description of one key of a leaf's path."""
    for attr, kind in (("key", "key"), ("name", "attr"), ("idx", "index")):
        if hasattr(key, attr):
            value = getattr(key, attr)
            return [kind, value if isinstance(value, (int, str)) else str(value)]
    return ["key", str(key)]


def _to_plain(params):
    """nnx.State -> nested dict of arrays; anything else is returned as is."""
    if hasattr(params, "to_pure_dict"):
        from flax import nnx

        if hasattr(nnx, "to_pure_dict"):  # flax >= 0.12: the method is deprecated
            return nnx.to_pure_dict(params)
        return params.to_pure_dict()
    return params


def _orbax():
    import orbax.checkpoint as ocp  # imported here: orbax pulls in a lot at import time

    return ocp


def save_ternary(path, params, rules=None, *, overwrite: bool = False, unused="warn") -> Path:
    """Writes ``params`` with rule-matched tensors packed densely; returns the path.

    Args:
      path: a directory to create. An existing path is an error unless ``overwrite=True``
        (then it is replaced only after the new checkpoint is complete).
      params: a parameter pytree (linen ``params`` dict, ``nnx.State``, nested dicts). An
        ``nnx.State`` is stored as its pure dict (``nnx.replace_by_pure_dict`` puts it back).
      rules: the rules the model was trained with (``None``: :data:`tern_jax.DEFAULT_RULES`).

    Raises ``FileExistsError`` for an existing path, ``ValueError`` naming the parameter for
    NaN or Inf values, before anything is written.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True to replace it or choose a new path"
        )
    params = _to_plain(params)
    matches, _ = match_params(params, rules, unused=unused)
    key_paths = [kp for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for m in matches:
        if hasattr(m.leaf, "dtype") and np.issubdtype(np.dtype(m.leaf.dtype), np.inexact):
            if not np.all(np.isfinite(np.asarray(m.leaf, np.float32))):
                raise ValueError(
                    f"parameter {m.path!r} holds NaN or Inf; a checkpoint of it would not load "
                    "into a working model. Restore an earlier checkpoint or fix the training run"
                )

    arrays, leaves_meta = {}, []
    for i, (m, key_path) in enumerate(zip(matches, key_paths)):
        name = f"leaf_{i:05d}"
        entry = {"path": m.path, "keys": [_key_entry(k) for k in key_path], "name": name}
        if m.quantized:
            rule = m.rule
            levels, scales = rule.codes(m.leaf)  # compiled once per shape in core
            levels = np.asarray(levels).astype(np.int16)
            scales = np.asarray(scales, np.float32)
            words = packing.pack(levels + rule.t_ex, rule.levels)
            arrays[name] = {"words": words, "scales": scales}
            entry |= {
                "kind": "ternary", "shape": list(np.shape(m.leaf)), "dtype": str(m.leaf.dtype),
                "method": rule.method, "thresholds": list(rule.thresholds or []),
                "t_ex": rule.t_ex, "axis": rule.axis, "levels": rule.levels,
                "sha256": _digest(words, scales),
            }
        else:
            value = np.asarray(m.leaf)
            arrays[name] = value
            entry |= {"kind": "dense", "shape": list(value.shape), "dtype": str(value.dtype),
                      "sha256": _digest(value)}
        leaves_meta.append(entry)
    meta = {"format": FORMAT, "leaves": leaves_meta}

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.saving-", dir=path.parent))
    target = staging / "ckpt"
    try:
        ocp = _orbax()
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(
                target,
                ocp.args.Composite(
                    arrays=ocp.args.PyTreeSave(arrays), meta=ocp.args.JsonSave(meta)
                ),
            )
        backup = None
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, backup)
        os.replace(target, path)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _insert(tree: dict, keys, value):
    node = tree
    for _, key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1][1]] = value


def _read_meta(path: Path) -> dict:
    meta_file = path / "meta" / "metadata"
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; give the folder save_ternary wrote")
    if not meta_file.is_file():
        raise CheckpointError(
            f"{path} is not a tern_jax ternary checkpoint (no meta/metadata); it may be another "
            "format or a save that did not finish. Write one with tern_jax.save_ternary"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_file} is corrupt ({e}); the checkpoint cannot be read") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{path} has format {found!r}, expected {FORMAT!r}; it was not written by this "
            "version's save_ternary"
        )
    return meta


def load_ternary(path, *, dtype=None):
    """Reads a checkpoint written by :func:`save_ternary` into a nested dict of arrays.

    Ternary tensors come back dequantized (``Σ_k α_k·c_k`` in their original dtype, or
    ``dtype`` if given) so the pytree drops into ``model.apply`` unchanged; other leaves come
    back as saved. Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign
    checkpoint, naming the problem.
    """
    path = Path(path).absolute()
    meta = _read_meta(path)
    ocp = _orbax()
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                path, ocp.args.Composite(arrays=ocp.args.PyTreeRestore())
            )["arrays"]
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(
            f"{path}: the array data cannot be read ({type(e).__name__}: {e}); the checkpoint is "
            "truncated or corrupt"
        ) from e
    tree: dict = {}
    for entry in meta["leaves"]:
        name = entry["name"]
        if name not in restored:
            raise CheckpointError(f"{path}: tensor {entry['path']!r} is missing; truncated?")
        stored = restored[name]
        if entry["kind"] == "ternary":
            words = np.asarray(stored["words"])
            scales = np.asarray(stored["scales"], np.float32)
            if _digest(words, scales) != entry["sha256"]:
                raise CheckpointError(f"{path}: tensor {entry['path']!r} fails its checksum")
            shape = tuple(entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            try:
                levels = packing.unpack(words, entry["levels"], count)
            except ValueError as e:
                raise CheckpointError(f"{path}: tensor {entry['path']!r}: {e}") from e
            levels = (levels.astype(np.int8) - np.int8(entry["t_ex"])).reshape(shape)
            value = core.dequantize(levels, scales, dtype or entry["dtype"])
        else:
            value = np.asarray(stored)
            if _digest(value) != entry["sha256"]:
                raise CheckpointError(f"{path}: tensor {entry['path']!r} fails its checksum")
            if dtype is not None and np.issubdtype(value.dtype, np.floating):
                value = value.astype(dtype)
        if entry["keys"]:
            _insert(tree, entry["keys"], value)
        else:
            return value
    return tree
