"""Specification of tern_jax.core: the quantizer, its gradient, residual expansion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference import ternarize_np

import tern_jax
from tern_jax import core

SHAPES = [(7,), (16, 10), (3, 3, 8, 16), (5, 5, 3, 4)]


def _weights(shape, seed=0, scale=0.2, dtype=jnp.float32):
    return (jax.random.normal(jax.random.key(seed), shape) * scale).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method,threshold", [("paper", 0.05), ("paper", 0.3), ("twn", 0.7),
                                              ("absmean", None)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_codes_and_scales_match_numpy_reference(shape, method, threshold, per_channel):
    w = _weights(shape, seed=len(shape))
    axis = -1 if per_channel else None
    if per_channel and len(shape) == 1:  # one scale per weight: refused, nothing is shared
        with pytest.raises(ValueError, match="names every axis of the weight of shape"):
            tern_jax.ternary_codes(w, threshold=threshold, axis=axis, method=method)
        return
    codes, scale = tern_jax.ternary_codes(w, threshold=threshold, axis=axis, method=method)
    ref_codes, ref_alpha = ternarize_np(np.asarray(w), threshold, axis, method)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    assert codes.dtype == jnp.int8
    np.testing.assert_allclose(np.asarray(scale).reshape(-1), np.reshape(ref_alpha, -1), rtol=1e-5)
    out = tern_jax.ternarize(w, threshold=threshold, axis=axis, method=method)
    expected = ref_codes * np.reshape(ref_alpha, (1,) * (len(shape) - 1) + (-1,))
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("per_channel", [False, True])
def test_bfloat16_matches_reference_on_the_rounded_weights(shape, per_channel):
    w = _weights(shape, dtype=jnp.bfloat16)
    axis = -1 if per_channel else None
    out = tern_jax.ternarize(w, axis=axis)
    assert out.dtype == jnp.bfloat16
    ref_codes, ref_alpha = ternarize_np(np.asarray(w, np.float32), 0.05, axis)
    expected = ref_codes * np.reshape(ref_alpha, (1,) * (len(shape) - 1) + (-1,))
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=1e-2)
    np.testing.assert_array_equal(np.sign(np.asarray(out, np.float32)), ref_codes)


def test_output_takes_exactly_three_values_per_tensor():
    out = np.asarray(tern_jax.ternarize(_weights((64, 32))))
    values = np.unique(out)
    assert len(values) == 3 and values[1] == 0 and values[0] == -values[2]


def test_threshold_is_a_fraction_of_the_largest_magnitude():
    w = jnp.array([[1.0, -0.5, 0.04, -0.06], [0.049, 0.05, 0.2, 0.0]])
    codes, alpha = tern_jax.ternary_codes(w, threshold=0.05)  # Δ = 0.05
    np.testing.assert_array_equal(np.asarray(codes), [[1, -1, 0, -1], [0, 1, 1, 0]])
    np.testing.assert_allclose(float(alpha), np.mean([1.0, 0.5, 0.06, 0.05, 0.2]), rtol=1e-6)


def test_all_zero_tensor_gives_zeros_not_nan():
    for method in core.METHODS:
        out = tern_jax.ternarize(jnp.zeros((4, 5)), method=method)
        np.testing.assert_array_equal(np.asarray(out), 0.0)
        out = tern_jax.ternarize(jnp.zeros((3, 4)), axis=-1, method=method)
        np.testing.assert_array_equal(np.asarray(out), 0.0)
    g = jax.grad(lambda w: jnp.sum(tern_jax.ternarize(w)))(jnp.zeros((3, 3)))
    np.testing.assert_array_equal(np.asarray(g), np.ones((3, 3)))  # 1 · [|0| < 1], no NaN


def test_zero_channel_gives_zero_channel_per_channel():
    w = _weights((4, 3)).at[:, 1].set(0.0)
    out = np.asarray(tern_jax.ternarize(w, axis=-1))
    np.testing.assert_array_equal(out[:, 1], 0.0)
    # the other channels are quantized on their own statistics, untouched by the zero channel
    for c in (0, 2):
        np.testing.assert_array_equal(out[:, c], np.asarray(tern_jax.ternarize(w[:, c])))
        assert np.count_nonzero(out[:, c]) > 0


def test_non_finite_weights_poison_the_tensor_or_channel_under_jit():
    # outside jit they are refused (tests/test_refused_inputs_core.py); traced, they poison
    w = _weights((4, 3)).at[0, 2].set(jnp.inf)
    assert np.all(np.isnan(np.asarray(jax.jit(tern_jax.ternarize)(w))))
    per_channel = np.asarray(jax.jit(lambda w: tern_jax.ternarize(w, axis=-1))(
        w.at[0, 2].set(jnp.nan)))
    assert np.all(np.isnan(per_channel[:, 2])) and np.all(np.isfinite(per_channel[:, :2]))


@pytest.mark.parametrize("method", core.METHODS)
def test_gradient_is_the_straight_through_mask(method):
    w = _weights((6, 5), scale=1.0)
    upstream = jax.random.normal(jax.random.key(3), w.shape)
    g = jax.grad(lambda w: jnp.sum(tern_jax.ternarize(w, method=method) * upstream))(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(upstream * (jnp.abs(w) < 1)), rtol=1e-6)
    assert 0 < np.mean(np.abs(np.asarray(w)) >= 1) < 1  # the mask really cuts something


def test_expansion_gradient_sums_the_branch_estimates():
    w = _weights((6, 5), scale=1.0)
    upstream = jax.random.normal(jax.random.key(3), (3, 6, 5))
    g = jax.grad(lambda w: jnp.sum(tern_jax.expand(w, thresholds=(0.05, 0.1, 0.2)) * upstream))(w)
    expected = upstream.sum(0) * (jnp.abs(w) < 1)
    np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-6)
    g_fold = jax.grad(lambda w: jnp.sum(tern_jax.fold(tern_jax.expand(w)) * upstream[0]))(w)
    np.testing.assert_allclose(np.asarray(g_fold), np.asarray(2 * upstream[0] * (jnp.abs(w) < 1)))


@pytest.mark.parametrize("per_channel", [False, True])
def test_expansion_branches_are_the_paper_quantizer_at_each_threshold(per_channel):
    w = _weights((3, 3, 4, 8))
    axis = -1 if per_channel else None
    thresholds = (0.05, 0.1, 0.15, 0.2)
    stack = np.asarray(tern_jax.expand(w, thresholds=thresholds, axis=axis))
    assert stack.shape == (4, 3, 3, 4, 8)
    for k, t in enumerate(thresholds):
        np.testing.assert_array_equal(stack[k], np.asarray(tern_jax.ternarize(w, threshold=t,
                                                                              axis=axis)))
    folded = np.asarray(tern_jax.fold(tern_jax.expand(w, thresholds=thresholds, axis=axis)))
    # at most 2·t_ex + 1 levels per tensor, or per output channel when the scales are per
    # channel (then the channels' levels differ, so the tensor holds more than 9 values)
    columns = [folded[..., c] for c in range(folded.shape[-1])] if per_channel else [folded]
    for values in columns:
        assert 3 <= len(np.unique(values)) <= 2 * 4 + 1
    assert (len(np.unique(folded)) > 9) if per_channel else (len(np.unique(folded)) == 9)


def test_expansion_codes_rebuild_the_stack_exactly():
    w = _weights((5, 7))
    levels, scales = tern_jax.expansion_codes(w, thresholds=(0.05, 0.1))
    assert levels.dtype == jnp.int8 and scales.shape == (2, 1, 1)  # (t_ex, *broadcast)
    assert set(np.unique(np.asarray(levels))) <= {-2, -1, 0, 1, 2}
    stack = tern_jax.expand(w, thresholds=(0.05, 0.1))
    np.testing.assert_array_equal(np.asarray(tern_jax.dequantize(levels, scales, fold=False)),
                                  np.asarray(stack))
    np.testing.assert_array_equal(np.asarray(tern_jax.dequantize(levels, scales)),
                                  np.asarray(tern_jax.fold(stack)))


def _conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("op,x_shape,w_shape", [
    (_conv, (2, 8, 8, 4), (3, 3, 4, 6)),
    (lambda x, k: x @ k, (5, 12), (12, 7)),
])
def test_vmapped_and_folded_expansion_agree(op, x_shape, w_shape):
    x = jax.random.normal(jax.random.key(1), x_shape)
    kernels = tern_jax.expand(_weights(w_shape), thresholds=(0.05, 0.1, 0.15, 0.2))
    per_branch = tern_jax.expanded_apply(op, x, kernels)
    folded = tern_jax.expanded_apply(op, x, kernels, folded=True)
    loop = sum(op(x, kernels[k]) for k in range(4))
    np.testing.assert_allclose(np.asarray(per_branch), np.asarray(loop), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(per_branch), np.asarray(folded), rtol=1e-5, atol=1e-5)


def test_works_under_jit_vmap_and_grad():
    ws = _weights((3, 8, 4))
    batched = jax.jit(jax.vmap(tern_jax.ternarize))(ws)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(tern_jax.ternarize(ws[i])))
    ws = ws.at[0, 0, :2].set(jnp.array([1.5, -1.0]))  # |W| >= 1: the gate shuts
    g = jax.jit(jax.grad(lambda w: jnp.sum(jax.vmap(tern_jax.ternarize)(w) ** 2)))(ws)
    # the exact straight-through gradient: ∂(Σ Ŵ²)/∂Ŵ = 2·Ŵ, gated by [|W| < 1], model by model
    expected = [2 * np.asarray(tern_jax.ternarize(w)) * (np.abs(np.asarray(w)) < 1) for w in ws]
    np.testing.assert_allclose(np.asarray(g), np.stack(expected), rtol=1e-6)
    assert np.all(np.asarray(g)[0, 0, :2] == 0) and np.count_nonzero(np.asarray(g)) > 48


@pytest.mark.parametrize("thresholds,message", [
    (0.0, "outside \\(0, 1\\)"), (1.0, "outside \\(0, 1\\)"), (-0.1, "outside"),
    ((0.1, 0.05), "strictly increasing"), ((0.05, 0.05), "strictly increasing"), ((), "empty"),
])
def test_bad_thresholds_are_rejected(thresholds, message):
    with pytest.raises(ValueError, match=message):
        tern_jax.expand(_weights((4, 4)), thresholds=thresholds)


def test_bad_method_axis_and_dtype_are_rejected():
    with pytest.raises(ValueError, match="unknown ternarization method 'ttq'"):
        tern_jax.ternarize(_weights((4, 4)), method="ttq")
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        tern_jax.ternarize(_weights((4, 4)), axis=2)
    with pytest.raises(TypeError, match="floating-point"):
        tern_jax.ternarize(jnp.ones((4, 4), jnp.int32))
    with pytest.raises(ValueError, match="absmean' takes no threshold"):
        tern_jax.ternarize(_weights((4, 4)), method="absmean", threshold=0.1)


def test_one_integer_test_for_the_package():
    from tern_jax import _args

    assert _args.is_int is core.is_int
    assert [core.is_int(v) for v in (3, np.int64(-2), np.uint8(1), True, np.True_, 3.0,
                                     jnp.int32(3), "3", None)] \
        == [True, True, True, False, False, False, False, False, False]
    with pytest.raises(ValueError, match=r"t_ex must be a positive integer, got True"):
        tern_jax.ternarize(_weights((4, 4)), t_ex=True)
    with pytest.raises(TypeError, match=r"axis must be None, an int or a tuple of ints"):
        tern_jax.ternarize(_weights((4, 4)), axis=1.0)
    error = _args.argument_error(ValueError, "f", "n", "an integer >= 1", 0)
    assert type(error) is ValueError and str(error) == "f: n must be an integer >= 1, got 0"


def test_fold_and_decode_sum_the_branches_in_the_same_order():
    w = _weights((32, 24))
    codes = tern_jax.encode(w, t_ex=4, axis=-1)
    stack = tern_jax.decode(codes, fold=False)
    by_hand = stack[0] + stack[1] + stack[2] + stack[3]
    for folded in (tern_jax.fold(stack), tern_jax.decode(codes),
                   tern_jax.ternarize(w, t_ex=4, axis=-1)):
        np.testing.assert_array_equal(np.asarray(folded), np.asarray(by_hand))


def test_threshold_scale_one_is_the_plain_quantizer_bit_for_bit():
    w = _weights((3, 3, 8, 16))
    for axis in (None, -1):
        np.testing.assert_array_equal(
            np.asarray(tern_jax.ternarize(w, axis=axis, threshold_scale=1.0)),
            np.asarray(tern_jax.ternarize(w, axis=axis)))
        np.testing.assert_array_equal(
            np.asarray(tern_jax.expand(w, axis=axis, threshold_scale=1.0)),
            np.asarray(tern_jax.expand(w, axis=axis)))


def test_threshold_scale_multiplies_delta_and_zero_keeps_every_nonzero_weight():
    w = _weights((16, 10)).at[0, 0].set(0.0)
    half = tern_jax.ternarize(w, threshold=0.3, threshold_scale=0.5)
    ref_codes, ref_alpha = ternarize_np(np.asarray(w), 0.15, None, "paper")
    np.testing.assert_allclose(np.asarray(half), ref_codes * ref_alpha, rtol=1e-6)
    zero = np.asarray(tern_jax.ternarize(w, threshold_scale=0.0))
    a = np.abs(np.asarray(w))
    np.testing.assert_allclose(zero, np.sign(np.asarray(w)) * a[a > 0].mean(), rtol=1e-6)
    assert zero[0, 0] == 0 and np.count_nonzero(zero) == w.size - 1


def test_threshold_scale_is_traced_and_gets_no_gradient():
    w = _weights((8, 6))
    f = jax.jit(lambda w, s: tern_jax.expand(w, thresholds=(0.2, 0.4), threshold_scale=s))
    for s in (0.25, 1.0):
        np.testing.assert_array_equal(
            np.asarray(f(w, jnp.float32(s))),
            np.asarray(tern_jax.expand(w, thresholds=(0.2, 0.4), threshold_scale=s)))
    assert f._cache_size() == 1  # one compilation for every scale
    gw, gs = jax.grad(lambda w, s: jnp.sum(tern_jax.ternarize(w, threshold_scale=s) ** 3),
                      argnums=(0, 1))(w, jnp.float32(0.5))
    assert float(gs) == 0.0
    q = tern_jax.ternarize(w, threshold_scale=0.5)
    np.testing.assert_allclose(np.asarray(gw), 3 * np.asarray(q) ** 2, rtol=1e-6)


@pytest.mark.parametrize("scale,error,message", [
    (1.5, ValueError, "outside \\[0, 1\\]"), (-0.1, ValueError, "outside \\[0, 1\\]"),
    (True, TypeError, "bool"), (jnp.ones(3), ValueError, "float scalar"),
    (jnp.int32(1), ValueError, "float scalar"),
])
def test_bad_threshold_scale_is_rejected(scale, error, message):
    with pytest.raises(error, match=message):
        tern_jax.ternarize(_weights((4, 4)), threshold_scale=scale)
