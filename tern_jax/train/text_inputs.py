"""Inputs of a language-model run: a byte corpus on the devices, random windows per step.

:class:`~tern_jax.train.task.DeviceResident` inputs, as
:class:`tern_jax.train.inputs.DeviceInputs` are, so the loop runs text as it runs images:
the training split lives in device memory; an epoch's plan is, per model seed,
the random start offsets of every step's windows (models of one seed see the same windows);
``batch_at`` gathers them on the device inside the jitted step. An *epoch* is
``config.steps_per_epoch`` steps (evaluation and checkpoints happen between epochs), or one
pass over the training bytes when that is None.

Evaluation: ``config.test_subset`` non-overlapping windows of ``seq_len + 1`` bytes evenly
spaced over the validation split (all of them when None), in padded batches with a mask.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax.data.streams import device_eval_batches, iterate_batches
from tern_jax.data.text import eval_windows
from tern_jax.train.config import Config
from tern_jax.train.distributed import constrain_batch
from tern_jax.train.language_model import seq_len

__all__ = ["TextInputs"]


class TextInputs:
    """A byte corpus in device memory, batched as random windows there."""

    streamed = False

    def __init__(self, dataset, config: Config, seeds, mesh: Mesh):
        self.dataset = dataset
        self.seq_len = seq_len(config)
        self.batch_size = config.batch_size
        self.mesh = mesh
        self.seeds = np.asarray(seeds, np.int32)
        if dataset.train.size < self.seq_len + 1:
            raise ValueError(f"{dataset.name}: the training split holds {dataset.train.size} "
                             f"bytes, fewer than one window of seq_len={self.seq_len} + 1")
        self.num_train = int(dataset.train.size - self.seq_len)  # distinct window starts
        self.steps_per_epoch = config.steps_per_epoch or max(
            int(dataset.train.size) // (self.batch_size * self.seq_len), 1)
        replicated = NamedSharding(mesh, P())
        self.arrays = {"tokens": jax.device_put(np.asarray(dataset.train), replicated)}
        windows = eval_windows(dataset.validation, self.seq_len, config.test_subset)
        self.num_test = int(windows.shape[0])
        self._test = device_eval_batches({"tokens": windows.astype(np.int32)},
                                          config.eval_batch_size, replicated)
        self.epoch_plan = jax.jit(self._epoch_plan)

    def _epoch_plan(self, epoch):
        """Window starts ``(steps, M, B)`` and (unused) keys ``(steps, M)`` per model seed."""
        def per_model(seed):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), 11)
            starts = jax.random.randint(key, (self.steps_per_epoch, self.batch_size), 0,
                                        self.num_train + 1)
            return starts, jax.random.split(key, self.steps_per_epoch)

        starts, keys = jax.vmap(per_model)(jnp.asarray(self.seeds))
        return jnp.swapaxes(starts, 0, 1), jnp.swapaxes(keys, 0, 1)

    def batch_at(self, arrays: dict, idx: jax.Array, keys: jax.Array) -> dict:
        """The windows ``(M, B, seq_len + 1)`` starting at ``idx`` (M, B)."""
        del keys  # no augmentation of text
        offsets = jnp.arange(self.seq_len + 1)
        tokens = arrays["tokens"][idx[..., None] + offsets].astype(jnp.int32)
        return constrain_batch({"tokens": tokens}, self.mesh)

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        return iterate_batches(*self._test)
