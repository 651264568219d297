"""Inputs of a run: the dataset a config names, as device-resident arrays or host streams.

Two forms, one interface for the loop:

* :class:`DeviceInputs` (CIFAR-10, digits): the whole set lives in device memory; an epoch is
  a per-model permutation and per-model augmentation keys (models of one seed see the same
  batches), and batches are gathered and augmented on the device inside the jitted step;
* :class:`StreamInputs` (ImageNet, or ``stream=True``): grain pipelines
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

from tern_jax.train.config import Config
from tern_jax.train.distributed import constrain_batch

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
        from tern_jax.data.streams import device_eval_batches

        self._test = device_eval_batches(
            {"image": np.asarray(dataset.test_images),
             "label": np.asarray(dataset.test_labels, np.int32)},
            config.eval_batch_size, replicated)
        self.epoch_plan = jax.jit(self._epoch_plan)

    def _epoch_plan(self, epoch):
        """Batch indices ``(steps, M, B)`` and augmentation keys ``(steps, M)`` per model seed."""
        from tern_jax.data.augment import epoch_permutation

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
            from tern_jax.data.augment import random_crop_flip

            batch["image"] = jax.vmap(random_crop_flip)(keys, batch["image"])
        return batch

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        from tern_jax.data.streams import iterate_batches

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
        from tern_jax.train.distributed import global_batches

        stream = self._train(epoch)
        try:
            host = ({"image": x, "label": y} for x, y in stream)
            yield from global_batches(host, NamedSharding(self.mesh, P("data")))
        finally:
            _close(stream)

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]:
        from tern_jax.train.distributed import global_batch

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


def load_inputs(config: Config, seeds, mesh: Mesh) -> DeviceInputs | StreamInputs:
    """The dataset ``config.dataset`` in the form the config asks for."""
    from tern_jax.train.config import is_language_model

    if is_language_model(config.model):
        from tern_jax.train.text_inputs import TextInputs, load_text_dataset

        return TextInputs(load_text_dataset(config), config, seeds, mesh)
    if config.dataset.lower().startswith("imagenet"):
        from tern_jax.data import imagenet
        from tern_jax.data.specs import dataset_spec

        batch, eval_batch = _process_batches(config, mesh)

        def train(epoch):
            return imagenet.imagenet_batches(
                "train", batch, data_dir=config.data_dir, train=True, seed=config.seeds[0],
                start_epoch=epoch, num_epochs=1, dtype=np.uint8)

        def test():
            return imagenet.imagenet_batches(
                "validation", eval_batch, data_dir=config.data_dir, train=False,
                pad_remainder=True, dtype=np.uint8)

        spec = dataset_spec("imagenet")
        return StreamInputs(train, test, num_train=config.train_subset
                            or imagenet.IMAGENET_TRAIN_SIZE, num_classes=spec.num_classes,
                            image_shape=spec.image_shape, mean=imagenet.IMAGENET_MEAN,
                            std=imagenet.IMAGENET_STD, config=config, mesh=mesh,
                            num_test=imagenet.IMAGENET_VAL_SIZE)

    from tern_jax.data import load_dataset, subset
    from tern_jax.data.pipeline import ArraySource, batch_dataset, batch_iterator

    ds = load_dataset(config.dataset, config.data_dir)
    if config.train_subset or config.test_subset:
        ds = subset(ds, config.train_subset, config.test_subset, seed=0)
    if not config.stream:
        return DeviceInputs(ds, config, seeds, mesh)
    batch, eval_batch = _process_batches(config, mesh)
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
