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

from tern_jax._args import check_int

__all__ = ["SUPER_BLOCK", "values_per_word", "bits_per_weight", "pack", "unpack",
           "packed_nbytes"]

_WORD_BITS = 64
#: The largest alphabet: :func:`unpack` returns the codes as uint16.
MAX_LEVELS = 2**16
#: llama.cpp's super-block (``QK_K``): the values of a row one ``TQ1_0``/``TQ2_0`` block holds
#: with one scale, and the features of a token one ``Q8_K`` scale covers. The GGUF export
#: (:mod:`tern_jax.export`) and the ``"int8_block"`` activations (:mod:`tern_jax.activations`)
#: both use it.
SUPER_BLOCK = 256


def _levels(levels, func: str) -> int:
    return check_int(levels, "levels", func, minimum=2, maximum=MAX_LEVELS)


def values_per_word(levels: int) -> int:
    """The largest ``k`` with ``levels**k <= 2**64``: how many codes one uint64 word holds.

    ``levels`` is an integer in ``[2, 65536]`` (``2·t_ex + 1`` for a ternary layer).
    """
    levels = _levels(levels, "values_per_word")
    k = 0
    while int(levels) ** (k + 1) <= 2**_WORD_BITS:
        k += 1
    return k


def bits_per_weight(levels: int) -> float:
    """Storage cost in bits per code for an alphabet of ``levels`` values (``64 / k``)."""
    return _WORD_BITS / values_per_word(_levels(levels, "bits_per_weight"))


def packed_nbytes(count: int, levels: int) -> int:
    """Bytes that :func:`pack` uses for ``count`` codes (an integer >= 0)."""
    count = check_int(count, "count", "packed_nbytes", minimum=0)
    k = values_per_word(_levels(levels, "packed_nbytes"))
    return 8 * (-(-count // k))


def pack(values: np.ndarray, levels: int) -> np.ndarray:
    """Packs integer codes in ``[0, levels)`` (any shape) into a flat uint64 array.

    The shape is not stored: keep it beside the words and give ``count`` to :func:`unpack`.
    ``values`` is an integer array (NumPy, JAX, or a nested list of ints).
    """
    levels = _levels(levels, "pack")
    if values is None or isinstance(values, (str, bytes)):
        raise TypeError(f"pack: values must be an array of integer codes, got "
                        f"{type(values).__name__}")
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"pack: values must be integer codes (pack needs integer codes), got "
                        f"dtype {values.dtype}")
    k = values_per_word(levels)
    flat = values.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= levels):
        raise ValueError(
            f"pack: values must be codes in [0, {levels}), got values in [{flat.min()}, "
            f"{flat.max()}] (shift signed levels by +t_ex first)"
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
    """Inverse of :func:`pack`: the first ``count`` codes as a flat uint8 (or uint16) array.

    ``words`` is the uint64 array :func:`pack` returned; ``count`` an integer in
    ``[0, words.size · values_per_word(levels)]``.
    """
    levels = _levels(levels, "unpack")
    count = check_int(count, "count", "unpack", minimum=0)
    if not (hasattr(words, "dtype") and words.dtype == np.uint64):
        got = f"dtype {words.dtype}" if hasattr(words, "dtype") else type(words).__name__
        raise TypeError(f"unpack: words must be the uint64 array pack returned (unpack needs "
                        f"uint64 words), got {got}")
    words = np.asarray(words)
    k = values_per_word(levels)
    if count > words.size * k:
        raise ValueError(f"unpack: count={count} does not fit in {words.size} words of {k} "
                         "codes")
    if words.size and levels ** k < 2**_WORD_BITS and words.max() >= np.uint64(levels**k):
        raise ValueError("packed words hold values out of range: the data is corrupt")
    out = np.empty((words.size, k), np.uint8 if levels <= 256 else np.uint16)
    rest = words.reshape(-1).copy()
    base = np.uint64(levels)
    for j in range(k):
        out[:, j] = rest % base
        rest //= base
    return out.reshape(-1)[:count]
