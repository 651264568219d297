"""Ternarization of single arrays: the paper's quantizer, its variants, residual expansion.

This module is the bottom of the package: plain functions over ``jax.Array``, no Flax,
no I/O. Everything above it (rules over parameter pytrees, summaries, checkpoints,
training) calls these functions.

Notation (He, Gong & Fan, WACV 2019, section 3; ``../shared/docs/METHOD.md`` sections 1-2):

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
``sign(m_i)·[|m_i| ≥ k]``. That is what :mod:`tern_jax.packing` stores.

Edge cases the paper leaves open, defined here:

* an all-zero tensor (or channel) gives zeros: its codes are 0 and its scale is 0, never NaN;
* a tensor (or channel, with ``axis``) holding NaN or ±Inf gives NaN everywhere in that
  tensor (channel) and a NaN scale, so a training loss turns NaN and the trainer's NaN guard
  stops with a message instead of silently training on garbage.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "METHODS",
    "DEFAULT_THRESHOLDS",
    "default_thresholds",
    "validate_thresholds",
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


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(
            f"unknown ternarization method {method!r}; use one of {METHODS} "
            "(or method=None in a Rule to keep a weight in full precision)"
        )


def default_thresholds(method: str = "paper", t_ex: int = 1) -> tuple[float, ...] | None:
    """The thresholds used when none are given: ``δ_k = δ·k`` for ``k = 1..t_ex``.

    ``paper`` gives ``(0.05,)``, ``(0.05, 0.1)``, ``(0.05, 0.1, 0.15, 0.2)`` for t_ex 1, 2, 4
    (the authors' scripts). ``twn`` is defined for ``t_ex = 1`` only (``(0.7,)``), ``absmean``
    has no threshold and returns ``None``.
    """
    _check_method(method)
    if not isinstance(t_ex, int) or isinstance(t_ex, bool) or t_ex < 1:
        raise ValueError(f"t_ex must be a positive integer, got {t_ex!r}")
    base = DEFAULT_THRESHOLDS[method]
    if base is None:
        if t_ex != 1:
            raise ValueError(f"method {method!r} supports t_ex=1 only; use method='paper'")
        return None
    if method != "paper" and t_ex != 1:
        raise ValueError(
            f"residual expansion (t_ex={t_ex}) is defined for method='paper' only; "
            f"use method='paper' or t_ex=1"
        )
    # Round so that 0.05*3 prints as 0.15, not 0.15000000000000002.
    return tuple(round(base * k, 12) for k in range(1, t_ex + 1))


def validate_thresholds(thresholds: float | Sequence[float], method: str = "paper") -> tuple:
    """Checks and normalizes thresholds to a tuple; raises ``ValueError`` naming the fix.

    Every threshold must lie in the open interval (0, 1) and the sequence must be strictly
    increasing (the nesting that residual expansion relies on). Expansion (more than one
    threshold) is defined for ``method="paper"`` only.
    """
    _check_method(method)
    if method == "absmean":
        raise ValueError("method 'absmean' takes no threshold; leave threshold=None")
    if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        thresholds = (float(thresholds),)
    try:
        thresholds = tuple(float(t) for t in thresholds)
    except TypeError as e:
        raise ValueError(
            f"thresholds must be a float or a sequence of floats, got {thresholds!r}"
        ) from e
    if not thresholds:
        raise ValueError("thresholds must not be empty; give at least one value in (0, 1)")
    for t in thresholds:
        if not 0.0 < t < 1.0:
            raise ValueError(
                f"threshold {t} is outside (0, 1); the threshold is a fraction of "
                f"{'max' if method == 'paper' else 'mean'}|W| (paper default 0.05)"
            )
    if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(
            f"thresholds {thresholds} are not strictly increasing; residual expansion needs "
            "nested thresholds such as (0.05, 0.1)"
        )
    if method != "paper" and len(thresholds) > 1:
        raise ValueError(
            f"residual expansion ({len(thresholds)} thresholds) is defined for method='paper' "
            "only; give one threshold or use method='paper'"
        )
    return thresholds


def _reduction_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    """Axes the statistics reduce over: all (per tensor) or all but ``axis`` (per channel)."""
    if axis is None:
        return tuple(range(ndim))
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis} is out of range for a weight of rank {ndim}; pass the output-channel "
            "axis (-1 for Flax Conv/Dense kernels) or None for one scale per tensor"
        )
    axis %= ndim
    return tuple(a for a in range(ndim) if a != axis)


def _check_weight(w: jax.Array) -> jax.Array:
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"ternarization needs a floating-point weight, got dtype {w.dtype}; cast it with "
            ".astype(jnp.float32) or exclude it from the rules"
        )
    if w.ndim == 0:
        raise ValueError("ternarization needs a weight with at least one dimension, got a scalar")
    return w


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _levels_and_scales(
    w: jax.Array,
    thresholds: tuple[float, ...] | None,
    axis: int | None,
    method: str,
    threshold_scale: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Signed levels in ``[-t, t]`` (int8) and scales of shape ``(t, *broadcast)`` (float32).

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
    return levels, scales


def _resolve(method: str, thresholds, t_ex: int = 1) -> tuple[float, ...] | None:
    _check_method(method)
    if method == "absmean":
        if thresholds is not None:
            raise ValueError("method 'absmean' takes no threshold; leave threshold=None")
        return None
    if thresholds is None:
        return default_thresholds(method, t_ex)
    return validate_thresholds(thresholds, method)


def ternary_codes(
    w: jax.Array, *, threshold: float | None = None, axis: int | None = None, method: str = "paper"
) -> tuple[jax.Array, jax.Array]:
    """Integer codes and scale of the ternarized weight: ``Ŵ = scale · codes``.

    Args:
      w: a floating-point weight (float32, bfloat16, ...), any rank >= 1.
      threshold: ``δ``; ``None`` means the method's default (paper 0.05, TWN 0.7).
      axis: ``None`` for one ``Δ``/``α`` per tensor (the paper), or the output-channel axis
        for one per channel (``-1`` for Flax kernels).
      method: ``"paper"``, ``"twn"`` or ``"absmean"``.

    Returns:
      ``(codes, scale)``: ``codes`` int8 in {-1, 0, 1} with ``w``'s shape; ``scale`` float32,
      a scalar for ``axis=None``, else shaped to broadcast against ``codes`` (size 1 on every
      axis but ``axis``). ``dequantize(codes, scale, w.dtype)`` equals ``ternarize(w, ...)``
      bit for bit.
    """
    w = _check_weight(w)
    thresholds = _resolve(method, threshold)
    levels, scales = _levels_and_scales(w, thresholds, axis, method)
    scale = scales[0]
    if axis is None:
        scale = scale.reshape(())
    return levels, scale


def expansion_codes(
    w: jax.Array,
    *,
    thresholds: Sequence[float] | None = (0.05, 0.1),
    axis: int | None = None,
    method: str = "paper",
) -> tuple[jax.Array, jax.Array]:
    """Signed levels and per-branch scales of the residual expansion of ``w``.

    Returns ``(levels, scales)``: ``levels`` int8 in ``[-t_ex, t_ex]`` with ``w``'s shape
    (branch ``k`` has code ``sign(levels)·[|levels| ≥ k]``); ``scales`` float32 of shape
    ``(t_ex,)`` per tensor, or ``(t_ex, *broadcast)`` per channel.
    """
    w = _check_weight(w)
    thresholds = _resolve(method, thresholds)
    levels, scales = _levels_and_scales(w, thresholds, axis, method)
    if axis is None:
        scales = scales.reshape(scales.shape[0])
    return levels, scales


def branch_codes(levels: jax.Array, t_ex: int) -> jax.Array:
    """Ternary codes per branch, shape ``(t_ex, *levels.shape)``, from signed levels."""
    levels = jnp.asarray(levels)
    k = jnp.arange(1, t_ex + 1, dtype=levels.dtype).reshape((t_ex,) + (1,) * levels.ndim)
    return (jnp.sign(levels)[None] * (jnp.abs(levels)[None] >= k)).astype(jnp.int8)


def _dequantize_stacked(levels: jax.Array, scales: jax.Array, dtype, fold: bool) -> jax.Array:
    """``scales`` has shape ``(t, *broadcastable to levels)``; see :func:`dequantize`."""
    t = scales.shape[0]
    codes = branch_codes(levels, t)
    branches = [scales[k].astype(dtype) * codes[k].astype(dtype) for k in range(t)]
    if not fold:
        return jnp.stack(branches)
    total = branches[0]
    for b in branches[1:]:  # left to right, a fixed order: bit-reproducible
        total = total + b
    return total


def dequantize(levels: jax.Array, scales: jax.Array, dtype=jnp.float32, *, fold: bool = True):
    """Rebuilds ternary kernels from levels and scales: the one place that does this.

    Training (``ternarize``/``expand``) and loading a packed checkpoint both go through here,
    which is why a loaded model's logits equal the training-time ones bit for bit.

    Args:
      levels: int codes in ``[-t, t]`` (``t = 1`` for plain ternary codes).
      scales: float32 in any layout returned by :func:`ternary_codes` (a scalar, or
        per-channel with ``levels.ndim`` axes) or :func:`expansion_codes` (``(t,)``, or
        ``(t, *per-channel)``).
      dtype: the output dtype (the latent weight's dtype).
      fold: return ``Σ_k α_k·c_k`` (``True``) or the stack ``(t, *shape)`` (``False``).
    """
    levels = jnp.asarray(levels)
    scales = jnp.asarray(scales, jnp.float32)
    if scales.ndim == levels.ndim + 1:  # expansion_codes, per channel
        pass
    elif scales.ndim == 0:  # ternary_codes, per tensor
        scales = scales.reshape((1,) + (1,) * levels.ndim)
    elif scales.ndim == 1 and levels.ndim > 1:  # expansion_codes, per tensor
        scales = scales.reshape(scales.shape + (1,) * levels.ndim)
    elif scales.ndim == levels.ndim and levels.ndim > 1:  # ternary_codes, per channel
        scales = scales[None]
    else:
        raise ValueError(
            f"ambiguous or mismatched scales of shape {scales.shape} for levels of shape "
            f"{levels.shape}; pass scales shaped (t_ex, *levels-broadcastable)"
        )
    return _dequantize_stacked(levels, scales, dtype, fold)


def ste_mask(w: jax.Array) -> jax.Array:
    """The straight-through estimator's gate ``[|W| < 1]`` in ``w``'s dtype."""
    return (jnp.abs(w) < 1).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _ternary_stack(w, threshold_scale, thresholds, axis, method, fold):
    levels, scales = _levels_and_scales(w, thresholds, axis, method, threshold_scale)
    return _dequantize_stacked(levels, scales, w.dtype, fold)


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


def _check_threshold_scale(threshold_scale):
    """``None``, or a float scalar (Python number or a 0-d array, possibly traced)."""
    if threshold_scale is None:
        return None
    if isinstance(threshold_scale, bool):
        raise TypeError("threshold_scale must be a number in [0, 1] or None, got a bool")
    if isinstance(threshold_scale, (int, float)):
        if not 0.0 <= threshold_scale <= 1.0:
            raise ValueError(
                f"threshold_scale={threshold_scale} is outside [0, 1]; it multiplies every "
                "threshold during a warm-up (0: keep every nonzero weight, 1: the full Δ)"
            )
        return jnp.asarray(threshold_scale, jnp.float32)
    scale = jnp.asarray(threshold_scale)
    if scale.ndim != 0 or not jnp.issubdtype(scale.dtype, jnp.floating):
        raise ValueError(
            f"threshold_scale must be a float scalar, got shape {scale.shape} dtype "
            f"{scale.dtype}; pass e.g. jnp.float32(0.5)"
        )
    return scale.astype(jnp.float32)


def _quantize(w, thresholds, axis, method, threshold_scale, *, fold: bool) -> jax.Array:
    """Checks every argument, then the STE quantizer: folded (ternarize) or stacked (expand)."""
    w = _check_weight(w)
    thresholds = _resolve(method, thresholds)
    if axis is not None:
        _reduction_axes(w.ndim, axis)
    scale = _check_threshold_scale(threshold_scale)
    return _ternary_stack(w, scale, thresholds, axis, method, fold)


def ternarize(
    w: jax.Array,
    *,
    threshold: float | None = None,
    axis: int | None = None,
    method: str = "paper",
    threshold_scale: jax.Array | float | None = None,
) -> jax.Array:
    """The ternarized weight ``Ŵ ∈ {-α, 0, +α}`` with the straight-through gradient.

    ``Ŵ_i = +α if W_i ≥ Δ; −α if W_i ≤ −Δ; 0 otherwise`` with ``Δ = δ·max|W|`` and
    ``α = mean(|W_i| : |W_i| ≥ Δ)`` (paper, δ = 0.05 by default); see the module docstring for
    ``twn`` and ``absmean``. Gradient: ``∂L/∂W = ∂L/∂Ŵ · [|W| < 1]``.

    Args:
      w: floating-point weight of rank >= 1; the result has its shape and dtype.
      threshold: ``δ`` in (0, 1); ``None`` for the method's default.
      axis: ``None`` per tensor (the paper) or the output-channel axis for per-channel ``Δ``/``α``.
      method: ``"paper"``, ``"twn"`` or ``"absmean"``.
      threshold_scale: multiplies ``Δ`` (a float scalar in [0, 1], may be traced, so a
        training step can warm the threshold up from 0 without recompiling); ``None`` is 1.
        ``absmean`` has no threshold and ignores it.
    """
    return _quantize(w, threshold, axis, method, threshold_scale, fold=True)


def expand(
    w: jax.Array,
    *,
    thresholds: Sequence[float] | None = (0.05, 0.1),
    axis: int | None = None,
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
    return _quantize(w, thresholds, axis, method, threshold_scale, fold=False)


def fold(kernels: jax.Array) -> jax.Array:
    """``Σ_k Ŵ_k`` over the leading branch axis, summed left to right (bit-reproducible).

    Because a convolution or matmul is linear in its kernel, ``op(x, fold(kernels))`` equals
    ``Σ_k op(x, kernels[k])`` up to float rounding: the fast path for training.
    """
    total = kernels[0]
    for k in range(1, kernels.shape[0]):
        total = total + kernels[k]
    return total


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
    if folded:
        return op(x, fold(kernels))
    return jnp.sum(jax.vmap(op, in_axes=(None, 0))(x, kernels), axis=0)
