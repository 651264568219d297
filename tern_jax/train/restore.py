"""Reading a run's trained models back: no data is loaded, only the checkpoint.

The models are rebuilt from the config and the dataset's declared specs (classes, input shape,
:mod:`tern_jax.data.specs`) with
``jax.eval_shape``, so restoring is as cheap as reading the arrays.
"""

from __future__ import annotations

from typing import NamedTuple

from tern_jax.train.config import Config
from tern_jax.train.families import Resolved, resolve
from tern_jax.train.run_folder import RunFolder, final_stage
from tern_jax.train.stack import ModelStack, TrainState

__all__ = ["Restored", "restore_run"]


class Restored(NamedTuple):
    """A run's models as restored: its config and resolved names, the model stack, the state
    and its epoch."""

    config: Config
    resolved: Resolved
    stack: ModelStack
    state: TrainState
    epoch: int
    folder: RunFolder


def restore_run(workdir, epoch: int | None = None, *, verify: bool = True) -> Restored:
    """The models of a finished or interrupted run, from its newest intact checkpoint.

    A multi-stage run folder resolves to its last stage (the ternary models of the two-stage
    recipe); pass ``WORKDIR/pretrain`` for its full-precision models. ``verify=False``
    restores without the integrity checks (:meth:`RunFolder.restore`), e.g. a checkpoint
    whose ``integrity.json`` was lost (``--unverified`` on the command line).
    """
    folder = final_stage(RunFolder(workdir))
    config = folder.read_config()
    if config is None:
        raise FileNotFoundError(f"{folder.path} holds no run (no config.json); pass a train "
                                "workdir")
    if folder.latest_checkpoint() is None:
        raise FileNotFoundError(f"{folder.path} has no completed checkpoint yet")
    resolved = resolve(config)
    task = resolved.task(config)  # from the declared specs of the model and the dataset
    # the optimizer only shapes the state; one step per epoch is enough for that
    stack = ModelStack.from_config(config, task, resolved.family, steps_per_epoch=1)
    manager = folder.manager(config.checkpointing.keep)
    try:
        epoch, state = folder.restore(manager, stack.abstract_state(), epoch, verify=verify)
    finally:
        manager.close()
    return Restored(config, resolved, stack, state, epoch, folder)
