"""Streamed input pipelines on grain: a fixed global order, per-process shards, worker processes.

Any random-access source (``len(source)`` and ``source[i]`` giving ``{"image", "label"}``)
becomes a grain ``MapDataset`` whose element ``k`` is this process's share of global batch
``k``; :func:`batch_iterator` turns it into a checkpointable grain iterator that decodes and
augments in worker processes. The tfds ``imagenet2012`` data source
(:func:`tern_jax.data.imagenet.imagenet_batches`) and in-memory arrays (:class:`ArraySource`,
e.g. CIFAR-10) go through the same code.

The order of examples does not depend on the number of processes or workers:

* epoch ``e`` visits the examples in a seeded permutation (grain's ``index_shuffle``, computed
  per index, so nothing of size ``N`` is held) or, without shuffling, in order;
* the epoch is cut into global batches of ``G = batch_size * num_shards`` examples (a final
  partial one is dropped, or padded and masked);
* process ``p`` reads positions ``[p * batch_size, (p + 1) * batch_size)`` of each global
  batch, and only those;
* the augmentation of an example draws from ``np.random.default_rng([seed, e, i])`` for
  example ``i`` in epoch ``e``.

So the global batch at each step, gathered from all processes (e.g. with
``jax.make_array_from_process_local_data``), is the batch a single process would read with
``batch_size = G``.

grain is imported only when a dataset is built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from tern_jax.data.augment import normalize
from tern_jax.data.streams import pad_batch

__all__ = [
    "ArraySource",
    "BatchPlan",
    "batch_dataset",
    "batch_iterator",
    "batch_plan",
    "example_index",
]

#: ``transform(image, rng) -> uint8 (H, W, C)`` applied to each example's image.
ImageTransform = Callable[[Any, np.random.Generator], np.ndarray]


def _grain() -> Any:
    try:
        import grain
    except ImportError as e:
        raise ImportError(
            "the streamed input pipeline needs grain: pip install grain") from e
    return grain


class ArraySource:
    """A random-access source over in-memory arrays: ``source[i] = {"image", "label"}``.

    The streamed counterpart of an :class:`~tern_jax.data.ArrayDataset` split, e.g.
    ``ArraySource(ds.train_images, ds.train_labels)``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        images, labels = np.asarray(images), np.asarray(labels)
        if labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"images and labels must hold the same number of examples, got images of shape "
                f"{images.shape} and labels of shape {labels.shape}")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}

    def __repr__(self) -> str:
        return f"ArraySource({len(self)} images of shape {self.images.shape[1:]})"


class BatchPlan(NamedTuple):
    """Which positions of an epoch one process reads: the sharding arithmetic.

    Attributes:
        num_examples: examples in the source (``N``).
        batch_size: examples per batch of this process (``B``).
        shard_index: this process (``p``).
        num_shards: processes reading the source (``P``).
        drop_remainder: drop a final partial global batch (else it is padded).
    """

    num_examples: int
    batch_size: int
    shard_index: int
    num_shards: int
    drop_remainder: bool

    @property
    def global_batch_size(self) -> int:
        """``G = B * P``: the examples of one step over all processes."""
        return self.batch_size * self.num_shards

    @property
    def steps_per_epoch(self) -> int:
        """``N // G`` when dropping the remainder, else ``ceil(N / G)``."""
        if self.drop_remainder:
            return self.num_examples // self.global_batch_size
        return math.ceil(self.num_examples / self.global_batch_size)

    def positions(self, step: int) -> np.ndarray:
        """Positions in the epoch's order read by this process at ``step`` of the epoch.

        Positions ``>= num_examples`` (only in a padded last batch) are padding.
        """
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside the epoch's {self.steps_per_epoch} steps")
        start = step * self.global_batch_size + self.shard_index * self.batch_size
        return np.arange(start, start + self.batch_size)


