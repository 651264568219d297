"""Inputs of a run: the dataset a config names, as device-resident arrays or host streams.

Two forms of the :class:`~tern_jax.train.task.Inputs` protocol (text: :mod:`text_inputs`):

* :class:`DeviceInputs` (CIFAR-10, digits): the whole set lives in device memory; an epoch is
  a per-model permutation and per-model augmentation keys (models of one seed see the same
  batches), and batches are gathered and augmented on the device inside the jitted step;
* :class:`StreamInputs` (a streamed dataset such as ImageNet, or ``stream=True``): grain pipelines
  (:mod:`tern_jax.data.pipeline`) yield batches on the host, every model sees the same batch.
  With several processes each reads only its share (``batch_size / process_count`` rows of
  every global batch) and the global batch is assembled on the devices with
  ``jax.make_array_from_process_local_data``; the global batches are those of one process.

Both give padded evaluation batches with a mask, so one compiled eval step fits every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax.data.arrays import subset
from tern_jax.data.augment import epoch_permutation, random_crop_flip
from tern_jax.data.pipeline import ArraySource, batch_dataset, batch_iterator
from tern_jax.data.specs import TOKENS, Dataset, dataset_spec
from tern_jax.data.streams import device_eval_batches, iterate_batches
from tern_jax.train.config import Config
from tern_jax.train.distributed import constrain_batch, global_batch, global_batches
from tern_jax.train.task import Inputs
from tern_jax.train.text_inputs import TextInputs

__all__ = ["DeviceInputs", "StreamInputs", "load_inputs"]


class DeviceInputs:
    """An in-memory dataset on the devices, batched and augmented there."""

    streamed = False

    def __init__(self, dataset, config: Config, seeds, mesh: Mesh):
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.mean, self.std = tuple(dataset.mean), tuple(dataset.std)
        self.image_shape = tuple(dataset.train_images.shape[1:])
        self.num_train = len(dataset.train_labels)
        self.num_test = len(dataset.test_labels)
        self.batch_size = config.batch_size
        self.augment = config.augment
        self.mesh = mesh
        self.seeds = np.asarray(seeds, np.int32)
        self.steps_per_epoch = self.num_train // self.batch_size
        replicated = NamedSharding(mesh, P())
        self.arrays = jax.device_put(
            {"image": np.asarray(dataset.train_images),
             "label": np.asarray(dataset.train_labels, np.int32)}, replicated)
        self._test = device_eval_batches(
            {"image": np.asarray(dataset.test_images),
             "label": np.asarray(dataset.test_labels, np.int32)},
            config.eval_batch_size, replicated)
        self.epoch_plan = jax.jit(self._epoch_plan)

    def _epoch_plan(self, epoch):
        """Batch indices ``(steps, M, B)`` and augmentation keys ``(steps, M)`` per model seed."""
        def per_model(seed):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), 7)
            k_perm, k_aug = jax.random.split(key)
            idx = epoch_permutation(k_perm, self.num_train, self.batch_size)
            return idx, jax.random.split(k_aug, idx.shape[0])

        idx, keys = jax.vmap(per_model)(jnp.asarray(self.seeds))
        return jnp.swapaxes(idx, 0, 1), jnp.swapaxes(keys, 0, 1)

    def batch_at(self, arrays: dict, idx: jax.Array, keys: jax.Array) -> dict:
        """The batch ``(M, B, ...)`` of indices ``idx`` (M, B), augmented with keys (M,)."""
        batch = {"image": arrays["image"][idx], "label": arrays["label"][idx]}
        batch = constrain_batch(batch, self.mesh)
        if self.augment:
            batch["image"] = jax.vmap(random_crop_flip)(keys, batch["image"])
        return batch

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        return iterate_batches(*self._test)


class StreamInputs:
    """Host batch streams (every model sees the same batch), placed as global arrays.

    ``train(epoch)`` yields this process's ``(images, labels)`` of each step; ``test()`` its
    ``(images, labels, mask)`` of each padded evaluation batch (the same count and shape on
    every process).
    """

    streamed = True

    def __init__(self, train: Callable[[int], Iterator], test: Callable[[], Iterator], *,
                 num_train: int, num_classes: int, image_shape, mean, std, config: Config,
                 mesh: Mesh, num_test: int | None = None):
        self._train, self._test = train, test
        self.num_train, self.num_test = num_train, num_test
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = config.batch_size
        self.eval_batch_size = config.eval_batch_size
        self.steps_per_epoch = num_train // config.batch_size
        self.mesh = mesh

    def train_batches(self, epoch: int) -> Iterator[dict]:
        stream = self._train(epoch)
        try:
            host = ({"image": x, "label": y} for x, y in stream)
            yield from global_batches(host, NamedSharding(self.mesh, P("data")))
        finally:
            _close(stream)

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        stream = self._test()
        try:
            for images, labels, mask in stream:
                yield global_batch(({"image": images, "label": labels}, mask),
                                   NamedSharding(self.mesh, P("data")))
        finally:
            _close(stream)


def _close(stream) -> None:
    """Stops a grain iterator's worker processes (a loop may leave an epoch early)."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def _process_batches(config: Config, mesh: Mesh) -> tuple[int, int]:
    """This process's rows of a training and of an evaluation batch.

    The evaluation batch is rounded up to a multiple of the device count (padding is masked).
    """
    processes, devices = jax.process_count(), mesh.size
    eval_batch = -(-config.eval_batch_size // devices) * devices
    return config.batch_size // processes, eval_batch // processes


def _check_images(dataset: Dataset, data) -> None:
    """The loaded images are those the dataset declares (restoring trusts the declaration)."""
    if (data.num_classes, data.image_shape) != (dataset.num_classes,
                                                tuple(dataset.input_shape)):
        raise ValueError(
            f"dataset {dataset.name!r} declares {dataset.num_classes} classes of "
            f"{tuple(dataset.input_shape)} images but loaded {data.num_classes} classes of "
            f"{data.image_shape} images; make its declaration match its data")


def load_inputs(config: Config, seeds, mesh: Mesh) -> Inputs:
    """The dataset ``config.dataset`` (its :class:`~tern_jax.data.specs.Dataset`) in the form
    it and the config ask for: tokens, a host stream, or images in device memory."""
    dataset = dataset_spec(config.dataset)
    if dataset.kind == TOKENS:
        return TextInputs(dataset.open(config), config, seeds, mesh)
    batch, eval_batch = _process_batches(config, mesh)
    if dataset.streamed:
        batches = dataset.open(config)
        return StreamInputs(
            lambda epoch: batches(True, batch, seed=config.seeds[0], start_epoch=epoch),
            lambda: batches(False, eval_batch),
            num_train=config.train_subset or dataset.num_train,
            num_classes=dataset.num_classes, image_shape=dataset.input_shape,
            mean=dataset.mean, std=dataset.std, config=config, mesh=mesh,
            num_test=dataset.num_test)
    ds = dataset.open(config)
    _check_images(dataset, ds)
    if config.train_subset or config.test_subset:
        ds = subset(ds, config.train_subset, config.test_subset, seed=0)
    if not config.stream:
        return DeviceInputs(ds, config, seeds, mesh)
    train_source = ArraySource(ds.train_images, ds.train_labels)
    test_source = ArraySource(ds.test_images, ds.test_labels)
    return StreamInputs(
        lambda epoch: batch_iterator(batch_dataset(
            train_source, batch, shuffle=True, seed=config.seeds[0], start_epoch=epoch),
            num_workers=0),
        lambda: batch_iterator(batch_dataset(
            test_source, eval_batch, shuffle=False, drop_remainder=False, pad_remainder=True),
            num_workers=0),
        num_train=len(ds.train_labels), num_classes=ds.num_classes,
        image_shape=ds.train_images.shape[1:], mean=ds.mean, std=ds.std, config=config,
        mesh=mesh, num_test=len(ds.test_labels))
