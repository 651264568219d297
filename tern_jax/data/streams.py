"""Host-side batch helpers: padding the last evaluation batch, evaluation batches on device.

The in-memory datasets (CIFAR-10, digits) normally live on the device and are batched there;
these helpers serve the streamed path (ImageNet, or any dataset with ``stream=True``), where
the host produces batches and the accelerator consumes them. Batches are prefetched in one
place: the grain iterator of :func:`tern_jax.data.pipeline.batch_iterator`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["device_eval_batches", "iterate_batches", "pad_batch", "pad_examples"]


def pad_examples(arrays: dict, size: int) -> tuple[dict, np.ndarray]:
    """Pads every array of a batch (same leading length) with zeros to ``size`` examples.

    Returns ``(padded, mask)``: evaluation compiles one batch shape, and ``mask`` (float32, 1
    for real examples) keeps the padding out of every sum.
    """
    n = len(next(iter(arrays.values())))
    if n > size:
        raise ValueError(f"a batch of {n} examples does not fit the batch size {size}")
    padded = {k: np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)])
              for k, a in arrays.items()}
    return padded, (np.arange(size) < n).astype(np.float32)


def pad_batch(images: np.ndarray, labels: np.ndarray, size: int):
    """:func:`pad_examples` of an image batch: ``(images, labels (int32), mask)``."""
    padded, mask = pad_examples({"image": images, "label": labels}, size)
    return padded["image"], padded["label"].astype(np.int32), mask


def device_eval_batches(arrays: dict, batch_size: int, sharding) -> tuple[dict, Any]:
    """A whole evaluation set as padded batches on the devices: ``(batches, mask)``.

    Every array gains a leading batch axis, ``(num_batches, size, ...)``, with
    ``size = min(batch_size, n)``; iterate with :func:`iterate_batches`.
    """
    import jax

    n = len(next(iter(arrays.values())))
    size = min(batch_size, n)
    count = -(-n // size)
    padded, mask = pad_examples(arrays, count * size)
    batches = {k: a.reshape((count, size) + a.shape[1:]) for k, a in padded.items()}
    return jax.device_put((batches, mask.reshape(count, size)), sharding)


def iterate_batches(batches: dict, mask) -> Iterator[tuple[dict, Any]]:
    """``(batch, mask)`` pairs of :func:`device_eval_batches`' result, in order."""
    for b in range(mask.shape[0]):
        yield {k: a[b] for k, a in batches.items()}, mask[b]
