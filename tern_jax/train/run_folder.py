"""A run folder: config, metrics, results and verified orbax checkpoints of one training run.

Layout (all paths relative, so a folder copied or moved elsewhere still resumes)::

    run.lock         while a run trains it: the process that holds it (tern_jax.train.lock)
    config.json      the Config, written atomically
    metrics.jsonl    one line per epoch (tern_jax.train.metrics)
    results.json     final-epoch results, written atomically
    checkpoints/N/   orbax checkpoint of epoch N, with integrity.json inside

Every checkpoint carries a SHA-256 per file and per array (``integrity.json``), checked on
restore (files before orbax reads them, arrays after): a damaged latest checkpoint (flipped
bytes, a truncated or deleted file, ``integrity.json`` itself missing) is never trained on;
the previous complete one is used with a warning, and when none is usable the error names
the damaged files. Only ``verify=False`` (on the command line ``--unverified``) restores a
checkpoint without its integrity file, or
despite its checks, and says so with a warning. The
scheme is :mod:`tern_jax.integrity`, the packed exports' too. A checkpoint whose parameters
or shapes differ from the model's (another architecture) is refused before orbax reads it,
naming the first parameter that differs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax

from tern_jax import fs
from tern_jax.integrity import (
    IntegrityError,
    array_digest,
    check_files,
    check_shapes,
    file_records,
    tree_digests,
    tree_shapes,
)
from tern_jax.train.config import Config, from_json
from tern_jax.train.lock import LOCK_FILE

__all__ = ["RunFolder", "CheckpointDamaged", "DamagedCheckpointWarning", "RUN_FILES",
           "STAGES", "UnverifiedCheckpointWarning", "final_stage", "latest_checkpoint"]

INTEGRITY_FILE = "integrity.json"
INTEGRITY_FORMAT = "tern_jax.integrity.v1"

#: The files of a run folder, each named once here: ``tern_jax.report`` reads them back and
#: ``experiments/collect.py`` copies them.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE) = ("config.json", "metrics.jsonl",
                                                          "results.json")

#: Sub-folders of a two-stage run (each a run folder): full precision, then ternary fine-tuning.
STAGES = ("pretrain", "finetune")


class CheckpointDamaged(RuntimeError):
    """No checkpoint of the run can be restored intact; the message names the damage."""


class DamagedCheckpointWarning(UserWarning):
    """The latest checkpoint is damaged; an earlier intact one is used instead."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint was restored with ``verify=False``, without (or despite) its checks."""


def _as_dict(state) -> dict:
    return {"params": state.params, "model_state": state.model_state,
            "opt_state": state.opt_state}