def batch_plan(num_examples: int, batch_size: int, *, shard_index: int | None = None,
               num_shards: int | None = None, drop_remainder: bool = True) -> BatchPlan:
    """The :class:`BatchPlan` of one process, checked.

    ``shard_index`` / ``num_shards`` default to this JAX process and the process count
    (grain's ``ShardByJaxProcess``).

    Raises:
        ValueError: a non-positive batch size or shard count, a shard index out of range, or
            an epoch that gives no batch (fewer examples than one global batch when dropping
            the remainder; an empty source).
    """
    if shard_index is None or num_shards is None:
        shard = _grain().sharding.ShardByJaxProcess()
        shard_index = shard.shard_index if shard_index is None else shard_index
        num_shards = shard.shard_count if num_shards is None else num_shards
    for name, value in (("batch_size", batch_size), ("num_shards", num_shards)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must lie in [0, {num_shards}) for num_shards="
                         f"{num_shards}, got {shard_index}")
    plan = BatchPlan(int(num_examples), int(batch_size), int(shard_index), int(num_shards),
                     bool(drop_remainder))
    if plan.steps_per_epoch == 0:
        raise ValueError(
            f"the source holds {num_examples} examples, fewer than one global batch of "
            f"{plan.global_batch_size} ({batch_size} per process x {num_shards} processes), so "
            "every process would get an empty shard; use a smaller batch_size"
            + (" or drop_remainder=False" if drop_remainder and num_examples else ""))
    return plan


def example_index(position: int, epoch: int, num_examples: int, *, seed: int,
                  shuffle: bool) -> int:
    """The example at ``position`` of ``epoch``'s order (a seeded permutation if ``shuffle``)."""
    if not shuffle:
        return int(position)
    from grain.experimental import index_shuffle

    return int(index_shuffle(int(position), max_index=num_examples - 1,
                             seed=(seed + 1_000_003 * epoch) % 2**32, rounds=4))


class _LoadBatch:
    """Maps a step (over all epochs) to this process's batch; runs in the grain workers."""

    def __init__(self, source: Any, plan: BatchPlan, *, seed: int, shuffle: bool,
                 start_epoch: int, transform: ImageTransform | None, dtype: Any,
                 mean: Any, std: Any, pad: bool):
        self.source, self.plan, self.seed, self.shuffle = source, plan, seed, shuffle
        self.start_epoch, self.transform = start_epoch, transform
        self.dtype, self.mean, self.std, self.pad = np.dtype(dtype), mean, std, pad

    def __call__(self, step: int):
        plan = self.plan
        epoch, step_in_epoch = divmod(int(step), plan.steps_per_epoch)
        epoch += self.start_epoch
        images, labels = [], []
        real = [q for q in plan.positions(step_in_epoch) if q < plan.num_examples]
        for q in real:
            i = example_index(q, epoch, plan.num_examples, seed=self.seed, shuffle=self.shuffle)
            example = self.source[i]
            image = example["image"]
            if self.transform is not None:
                image = self.transform(image, np.random.default_rng([self.seed, epoch, i]))
            images.append(np.asarray(image))
            labels.append(int(example["label"]))
        if not images:  # a padded last batch may hold nothing for this process
            image_shape = self._image_shape()
            images_arr = np.zeros((0,) + image_shape, np.uint8)
        else:
            images_arr = np.stack(images)
        labels_arr = np.asarray(labels, np.int32)
        mask = None
        if self.pad:
            images_arr, labels_arr, mask = pad_batch(images_arr, labels_arr, plan.batch_size)
        if self.dtype != np.uint8:
            images_arr = normalize(images_arr, self.mean, self.std, self.dtype)
        if self.pad:
            return images_arr, labels_arr, mask
        return images_arr, labels_arr

    def _image_shape(self) -> tuple[int, ...]:
        """Shape of one transformed image (the padding of a batch with no real example)."""
        example = self.source[0]
        image = example["image"]
        if self.transform is not None:
            image = self.transform(image, np.random.default_rng(0))
        return np.asarray(image).shape


