"""8-bit activations for ternary layers (W1.58A8, as BitNet b1.58), chosen by the rules.

A :class:`tern_jax.Rule` with ``activations="int8"`` or ``"int8_block"`` quantizes the *input*
of every layer whose kernel it matches to int8 with an absmax scale, in the forward pass, and
passes the gradient straight through (``∂x̂/∂x = 1``, BitNet b1.58, Ma et al. 2024, eq. 3):

.. math::

    s = \\max_{i \\in g} |x_i| / 127, \\qquad
    \\hat x_i = s \\cdot \\mathrm{clip}(\\mathrm{round}(x_i / s), -127, 127)

over a group ``g`` of input features (``s = 0`` gives ``x̂ = 0``):

* ``"int8"``: one scale per token (every feature the layer contracts), BitNet's form;
* ``"int8_block"``: one scale per 256 consecutive features of a token
  (:data:`tern_jax.packing.SUPER_BLOCK`), llama.cpp's ``Q8_K``,
  the form in which its ``TQ1_0``/``TQ2_0`` dot products quantize their input. A model trained
  with it computes what llama.cpp computes from the exported file (:mod:`tern_jax.export`);
  for a layer whose input width is 256 the two forms are the same.

The model is not rewritten; the rules reach its layers in two ways:

* Flax NNX: :func:`quantize_inputs` returns a module whose matched layers (``nnx.Linear``,
  ``nnx.LinearGeneral``, ``nnx.Einsum``, ``nnx.Conv``: any module with a ``kernel`` and a
  ``dot_general``) quantize the lhs of their contraction over the contracted axes.
  :func:`tern_jax.nnx_utils.ternarized` applies it.
* Flax linen: within :func:`quantized_activations`, ``nn.Dense``, ``nn.DenseGeneral`` and
  ``nn.Conv`` layers matched by a rule with ``activations`` quantize their input (over the
  last axis, ``DenseGeneral``'s ``axis``; per spatial position over the channels for a
  convolution)::

      with tern_jax.activations.quantized_activations(rules):
          y = model.apply({"params": tern_jax.quantize_params(params, rules)}, x)

The trainer does both for a variant whose rules ask for it. :func:`tern_jax.quantize_params`
alone changes the weights only: given rules with ``activations`` outside these two ways, it
warns (:class:`tern_jax.rules.ActivationsNotAppliedWarning`).

A layer's rule is the one that governs its kernel (``path/kernel``), found by the matcher of
the weights (:func:`tern_jax.rules.first_match`: the first full match wins). A rule with
``activations`` that governs no layer (e.g. one that matches only an embedding, or linen
layers other than ``Dense``, ``DenseGeneral`` and the convolutions) is reported as the weight
rules are: ``unused="warn"`` (:class:`tern_jax.UnusedRuleWarning`), ``"error"`` or ``"ignore"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import threading
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import linen as nn

from tern_jax.packing import SUPER_BLOCK
from tern_jax.rules import (
    ACTIVATION_MODES,
    Unused,
    check_unused,
    first_match,
    layer_leaf,
    report_unused,
)

__all__ = ["ACTIVATION_MODES", "quantize_activations", "quantized_dot_general",
           "quantize_inputs", "quantized_activations", "active_rules", "uses_activations"]


def _absmax_int8(x: jax.Array) -> jax.Array:
    """``x`` (``(..., g)``) rounded to int8 levels of one absmax scale per last-axis group."""
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=-1, keepdims=True)
    inv = jnp.where(amax > 0, 127.0 / jnp.where(amax > 0, amax, 1.0), 0.0)
    q = jnp.clip(jnp.round(xf * inv), -127, 127)
    return (q * (amax / 127.0)).astype(x.dtype)


def quantize_activations(x: jax.Array, mode: str, axes=(-1,)) -> jax.Array:
    """``x`` with the features on ``axes`` int8-quantized (absmax), straight-through gradient.

    ``mode`` is ``"int8"`` (one scale per index of the other axes: per token) or
    ``"int8_block"`` (one scale per :data:`~tern_jax.packing.SUPER_BLOCK` (256) consecutive
    features of the flattened ``axes``, which must hold a multiple of it). The result has
    ``x``'s shape and dtype.
    """
    if mode not in ACTIVATION_MODES:
        raise ValueError(f"activations must be one of {ACTIVATION_MODES} (or None), got {mode!r}")
    axes = tuple(a % x.ndim for a in axes)
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, rest + list(axes))
    lead = moved.shape[: len(rest)]
    width = 1
    for a in axes:
        width *= x.shape[a]
    if mode == "int8_block":
        if width % SUPER_BLOCK:
            raise ValueError(
                f"activations='int8_block' quantizes blocks of {SUPER_BLOCK} input features, but "
                f"this layer's input has {width}; use activations='int8' (one scale per token) "
                f"or a width that is a multiple of {SUPER_BLOCK}")
        groups = moved.reshape(*lead, width // SUPER_BLOCK, SUPER_BLOCK)
    else:
        groups = moved.reshape(*lead, 1, width)
    q = _absmax_int8(groups).reshape(moved.shape)
    inverse = [0] * x.ndim
    for i, a in enumerate(rest + list(axes)):
        inverse[a] = i
    q = jnp.transpose(q, inverse)
    return x + jax.lax.stop_gradient(q - x)  # forward q, gradient 1 (straight through)


def quantized_dot_general(lhs, rhs, dimension_numbers, *args, mode: str, base=jax.lax.dot_general,
                          **kwargs):
    """``base(quantize_activations(lhs, mode, lhs_contracting), rhs, ...)``: a ``dot_general``."""
    (lhs_contracting, _), _ = dimension_numbers
    lhs = quantize_activations(lhs, mode, tuple(lhs_contracting))
    return base(lhs, rhs, dimension_numbers, *args, **kwargs)


class _Matching:
    """Rules with their use by layers: which rule with ``activations`` governed some layer."""

    def __init__(self, rules):
        self.rules = tuple(rules)
        self.used = [False] * len(self.rules)

    def mode(self, path: str, kernel) -> str | None:
        """The activations of the layer whose kernel is ``kernel`` at ``path`` (``None``: none)."""
        i = first_match(path, kernel, self.rules)
        if i is None or self.rules[i].activations is None:
            return None
        self.used[i] = True
        return self.rules[i].activations

    def report(self, unused: Unused, stacklevel: int) -> None:
        patterns = [r.pattern for r, u in zip(self.rules, self.used)
                    if r.activations is not None and not u]
        report_unused(patterns, unused, what="layer for their 8-bit activations",
                      stacklevel=stacklevel + 1)


def uses_activations(rules) -> bool:
    """Whether any rule of ``rules`` (a sequence or ``None``) quantizes activations."""
    return any(getattr(r, "activations", None) for r in rules or ())


def quantize_inputs(model, rules, *, unused: Unused = "warn"):
    """A copy of the NNX ``model`` whose rule-matched layers quantize their inputs to int8.

    A layer (any submodule with a ``kernel`` and a ``dot_general``, e.g. ``nnx.Linear``) at
    path ``p`` is governed by the rule that governs its kernel ``p/kernel``
    (:func:`tern_jax.rules.first_match`); if that rule has ``activations`` set, the layer's
    ``dot_general`` quantizes its lhs over the contracted axes (:func:`quantized_dot_general`).
    ``model`` itself is unchanged; without such a rule the copy behaves as ``model``. Rules
    with ``activations`` that govern no layer are reported as ``unused`` says (as
    :func:`tern_jax.rules.match_params`), except for the rules of the enclosing
    :func:`quantized_activations` (``rules is active_rules()``), which that context reports.
    """
    from flax import nnx

    if not isinstance(model, nnx.Module):
        raise TypeError(f"quantize_inputs: model must be a flax.nnx.Module, got "
                        f"{type(model).__name__}; for linen use quantized_activations(rules)")
    check_unused(unused, "quantize_inputs")
    if not uses_activations(rules):
        return model
    scope = _innermost()
    ours = scope is None or rules is not scope.rules
    matching = _Matching(rules) if ours else scope.matching
    model = nnx.merge(*nnx.split(model))
    scanned = getattr(model, "scanned", None)  # layers stacked for a scan: match one layer
    scanned = None if not isinstance(scanned, str) else re.compile(scanned)
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module):
            continue
        if not (hasattr(module, "kernel") and hasattr(module, "dot_general")):
            continue
        kernel_path = "/".join([*(str(k) for k in path), "kernel"])
        kernel = module.kernel
        if scanned is not None and scanned.fullmatch(kernel_path):
            kernel = layer_leaf(kernel)
        mode = matching.mode(kernel_path, kernel)
        if mode is not None:
            if getattr(module, "dot_general_cls", None) is not None:
                raise NotImplementedError(
                    f"quantize_inputs: the layer at {'/'.join(map(str, path))!r} has a custom "
                    "dot_general_cls; 8-bit activations need its dot_general")
            base = module.dot_general or jax.lax.dot_general
            module.dot_general = functools.partial(quantized_dot_general, mode=mode, base=base)
    if ours:
        matching.report(unused, stacklevel=2)
    return model


_local = threading.local()


@dataclasses.dataclass
class _Scope:
    """One :func:`quantized_activations` context: its rules as given, and their use."""

    rules: tuple
    matching: _Matching


def _innermost() -> _Scope | None:
    stack = getattr(_local, "stack", [])
    return stack[-1] if stack else None


def active_rules():
    """The rules of the innermost :func:`quantized_activations` context (``None`` outside)."""
    scope = _innermost()
    return None if scope is None else scope.rules


def _linen_axes(module) -> tuple[int, ...] | None:
    if isinstance(module, nn.DenseGeneral):
        axis = module.axis
        return tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if isinstance(module, (nn.Dense, nn.Conv, nn.ConvLocal, nn.ConvTranspose)):
        return (-1,)
    return None


def _interceptor(next_fun, args, kwargs, context):
    module = context.module
    scope = _innermost()
    if context.method_name != "__call__" or not args or module.scope is None:
        return next_fun(*args, **kwargs)
    axes = _linen_axes(module)
    if axes is None or scope is None:
        return next_fun(*args, **kwargs)
    kernel = module.get_variable("params", "kernel")  # None while init creates it
    mode = scope.matching.mode("/".join(module.scope.path + ("kernel",)), kernel)
    if mode is None:
        return next_fun(*args, **kwargs)
    x = quantize_activations(jnp.asarray(args[0]), mode, axes)
    return next_fun(x, *args[1:], **kwargs)


@contextlib.contextmanager
def quantized_activations(rules, *, unused: Unused = "warn") -> Iterator[None]:
    """Within this context, linen layers matched by a rule with ``activations`` get int8 inputs.

    The rules are also what :func:`active_rules` returns inside the context, so an NNX task
    can pass them to :func:`quantize_inputs`. Must be active while the model is traced. On
    leaving, the rules with ``activations`` that governed no layer (linen, or NNX through
    :func:`quantize_inputs` with :func:`active_rules`) are reported as ``unused`` says.
    """
    check_unused(unused, "quantized_activations")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    rules = tuple(rules or ())
    scope = _Scope(rules, _Matching(rules))
    stack.append(scope)
    try:
        with nn.intercept_methods(_interceptor):
            yield
    finally:
        stack.pop()
    scope.matching.report(unused, stacklevel=3)
