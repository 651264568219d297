"""Specification of tern_jax.layers.vmapped_branches: the vmapped form of residual expansion.

For every supported linen layer ``Σ_k op(x, Ŵ_k)`` (stacked kernels, under the context) must
equal ``op(x, Σ_k Ŵ_k)`` (folded kernel, flax's own layer) up to float rounding, for values
and for gradients reaching the latent weights.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.errors import ScopeParamShapeError

import tern_jax
from tern_jax import Rule
from tern_jax.layers import expected_kernel_rank, vmapped_branches
from tern_jax.models import get_model


def _random_variables(model: nn.Module, x: jax.Array, seed: int = 0) -> dict[str, Any]:
    """He-normal kernels and random biases/norm statistics, without running ``model.init``.

    (Eager initializers compile one small program per op and shape: slow on a busy CPU.)
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
        if name in ("scale", "var"):
            return jnp.asarray(1.0 + 0.2 * rng.random(s.shape), s.dtype)
        return jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# --------------------------------------------------------------------------------------------
# CIFAR ResNet-20: logits of the vmapped form equal those of the folded form.


@pytest.fixture(scope="module")
def resnet20():
    model = get_model("resnet20", 10)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _random_variables(model, x)

    @jax.jit
    def logits(params, batch_stats, x):
        with vmapped_branches():  # active while jit traces
            return model.apply({"params": params, "batch_stats": batch_stats}, x)

    # The paper's thresholds nest (δ_k = 0.05·k) and α_k depends on δ_k only, so the t_ex=2
    # expansion is the first two branches of the t_ex=4 one: quantize (slow to compile) once.
    stacked4 = tern_jax.quantize_params(
        variables["params"], [Rule(r".*/kernel", t_ex=4)], stacked=True
    )
    return model, variables, x, logits, stacked4


@pytest.mark.parametrize("t_ex", [2, 4])
def test_resnet20_vmapped_logits_equal_folded(resnet20, t_ex):
    model, variables, x, logits, stacked4 = resnet20
    is_kernel = lambda path, _: path[-1].key == "kernel"
    stacked = jax.tree_util.tree_map_with_path(
        lambda p, a: a[:t_ex] if is_kernel(p, a) else a, stacked4
    )
    head = variables["params"]["head"]
    np.testing.assert_array_equal(  # the slice is what quantize_params gives for this t_ex
        stacked["head"]["kernel"],
        tern_jax.quantize_params(head, [Rule("kernel", t_ex=t_ex)], stacked=True)["kernel"],
    )
    np.testing.assert_array_equal(stacked["head"]["bias"], head["bias"])
    assert stacked["stage2_block0"]["conv1"]["kernel"].shape == (t_ex, 3, 3, 16, 32)
    # What quantize_params(..., stacked=False) returns, Σ_k Ŵ_k (summed in numpy: no compiles).
    folded = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(np.asarray(a).sum(axis=0)) if is_kernel(p, a) else a, stacked
    )
    # Same shapes for every t_ex: the folded program compiles once for both cases.
    y_folded = logits(folded, variables["batch_stats"], x)
    y_vmapped = logits(stacked, variables["batch_stats"], x)
    assert y_vmapped.shape == (2, 10)
    assert _rel_err(y_vmapped, y_folded) < 1e-4


def test_normal_kernels_are_untouched(resnet20):
    model, variables, x, _, _ = resnet20
    q = variables["params"]  # every kernel has its layer's own shape

    def f(params):
        return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)

    plain = str(jax.make_jaxpr(f)(q))
    with vmapped_branches():
        intercepted = str(jax.make_jaxpr(f)(q))
    assert intercepted == plain  # the very same computation, op for op


# --------------------------------------------------------------------------------------------
# Every supported layer, with the settings flax lets it take.


def _ternary_stack(shape: tuple[int, ...], t_ex: int, seed: int = 0) -> np.ndarray:
    """Random ternary kernels ``α_k·c_k``, ``c_k ∈ {-1, 0, 1}``, stacked: ``(t_ex, *shape)``.

    Built in numpy: the layers' arithmetic is what is tested here, not the quantizer.
    """
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=(t_ex, *shape))
    alphas = 0.5 / 2.0 ** np.arange(t_ex)
    return (alphas.reshape((t_ex,) + (1,) * len(shape)) * codes).astype(np.float32)


