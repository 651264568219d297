"""Host-side batch helpers: padding the last evaluation batch, device prefetch.

The in-memory datasets (CIFAR-10, digits) normally live on the device and are batched there;
these helpers serve the streamed path (ImageNet, or any dataset with ``stream=True``), where
the host produces batches and the accelerator consumes them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["pad_batch", "prefetch_to_device"]


def pad_batch(images: np.ndarray, labels: np.ndarray, size: int):
    """Pads a short batch with zeros to ``size`` examples: ``(images, labels, mask)``.

    Evaluation compiles one batch shape; ``mask`` (float32, 1 for real examples) keeps the
    padding out of every sum.
    """
    n = len(labels)
    if n > size:
        raise ValueError(f"a batch of {n} examples does not fit the batch size {size}")
    pad = size - n
    if pad:
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    mask = (np.arange(size) < n).astype(np.float32)
    return images, labels.astype(np.int32), mask


def prefetch_to_device(
    iterator: Iterable[Any], size: int = 2, sharding: Any = None
) -> Iterator[Any]:
    """Keep ``size`` batches (any pytrees) ahead on device with ``jax.device_put``.

    ``device_put`` is asynchronous, so the host-to-device copies of upcoming batches
    overlap with the computation on the current one.

    Args:
        iterator: host batches (pytrees of NumPy arrays).
        size: number of batches transferred ahead (at least 1).
        sharding: optional ``jax.sharding.Sharding`` (or pytree of them) for ``device_put``;
            ``None`` puts the batch on the default device.

    Yields:
        The same batches as ``jax.Array`` pytrees, in order.
    """
    import jax

    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    queue: collections.deque[Any] = collections.deque()
    it = iter(iterator)

    def enqueue(n: int) -> None:
        for _ in range(n):
            try:
                batch = next(it)
            except StopIteration:
                return
            queue.append(jax.device_put(batch, sharding))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
