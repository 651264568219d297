"""Dense storage of small-alphabet integer codes (NumPy, host side).

A ternary layer with residual expansion ``t_ex`` takes ``L = 2·t_ex + 1`` distinct values per
weight (its signed level, see :mod:`tern_jax.core`). Storing each in whole bits wastes space
(the paper counts 2 bits per ternary weight, 4 for ``t_ex = 2``). Here ``k`` values are
written as the digits of one base-``L`` number in a 64-bit word, with ``k`` the largest integer
such that ``L**k <= 2**64``:

==========  ======  ===========  ==================
 levels L    t_ex    per word k   bits per weight
==========  ======  ===========  ==================
 3           1       40           1.600 (paper: 2)
 5           2       27           2.370 (paper: 4)
 7           3       22           2.909
 9           4       20           3.200 (paper: 8)
==========  ======  ===========  ==================

(``log2 L`` is the bound: 1.585, 2.322, 2.807, 3.170.) Words are stored little-endian.
"""

from __future__ import annotations

import numpy as np

__all__ = ["values_per_word", "bits_per_weight", "pack", "unpack", "packed_nbytes"]

_WORD_BITS = 64


def values_per_word(levels: int) -> int:
    """The largest ``k`` with ``levels**k <= 2**64``: how many codes one uint64 word holds."""
    if not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    k = 0
    while int(levels) ** (k + 1) <= 2**_WORD_BITS:
        k += 1
    return k


def bits_per_weight(levels: int) -> float:
    """Storage cost in bits per code for an alphabet of ``levels`` values (``64 / k``)."""
    return _WORD_BITS / values_per_word(levels)


def packed_nbytes(count: int, levels: int) -> int:
    """Bytes that :func:`pack` uses for ``count`` codes."""
    k = values_per_word(levels)
    return 8 * (-(-int(count) // k))


def pack(values: np.ndarray, levels: int) -> np.ndarray:
    """Packs integer codes in ``[0, levels)`` (any shape) into a flat uint64 array.

    The shape is not stored: keep it beside the words and give ``count`` to :func:`unpack`.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"pack needs integer codes, got dtype {values.dtype}")
    k = values_per_word(levels)
    flat = values.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= levels):
        raise ValueError(
            f"codes must lie in [0, {levels}); got values in [{flat.min()}, {flat.max()}] "
            "(shift signed levels by +t_ex first)"
        )
    n_words = -(-flat.size // k)
    padded = np.zeros(n_words * k, np.uint64)
    padded[: flat.size] = flat.astype(np.uint64)
    digits = padded.reshape(n_words, k)
    words = np.zeros(n_words, np.uint64)
    # Horner's rule from the most significant digit; every partial value is < levels**k,
    # which fits in 64 bits by the choice of k, so nothing wraps.
    base = np.uint64(levels)
    for j in range(k - 1, -1, -1):
        words = words * base + digits[:, j]
    return words.astype("<u8")


def unpack(words: np.ndarray, levels: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` codes as a flat uint8 (or uint16) array."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise TypeError(f"unpack needs uint64 words, got dtype {words.dtype}")
    k = values_per_word(levels)
    if count < 0 or count > words.size * k:
        raise ValueError(f"count={count} does not fit in {words.size} words of {k} codes")
    if words.size and levels ** k < 2**_WORD_BITS and words.max() >= np.uint64(levels**k):
        raise ValueError("packed words hold values out of range: the data is corrupt")
    out = np.empty((words.size, k), np.uint8 if levels <= 256 else np.uint16)
    rest = words.reshape(-1).copy()
    base = np.uint64(levels)
    for j in range(k):
        out[:, j] = rest % base
        rest //= base
    return out.reshape(-1)[:count]
