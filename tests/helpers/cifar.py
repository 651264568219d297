"""A fake ``cifar-10-batches-py`` folder for tests (the format torchvision and Keras download).

Tests import it as ``from helpers.cifar import write_cifar_batches`` (``tests/`` is on the
path under pytest).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tern_jax.data.cifar10 import CIFAR10_CLASSES, TEST_FILE, TRAIN_FILES


def _pickled(entry: dict, bytes_keys: bool) -> bytes:
    if bytes_keys:  # like the original Python-2 pickles read with encoding="bytes"
        entry = {k.encode("ascii"): v for k, v in entry.items()}
    return pickle.dumps(entry, protocol=2)


def write_cifar_batches(folder, images, labels, *, per_batch: int | None = None,
                        bytes_keys: bool = False) -> Path:
    """Writes ``images`` (N, 32, 32, 3) uint8 and ``labels`` (N,) as a batches folder.

    The first ``5 * per_batch`` images (default ``N // 6``) go to ``data_batch_1..5`` in
    order and the rest to ``test_batch``, so reading it back gives ``train = images[:5 *
    per_batch]`` and ``test = images[5 * per_batch:]``.
    """
    images, labels = np.asarray(images, np.uint8), np.asarray(labels)
    n = images.shape[0]
    assert images.shape[1:] == (32, 32, 3) and labels.shape == (n,), (images.shape, labels.shape)
    per_batch = n // 6 if per_batch is None else per_batch
    assert 1 <= per_batch and 5 * per_batch < n, (per_batch, n)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(n, -1))  # R, G, B planes

    def write(name: str, lo: int, hi: int, batch_label: str) -> None:
        entry = {"batch_label": batch_label, "labels": [int(v) for v in labels[lo:hi]],
                 "data": rows[lo:hi], "filenames": [f"image_{i:05d}.png" for i in range(lo, hi)]}
        (out / name).write_bytes(_pickled(entry, bytes_keys))

    for b, name in enumerate(TRAIN_FILES):
        write(name, b * per_batch, (b + 1) * per_batch, f"training batch {b + 1} of 5")
    write(TEST_FILE, 5 * per_batch, n, "testing batch 1 of 1")
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch,
            "num_vis": rows.shape[1]}
    (out / "batches.meta").write_bytes(_pickled(meta, bytes_keys))
    return out
