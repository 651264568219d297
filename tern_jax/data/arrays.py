"""In-memory image-classification datasets held as NumPy arrays."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tern_jax._args import check_int, check_optional_int


class ArrayDataset(NamedTuple):
    """A small image-classification dataset that fits in (host or device) memory.

    Attributes:
        train_images: ``(N_train, H, W, C)`` uint8 images, NHWC.
        train_labels: ``(N_train,)`` int32 class indices.
        test_images: ``(N_test, H, W, C)`` uint8 images, NHWC.
        test_labels: ``(N_test,)`` int32 class indices.
        num_classes: number of classes; labels lie in ``0 .. num_classes - 1``.
        mean: per-channel mean of the pixels, in ``[0, 1]`` units (pixel / 255).
        std: per-channel standard deviation of the pixels, in ``[0, 1]`` units.
        name: a short name for the dataset, e.g. ``"cifar10"``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        h, w, c = self.train_images.shape[1:]
        return int(h), int(w), int(c)

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.train_images.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.test_images.shape[0])


def _pick(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``min(n, n_total)`` distinct examples drawn at random (all if None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def subset(
    ds: ArrayDataset,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> ArrayDataset:
    """Return a random subset of ``ds`` (uniform, not stratified; original order kept).

    Args:
        ds: the dataset to subsample.
        n_train: number of training examples to keep; ``None`` (or more than available)
            keeps them all.
        n_test: number of test examples to keep; ``None`` (or more than available) keeps all.
        seed: seed of the NumPy generator that chooses the examples.

    Returns:
        A new :class:`ArrayDataset` with the same ``num_classes``, ``mean``, ``std`` and
        ``name`` as ``ds``.

    Raises:
        TypeError: ``ds`` is not an :class:`ArrayDataset`, or a size or seed is not an integer.
        ValueError: a size below 1 (``None`` keeps everything) or a negative seed.
    """
    if not isinstance(ds, ArrayDataset):
        raise TypeError(f"subset: ds must be an ArrayDataset (e.g. from load_dataset), got "
                        f"{type(ds).__name__}")
    n_train = check_optional_int(n_train, "n_train", "subset", minimum=1)
    n_test = check_optional_int(n_test, "n_test", "subset", minimum=1)
    seed = check_int(seed, "seed", "subset", minimum=0)
    rng = np.random.default_rng(seed)
    tr = _pick(ds.num_train, n_train, rng)
    te = _pick(ds.num_test, n_test, rng)
    return ds._replace(
        train_images=ds.train_images[tr],
        train_labels=ds.train_labels[tr],
        test_images=ds.test_images[te],
        test_labels=ds.test_labels[te],
    )