def _check_layer(layer: nn.Module, x: jax.Array, t_ex: int = 3, rtol: float = 1e-5, **kw):
    """Folded (flax's layer) vs vmapped (under the context) outputs of one layer."""
    params = dict(_random_variables(layer, x)["params"])
    stack = _ternary_stack(params["kernel"].shape, t_ex)
    folded = {**params, "kernel": stack.sum(axis=0)}
    stacked = {**params, "kernel": stack}
    assert expected_kernel_rank(layer) == params["kernel"].ndim

    @jax.jit  # one small program for both forms (faster than op-by-op on CPU)
    def both(folded, stacked, x):
        y_folded = layer.apply({"params": folded}, x, **kw)
        with vmapped_branches():
            y_vmapped = layer.apply({"params": stacked}, x, **kw)
        return y_folded, y_vmapped

    y_folded, y_vmapped = both(folded, stacked, x)
    assert y_vmapped.shape == y_folded.shape
    assert y_vmapped.dtype == y_folded.dtype
    assert _rel_err(y_vmapped, y_folded) < rtol
    return y_vmapped


_X4 = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 9, 4)), jnp.float32)

CONV_CASES = {
    "same": dict(padding="SAME"),
    "valid_stride2": dict(padding="VALID", strides=2),
    "explicit_pairs": dict(padding=((1, 2), (0, 1)), strides=(2, 1)),
    "int_padding_dilated": dict(padding=2, kernel_dilation=2),
    "input_dilation": dict(padding=((2, 1), (1, 1)), input_dilation=(2, 1)),
    "groups": dict(feature_group_count=2),
    "no_bias": dict(use_bias=False),
    "circular": dict(padding="CIRCULAR"),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_settings(case):
    _check_layer(nn.Conv(6, (3, 3), **CONV_CASES[case]), _X4)


def test_conv_extra_batch_axes_and_1d():
    _check_layer(nn.Conv(5, (3, 3)), _X4.reshape(1, 2, 9, 9, 4))
    _check_layer(nn.Conv(5, 3, padding="CAUSAL"), _X4[:, 0])  # 1-D, int kernel_size


def test_dtype_promotion_follows_flax():
    x16 = _X4.astype(jnp.bfloat16)
    # dtype=None: promoted from bf16 inputs and f32 params to f32, as flax does
    y = _check_layer(nn.Conv(6, (3, 3)), x16)
    assert y.dtype == jnp.float32
    # dtype=bfloat16: computed in bf16; the branch sum rounds differently from the fold
    y = _check_layer(nn.Conv(6, (3, 3), dtype=jnp.bfloat16), _X4, rtol=3e-2)
    assert y.dtype == jnp.bfloat16
    y = _check_layer(nn.Dense(6, dtype=jnp.bfloat16), _X4, rtol=3e-2)
    assert y.dtype == jnp.bfloat16


def test_dense_family_and_other_convs():
    _check_layer(nn.Dense(7), _X4)  # 4-D input: contracts the last axis
    _check_layer(nn.Dense(7, use_bias=False), _X4[:, 0, 0])
    _check_layer(nn.DenseGeneral((3, 2), axis=(-2, -1)), _X4)
    _check_layer(nn.DenseGeneral(3, axis=-1, batch_dims=(0,)), _X4[:, 0])
    _check_layer(nn.Einsum((4, 5), "bhwc,cd->bhwd"), _X4)
    _check_layer(nn.ConvTranspose(5, (3, 3), strides=(2, 2)), _X4)
    _check_layer(nn.ConvTranspose(5, (3, 3), padding="VALID", transpose_kernel=True), _X4)
    _check_layer(nn.ConvLocal(3, (3, 3), padding="VALID"), _X4)


# --------------------------------------------------------------------------------------------
# A small model: mixed stacked/normal kernels, gradients, jit, lifted modules.


class SmallNet(nn.Module):
    def setup(self):  # a setup-defined layer as well as compact ones
        self.head = nn.Dense(5, name="head")

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), strides=2, padding="SAME", use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        x = nn.relu(x)
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return self.head(x)


@pytest.fixture(scope="module")
def small():
    model = SmallNet()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 8, 8, 3)), jnp.float32)
    labels = jnp.array([0, 1, 2, 3])
    return model, _random_variables(model, x), x, labels


