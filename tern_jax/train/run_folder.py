"""A run folder: config, metrics, results and verified orbax checkpoints of one training run.

Layout (all paths relative, so a folder copied or moved elsewhere still resumes)::

    config.json      the Config, written atomically
    metrics.jsonl    one line per epoch (tern_jax.train.metrics)
    results.json     final-epoch results, written atomically
    checkpoints/N/   orbax checkpoint of epoch N, with integrity.json inside

Every checkpoint carries a SHA-256 per array (``integrity.json``), checked on restore: a
damaged latest checkpoint (flipped bytes, a truncated or deleted file) is never trained on;
the previous complete one is used with a warning, and when none is usable the error names
the damaged files. Checkpoints written before integrity files existed load unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from pathlib import Path

import jax
import numpy as np

from tern_jax.train.config import Config, from_json

__all__ = ["RunFolder", "CheckpointDamaged", "DamagedCheckpointWarning", "STAGES",
           "final_stage", "latest_checkpoint"]

INTEGRITY_FILE = "integrity.json"

#: Sub-folders of a two-stage run (each a run folder): full precision, then ternary fine-tuning.
STAGES = ("pretrain", "finetune")


class CheckpointDamaged(RuntimeError):
    """No checkpoint of the run can be restored intact; the message names the damage."""


class DamagedCheckpointWarning(UserWarning):
    """The latest checkpoint is damaged; an earlier intact one is used instead."""


def _digest(leaf) -> str:
    a = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256()
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _digests(tree) -> dict[str, str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): _digest(leaf) for path, leaf in leaves}


def _as_dict(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state}


@contextlib.contextmanager
def _quiet_libraries():
    """Keeps orbax/absl/tensorstore from flooding the console while we handle their errors."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "jax._src.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class RunFolder:
    """One run's folder; paths are resolved when used, never stored."""

    def __init__(self, path):
        self.path = Path(path).absolute()  # orbax needs absolute paths at run time

    # -- files ----------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def read_config(self) -> Config | None:
        if not self.config_file.is_file():
            return None
        return from_json(self.config_file.read_text())

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
        digests = _digests(tree)
        manager.save(epoch, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()
        step_dir = self.checkpoint_dir / str(epoch)
        if step_dir.is_dir():
            write_text_atomic(step_dir / INTEGRITY_FILE,
                              json.dumps({"format": "tern_jax.integrity.v1",
                                          "sha256": digests}, indent=1))

    def _restore_one(self, manager, epoch: int, abstract: dict) -> dict:
        import orbax.checkpoint as ocp

        step_dir = self.checkpoint_dir / str(epoch)
        integrity = step_dir / INTEGRITY_FILE
        expected = None
        if integrity.is_file():
            try:
                expected = json.loads(integrity.read_text())["sha256"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointDamaged(f"{integrity} is unreadable ({_first_line(e)})") from e
        try:
            with _quiet_libraries():
                restored = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # tensorstore/orbax raise many types for damaged files
            raise CheckpointDamaged(f"{step_dir}: cannot be read ({_first_line(e)})") from e
        if expected is None:
            warnings.warn(f"{step_dir} has no {INTEGRITY_FILE} (written before integrity "
                          "checks); restored unverified", stacklevel=3)
            return restored
        got = _digests(restored)
        bad = sorted(k for k in expected if got.get(k) != expected[k])
        if bad or set(got) != set(expected):
            names = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
            raise CheckpointDamaged(f"{step_dir}: {len(bad)} array(s) fail their SHA-256 check "
                                    f"({names or 'the tree structure differs'})")
        return restored

    def restore(self, manager, template, epoch: int | None = None):
        """``(epoch, state)`` from the newest intact checkpoint (or exactly ``epoch``).

        ``template`` is a state (or ``jax.eval_shape`` of one) giving structure, shapes and
        dtypes; arrays come back replicated on ``sharding`` if the template leaves carry one.
        A damaged newest checkpoint falls back to the previous intact one with a
        :class:`DamagedCheckpointWarning`; raises :class:`CheckpointDamaged` when none is.
        """
        candidates = self.checkpoints() if epoch is None else [epoch]
        if epoch is not None and epoch not in self.checkpoints():
            raise FileNotFoundError(f"{self.path} has no checkpoint of epoch {epoch}; it has "
                                    f"{self.checkpoints() or 'none'}")
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                              sharding=getattr(leaf, "sharding", None)),
            _as_dict(template))
        damage = []
        for candidate in reversed(candidates):
            try:
                restored = self._restore_one(manager, candidate, abstract)
            except CheckpointDamaged as e:
                damage.append(str(e))
                continue
            if damage:
                warnings.warn(f"the newest checkpoint is damaged ({'; '.join(damage)}); "
                              f"restored the intact checkpoint of epoch {candidate} instead",
                              DamagedCheckpointWarning, stacklevel=2)
            return candidate, type(template)(restored["params"], restored["batch_stats"],
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
    if config is not None and config.finetune_epochs:
        return RunFolder(folder.path / STAGES[-1])
    return folder