def batch_dataset(
    source: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = 1,
    start_epoch: int = 0,
    transform: ImageTransform | None = None,
    dtype: Any = np.uint8,
    mean: Any = None,
    std: Any = None,
    drop_remainder: bool = True,
    pad_remainder: bool = False,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Any:
    """This process's batches of ``source`` as a grain ``MapDataset`` (element ``k``: step ``k``).

    Args:
        source: random-access source: ``len(source)`` and ``source[i]`` giving a dict with
            ``"image"`` (encoded bytes or an array) and ``"label"``; it is pickled into the
            worker processes (tfds data sources and :class:`ArraySource` are).
        batch_size: examples per batch of this process; the global batch is
            ``batch_size * num_shards``.
        shuffle: visit each epoch in a seeded permutation (training) or in order.
        seed: seed of the permutations and of the per-example augmentation.
        num_epochs: epochs to run through; ``None`` for an endless stream.
        start_epoch: the epoch of element 0 (a run resumed at an epoch boundary).
        transform: ``transform(image, rng) -> uint8 (H, W, C)``, run in the workers; ``rng``
            is a NumPy generator seeded by ``(seed, epoch, example)``. ``None`` keeps images.
        dtype: ``np.uint8`` for raw pixels, or a float dtype for images normalized with
            ``mean`` / ``std`` (in ``[0, 1]`` pixel units) in the workers.
        drop_remainder: drop a final partial global batch (training).
        pad_remainder: keep it, padded with zeros to full batches, and yield
            ``(images, labels, mask)`` (mask float32, 1 for real examples): every process
            then yields the same number of equally shaped batches (evaluation on several
            processes).
        shard_index, num_shards: this process's share; default ``jax.process_index()`` /
            ``jax.process_count()``.

    Returns:
        A ``grain.MapDataset`` of ``(images, labels)`` (or ``(images, labels, mask)``);
        ``len`` is the number of steps (``sys.maxsize`` when endless).

    Raises:
        ValueError: bad batch or shard arguments, an empty shard, a float ``dtype`` without
            ``mean``/``std``, or several processes with a final batch neither dropped nor
            padded (their batch counts or shapes would differ).
    """
    grain = _grain()
    if pad_remainder and drop_remainder:
        raise ValueError("pass at most one of drop_remainder=True and pad_remainder=True")
    plan = batch_plan(len(source), batch_size, shard_index=shard_index, num_shards=num_shards,
                      drop_remainder=drop_remainder)
    if plan.num_shards > 1 and not (drop_remainder or pad_remainder):
        raise ValueError(
            f"with {plan.num_shards} processes a final partial batch must be dropped "
            "(drop_remainder=True) or padded (pad_remainder=True), else the processes would "
            "yield batches of different shapes")
    if np.dtype(dtype) != np.uint8 and (mean is None or std is None):
        raise ValueError(f"dtype={np.dtype(dtype).name} normalizes the images: pass mean and std "
                         "(per channel, in [0, 1] pixel units), or dtype=np.uint8")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    import sys

    steps = sys.maxsize if num_epochs is None else num_epochs * plan.steps_per_epoch
    load = _LoadBatch(source, plan, seed=seed, shuffle=shuffle, start_epoch=start_epoch,
                      transform=transform, dtype=dtype, mean=mean, std=std, pad=pad_remainder)
    return grain.MapDataset.range(steps).map(load)


def batch_iterator(dataset: Any, *, num_workers: int | None = None, num_threads: int = 1,
                   buffer_size: int = 2) -> Any:
    """A checkpointable grain iterator over ``dataset`` (from :func:`batch_dataset`).

    Args:
        dataset: a grain ``MapDataset`` of batches.
        num_workers: worker processes computing batches (decode, augment, stack); ``0``
            computes them in this process. Default: the CPU count, at most 8.
        num_threads: threads per process, each computing one batch at a time.
        buffer_size: batches kept ready per worker (and per process).

    Returns:
        A ``grain.DatasetIterator``: ``get_state()`` gives a small JSON-able dict, and
        ``set_state(state)`` on a fresh iterator (same dataset, same ``num_workers``) makes it
        continue with exactly the batches the first one would have yielded next. Close it
        (``.close()``) to stop the worker processes early.
    """
    grain = _grain()
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if num_workers < 0 or num_threads < 0 or buffer_size < 1:
        raise ValueError(f"num_workers and num_threads must be >= 0 and buffer_size >= 1, got "
                         f"{num_workers}, {num_threads}, {buffer_size}")
    read = grain.ReadOptions(num_threads=num_threads,
                             prefetch_buffer_size=max(buffer_size, num_threads))
    ds = dataset.to_iter_dataset(read)
    if num_workers:
        _absl_flags_readable()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=buffer_size))
    return iter(ds)


def _absl_flags_readable() -> None:
    """Lets grain read its absl flags' defaults in a program that never parsed absl flags.

    grain 0.2 reads ``--grain_enable_multiprocess_worker_profiling`` when it starts workers
    in a process where JAX is imported, which fails with ``UnparsedFlagAccessError`` unless
    the program ran ``absl.app`` (the tern-jax CLI, pytest and notebooks do not).
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