def test_latent_gradients_agree(small):
    model, variables, x, labels = small
    rules = [Rule(r".*/kernel", t_ex=3)]

    def loss(params, stacked: bool):
        q = tern_jax.quantize_params(params, rules, stacked=stacked)
        with vmapped_branches():
            logits, updates = model.apply(
                {"params": q, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), updates

    @jax.jit  # both forms in one program: one compilation
    def both(params):
        grad = jax.value_and_grad(loss, has_aux=True)
        return grad(params, False), grad(params, True)

    ((l_f, upd_f), g_f), ((l_v, upd_v), g_v) = both(variables["params"])
    assert abs(float(l_v) - float(l_f)) < 1e-5 * max(1.0, abs(float(l_f)))
    for a, b in zip(jax.tree_util.tree_leaves(upd_v), jax.tree_util.tree_leaves(upd_f)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # BatchNorm statistics
    paths_v, _ = jax.tree_util.tree_flatten_with_path(g_v)
    for (path, a), b in zip(paths_v, jax.tree_util.tree_leaves(g_f)):
        assert a.shape == b.shape, path  # gradients are w.r.t. the latent (unstacked) weights
        assert float(jnp.max(jnp.abs(b))) > 0, path
        assert _rel_err(a, b) < 1e-4, path


def test_mixed_kernels_and_context_around_first_jit_call(small):
    model, variables, x, _ = small
    rules = [Rule(r"head/kernel", None), Rule(r".*/kernel", t_ex=2)]  # head stays normal
    folded = tern_jax.quantize_params(variables["params"], rules)
    stacked = tern_jax.quantize_params(variables["params"], rules, stacked=True)
    assert stacked["head"]["kernel"].shape == variables["params"]["head"]["kernel"].shape
    assert stacked["conv2"]["kernel"].shape[0] == 2

    apply = jax.jit(
        lambda p: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    )
    y_folded = apply(folded)
    with vmapped_branches():  # the first call with these shapes traces inside the context
        y_vmapped = apply(stacked)
    assert _rel_err(y_vmapped, y_folded) < 1e-5
    with pytest.raises(ScopeParamShapeError):  # without the context flax rejects the stack
        model.apply({"params": stacked, "batch_stats": variables["batch_stats"]}, x)


def test_lifted_scan_over_dense_layers():
    class Cell(nn.Module):
        @nn.compact
        def __call__(self, c, _):
            return nn.tanh(nn.Dense(6, name="dense")(c)), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Cell, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return scan(name="cells")(x, None)[0]

    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6)), jnp.float32)
    params = _random_variables(Stack(), x)["params"]
    rules = [Rule(r".*/kernel", t_ex=2)]
    # The scanned kernel (3, 6, 6) is ternarized as one tensor; its stack is (2, 3, 6, 6): move
    # the branch axis inside the scan axis so that each step sees (2, 6, 6).
    folded = tern_jax.quantize_params(params, rules)
    stacked = tern_jax.quantize_params(params, rules, stacked=True)
    stacked["cells"]["dense"]["kernel"] = jnp.moveaxis(stacked["cells"]["dense"]["kernel"], 0, 1)
    y_folded = Stack().apply({"params": folded}, x)
    with vmapped_branches():
        y_vmapped = Stack().apply({"params": stacked}, x)
    assert _rel_err(y_vmapped, y_folded) < 1e-5


# --------------------------------------------------------------------------------------------
# Unsupported layers: a clear error, and no effect when their kernel is normal.


class CustomLinear(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 3))
        return jnp.tanh(x @ kernel)  # not something vmapped_branches may assume linear


class ClampedDense(nn.Dense):
    def __call__(self, x):  # overrides __call__: no longer known to be linear in the kernel
        return jnp.clip(super().__call__(x), -1.0, 1.0)


UNSUPPORTED = {
    "custom_module": CustomLinear(),
    "overridden_call": ClampedDense(3),
    "custom_dot_general": nn.Dense(3, dot_general=lambda *a, **k: jax.lax.dot_general(*a, **k)),
}


@pytest.mark.parametrize("layer", list(UNSUPPORTED.values()), ids=list(UNSUPPORTED))
def test_unsupported_layer_with_stacked_kernel_raises(layer):
    x = jnp.ones((2, 4))
    params = _random_variables(layer, x)["params"]
    stacked = tern_jax.quantize_params(params, [Rule("kernel", t_ex=2)], stacked=True)
    with vmapped_branches():
        y = layer.apply({"params": params}, x)  # normal kernel: runs as usual
        np.testing.assert_array_equal(y, layer.apply({"params": params}, x))
        with pytest.raises(NotImplementedError, match=re.escape(type(layer).__name__)) as info:
            layer.apply({"params": stacked}, x)
    assert "stacked=False" in str(info.value) and "(2, 4, 3)" in str(info.value)
