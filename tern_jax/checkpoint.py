"""Packed ternary checkpoints: save a trained model at 1.6-3.2 bits per ternary weight.

Layout (a folder; ``arrays/`` is an orbax-checkpoint PyTree item):

* ``arrays/``: for each ternary tensor its packed uint64 words (:mod:`tern_jax.packing`,
  signed levels shifted to ``[0, 2·t_ex]``) and its float32 scales ``(t_ex, *broadcast)``;
  every other leaf unchanged.
* ``meta/metadata``: JSON with the format tag; per leaf its path, shape, dtype, rule (method,
  thresholds, axis) and a SHA-256 of its stored bytes; the size and SHA-256 of every file
  the save wrote (``files``), so that a damaged file is named before orbax reads it
  (:mod:`tern_jax.integrity`); and what the weights are (``origin``: the rules, and the
  model, variant and seed when the caller names them; :func:`read_origin`).

:func:`load_ternary` rebuilds the kernels with :func:`tern_jax.core.dequantize`, the same
function the training-time forward uses, so logits match the training-time ternarized forward
bit for bit (same backend).

Saving is atomic and never destroys what it did not write: the checkpoint is written to a
hidden staging folder beside ``path`` and renamed into place only once complete, and
``overwrite=True`` replaces only a folder that its own ``meta/metadata`` (and file list)
identifies as a checkpoint written by :func:`save_ternary`; any other file or folder is refused
with :class:`tern_jax.fs.NotOwnedError`, untouched.

This file is longer than the project's ~350-line guide: writing and reading one format,
with the ownership rule for overwrites and the integrity checks of both directions, belong
together so that the format is defined in one place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tern_jax import core, fs, packing
from tern_jax._args import unwritable_path_error
from tern_jax.integrity import IntegrityError, array_digest, check_files, file_records, files_under
from tern_jax.rules import _normalize_rules, match_params, path_to_str

__all__ = ["FORMAT", "CheckpointError", "save_ternary", "load_ternary", "read_origin"]

#: Written into every checkpoint's metadata; :func:`load_ternary` refuses anything else.
FORMAT = "tern_jax.ternary.v1"

META_FILE = "meta/metadata"


class CheckpointError(ValueError):
    """A path that is not a readable tern_jax ternary checkpoint."""


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


def _as_path(path, func: str) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{func}: path must be a str or os.PathLike folder name, got "
            f"{type(path).__name__}: {path!r}"
        )
    if not str(path).strip():
        raise ValueError(f"{func}: path is empty; give the checkpoint folder, e.g. 'model_ckpt'")
    return Path(path).expanduser().absolute()


_NUMBER_TYPES = (bool, int, float, np.generic)


def _check_leaves(params) -> None:
    """Every leaf an array (or a number), and at least one leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ValueError(
            f"save_ternary: params holds no arrays (got an empty {type(params).__name__}); pass "
            "the model's parameters, e.g. variables['params'] or nnx.state(model, nnx.Param)"
        )
    for key_path, leaf in leaves:
        is_array = isinstance(leaf, (np.ndarray, jax.Array))
        if not (is_array or isinstance(leaf, _NUMBER_TYPES)) or (
                is_array and not (jnp.issubdtype(leaf.dtype, jnp.number)
                                  or jnp.issubdtype(leaf.dtype, jnp.bool_))):
            what = f"an array of dtype {leaf.dtype}" if is_array else type(leaf).__name__
            raise TypeError(
                f"save_ternary: params leaf {path_to_str(key_path)!r} is {what} "
                f"({leaf!r:.60}); a checkpoint stores numeric arrays only: remove it from the "
                "tree or convert it with jnp.asarray"
            )


