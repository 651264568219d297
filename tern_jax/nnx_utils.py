"""Ternary weights for Flax NNX models: the model an NNX user already has, ternarized on call.

An NNX module holds its weights, so the ternarized model is a *view* of it:
:func:`ternarized` splits the module into its graph and its ``nnx.Param`` state, ternarizes
that state with :func:`tern_jax.quantize_params` and merges it back into a new module. Called
inside the loss, the straight-through gradient reaches the latent (full-precision) weights,
which the optimizer updates as usual::

    model = Transformer(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    rules = tern_jax.presets.TRANSFORMER_RULES["tern"]

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = ternarized(model, rules)(x)       # forward with ternary weights
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)   # gradients for the latent weights
        optimizer.update(model, grads)
        return loss

Saving and loading the packed form go through the module's ``nnx.Param`` state::

    tern_jax.save_ternary(path, nnx.state(model, nnx.Param), rules)
    nnx.update(model, tern_jax.load_ternary(path))       # the ternary weights, dequantized

:func:`with_params` puts a pure dict of weights (a training run's, a loaded checkpoint's) into a
copy of a model after checking that every path and shape fits.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from tern_jax.activations import quantize_inputs
from tern_jax.integrity import check_shapes, tree_shapes
from tern_jax.rules import path_to_str, quantize_params

__all__ = ["ternarized", "with_params", "param_dict"]


def _check_module(model, func: str) -> None:
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{func}: model must be a flax.nnx.Module, got {type(model).__name__}; "
                        "for a linen model use tern_jax.quantize_params on its params dict")


def ternarized(model: nnx.Module, rules=None, *, unused: str = "warn",
               threshold_scale=None) -> nnx.Module:
    """A new module like ``model`` whose rule-matched ``nnx.Param`` weights are ternarized.

    ``model`` itself is not changed. Under ``nnx.grad`` (or ``jax.grad`` of a function that
    merges the module) the gradient of the returned module's output reaches ``model``'s latent
    weights through the straight-through estimator. ``rules``, ``unused`` and
    ``threshold_scale`` are those of :func:`tern_jax.quantize_params` (``rules=None``: every
    float kernel of rank >= 2); a rule with ``t_ex > 1`` gives the folded kernel
    ``Σ_k Ŵ_k``, which the unmodified layers consume. A model whose layers are stacked for a
    scan (``TransformerConfig(scan_layers=True)``; any module with a ``scanned`` attribute
    naming those paths) is ternarized layer by layer, one ``Δ``/``α`` per layer.
    """
    _check_module(model, "ternarized")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # the rules' activations are applied here, by quantize_inputs: no warning that they are not
    quantized = quantize_params(params, rules, unused=unused, threshold_scale=threshold_scale,
                                activations_applied=True, scanned=getattr(model, "scanned", None))
    return quantize_inputs(nnx.merge(graphdef, quantized, rest), rules, unused=unused)


def param_dict(model: nnx.Module) -> dict:
    """The module's ``nnx.Param`` weights as a pure nested dict (what :func:`with_params` takes)."""
    _check_module(model, "param_dict")
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def with_params(model: nnx.Module, params) -> nnx.Module:
    """A copy of ``model`` holding ``params`` (a pure dict or ``nnx.State`` of its weights).

    Raises ``ValueError`` naming the first parameter that is missing, unexpected or of another
    shape (:func:`tern_jax.integrity.check_shapes`, as for every checkpoint), and ``TypeError``
    for one of another dtype than the model's (integer weights would otherwise be cast
    silently), so weights of a different model never load silently.
    """
    _check_module(model, "with_params")
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    if not hasattr(params, "items"):
        raise TypeError(f"with_params: params must be a nested dict (e.g. tern_jax.load_ternary"
                        f"(path)) or an nnx.State, got {type(params).__name__}")
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    for p, leaf in jax.tree_util.tree_flatten_with_path(
            params, is_leaf=lambda x: isinstance(x, (list, tuple)))[0]:
        if isinstance(leaf, (list, tuple)):  # read as a subtree, it would be "missing" weights
            raise TypeError(f"with_params: parameter {path_to_str(p)!r} is a "
                            f"{type(leaf).__name__}, not an array; pass arrays, e.g. "
                            "jax.tree.map(np.asarray, params, "
                            "is_leaf=lambda x: isinstance(x, list))")
    try:
        check_shapes(tree_shapes(nnx.to_pure_dict(state)), tree_shapes(params),
                     "with_params: params")
    except ValueError as e:
        if set(params) & {"params", "batch_stats"} == set(params):
            raise ValueError(f"{e}; params hold a checkpoint's whole tree: pass its "
                             "['params']") from None
        raise
    _check_dtypes(nnx.to_pure_dict(state), params)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state, rest)


def _check_dtypes(expected, given) -> None:
    """Every given weight has the model's dtype: no silent cast (int -> 0, f32 -> bf16, ...)."""
    wanted = {path_to_str(p): np.dtype(leaf.dtype)
              for p, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]}
    for p, leaf in jax.tree_util.tree_flatten_with_path(given)[0]:
        path = path_to_str(p)
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if dtype != wanted[path]:
            raise TypeError(f"with_params: parameter {path!r} has dtype {dtype}, the model's is "
                            f"{wanted[path]}; cast the weights first, e.g. jax.tree.map(lambda a: "
                            f"a.astype({str(wanted[path])!r}), params)")
