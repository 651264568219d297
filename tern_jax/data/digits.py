"""scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images) as an ArrayDataset.

Tiny and always available offline: handy for smoke tests and quick experiments.
"""

from __future__ import annotations

import numpy as np

from tern_jax._args import check_fraction, check_int
from tern_jax.data.arrays import ArrayDataset

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "load_digits"]


#: Per-channel mean and std of the default training split (``test_fraction=0.2``, ``seed=0``)
#: in ``[0, 1]`` units: what :func:`load_digits` computes for it, declared for the registry.
DIGITS_MEAN: tuple[float] = (0.305433688785187,)
DIGITS_STD: tuple[float] = (0.37595716498559817,)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """Load the UCI/scikit-learn digits with a fixed, seeded, stratified train/test split.

    Pixel values ``0..16`` are scaled to uint8 ``0..255``; images are ``(N, 8, 8, 1)``.
    The mean and std are computed from the training split, in ``[0, 1]`` units.

    Args:
        test_fraction: fraction of the 1,797 images held out for testing, in ``(0, 1)``.
        seed: seed of the split; the same seed always gives the same split.

    Returns:
        An :class:`ArrayDataset` named ``"digits"`` with 10 classes.
    """
    test_fraction = check_fraction(test_fraction, "test_fraction", "load_digits")
    seed = check_int(seed, "seed", "load_digits", minimum=0, maximum=2**32 - 1)
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    images = np.rint(np.asarray(bunch.images, np.float64) * (255.0 / 16.0))
    images = np.clip(images, 0, 255).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    pixels = x_tr.astype(np.float64) / 255.0
    mean = tuple(float(v) for v in pixels.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in pixels.std(axis=(0, 1, 2)))
    return ArrayDataset(
        train_images=np.ascontiguousarray(x_tr),
        train_labels=np.ascontiguousarray(y_tr),
        test_images=np.ascontiguousarray(x_te),
        test_labels=np.ascontiguousarray(y_te),
        num_classes=10,
        mean=mean,
        std=std,
        name="digits",
    )