def _is_checkpoint(path: Path) -> bool:
    """True when ``path`` holds only what :func:`save_ternary` wrote, per its own metadata."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return False
    listed = meta.get("files")
    return isinstance(listed, dict) and set(files_under(path)) - {META_FILE} <= set(listed)


def _writable_parent(path: Path) -> None:
    """Refuses a path whose nearest existing ancestor is a file or cannot be written."""
    error = unwritable_path_error(path, "save_ternary")
    if error is not None:
        raise error


def save_ternary(path, params, rules=None, *, overwrite: bool = False, unused="warn",
                 origin: dict | None = None, scanned: str | None = None) -> Path:
    """Writes ``params`` with rule-matched tensors packed densely; returns the path.

    Args:
      path: a folder to create (``str`` or ``os.PathLike``; ``~`` is expanded). An existing
        path is an error unless ``overwrite=True``, and even then only a checkpoint that
        ``save_ternary`` wrote (recognized by its ``meta/metadata``) is replaced, once the new
        one is complete; any other file or folder is left untouched.
      params: a parameter pytree (linen ``params`` dict, ``nnx.State``, nested dicts) whose
        leaves are numeric arrays. An ``nnx.State`` is stored as its pure dict
        (``nnx.replace_by_pure_dict`` puts it back).
      rules: the rules the model was trained with (``None``: :data:`tern_jax.DEFAULT_RULES`).
      overwrite: replace an existing checkpoint written by ``save_ternary``.
      unused: what to do about rules that match no parameter (see :func:`match_params`).
      origin: what the weights are, recorded in the metadata for :func:`read_origin`, e.g.
        ``{"model": "resnet20", "variant": "tern", "seed": 0}`` (``tern-jax export`` writes
        these); a dict of JSON values with string keys. The rules are recorded always.
      scanned: the paths stacked over layers (a model with ``scan_layers=True``: its
        ``scanned``), ternarized layer by layer as in training (:func:`tern_jax.match_params`);
        their codes keep the stacked layout, one scale per layer.

    Raises, before anything is written: ``TypeError`` for a path that is not a str/PathLike,
    a non-bool ``overwrite`` or a leaf that is not a numeric array (naming the leaf);
    ``ValueError`` for an empty tree or NaN/Inf values (naming the parameter);
    ``FileExistsError`` for an existing path without ``overwrite=True``;
    :class:`tern_jax.fs.NotOwnedError` (a ``FileExistsError``) for an existing path that is
    not a ``save_ternary`` checkpoint; ``NotADirectoryError``/``PermissionError`` naming
    ``path`` when it cannot be created.
    """
    path = _as_path(path, "save_ternary")
    if not isinstance(overwrite, bool):
        raise TypeError(f"save_ternary: overwrite must be True or False, got {overwrite!r}")
    params = _to_plain(params)
    if params is None or isinstance(params, (str, bytes)) or hasattr(params, "shape"):
        raise TypeError(
            f"save_ternary: params must be a parameter pytree (a dict such as "
            f"variables['params'], an nnx.State, ...), got {type(params).__name__}"
        )
    _check_leaves(params)
    origin = _check_origin(origin)
    rules = _normalize_rules(rules)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True to replace it or choose a new path"
            )
        fs.check_replaceable(path, _is_checkpoint, "a ternary checkpoint (save_ternary)")
    _writable_parent(path)
    matches, _ = match_params(params, rules, unused=unused, scanned=scanned)
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
            rule = m.quantizer  # per layer for a leaf stacked over layers
            levels, scales = rule.codes(m.leaf)  # compiled once per shape in core
            levels = np.asarray(levels).astype(np.int16)
            scales = np.asarray(scales, np.float32)
            words = packing.pack(levels + rule.t_ex, rule.levels)
            arrays[name] = {"words": words, "scales": scales}
            entry |= {
                "kind": "ternary", "shape": list(np.shape(m.leaf)), "dtype": str(m.leaf.dtype),
                "method": rule.method, "thresholds": list(rule.thresholds or []),
                "t_ex": rule.t_ex, "axis": rule.axis, "levels": rule.levels,
                "sha256": array_digest(words, scales),
            }
        else:
            value = np.asarray(m.leaf)
            arrays[name] = value
            entry |= {"kind": "dense", "shape": list(value.shape), "dtype": str(value.dtype),
                      "sha256": array_digest(value)}
        leaves_meta.append(entry)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = fs.staging_dir(path)
    except OSError as e:
        raise type(e)(f"save_ternary: cannot create {path}: {e.strerror or e}") from e
    target = staging / "ckpt"
    try:
        ocp = _orbax()
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(target, ocp.args.Composite(arrays=ocp.args.PyTreeSave(arrays)))
        files = file_records(target)
        meta = {"format": FORMAT, "leaves": leaves_meta, "files": files,
                "origin": {**origin, "rules": [_rule_record(r) for r in rules]}}
        (target / "meta").mkdir()
        fs.write_text_atomic(target / META_FILE, json.dumps(meta))
        fs.swap_in(target, path, staging)
    except OSError as e:
        raise type(e)(f"save_ternary: could not write {path}: {e.strerror or e}") from e
    finally:
        fs.remove_tree(staging)
    return path


def _check_origin(origin) -> dict:
    if origin is None:
        return {}
    if not isinstance(origin, dict) or not all(isinstance(k, str) for k in origin):
        raise TypeError("save_ternary: origin must be a dict with str keys such as "
                        "{'model': 'resnet20', 'variant': 'tern', 'seed': 0}, got "
                        f"{origin!r:.80}")
    if "rules" in origin:
        raise ValueError("save_ternary: origin must not hold 'rules'; the rules are recorded "
                         "from the rules argument")
    try:
        json.dumps(origin)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_ternary: origin must hold JSON values (str, numbers, lists), "
                        f"got {origin!r:.80} ({e})") from None
    return origin


def _rule_record(rule) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(rule)))  # tuples become lists


def read_origin(path) -> dict:
    """What a packed checkpoint holds, as :func:`save_ternary` recorded it.

    A dict with ``"rules"`` (each rule's fields) and the ``origin`` given to the save
    (``tern-jax export`` records ``"model"``, ``"variant"``, ``"seed"``, ``"run"`` and
    ``"epoch"``). Raises :class:`CheckpointError` for a path that is not a packed checkpoint,
    or one whose metadata records no origin.
    """
    return _read_meta(_as_path(path, "read_origin"))["origin"]


def _insert(tree: dict, keys, value):
    node = tree
    for _, key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1][1]] = value


_LEAF_KEYS = {"ternary": ("name", "path", "keys", "shape", "dtype", "sha256", "levels", "t_ex"),
              "dense": ("name", "path", "keys", "shape", "dtype", "sha256")}


def _read_meta(path: Path) -> dict:
    meta_file = path / META_FILE
    if not path.exists():  # a link to nothing included
        raise CheckpointError(f"{path} does not exist; give the folder save_ternary wrote")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint folder; give the folder "
                              "save_ternary wrote")
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
    leaves = meta.get("leaves")
    ok = isinstance(leaves, list) and all(
        isinstance(e, dict) and e.get("kind") in _LEAF_KEYS
        and all(k in e for k in _LEAF_KEYS[e["kind"]]) for e in leaves)
    if not ok:
        raise CheckpointError(f"{meta_file} is corrupt (its leaf list is malformed); the "
                              "checkpoint cannot be read")
    origin = meta.get("origin")
    for key, good in (("files", isinstance(meta.get("files"), dict)),
                      ("origin", isinstance(origin, dict)
                       and isinstance(origin.get("rules"), list))):
        if not good:  # save_ternary always writes both: without them nothing can be checked
            raise CheckpointError(
                f"{meta_file} records no {key!r}, which save_ternary always writes; the "
                "checkpoint cannot be verified. Write it again with tern_jax.save_ternary "
                "(or tern-jax export)")
    return meta


def _verify_files(path: Path, files: dict) -> None:
    """Names the first file that is missing or differs from what the save wrote."""
    try:
        check_files(path, files)
    except IntegrityError as e:
        how = ("is incomplete" if str(e).endswith("is missing") else
               "cannot be loaded. Save it again or restore it from a copy")
        raise CheckpointError(f"{e}; the checkpoint {path} {how}") from None


def _check_dtype(dtype):
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"load_ternary: dtype must be a floating dtype such as jnp.float32 or "
                        f"jnp.bfloat16 (or None), got {dtype!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"load_ternary: dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16 "
            f"(or None for the saved dtypes), got {dt}: the weights are scaled reals"
        )
    return dt


def load_ternary(path, *, dtype=None, codes: bool = False):
    """Reads a checkpoint written by :func:`save_ternary` into a nested dict of arrays.

    Ternary tensors come back dequantized (``Σ_k α_k·c_k`` in their original dtype, or
    ``dtype`` if given) so the pytree drops into ``model.apply`` unchanged; other leaves come
    back as saved (floating ones cast to ``dtype`` if given). With ``codes=True`` each ternary
    tensor comes back as its :class:`tern_jax.core.TernaryCodes` instead (int8 levels and
    float32 scales, as :func:`tern_jax.encode` gives them), for a kernel of one's own;
    ``core.decode`` of them is the dequantized tensor.

    Raises ``TypeError`` for a path that is not a str/PathLike or a ``dtype`` that is not a
    dtype, ``ValueError`` for a non-floating ``dtype`` (e.g. ``jnp.int8``), and
    :class:`CheckpointError` for a missing, truncated, corrupt or foreign checkpoint, naming the
    damaged file (without the storage library's own tracebacks).
    """
    path = _as_path(path, "load_ternary")
    dtype = _check_dtype(dtype)
    if not isinstance(codes, bool):
        raise TypeError(f"load_ternary: codes must be True or False, got {codes!r}")
    meta = _read_meta(path)
    _verify_files(path, meta["files"])
    ocp = _orbax()
    try:
        with fs.quiet_libraries(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                path, ocp.args.Composite(arrays=ocp.args.PyTreeRestore())
            )["arrays"]
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        why = fs.one_line(e, with_type=True, limit=300)
        raise CheckpointError(
            f"{path / 'arrays'}: the array data cannot be read ({why}); the "
            "checkpoint is truncated or corrupt"
        ) from None
    tree: dict = {}
    for entry in meta["leaves"]:
        name = entry["name"]
        if name not in restored:
            raise CheckpointError(f"{path}: tensor {entry['path']!r} is missing; truncated?")
        stored = restored[name]
        if entry["kind"] == "ternary":
            words = np.asarray(stored["words"])
            scales = np.asarray(stored["scales"], np.float32)
            if array_digest(words, scales) != entry["sha256"]:
                raise CheckpointError(f"{path}: tensor {entry['path']!r} fails its checksum")
            shape = tuple(entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            try:
                levels = packing.unpack(words, entry["levels"], count)
            except ValueError as e:
                raise CheckpointError(f"{path}: tensor {entry['path']!r}: {e}") from e
            levels = (levels.astype(np.int8) - np.int8(entry["t_ex"])).reshape(shape)
            value = (core.TernaryCodes(levels, scales) if codes else
                     core.dequantize(levels, scales, dtype or entry["dtype"]))
        else:
            value = np.asarray(stored)
            if array_digest(value) != entry["sha256"]:
                raise CheckpointError(f"{path}: tensor {entry['path']!r} fails its checksum")
            if dtype is not None and np.issubdtype(value.dtype, np.floating):
                value = value.astype(dtype)
        if entry["keys"]:
            _insert(tree, entry["keys"], value)
        else:
            return value
    return tree
