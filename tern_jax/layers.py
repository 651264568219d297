"""Residual expansion in its vmapped form, for unmodified Flax linen models.

A rule with ``t_ex > 1`` ternarizes the latent kernel ``W`` with nested thresholds
``Δ_k = δ_k·max|W|`` (paper: ``δ_k = 0.05·k``) into branch kernels
``Ŵ_k = α_k·sign(W)·[|W| ≥ Δ_k]``, ``k = 1..t_ex``. A linear layer ``op`` then computes

    y = Σ_k op(x, Ŵ_k) + b                    (vmapped form: one ternary op per branch)
      = op(x, Σ_k Ŵ_k) + b                    (folded form: op is linear in the kernel)

:func:`tern_jax.quantize_params` returns the folded kernel by default, which every layer
consumes as is. With ``stacked=True`` it returns the stack ``(t_ex, *W.shape)`` instead, and
:func:`vmapped_branches` makes the supported linen layers consume that stack: each one whose
bound ``kernel`` has exactly one more (leading) axis than the layer expects computes
``Σ_k op(x, Ŵ_k)`` with :func:`tern_jax.core.expanded_apply` (a ``jax.vmap`` over the branch
axis). Layers with an ordinary kernel run unchanged::

    q = tern_jax.quantize_params(params, [Rule(r".*/kernel", t_ex=4)], stacked=True)
    with tern_jax.layers.vmapped_branches():
        y = model.apply({"params": q, "batch_stats": bs}, x)

How a layer is evaluated. Linen checks a parameter's shape against its initializer's when
``self.param`` is called, so the bound layer cannot run on a stacked kernel. The interceptor
instead reads the stored kernel (``module.get_variable("params", "kernel")``), and evaluates
the layer's *own* ``__call__`` on an unbound copy (``module.clone(parent=None)``), once per
branch under ``jax.vmap``, with the branch variables

    kernel_k = Ŵ_k,      bias_k = b·[k = 1]

so that ``Σ_k layer(x; kernel_k, bias_k) = Σ_k op(x, Ŵ_k) + b``. Strides, padding (``"SAME"``,
``"VALID"``, ``"CIRCULAR"``, explicit pairs), input and kernel dilation,
``feature_group_count``, masks, precision, extra batch axes, the bias and flax's dtype promotion
are therefore exactly those of the layer: nothing is re-implemented. JAX's batching rules
move the branch axis of the kernel into the op's output features (one convolution with
``t_ex·C_out`` filters, one matmul with ``t_ex·N`` columns); the branches are then summed.

The copy's call runs through the active method interceptors too (its kernel is ordinary, so
this one passes it on); other interceptors a user has installed see it as a call of a
top-level module.

The context manager only has to be active while the model is *traced*: under ``jax.jit`` or
``jax.grad`` put the ``with`` block inside the traced function (or around the first call).
Gradients through the vmapped form equal those of the folded form: both reach ``W`` as
``Σ_k ∂L/∂Ŵ_k · [|W| < 1]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import errors as flax_errors
from flax import linen as nn

from tern_jax import core

__all__ = ["SUPPORTED_LAYERS", "vmapped_branches", "expected_kernel_rank"]


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _conv_rank(module: Any) -> int:
    # (*kernel_size, in, out) for Conv/ConvTranspose; (*out_spatial, prod(k)·in, out) for
    # ConvLocal, whose spatial rank is that of kernel_size too.
    return len(_as_tuple(module.kernel_size)) + 2


#: The linen layers whose stacked kernels :func:`vmapped_branches` understands, each with the
#: rank of the kernel it expects. All of them are linear in the kernel. A subclass counts as
#: its base class only if it does not override ``__call__`` (otherwise linearity is unknown).
SUPPORTED_LAYERS: dict[type, Callable[[Any], int]] = {
    nn.Dense: lambda m: 2,
    nn.DenseGeneral: lambda m: (
        len(_as_tuple(m.batch_dims)) + len(_as_tuple(m.axis)) + len(_as_tuple(m.features))
    ),
    nn.Conv: _conv_rank,
    nn.ConvLocal: _conv_rank,
    nn.ConvTranspose: _conv_rank,
    nn.Einsum: lambda m: len(tuple(m.shape)),
}


#: Deprecated linen hooks that replace a layer's op; a replaced op (e.g. a quantized matmul)
#: need not be linear in the kernel, so such layers are not supported.
_CUSTOM_OP_FIELDS = (
    "dot_general",
    "dot_general_cls",
    "conv_general_dilated",
    "conv_general_dilated_cls",
)


def expected_kernel_rank(module: nn.Module) -> int | None:
    """The rank of the ``kernel`` that ``module`` expects, or ``None`` if it is not supported.

    ``None`` for layers outside :data:`SUPPORTED_LAYERS`, for subclasses that override
    ``__call__``, and for layers given a custom ``dot_general``/``conv_general_dilated``.
    Raises ``TypeError`` when ``module`` is not a linen module instance.
    """
    if not isinstance(module, nn.Module):
        what = f"the class {module.__name__}" if isinstance(module, type) else (
            f"{type(module).__name__} {module!r:.40}")
        raise TypeError(f"expected_kernel_rank: module must be a flax.linen Module instance "
                        f"such as nn.Dense(4), got {what}")
    for cls in type(module).__mro__:
        rank_fn = SUPPORTED_LAYERS.get(cls)
        if rank_fn is not None:
            if type(module).__call__ is not cls.__call__:
                return None
            if any(getattr(module, f, None) is not None for f in _CUSTOM_OP_FIELDS):
                return None
            return rank_fn(module)
    return None


def _kernel_of(module: nn.Module) -> jax.Array | None:
    """The stored (unboxed) ``params/kernel`` of a bound module, or ``None``."""
    if module.scope is None or not module.has_variable("params", "kernel"):
        return None
    return nn.meta.unbox(module.get_variable("params", "kernel"))


def _branchwise_call(
    module: nn.Module, kernels: jax.Array, args: tuple, kwargs: dict[str, Any]
) -> jax.Array:
    """``Σ_k layer(x; kernel=kernels[k], bias=b·[k=0])`` via :func:`core.expanded_apply`."""
    if args:
        x, rest = args[0], args[1:]
    elif "inputs" in kwargs:
        kwargs = dict(kwargs)
        x, rest = kwargs.pop("inputs"), ()
    else:
        raise TypeError(
            f"vmapped_branches: {type(module).__name__} at {module.scope.path_text!r} was "
            "called without its input (first positional argument or inputs=)"
        )
    params = module.variables.get("params", {})
    extra = set(params) - {"kernel", "bias"}
    if extra:
        raise NotImplementedError(
            f"vmapped_branches: {type(module).__name__} at {module.scope.path_text!r} has "
            f"params other than kernel and bias ({sorted(extra)}); give it the folded kernel "
            "(quantize_params(..., stacked=False))"
        )
    t = kernels.shape[0]
    branch_params = {"kernel": kernels}
    if "bias" in params:
        bias = nn.meta.unbox(params["bias"])
        # The bias enters once: branch 0 carries it, the others carry zeros.
        branch_params["bias"] = jnp.concatenate(
            [bias[None], jnp.zeros((t - 1, *bias.shape), bias.dtype)]
        )
    # An unbound copy: its self.param sees one branch's kernel, whose shape is the init shape.
    layer = module.clone(parent=None)

    def op(inputs: jax.Array, branch: dict[str, jax.Array]) -> jax.Array:
        return layer.apply({"params": branch}, inputs, *rest, **kwargs)

    # expanded_apply vmaps op over the leading axis of every leaf of branch_params.
    return core.expanded_apply(op, x, branch_params)


def _interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    module = context.module
    if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    kernel = _kernel_of(module)
    if kernel is None:
        return next_fun(*args, **kwargs)
    rank = expected_kernel_rank(module)
    if rank is not None:
        if kernel.ndim == rank + 1:
            return _branchwise_call(module, kernel, args, kwargs)
        return next_fun(*args, **kwargs)
    # Not a supported layer: run it, but turn the shape error a stacked kernel causes into a
    # message that says what happened.
    try:
        return next_fun(*args, **kwargs)
    except flax_errors.ScopeParamShapeError as e:
        message = str(e)
        if 'parameter "kernel"' not in message or f'"{module.scope.path_text}"' not in message:
            raise
        raise NotImplementedError(
            f"vmapped_branches: {type(module).__name__} at {module.scope.path_text!r} received a "
            f"kernel of shape {tuple(kernel.shape)} it does not expect, likely a stacked "
            "residual expansion (t_ex, *kernel.shape). Stacked kernels are supported for "
            f"{', '.join('nn.' + c.__name__ for c in SUPPORTED_LAYERS)} (subclasses only if they "
            "keep __call__, and without a custom dot_general/conv_general_dilated); give this "
            "layer the folded kernel: exclude it from the t_ex > 1 rule, or use "
            "quantize_params(..., stacked=False)"
        ) from e


@contextlib.contextmanager
def vmapped_branches() -> Iterator[None]:
    """Within this context, supported linen layers accept stacked residual-expansion kernels.

    A layer in :data:`SUPPORTED_LAYERS` (``nn.Conv``, ``nn.Dense``, ``nn.ConvTranspose``, ...)
    whose stored ``kernel`` has shape ``(t_ex, *expected)`` computes

        y = Σ_k layer(x; kernel=Ŵ_k) = Σ_k op(x, Ŵ_k) + b

    with one op per branch, vmapped over ``k`` (:func:`tern_jax.core.expanded_apply`), and with
    the layer's own strides, padding, dilations, groups, bias and dtype promotion. A layer with
    an ordinary kernel, and every other module, runs unchanged. A stacked kernel reaching an
    unsupported layer raises ``NotImplementedError`` naming the layer.

    The context must be active while the model is traced (inside the function given to
    ``jax.jit``/``jax.grad``, or around its first call). It nests and is thread-local
    (``flax.linen.intercept_methods``).
    """
    with nn.intercept_methods(_interceptor):
        yield
