"""On-device data augmentation and batching for in-memory datasets (pure JAX, jittable).

The whole training set can live in device memory as uint8; an epoch is then a
``lax.scan`` over the rows of :func:`epoch_permutation`, and each step gathers its batch,
applies :func:`augment_and_normalize` and runs the model, all inside one jitted function::

    idx = epoch_permutation(perm_key, n_train, batch_size)          # (steps, batch_size)

    def step(carry, batch_idx):
        state, key = carry
        key, aug_key = jax.random.split(key)
        x = augment_and_normalize(aug_key, train_images[batch_idx], mean, std)
        ...
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tern_jax._args import check_array, check_bool, check_float_dtype, check_int, check_key

__all__ = [
    "apply_crop_flip",
    "augment_and_normalize",
    "crop_flip_params",
    "epoch_permutation",
    "normalize",
    "random_crop_flip",
]


def _check_channel_stats(images, mean, std, func: str) -> None:
    """``mean``/``std``: one value, or one per channel of ``images``; ``std`` positive."""
    channels = images.shape[-1] if images.ndim else 1
    for name, value in (("mean", mean), ("std", std)):
        if value is None or isinstance(value, (str, bytes)):
            raise TypeError(f"{func}: {name} must be {channels} per-channel numbers in [0, 1] "
                            f"units, got {type(value).__name__} {value!r}")
        if hasattr(value, "shape"):
            size = int(np.prod(value.shape))
        elif isinstance(value, (tuple, list)):
            size = len(value)
        else:
            size = 1
        concrete = not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(value))
        if concrete:
            try:
                arr = np.asarray(value, np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"{func}: {name} must be {channels} per-channel numbers, got "
                                f"{value!r}") from None
            size = arr.size
            if name == "std" and np.any(arr <= 0):
                raise ValueError(f"{func}: std must be positive (it divides the pixels), got "
                                 f"{value!r}")
        if size not in (1, channels):
            raise ValueError(f"{func}: {name} must hold 1 or {channels} values (one per channel "
                             f"of images{tuple(images.shape)}), got {size}: {value!r}")


def _check_images(images, func: str, ndim: int | None = 4) -> None:
    check_array(images, "images", func, ndim=ndim,
                what="an (N, H, W, C) array of pixels" if ndim == 4 else "an array of pixels")


def normalize(
    images: jax.Array | np.ndarray,
    mean: Sequence[float] | jax.Array,
    std: Sequence[float] | jax.Array,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array | np.ndarray:
    """Map uint8 pixels to ``(x / 255 - mean) / std`` per channel (last axis).

    The one normalization of the data layer: on device (a JAX array, inside jit) and on the
    host (a NumPy array, in the streaming pipeline's workers) with the same float32
    arithmetic, so both paths give the same numbers.

    Args:
        images: ``(..., C)`` uint8 (or any numeric) pixels in ``0..255``.
        mean: ``C`` per-channel means in ``[0, 1]`` units.
        std: ``C`` per-channel standard deviations in ``[0, 1]`` units.
        dtype: output dtype; the arithmetic is done in float32 and then cast.

    Returns:
        Array of the same shape as ``images`` and dtype ``dtype``: a NumPy array for NumPy
        ``images``, else a JAX array.
    """
    _check_images(images, "normalize", ndim=None)
    _check_channel_stats(images, mean, std, "normalize")
    check_float_dtype(dtype, "dtype", "normalize")
    xp = np if isinstance(images, np.ndarray) else jnp
    mean_arr = xp.asarray(mean, xp.float32)
    std_arr = xp.asarray(std, xp.float32)
    x = images.astype(xp.float32) * xp.float32(1.0 / 255.0)
    return ((x - mean_arr) / std_arr).astype(dtype)


def crop_flip_params(
    rng: jax.Array, n: int, pad: int = 4, flip: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Draw the random crop offsets and flip decisions used by :func:`random_crop_flip`.

    Args:
        rng: a JAX PRNG key.
        n: number of images.
        pad: zero padding on each side; offsets lie in ``0 .. 2 * pad``.
        flip: whether to draw flips (else all ``False``).

    Returns:
        ``offsets``, int32 ``(n, 2)`` as (row, column) of the window's top-left corner in the
        padded image, and ``flips``, bool ``(n,)``, True where the image is mirrored.
    """
    check_key(rng, "rng", "crop_flip_params")
    check_int(n, "n", "crop_flip_params", minimum=0)
    check_int(pad, "pad", "crop_flip_params", minimum=0)
    check_bool(flip, "flip", "crop_flip_params")
    k_off, k_flip = jax.random.split(rng)
    offsets = jax.random.randint(k_off, (n, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    if flip:
        flips = jax.random.bernoulli(k_flip, 0.5, (n,))
    else:
        flips = jnp.zeros((n,), bool)
    return offsets, flips


def apply_crop_flip(
    images: jax.Array, offsets: jax.Array, flips: jax.Array, pad: int = 4
) -> jax.Array:
    """Zero-pad ``images`` by ``pad`` on each side, cut one window per image, maybe mirror it.

    Args:
        images: ``(N, H, W, C)`` batch (any dtype; it is kept).
        offsets: int ``(N, 2)`` top-left (row, column) of each window in the padded image,
            each in ``0 .. 2 * pad``.
        flips: bool ``(N,)``; True mirrors that image left-right (after cropping).
        pad: padding on each side.

    Returns:
        ``(N, H, W, C)`` array of the same dtype as ``images``.
    """
    func = "apply_crop_flip"
    _check_images(images, func)
    pad = check_int(pad, "pad", func, minimum=0)
    n, h, w, c = images.shape
    check_array(offsets, "offsets", func, ndim=2, what=f"an int ({n}, 2) array")
    if tuple(offsets.shape) != (n, 2) or not jnp.issubdtype(offsets.dtype, jnp.integer):
        raise ValueError(f"{func}: offsets must be an int ({n}, 2) array (one window corner per "
                         f"image), got shape {tuple(offsets.shape)}, dtype {offsets.dtype}")
    check_array(flips, "flips", func, ndim=1, what=f"a bool ({n},) array")
    if tuple(flips.shape) != (n,):
        raise ValueError(f"{func}: flips must be a bool ({n},) array (one per image), got shape "
                         f"{tuple(flips.shape)}")
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop_one(img: jax.Array, off: jax.Array) -> jax.Array:
        return lax.dynamic_slice(img, (off[0], off[1], jnp.int32(0)), (h, w, c))

    crops = jax.vmap(crop_one)(padded, offsets.astype(jnp.int32))
    return jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)


def random_crop_flip(
    rng: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True
) -> jax.Array:
    """The standard CIFAR augmentation for a whole batch.

    Each image is zero-padded by ``pad`` pixels on each side, a random window of the
    original size is cut out of it (offsets uniform in ``0 .. 2 * pad``, independently per
    image), and with probability 0.5 the window is mirrored left-right.

    Args:
        rng: a JAX PRNG key.
        images: ``(N, H, W, C)`` uint8 or float batch.
        pad: zero padding on each side.
        flip: whether to apply random horizontal flips.

    Returns:
        ``(N, H, W, C)`` array with the dtype of ``images``.
    """
    _check_images(images, "random_crop_flip")
    check_int(pad, "pad", "random_crop_flip", minimum=0)
    check_bool(flip, "flip", "random_crop_flip")
    offsets, flips = crop_flip_params(rng, images.shape[0], pad, flip)
    return apply_crop_flip(images, offsets, flips, pad)


def augment_and_normalize(
    rng: jax.Array,
    images: jax.Array,
    mean: Sequence[float] | jax.Array,
    std: Sequence[float] | jax.Array,
    pad: int = 4,
    flip: bool = True,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """:func:`random_crop_flip` on uint8 pixels, then :func:`normalize`.

    The padding is zeros in pixel space (black), as with torchvision's
    ``RandomCrop(32, padding=4)`` followed by ``Normalize``.  ``pad=0`` with ``flip=False``
    reduces to plain normalization.

    Returns:
        ``(N, H, W, C)`` array of dtype ``dtype``.
    """
    func = "augment_and_normalize"
    check_key(rng, "rng", func)
    _check_images(images, func)
    pad = check_int(pad, "pad", func, minimum=0)
    flip = check_bool(flip, "flip", func)
    _check_channel_stats(images, mean, std, func)
    check_float_dtype(dtype, "dtype", func)
    if pad > 0 or flip:
        images = random_crop_flip(rng, images, pad=pad, flip=flip)
    return normalize(images, mean, std, dtype)


def epoch_permutation(rng: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Shuffle ``0 .. n-1`` and cut it into full batches (the remainder is dropped).

    Args:
        rng: a JAX PRNG key.
        n: number of examples (static).
        batch_size: examples per batch (static); must not exceed ``n``.

    Returns:
        int32 array ``(n // batch_size, batch_size)``; every index appears at most once.
    """
    check_key(rng, "rng", "epoch_permutation")
    n = check_int(n, "n", "epoch_permutation", minimum=1)
    batch_size = check_int(batch_size, "batch_size", "epoch_permutation", minimum=1)
    if batch_size > n:
        raise ValueError(f"epoch_permutation: batch_size must be at most n={n} (the number of "
                         f"examples), got batch_size={batch_size}")
    steps = n // batch_size
    perm = jax.random.permutation(rng, n)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