def _digests(tree, wanted: bool) -> dict | None:
    """:func:`~tern_jax.integrity.tree_digests` of ``tree`` (``None`` where not ``wanted``).

    An array sharded over several processes (FSDP across hosts) is gathered leaf by leaf
    first: a collective, so every process calls this when any leaf is such an array.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if all(getattr(leaf, "is_fully_addressable", True) for _, leaf in leaves):
        return tree_digests(tree) if wanted else None
    from jax.experimental import multihost_utils

    out = {}
    for path, leaf in leaves:
        if not getattr(leaf, "is_fully_addressable", True):
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        if wanted:
            out[jax.tree_util.keystr(path)] = array_digest(leaf)
    return out if wanted else None


def _default_sharding():
    """Where a restored array lies when the template says nowhere: the first device (one
    process), or replicated over every device (several: each process can read it whole)."""
    if jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), PartitionSpec())


class RunFolder:
    """One run's folder; paths are resolved when used, never stored."""

    def __init__(self, path):
        self.path = Path(path).absolute()  # orbax needs absolute paths at run time

    # -- files ----------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def holds_run(self) -> bool:
        """Whether ``config.json`` here is a run's (written by tern_jax: a Config's fields)."""
        import dataclasses

        try:
            saved = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return False
        fields = {f.name for f in dataclasses.fields(Config)}
        return (isinstance(saved, dict) and {"name", "model", "data"} <= set(saved) <= fields
                and isinstance(saved["model"], dict))

    def _looks_like_run(self) -> bool:
        """``config.json`` has a run config's shape (a name and model and data sections),
        whatever else it holds: an edited run config, not a user's own file."""
        try:
            saved = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(saved, dict) and {"name", "model", "data"} <= set(saved)
                and isinstance(saved["model"], dict))

    def check_trainable(self) -> None:
        """Refuses a folder a run must not write into: a file, or a folder holding files
        tern_jax did not write (a new or empty folder, or an earlier run's, is fine). A run's
        folder whose ``config.json`` is gone, or no longer parses, is named as such."""
        if self.path.exists() and not self.path.is_dir():
            raise fs.NotOwnedError(f"workdir {self.path} is a file; give a folder for the run")
        if self.path.is_symlink() and not self.path.exists():
            raise fs.NotOwnedError(f"workdir {self.path} is a link to {self.path.readlink()}, "
                                   "which does not exist; give a folder, or create its target")
        inside = next((p for p in self.path.parents if p.name == "checkpoints"
                       and RunFolder(p.parent).config_file.is_file()), None)
        if inside is not None:
            raise fs.NotOwnedError(f"workdir {self.path} is inside the checkpoints of the run "
                                   f"in {inside.parent}; give a folder outside it")
        if self.path.is_dir():
            names = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
            run_files = bool({METRICS_FILE, "checkpoints", *STAGES} & set(names))
            if self.config_file.is_file():
                if run_files or self._looks_like_run():
                    self.read_config()  # an edited or damaged run config: named, with why
            elif run_files:
                raise fs.NotOwnedError(
                    f"workdir {self.path} holds a run's files ({', '.join(names[:5])}) but no "
                    f"{CONFIG_FILE}: it was deleted or moved; put it back to resume that run, "
                    "or give a new --workdir")
            if names and not self.holds_run():
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise fs.NotOwnedError(
                    f"workdir {self.path} holds files tern_jax did not write ({shown}); give a "
                    "new or empty folder, or the folder of an earlier run")

    def read_config(self) -> Config | None:
        """The run's config (``None`` without ``config.json``); a file that is no valid JSON,
        or holds keys or values that are no config's, is refused naming the file and why."""
        if not self.config_file.is_file():
            return None
        try:
            return from_json(self.config_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.config_file} is not valid JSON (line {e.lineno}, column "
                             f"{e.colno}: {e.msg}); it was edited or damaged: restore it as "
                             "tern-jax train wrote it") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self.config_file}: {e}; restore it as tern-jax train wrote "
                             "it") from None

    def write_config(self, config: Config) -> None:
        from tern_jax.fs import write_text_atomic

        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, config.to_json())

    def write_results(self, results: dict) -> None:
        from tern_jax.fs import write_text_atomic

        write_text_atomic(self.results_file, json.dumps(results, indent=2))

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoints(self) -> list[int]:
        """Epochs of the committed checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.checkpoint_dir.iterdir()
                      if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())

    def latest_checkpoint(self) -> int | None:
        """The newest committed checkpoint's epoch (``None`` if there is none)."""
        epochs = self.checkpoints()
        return epochs[-1] if epochs else None

    def manager(self, keep: int):
        """An orbax ``CheckpointManager`` over ``checkpoints/`` (synchronous saves)."""
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        return ocp.CheckpointManager(self.checkpoint_dir, options=options)

    def save(self, manager, epoch: int, state) -> None:
        """Saves ``state`` as epoch ``epoch``, then its integrity file (atomically)."""
        import orbax.checkpoint as ocp

        from tern_jax.fs import write_text_atomic

        tree = _as_dict(state)
        main = jax.process_index() == 0  # several processes: one writes the shared files
        digests = _digests(tree, main)
        manager.save(epoch, args=ocp.args.StandardSave(tree))  # every process takes part
        manager.wait_until_finished()
        step_dir = self.checkpoint_dir / str(epoch)
        if step_dir.is_dir() and main:
            files = file_records(step_dir)
            write_text_atomic(step_dir / INTEGRITY_FILE,
                              json.dumps({"format": INTEGRITY_FORMAT, "sha256": digests,
                                          "files": files}, indent=1))

    def _check_architecture(self, epoch: int, abstract: dict) -> None:
        """The stored weights have the model's parameters and shapes (orbax would read a
        mismatching array without a word); raises ``ValueError`` naming the first that differs."""
        import orbax.checkpoint as ocp

        item = self.checkpoint_dir / str(epoch) / "default"  # the manager's one item
        if not item.is_dir():
            return
        try:
            with fs.quiet_libraries(), ocp.StandardCheckpointer() as reader:
                stored = reader.metadata(item)
        except Exception:  # noqa: BLE001 - unreadable metadata is damage, reported by restore
            return
        stored = getattr(getattr(stored, "item_metadata", stored), "tree", stored)
        if not isinstance(stored, dict) or "params" not in stored:
            return
        for part in ("params", "model_state"):
            check_shapes(tree_shapes(abstract[part]), tree_shapes(stored.get(part) or {}),
                         f"the checkpoint {self.checkpoint_dir / str(epoch)}")

    def _read_integrity(self, step_dir: Path) -> dict:
        """The checkpoint's integrity record; :class:`CheckpointDamaged` naming the file when
        it is missing or not one that :meth:`save` writes."""
        integrity = step_dir / INTEGRITY_FILE
        if not integrity.is_file():
            raise CheckpointDamaged(
                f"{integrity} is missing, so the checkpoint cannot be verified; restore that file "
                "from a copy, or pass --unverified (verify=False) to restore it unchecked")
        try:
            record = json.loads(integrity.read_text())
            ok = (record["format"] == INTEGRITY_FORMAT and isinstance(record["sha256"], dict)
                  and isinstance(record["files"], dict))
        except (ValueError, KeyError, TypeError) as e:
            why = fs.one_line(e, with_type=True, limit=300)
            raise CheckpointDamaged(f"{integrity} is unreadable ({why})") from e
        if not ok:
            raise CheckpointDamaged(f"{integrity} is not a {INTEGRITY_FORMAT} record; restore "
                                    "that file from a copy, or pass --unverified "
                                    "(verify=False) to restore the checkpoint unchecked")
        return record

    def _restore_one(self, manager, epoch: int, abstract: dict, verify: bool) -> dict:
        import orbax.checkpoint as ocp

        step_dir = self.checkpoint_dir / str(epoch)
        if verify:
            record = self._read_integrity(step_dir)
            try:  # every file before orbax reads any: a damaged one is named, not a traceback
                check_files(step_dir, record["files"])
            except IntegrityError as e:
                raise CheckpointDamaged(str(e)) from None
        self._check_architecture(epoch, abstract)
        try:
            with fs.quiet_libraries():
                restored = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # tensorstore/orbax raise many types for damaged files
            why = fs.one_line(e, with_type=True, limit=300)
            raise CheckpointDamaged(f"{step_dir}: cannot be read ({why})") from e
        if not verify:
            warnings.warn(f"{step_dir} restored unverified (verify=False): its files and "
                          "arrays were not checked against its integrity record",
                          UnverifiedCheckpointWarning, stacklevel=3)
            return restored
        expected = record["sha256"]
        got = _digests(restored, True)
        bad = sorted(k for k in expected if got.get(k) != expected[k])
        if bad or set(got) != set(expected):
            names = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
            raise CheckpointDamaged(f"{step_dir}: {len(bad)} array(s) fail their SHA-256 check "
                                    f"({names or 'the tree structure differs'})")
        return restored

    def restore(self, manager, template, epoch: int | None = None, *,
                verify: bool = True):
        """``(epoch, state)`` from the newest intact checkpoint (or exactly ``epoch``).

        ``template`` is a state (or ``jax.eval_shape`` of one) giving structure, shapes and
        dtypes; arrays come back on the ``sharding`` its leaves carry (another mesh than the
        one the checkpoint was saved on: orbax reshards), else on the first device (several
        processes: replicated over every device).
        A damaged newest checkpoint (a file changed or missing, ``integrity.json`` included)
        falls back to the previous intact one with a :class:`DamagedCheckpointWarning`;
        raises :class:`CheckpointDamaged` when none is. ``verify=False`` skips the integrity
        checks (the newest checkpoint orbax can read is restored, with an
        :class:`UnverifiedCheckpointWarning`), for a checkpoint whose ``integrity.json`` was
        lost.
        """
        if not isinstance(verify, bool):
            raise TypeError(f"restore: verify must be True or False, got {verify!r}")
        candidates = self.checkpoints() if epoch is None else [epoch]
        if epoch is not None and epoch not in self.checkpoints():
            raise FileNotFoundError(f"{self.path} has no checkpoint of epoch {epoch}; it has "
                                    f"{self.checkpoints() or 'none'}")
        default = None
        if any(getattr(leaf, "sharding", None) is None for leaf in jax.tree.leaves(template)):
            default = _default_sharding()  # not the saved mesh's: it may have other devices
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(
                leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None) or default),
            _as_dict(template))
        damage = []
        for candidate in reversed(candidates):
            try:
                restored = self._restore_one(manager, candidate, abstract, verify)
            except CheckpointDamaged as e:
                damage.append(str(e))
                continue
            if damage:
                warnings.warn(f"the newest checkpoint is damaged ({'; '.join(damage)}); "
                              f"restored the intact checkpoint of epoch {candidate} instead",
                              DamagedCheckpointWarning, stacklevel=2)
            return candidate, type(template)(restored["params"], restored["model_state"],
                                              restored["opt_state"])
        raise CheckpointDamaged(
            "no usable checkpoint: " + "; ".join(damage) + ". Delete the damaged "
            "checkpoint folders to start the run again, or restore them from a backup")


def latest_checkpoint(workdir) -> int | None:
    """The newest committed checkpoint's epoch in ``workdir`` (``None`` if there is none)."""
    return RunFolder(workdir).latest_checkpoint()


def final_stage(folder: RunFolder) -> RunFolder:
    """The folder holding a run's final models: the last stage of a multi-stage run."""
    config = folder.read_config()
    if config is not None and config.stages.finetune_epochs:
        return RunFolder(folder.path / STAGES[-1])
    return folder
