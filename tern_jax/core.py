"""Ternarization of single arrays: the paper's quantizer, its variants, residual expansion.

This module is the bottom of the package: plain functions over ``jax.Array``, no Flax,
no I/O. Everything above it (rules over parameter pytrees, summaries, checkpoints,
training) calls these functions. ``docs/method.md`` states the method in full.

Notation (He, Gong & Fan, WACV 2019, section 3):

* ``method="paper"``:  ``Δ = δ·max|W|``, ``α = mean(|W_i| : |W_i| ≥ Δ)``,
  ``Ŵ_i = α·sign(W_i)·[|W_i| ≥ Δ]`` with ``δ = 0.05``.
* ``method="twn"`` (Li & Liu 2016, Ternary Weight Networks): ``Δ = δ·mean|W|`` with
  ``δ = 0.7``, ``α = mean(|W_i| : |W_i| > Δ)``.
* ``method="absmean"`` (BitNet b1.58): ``α = mean|W|``, codes ``clip(round(W/α), -1, 1)``.

Backward (straight-through estimator, all methods): ``∂L/∂W = ∂L/∂Ŵ · [|W| < 1]``; no
gradient flows through ``Δ`` or ``α``.

Residual expansion (REL) ternarizes the same latent ``W`` ``t_ex`` times with growing
thresholds ``δ_k`` (paper: ``0.05·k``), each branch with its own ``α_k``. Because the
thresholds nest, the branch codes are determined by one signed *level*
``m_i = sign(W_i)·#{k : |W_i| ≥ Δ_k}`` in ``[-t_ex, t_ex]``: branch ``k`` (1-based) has code
``sign(m_i)·[|m_i| ≥ k]``. :func:`encode` returns these levels with the scales as one
:class:`TernaryCodes`; :func:`decode` rebuilds the kernels; :mod:`tern_jax.packing` stores
the levels.

Scales are per tensor (``axis=None``, the paper) or per channel: ``axis`` names the axis (or
axes) that keep their own ``Δ``/``α``, e.g. ``-1`` for the output channels of a Flax kernel or
``1`` for one scale per head of an attention kernel ``(d_model, heads, head_dim)``, or
``(1, 2)`` for one per output feature (head, feature) of that kernel.

Edge cases the paper leaves open, defined here:

* an all-zero tensor (or channel) gives zeros: its codes are 0 and its scale is 0, never NaN;
* a concrete weight (outside ``jit``) holding NaN or ±Inf is refused, naming how many values
  are not finite; under ``jit`` nothing can be looked at, so such a tensor (or channel) gives
  NaN everywhere in it and a NaN scale: a training loss turns NaN and the trainer's NaN guard
  stops with a message (naming the parameter) instead of silently training on garbage;
* an ``axis`` set naming every axis of the weight is refused: each weight would be its own
  channel with its own scale, and the "ternarized" weight would be the weight itself.

This file is longer than the project's ~350-line guide on purpose: the public quantizers share
one checked entry (``_checked``), the quantizer proper (``_levels_and_scales``) and its
straight-through gradient (``_ternary_stack``), which stay private to one module so that no
caller can reach the quantizer without its argument checks.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "METHODS",
    "DEFAULT_THRESHOLDS",
    "TernaryCodes",
    "resolve_thresholds",
    "normalize_axis",
    "encode",
    "decode",
    "ternary_codes",
    "expansion_codes",
    "dequantize",
    "branch_codes",
    "ternarize",
    "expand",
    "fold",
    "expanded_apply",
    "ste_mask",
]

#: Ternarization methods understood by :func:`ternarize` and :class:`tern_jax.Rule`.
METHODS = ("paper", "twn", "absmean")

#: Default threshold factor per method: the paper's δ = 0.05 (of max|W|), TWN's 0.7 (of
#: mean|W|). ``absmean`` has no threshold (its cut is 0.5·mean|W| by rounding).
DEFAULT_THRESHOLDS = {"paper": 0.05, "twn": 0.7, "absmean": None}

Axis = int | tuple[int, ...] | None


class TernaryCodes(NamedTuple):
    """The stored form of a ternarized weight: ``Ŵ = Σ_k scales[k] · code_k(levels)``.

    Attributes:
      levels: int8 signed levels in ``[-t_ex, t_ex]``, the weight's shape (``t_ex = 1``: the
        ternary codes themselves, in {-1, 0, 1}).
      scales: float32 of shape ``(t_ex, *broadcast)``: one ``α_k`` per branch, with
        ``levels.ndim`` trailing axes of size 1 except the channel axes of a per-channel
        quantizer. Always this layout, per tensor or per channel, whatever ``t_ex``.
    """

    levels: jax.Array
    scales: jax.Array

    @property
    def t_ex(self) -> int:
        """Number of expansion branches (``2·t_ex + 1`` levels)."""
        return int(self.scales.shape[0])


def _check_method(method) -> None:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"unknown ternarization method {method!r}; use one of {METHODS} "
            "(or method=None in a Rule to keep a weight in full precision)"
        )


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool: the package's one integer test.

    Defined here because this module loads alone (nothing of the package above it);
    :mod:`tern_jax._args` re-exports it for every other module.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_threshold_values(thresholds, method: str) -> tuple[float, ...]:
    if isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool):
        thresholds = (float(thresholds),)
    if isinstance(thresholds, (str, bytes, bool)) or thresholds is None:
        raise ValueError(f"thresholds must be a float or a sequence of floats, got {thresholds!r}")
    try:
        values = tuple(thresholds)
    except TypeError as e:
        raise ValueError(
            f"thresholds must be a float or a sequence of floats, got {thresholds!r}"
        ) from e
    if any(isinstance(t, bool) or not isinstance(t, numbers.Real) for t in values):
        raise ValueError(f"thresholds must be a float or a sequence of floats, got {thresholds!r}")
    values = tuple(float(t) for t in values)
    if not values:
        raise ValueError("thresholds must not be empty; give at least one value in (0, 1)")
    for t in values:
        if not 0.0 < t < 1.0:
            raise ValueError(
                f"threshold {t} is outside (0, 1); the threshold is a fraction of "
                f"{'max' if method == 'paper' else 'mean'}|W| (paper default 0.05)"
            )
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(
            f"thresholds {values} are not strictly increasing; residual expansion needs "
            "nested thresholds such as (0.05, 0.1)"
        )
    return values


def _multiples(base: float, t_ex: int) -> tuple[float, ...]:
    # Rounded so that 0.05*3 reads 0.15, not 0.15000000000000002.
    return tuple(round(base * k, 12) for k in range(1, t_ex + 1))


def resolve_thresholds(
    method: str = "paper",
    threshold: float | None = None,
    thresholds: Sequence[float] | float | None = None,
    t_ex: int | None = None,
) -> tuple[float, ...] | None:
    """The per-branch thresholds ``(δ_1, ..., δ_t_ex)`` a quantizer uses; ``None`` for absmean.

    The one place that turns the ways of naming thresholds into a checked tuple:

    * ``thresholds`` given: used as they are (strictly increasing, each in (0, 1));
      ``t_ex``, if given, must equal their number;
    * else ``threshold`` (the base ``δ``) gives ``δ_k = k·δ`` for ``k = 1..t_ex``;
    * else the method's default ``δ`` does (paper ``0.05, 0.1, ...``; TWN ``0.7``).

    Residual expansion (``t_ex > 1``) is defined for ``method="paper"`` only; ``absmean`` takes
    no threshold. Raises ``ValueError`` naming the fix.
    """
    _check_method(method)
    if t_ex is not None and (not is_int(t_ex) or t_ex < 1):
        raise ValueError(f"t_ex must be a positive integer, got {t_ex!r}")
    if method == "absmean":
        if threshold is not None or thresholds is not None:
            raise ValueError("method 'absmean' takes no threshold; leave threshold=None")
        if t_ex not in (None, 1):
            raise ValueError("method 'absmean' supports t_ex=1 only; use method='paper'")
        return None
    if method != "paper" and (t_ex or 1) > 1:
        raise ValueError(
            f"residual expansion (t_ex={t_ex}) is defined for method='paper' only; "
            "use method='paper' or t_ex=1"
        )
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, numbers.Real)):
        raise ValueError(f"threshold must be one float in (0, 1) (the base δ), got {threshold!r}; "
                         "pass several per-branch values as thresholds=")
    if thresholds is not None:
        resolved = _check_threshold_values(thresholds, method)
        if t_ex is not None and t_ex not in (1, len(resolved)):
            raise ValueError(
                f"t_ex={t_ex} disagrees with {len(resolved)} thresholds; give one of them"
            )
        # a consistent pair (as dataclasses.replace of a resolved Rule makes) is accepted
        if threshold is not None and _multiples(
                _check_threshold_values(threshold, method)[0], len(resolved)) != resolved:
            raise ValueError("give threshold or thresholds, not both")
    else:
        base = DEFAULT_THRESHOLDS[method] if threshold is None else float(threshold)
        _check_threshold_values(base, method)
        multiples = _multiples(base, t_ex or 1)
        if multiples[-1] >= 1.0:  # name the value given, not the derived δ_k
            given = f"the default threshold {base}" if threshold is None else f"threshold={base}"
            raise ValueError(
                f"{given} with t_ex={t_ex} is too large: branch k uses k·threshold, so branch "
                f"{t_ex} would need {multiples[-1]:g}, and every threshold must lie in (0, 1); "
                f"give threshold below {1 / t_ex:.4g}, fewer branches, or thresholds= explicitly"
            )
        resolved = _check_threshold_values(multiples, method)
    if method != "paper" and len(resolved) > 1:
        raise ValueError(
            f"residual expansion ({len(resolved)} thresholds) is defined for method='paper' "
            "only; give one threshold or use method='paper'"
        )
    return resolved


def normalize_axis(axis, ndim: int | None = None, *,
                   shape: Sequence[int] | None = None) -> int | tuple[int, ...] | None:
    """Checks a channel ``axis`` (``None``, an int, or a tuple of distinct ints).

    With ``ndim`` (or the weight's ``shape``, which gives ``ndim`` and names the weight in
    messages) the axes are also range-checked and returned non-negative and sorted (a tuple
    for several axes, an int for one), and a set naming every axis is refused: it leaves no
    weight to share a scale with. Without either the value is only type-checked.
    """
    if shape is not None:
        ndim = len(shape)
    if axis is None:
        return None
    axes = axis if isinstance(axis, tuple) else (axis,)
    if isinstance(axis, list):
        axes = tuple(axis)
    if not axes or not all(is_int(a) for a in axes):
        raise TypeError(
            f"axis must be None, an int or a tuple of ints, got {axis!r}; pass the "
            "output-channel axis (-1 for Flax Conv/Dense kernels), a tuple such as (1, 2) for "
            "one scale per (head, feature) of an attention kernel, or None for one per tensor"
        )
    if ndim is None:
        return int(axes[0]) if len(axes) == 1 else tuple(int(a) for a in axes)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"axis={a} is out of range for a weight of rank {ndim}; pass the output-channel "
                "axis (-1 for Flax Conv/Dense kernels) or None for one scale per tensor"
            )
    fixed = tuple(sorted({int(a) % ndim for a in axes}))
    if len(fixed) != len(axes):
        raise ValueError(f"axis={axis!r} names the same axis twice; give distinct axes")
    if len(fixed) == ndim:
        weight = f"the weight of shape {tuple(shape)}" if shape is not None else \
            f"a weight of rank {ndim}"
        raise ValueError(
            f"axis={axis!r} names every axis of {weight}, so each weight would be its own "
            "channel with its own scale and come back unchanged; leave at least one axis out to "
            "share a scale: the output-channel axis (-1 for Flax Conv/Dense kernels), or None "
            "for one scale per tensor"
        )
    return fixed[0] if len(fixed) == 1 else fixed


def _reduction_axes(ndim: int, axis) -> tuple[int, ...]:
    """Axes the statistics reduce over: all (per tensor) or all but the channel axes."""
    if axis is None:
        return tuple(range(ndim))
    kept = axis if isinstance(axis, tuple) else (axis,)
    return tuple(a for a in range(ndim) if a not in kept)


def _check_weight(w) -> jax.Array:
    if isinstance(w, (bool, str, bytes)) or w is None:
        raise TypeError(f"w must be a floating-point array, got {type(w).__name__}: {w!r}")
    try:
        w = jnp.asarray(w)
    except TypeError as e:
        raise TypeError(f"w must be a floating-point array, got {type(w).__name__}") from e
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"ternarization needs a floating-point weight, got dtype {w.dtype}; cast it with "
            ".astype(jnp.float32) or exclude it from the rules"
        )
    if w.ndim == 0:
        raise ValueError("ternarization needs a weight with at least one dimension, got a scalar")
    if w.size == 0:
        raise ValueError(f"w has shape {w.shape} with no elements; a weight to ternarize needs "
                         "at least one value")
    bad = non_finite(w)
    if bad is not None:
        raise ValueError(f"w holds {bad}; {NON_FINITE_FIX}")
    return w


#: What to do about non-finite weights, for every message that refuses them.
NON_FINITE_FIX = ("its scale would be NaN and every weight sharing it NaN. Give finite weights: "
                  "restore an earlier checkpoint, or find the step or file that made them")


@jax.jit
def _all_finite(w: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(w))


def non_finite(w) -> str | None:
    """How many values of a concrete float array are NaN or ±Inf, as a phrase such as
    ``"2 NaN and 1 inf values (of 12)"``; ``None`` when all are finite, and for a traced
    ``w`` (under ``jit``, ``grad`` or ``vmap`` there is no value to look at)."""
    if isinstance(w, jax.core.Tracer):
        return None
    if isinstance(w, jax.Array) and not w.is_fully_addressable:
        return None  # another process holds part of it: not this one's to read
    try:
        w = jnp.asarray(w)
    except TypeError:
        return None
    if not jnp.issubdtype(w.dtype, jnp.inexact) or bool(_all_finite(w)):
        return None  # one scalar back from the device; the counts only when something is wrong
    counts = [(int(jnp.sum(jnp.isnan(w))), "NaN"), (int(jnp.sum(jnp.isinf(w))), "inf")]
    parts = [f"{n} {name}" for n, name in counts if n]
    total = sum(n for n, _ in counts)
    return f"{' and '.join(parts)} value{'s' if total > 1 else ''} (of {w.size})"


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _levels_and_scales(
    w: jax.Array,
    thresholds: tuple[float, ...] | None,
    axis,
    method: str,
    threshold_scale: jax.Array | None = None,
) -> TernaryCodes:
    """The quantizer proper, on checked arguments (``axis`` normalized by ``normalize_axis``).

    The statistics are computed in float32 whatever the weight's dtype. ``threshold_scale``
    (a traced scalar, or ``None`` for 1) multiplies every ``Δ_k``; ``absmean`` ignores it.
    """
    a = jnp.abs(w.astype(jnp.float32))
    axes = _reduction_axes(w.ndim, axis)
    sign = jnp.sign(w).astype(jnp.int8)
    finite = jnp.all(jnp.isfinite(a), axis=axes, keepdims=True)
    if method == "absmean":
        scale = jnp.mean(a, axis=axes, keepdims=True)
        safe = jnp.where(scale > 0, scale, 1.0)
        levels = jnp.clip(jnp.round(w.astype(jnp.float32) / safe), -1, 1).astype(jnp.int8)
        levels = jnp.where(scale > 0, levels, 0).astype(jnp.int8)
        scales = scale[None]
    else:
        if method == "paper":
            reference = jnp.max(a, axis=axes, keepdims=True)
        else:  # twn
            reference = jnp.mean(a, axis=axes, keepdims=True)
        count = jnp.zeros(w.shape, jnp.int8)
        scales = []
        for delta in thresholds:
            cut = delta * reference
            if threshold_scale is not None:
                cut = cut * jnp.asarray(threshold_scale, jnp.float32)
            # The paper keeps |W| >= Δ; TWN keeps |W| > Δ. Requiring |W| > 0 as well makes an
            # all-zero tensor (Δ = 0) give zeros instead of a 0/0 scale.
            keep = (a > cut) if method == "twn" else (a >= cut)
            keep = keep & (a > 0)
            n = jnp.sum(keep, axis=axes, keepdims=True)
            total = jnp.sum(jnp.where(keep, a, 0.0), axis=axes, keepdims=True)
            scales.append(jnp.where(n > 0, total / jnp.maximum(n, 1), 0.0))
            count = count + keep.astype(jnp.int8)
        levels = (sign * count).astype(jnp.int8)
        scales = jnp.stack(scales)
    scales = jnp.where(finite[None], scales, jnp.nan)
    levels = jnp.where(finite, levels, 0).astype(jnp.int8)
    return TernaryCodes(levels, scales)


def _check_threshold_scale(threshold_scale):
    """``None``, or a float scalar (Python number or a 0-d array, possibly traced)."""
    if threshold_scale is None:
        return None
    if isinstance(threshold_scale, bool):
        raise TypeError("threshold_scale must be a number in [0, 1] or None, got a bool")
    if isinstance(threshold_scale, numbers.Real):
        if not 0.0 <= threshold_scale <= 1.0:
            raise ValueError(
                f"threshold_scale={threshold_scale} is outside [0, 1]; it multiplies every "
                "threshold during a warm-up (0: keep every nonzero weight, 1: the full Δ)"
            )
        return jnp.asarray(threshold_scale, jnp.float32)
    try:
        scale = jnp.asarray(threshold_scale)
    except TypeError as e:
        raise TypeError(f"threshold_scale must be a float scalar in [0, 1] or None, got "
                        f"{type(threshold_scale).__name__}") from e
    if scale.ndim != 0 or not jnp.issubdtype(scale.dtype, jnp.floating):
        raise ValueError(
            f"threshold_scale must be a float scalar, got shape {scale.shape} dtype "
            f"{scale.dtype}; pass e.g. jnp.float32(0.5)"
        )
    return scale.astype(jnp.float32)


def _checked(w, method, threshold, thresholds, t_ex, axis):
    """The one entry every public quantizer goes through: all arguments checked here."""
    w = _check_weight(w)
    resolved = resolve_thresholds(method, threshold, thresholds, t_ex)
    return w, resolved, normalize_axis(axis, shape=w.shape)


def encode(
    w: jax.Array,
    *,
    threshold: float | None = None,
    thresholds: Sequence[float] | None = None,
    t_ex: int | None = None,
    axis: Axis = None,
    method: str = "paper",
) -> TernaryCodes:
    """The signed levels and per-branch scales of ``w``: what a ternary checkpoint stores.

    Thresholds are named as in :func:`resolve_thresholds` (default: the method's ``δ``,
    ``t_ex = 1``). ``decode(encode(w, ...))`` equals ``ternarize(w, ...)`` bit for bit, and
    ``decode(..., fold=False)`` equals :func:`expand`. No gradient (use :func:`ternarize` in a
    loss).
    """
    w, resolved, axis = _checked(w, method, threshold, thresholds, t_ex, axis)
    return _levels_and_scales(w, resolved, axis, method)


def branch_codes(levels: jax.Array, t_ex: int) -> jax.Array:
    """Ternary codes per branch, shape ``(t_ex, *levels.shape)``, from signed levels."""
    levels = jnp.asarray(levels)
    k = jnp.arange(1, t_ex + 1, dtype=levels.dtype).reshape((t_ex,) + (1,) * levels.ndim)
    return (jnp.sign(levels)[None] * (jnp.abs(levels)[None] >= k)).astype(jnp.int8)


def _sum_in_order(terms: Sequence[jax.Array]) -> jax.Array:
    """``terms[0] + terms[1] + ...`` left to right: a fixed order, so sums are bit-reproducible.

    The one fold of branch kernels, for :func:`decode` and :func:`fold`.
    """
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _decode(codes: TernaryCodes, dtype, fold: bool) -> jax.Array:
    levels, scales = codes
    t = scales.shape[0]
    per_branch = branch_codes(levels, t)
    branches = [scales[k].astype(dtype) * per_branch[k].astype(dtype) for k in range(t)]
    return _sum_in_order(branches) if fold else jnp.stack(branches)


def decode(codes: TernaryCodes, dtype=jnp.float32, *, fold: bool = True) -> jax.Array:
    """Rebuilds ternary kernels from :class:`TernaryCodes`: the one place that does this.

    Training (:func:`ternarize`, :func:`expand`) and loading a packed checkpoint both go
    through here, which is why a loaded model's logits equal the training-time ones bit for bit.

    Args:
      codes: ``TernaryCodes(levels, scales)`` with ``scales`` shaped ``(t_ex, *broadcast)``.
      dtype: the output dtype (the latent weight's dtype).
      fold: ``Σ_k α_k·c_k`` with the levels' shape (``True``), or the stack ``(t_ex, *shape)``.
    """
    if not isinstance(codes, tuple) or len(codes) != 2:
        raise TypeError(f"codes must be a TernaryCodes(levels, scales), got "
                        f"{type(codes).__name__}; make one with tern_jax.encode(w)")
    for name, value in zip(("levels", "scales"), codes):
        if value is None or isinstance(value, (str, bytes, bool)):
            raise TypeError(f"{name} must be an array, got {type(value).__name__}; make the "
                            "codes with tern_jax.encode(w)")
    levels = jnp.asarray(codes[0])
    scales = jnp.asarray(codes[1], jnp.float32)
    if not jnp.issubdtype(levels.dtype, jnp.integer):
        raise TypeError(f"levels must be integers, got dtype {levels.dtype}")
    if scales.ndim != levels.ndim + 1 or scales.shape[0] < 1:
        raise ValueError(
            f"scales of shape {scales.shape} do not fit levels of shape {levels.shape}; scales "
            "must be shaped (t_ex, *broadcast) with one axis more than the levels, as "
            "tern_jax.encode returns them"
        )
    try:
        jnp.broadcast_shapes(scales.shape[1:], levels.shape)
    except ValueError as e:
        raise ValueError(f"scales {scales.shape[1:]} per branch do not broadcast against "
                         f"levels {levels.shape}") from e
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}; ternary kernels "
                        "are rebuilt as floats (e.g. jnp.float32, jnp.bfloat16)")
    return _decode(TernaryCodes(levels, scales), dtype, fold)


def ternary_codes(
    w: jax.Array, *, threshold: float | None = None, axis: Axis = None, method: str = "paper"
) -> tuple[jax.Array, jax.Array]:
    """Integer codes and scale of the ternarized weight (``t_ex = 1``): ``Ŵ = scale · codes``.

    A view of :func:`encode` for one branch with the scale in the weight's own layout: a
    scalar for ``axis=None``, else shaped to broadcast against ``codes`` (size 1 on every axis
    but the channel axes), so ``scale * codes == ternarize(w, ...)``.
    """
    codes = encode(w, threshold=threshold, axis=axis, method=method)
    scale = codes.scales[0]
    if axis is None:
        scale = scale.reshape(())
    return codes.levels, scale


def expansion_codes(
    w: jax.Array,
    *,
    thresholds: Sequence[float] | None = (0.05, 0.1),
    axis: Axis = None,
    method: str = "paper",
) -> TernaryCodes:
    """:func:`encode` with the paper's ``t_ex = 2`` thresholds by default."""
    return encode(w, thresholds=thresholds, axis=axis, method=method)


def dequantize(levels: jax.Array, scales: jax.Array, dtype=jnp.float32, *, fold: bool = True):
    """``decode(TernaryCodes(levels, scales), dtype, fold=fold)``: scales ``(t_ex, *broadcast)``."""
    return decode(TernaryCodes(levels, scales), dtype, fold=fold)


def ste_mask(w: jax.Array) -> jax.Array:
    """The straight-through estimator's gate ``[|W| < 1]`` in ``w``'s dtype."""
    return (jnp.abs(w) < 1).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _ternary_stack(w, threshold_scale, thresholds, axis, method, fold):
    codes = _levels_and_scales(w, thresholds, axis, method, threshold_scale)
    return _decode(codes, w.dtype, fold)


def _ternary_stack_fwd(w, threshold_scale, thresholds, axis, method, fold):
    out = _ternary_stack(w, threshold_scale, thresholds, axis, method, fold)
    return out, (w, threshold_scale)


def _ternary_stack_bwd(thresholds, axis, method, fold, residuals, g):
    # Each branch is its own straight-through estimate of the same latent W, so the branch
    # gradients add up (the folded sum Σ_k Ŵ_k has the same total gradient). No gradient
    # reaches the threshold scale, as none reaches Δ.
    w, threshold_scale = residuals
    t = 1 if thresholds is None else len(thresholds)
    g_total = g * t if fold else jnp.sum(g, axis=0)
    g_scale = None if threshold_scale is None else jnp.zeros_like(threshold_scale)
    return g_total.astype(w.dtype) * ste_mask(w), g_scale


_ternary_stack.defvjp(_ternary_stack_fwd, _ternary_stack_bwd)
# One compiled computation per (shape, dtype, settings) in eager use; inlined under an outer jit.
_ternary_stack = jax.jit(_ternary_stack, static_argnums=(2, 3, 4, 5))


def ternarize(
    w: jax.Array,
    *,
    threshold: float | None = None,
    thresholds: Sequence[float] | None = None,
    t_ex: int | None = None,
    axis: Axis = None,
    method: str = "paper",
    threshold_scale: jax.Array | float | None = None,
) -> jax.Array:
    """The ternarized weight ``Ŵ ∈ {-α, 0, +α}`` with the straight-through gradient.

    ``Ŵ_i = +α if W_i ≥ Δ; −α if W_i ≤ −Δ; 0 otherwise`` with ``Δ = δ·max|W|`` and
    ``α = mean(|W_i| : |W_i| ≥ Δ)`` (paper, δ = 0.05 by default); see the module docstring for
    ``twn`` and ``absmean``. Gradient: ``∂L/∂W = ∂L/∂Ŵ · [|W| < 1]``.

    With several thresholds (``thresholds=(0.05, 0.1)`` or ``t_ex=2``) the result is the
    folded residual expansion ``Σ_k Ŵ_k`` (``2·t_ex + 1`` levels), computed in one pass.

    Args:
      w: floating-point weight of rank >= 1; the result has its shape and dtype.
      threshold: the base ``δ`` in (0, 1); ``None`` for the method's default.
      thresholds: explicit per-branch thresholds (strictly increasing), instead of ``threshold``.
      t_ex: number of expansion branches when ``thresholds`` is not given (default 1).
      axis: ``None`` per tensor (the paper), or the channel axis (or axes) that keep their own
        ``Δ``/``α``.
      method: ``"paper"``, ``"twn"`` or ``"absmean"``.
      threshold_scale: multiplies ``Δ`` (a float scalar in [0, 1], may be traced, so a
        training step can warm the threshold up from 0 without recompiling); ``None`` is 1.
        ``absmean`` has no threshold and ignores it.
    """
    w, resolved, axis = _checked(w, method, threshold, thresholds, t_ex, axis)
    scale = _check_threshold_scale(threshold_scale)
    return _ternary_stack(w, scale, resolved, axis, method, True)


def expand(
    w: jax.Array,
    *,
    thresholds: Sequence[float] | None = (0.05, 0.1),
    axis: Axis = None,
    method: str = "paper",
    threshold_scale: jax.Array | float | None = None,
) -> jax.Array:
    """Residual expansion: ``t_ex`` stacked ternary kernels, shape ``(t_ex, *w.shape)``.

    Branch ``k`` is ``ternarize(w, threshold=thresholds[k])`` with its own ``α_k``; the
    thresholds must increase strictly (paper: ``0.05·k``). The gradient of any function of the
    stack reaches ``w`` as ``Σ_k ∂L/∂Ŵ_k · [|W| < 1]``. Use :func:`expanded_apply` to run a
    layer on the stack (one op per branch, vmapped) or on its fold (one op).
    ``threshold_scale`` multiplies every ``Δ_k`` as in :func:`ternarize`.
    """
    w, resolved, axis = _checked(w, method, None, thresholds, None, axis)
    scale = _check_threshold_scale(threshold_scale)
    return _ternary_stack(w, scale, resolved, axis, method, False)


def fold(kernels: jax.Array) -> jax.Array:
    """``Σ_k Ŵ_k`` over the leading branch axis, summed left to right (bit-reproducible).

    Because a convolution or matmul is linear in its kernel, ``op(x, fold(kernels))`` equals
    ``Σ_k op(x, kernels[k])`` up to float rounding: the fast path for training.
    """
    kernels = jnp.asarray(kernels)
    if kernels.ndim < 1 or kernels.shape[0] < 1:
        raise ValueError(f"kernels must have a leading branch axis of length >= 1, got shape "
                         f"{kernels.shape}")
    return _sum_in_order([kernels[k] for k in range(kernels.shape[0])])


def expanded_apply(
    op: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    kernels: jax.Array,
    *,
    folded: bool = False,
) -> jax.Array:
    """Applies a linear layer ``op(x, kernel)`` to a stack of ternary kernels and sums.

    ``folded=False`` is the paper's form, ``y = Σ_k op(x, Ŵ_k)``: one ternary
    (multiplication-free) op per branch, run as a single ``jax.vmap`` over the branch axis.
    ``folded=True`` computes ``op(x, Σ_k Ŵ_k)``: the same ``y`` (op is linear in the kernel)
    with one op, which is faster to train. ``op`` is e.g.
    ``lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)``.
    """
    if not callable(op):
        raise TypeError(f"op must be a function op(x, kernel), got {type(op).__name__}")
    if folded:
        return op(x, fold(kernels))
    return jnp.sum(jax.vmap(op, in_axes=(None, 0))(x, kernels), axis=0)
