"""Inputs of a run: a dataset as the training loop consumes it, built by the dataset itself.

Each :class:`~tern_jax.data.specs.Dataset` builds its :class:`~tern_jax.train.task.Inputs`
(``dataset.inputs(config, task, mesh)``); three forms exist:

* :class:`DeviceImages` (CIFAR-10, digits): the whole set lives in device memory; an epoch is
  a per-model permutation and per-model augmentation keys (models of one seed see the same
  batches), and batches are gathered and augmented on the device inside the jitted step;
* :class:`StreamedImages` (ImageNet, or ``data.stream=True``): host batches (grain), every
  model sees the same batch. With several processes each reads only its share
  (``batch_size / process_count`` rows of every global batch) and the global batch is
  assembled on the devices with ``jax.make_array_from_process_local_data``;
* :class:`DeviceText` (byte corpora): the training split in device memory, every step's
  windows drawn at random starts per model seed and gathered on the device.

All give padded evaluation batches with a mask, so one compiled eval step fits every batch.
The placement helpers (:func:`global_batch`, :func:`global_batches`, :func:`constrain_batch`)
put a batch on a mesh whose batch axes are named ``data`` (and ``fsdp``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax.data.augment import epoch_permutation, random_crop_flip
from tern_jax.data.streams import device_eval_batches, iterate_batches
from tern_jax.data.text import check_tokens, eval_windows
from tern_jax.sharding import batch_spec

__all__ = ["DeviceImages", "DeviceText", "StreamedImages", "constrain_batch", "epoch_plan",
           "global_batch", "global_batches", "window_starts"]


# -- placement --------------------------------------------------------------------------------

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


def constrain_batch(batch, mesh: Mesh, *, example_axis: int = 1):
    """Shards a batch's ``example_axis`` over the mesh's batch axes, ``data`` x ``fsdp``
    (:func:`tern_jax.sharding.batch_axes`; inside jit; 1 device: no-op). The default 1 skips
    the leading model axis of a batch every model sees."""
    if mesh.size == 1:
        return batch
    spec = batch_spec(mesh, example_axis)
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, spec))


# -- epoch plans ------------------------------------------------------------------------------

def epoch_plan(seeds, epoch, salt: int, draw: Callable):
    """One epoch's per-step draws for every model: ``draw(key) -> (idx (steps, B), keys
    (steps,))`` with a key from the model's seed, the epoch and ``salt`` (so image and text
    plans differ); returns ``(idx (steps, M, B), keys (steps, M))``. Models of one seed draw
    alike; a resumed epoch draws what the uninterrupted one did."""
    def per_model(seed):
        return draw(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), salt))

    idx, keys = jax.vmap(per_model)(jnp.asarray(seeds))
    return jnp.swapaxes(idx, 0, 1), jnp.swapaxes(keys, 0, 1)


def window_starts(key, steps: int, batch_size: int, size: int, seq_len: int) -> jax.Array:
    """Random starts ``s`` of training windows ``data[s : s + seq_len + 1]`` in a split of
    ``size`` tokens: ``0 <= s`` and ``s + seq_len < size`` (the window's last target is the
    split's last token at most); ``(steps, batch_size)``."""
    return jax.random.randint(key, (steps, batch_size), 0, size - seq_len)


# -- the three forms --------------------------------------------------------------------------

class DeviceImages:
    """An in-memory image dataset (an :class:`~tern_jax.data.arrays.ArrayDataset`) on the
    devices, batched and augmented there."""

    streamed = False

    def __init__(self, data, *, seeds, batch_size: int, eval_batch_size: int, augment: bool,
                 mesh: Mesh):
        self.num_train = len(data.train_labels)
        self.num_test = len(data.test_labels)
        self.description = f"{self.num_train:,} training images"
        self.batch_size = batch_size
        self.augment = augment
        self.mesh = mesh
        self.seeds = np.asarray(seeds, np.int32)
        self.steps_per_epoch = self.num_train // batch_size
        replicated = NamedSharding(mesh, P())
        self.arrays = jax.device_put(
            {"image": np.asarray(data.train_images),
             "label": np.asarray(data.train_labels, np.int32)}, replicated)
        self._test = device_eval_batches(
            {"image": np.asarray(data.test_images),
             "label": np.asarray(data.test_labels, np.int32)}, eval_batch_size, replicated)
        self.epoch_plan = jax.jit(self._epoch_plan)

    def _draw(self, key):
        k_perm, k_aug = jax.random.split(key)
        idx = epoch_permutation(k_perm, self.num_train, self.batch_size)
        return idx, jax.random.split(k_aug, idx.shape[0])

    def _epoch_plan(self, epoch):
        """Batch indices ``(steps, M, B)`` and augmentation keys ``(steps, M)``."""
        return epoch_plan(self.seeds, epoch, 7, self._draw)

    def batch_at(self, arrays: dict, idx: jax.Array, keys: jax.Array) -> dict:
        """The batch ``(M, B, ...)`` of indices ``idx`` (M, B), augmented with keys (M,)."""
        batch = {"image": arrays["image"][idx], "label": arrays["label"][idx]}
        batch = constrain_batch(batch, self.mesh)
        if self.augment:
            batch["image"] = jax.vmap(random_crop_flip)(keys, batch["image"])
        return batch

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        return iterate_batches(*self._test)


class StreamedImages:
    """Host batch streams (every model sees the same batch), placed as global arrays.

    ``train(epoch)`` yields this process's ``(images, labels)`` of each step; ``test()`` its
    ``(images, labels, mask)`` of each padded evaluation batch (the same count and shape on
    every process).
    """

    streamed = True

    def __init__(self, train: Callable[[int], Iterator], test: Callable[[], Iterator], *,
                 num_train: int, batch_size: int, mesh: Mesh, num_test: int | None = None):
        self._train, self._test = train, test
        self.num_train, self.num_test = num_train, num_test
        self.description = f"{num_train:,} training images (streamed)"
        self.batch_size = batch_size
        self.steps_per_epoch = num_train // batch_size
        self.mesh = mesh

    def train_batches(self, epoch: int) -> Iterator[dict]:
        stream = self._train(epoch)
        try:
            host = ({"image": x, "label": y} for x, y in stream)
            yield from global_batches(host, NamedSharding(self.mesh, batch_spec(self.mesh)))
        finally:
            _close(stream)

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        stream = self._test()
        try:
            for images, labels, mask in stream:
                yield global_batch(({"image": images, "label": labels}, mask),
                                   NamedSharding(self.mesh, batch_spec(self.mesh)))
        finally:
            _close(stream)


def _close(stream) -> None:
    """Stops a grain iterator's worker processes (a loop may leave an epoch early)."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


class DeviceText:
    """A token corpus (a :class:`~tern_jax.data.text.TextDataset`) in device memory, batched
    as random windows there.

    An *epoch* is ``steps_per_epoch`` steps (evaluation and checkpoints happen between
    epochs), or one pass over the training tokens when that is None. Evaluation:
    ``test_subset`` non-overlapping windows of ``seq_len + 1`` tokens evenly spaced over the
    validation split (all of them when None), in padded batches with a mask.
    """

    streamed = False

    def __init__(self, data, *, seeds, seq_len: int, batch_size: int, eval_batch_size: int,
                 steps_per_epoch: int | None, test_subset: int | None, mesh: Mesh):
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.mesh = mesh
        self.seeds = np.asarray(seeds, np.int32)
        check_tokens(data.train, f"{data.name}'s training split")
        size = int(data.train.size)
        self.description = f"{size:,} training tokens"  # what the log says it trains on
        if size < seq_len + 1:
            raise ValueError(f"{data.name}: the training split holds {size} tokens, fewer "
                             f"than one window of data.seq_len={seq_len} + 1")
        self.size = size
        self.num_train = size - seq_len  # distinct window starts
        self.steps_per_epoch = steps_per_epoch or max(size // (batch_size * seq_len), 1)
        replicated = NamedSharding(mesh, P())
        self.arrays = {"tokens": jax.device_put(np.asarray(data.train), replicated)}
        windows = eval_windows(data.validation, seq_len, test_subset)
        self.num_test = int(windows.shape[0])
        self._test = device_eval_batches({"tokens": windows.astype(np.int32)},
                                          eval_batch_size, replicated)
        self.epoch_plan = jax.jit(self._epoch_plan)

    def _draw(self, key):
        starts = window_starts(key, self.steps_per_epoch, self.batch_size, self.size,
                               self.seq_len)
        return starts, jax.random.split(key, self.steps_per_epoch)

    def _epoch_plan(self, epoch):
        """Window starts ``(steps, M, B)`` and (unused) keys ``(steps, M)``."""
        return epoch_plan(self.seeds, epoch, 11, self._draw)

    def batch_at(self, arrays: dict, idx: jax.Array, keys: jax.Array) -> dict:
        """The windows ``(M, B, seq_len + 1)`` starting at ``idx`` (M, B)."""
        del keys  # no augmentation of text
        offsets = jnp.arange(self.seq_len + 1)
        tokens = arrays["tokens"][idx[..., None] + offsets].astype(jnp.int32)
        return constrain_batch({"tokens": tokens}, self.mesh)

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        return iterate_batches(*self._test)
