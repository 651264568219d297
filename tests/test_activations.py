"""8-bit activations (W1.58A8): the quantizer, the Rule option, and how linen, NNX and the
trainer apply it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from tern_jax.activations import quantize_activations, quantize_inputs, quantized_activations
from tern_jax.models.transformer import TransformerConfig
from tern_jax.nnx_utils import ternarized
from tern_jax.presets import TRANSFORMER_RULES
from tern_jax.rules import Rule
from tern_jax.train import Slot
from tern_jax.train.language_model import LanguageModel
from tern_jax.train.stack import ModelStack


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape) * jnp.linspace(0.1, 3.0, shape[-1])


def test_per_token_int8_has_127_levels_of_the_tokens_absmax():
    x = _x((4, 5, 64))
    q = quantize_activations(x, "int8")
    scale = jnp.max(jnp.abs(x), -1, keepdims=True) / 127
    levels = q / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert float(jnp.max(jnp.abs(levels))) == pytest.approx(127, abs=1e-4)
    assert np.all(np.abs(q - x) <= scale / 2 + 1e-6)
    assert len(np.unique(np.round(np.asarray(levels[0, 0])))) > 20


def test_the_gradient_goes_straight_through():
    x = _x((3, 256))
    w = jax.random.normal(jax.random.key(1), (256, 8))
    grad = jax.grad(lambda x: jnp.sum(quantize_activations(x, "int8_block") @ w))(x)
    np.testing.assert_allclose(grad, jnp.broadcast_to(jnp.sum(w, 1), x.shape), rtol=1e-6)


def test_blocks_of_256_are_per_token_quantization_of_each_block():
    x = _x((2, 3, 512))
    blocks = quantize_activations(x, "int8_block")
    halves = [quantize_activations(x[..., i:i + 256], "int8") for i in (0, 256)]
    np.testing.assert_array_equal(blocks, jnp.concatenate(halves, -1))
    assert not np.array_equal(blocks, quantize_activations(x, "int8"))  # the scales differ
    x256 = x[..., :256]
    np.testing.assert_array_equal(quantize_activations(x256, "int8_block"),
                                  quantize_activations(x256, "int8"))
    with pytest.raises(ValueError, match="blocks of 256 input features.*has 100"):
        quantize_activations(x[..., :100], "int8_block")


def test_several_contracted_axes_are_one_token():
    x = _x((2, 4, 8, 32))  # (B, T, heads, head_dim), contracted over the last two
    q = quantize_activations(x, "int8", axes=(-2, -1))
    flat = quantize_activations(x.reshape(2, 4, 256), "int8").reshape(x.shape)
    np.testing.assert_array_equal(q, flat)


def test_the_rule_option_is_checked():
    assert Rule(r".*kernel").activations is None
    with pytest.raises(ValueError, match="activations must be None, 'int8'"):
        Rule(r".*kernel", activations="int4")


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="head")(nn.relu(nn.Dense(16, name="body")(x)))


def test_linen_layers_matched_by_an_activations_rule_get_int8_inputs():
    net, x = _Net(), _x((3, 10))
    params = net.init(jax.random.key(0), x)["params"]
    rules = (Rule(r"body/kernel", None, activations="int8"), Rule(r".*", None))
    with quantized_activations(rules):
        y = net.apply({"params": params}, x)
    body = params["body"]
    h = nn.relu(quantize_activations(x, "int8") @ body["kernel"] + body["bias"])
    expected = h @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y, net.apply({"params": params}, x), rtol=1e-6, atol=1e-7)


def test_a_convolution_quantizes_each_position_over_its_channels():
    conv, x = nn.Conv(4, (3, 3), name="conv"), _x((2, 5, 5, 8))
    params = conv.init(jax.random.key(0), x)["params"]
    with quantized_activations([Rule(r"kernel", None, activations="int8")]):
        y = conv.apply({"params": params}, x)
    expected = conv.apply({"params": params}, quantize_activations(x, "int8"))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y, conv.apply({"params": params}, x), rtol=1e-6, atol=1e-7)


def test_nnx_layers_matched_by_an_activations_rule_get_int8_inputs():
    linear = nnx.Linear(256, 8, rngs=nnx.Rngs(0))
    x = _x((2, 256))
    quantized = quantize_inputs(linear, [Rule(r"kernel", None, activations="int8_block")])
    expected = quantize_activations(x, "int8") @ linear.kernel[...] + linear.bias[...]
    np.testing.assert_allclose(quantized(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(linear(x), x @ linear.kernel[...] + linear.bias[...])
    assert quantize_inputs(linear, [Rule(r"kernel", None)]) is linear


CONFIG = TransformerConfig(max_len=8, d_model=256, num_heads=2, num_layers=1, mlp_ratio=1,
                           mlp="swiglu")


def test_the_trainer_runs_each_variant_with_its_own_activations():
    task = LanguageModel(CONFIG)
    stack = ModelStack(task, (Slot("tern_a8", 0), Slot("tern", 0)), None,
                       model="transformer_llama")
    params = task.init(jax.random.key(0))["params"]
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 256)
    model = nnx.merge(task.graphdef, params)
    for variant, name in enumerate(("tern_a8", "tern")):
        out, _ = jax.jit(lambda p, v: stack.apply(p, {}, {"tokens": tokens}, v, train=False))(
            params, variant)
        expected = ternarized(model, TRANSFORMER_RULES[name])(tokens[:, :-1])
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    a8, _ = stack.apply(params, {}, {"tokens": tokens}, 0, train=False)
    plain, _ = stack.apply(params, {}, {"tokens": tokens}, 1, train=False)
    assert 0 < float(jnp.max(jnp.abs(a8 - plain)))
