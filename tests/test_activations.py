"""8-bit activations (W1.58A8): the quantizer, the Rule option, and how linen, NNX and the
trainer apply it."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from tern_jax.activations import (
    active_rules,
    quantize_activations,
    quantize_inputs,
    quantized_activations,
)
from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.nnx_utils import ternarized
from tern_jax.packing import SUPER_BLOCK
from tern_jax.presets import TRANSFORMER_RULES
from tern_jax.rules import ACTIVATION_MODES, Rule, UnusedRuleWarning, match_params
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
    assert ACTIVATION_MODES == ("int8", "int8_block") and SUPER_BLOCK == 256
    assert [Rule(r".*kernel", activations=m).activations for m in ACTIVATION_MODES] \
        == list(ACTIVATION_MODES)
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
    task = LanguageModel(CONFIG, 8)
    stack = ModelStack(task, (Slot("tern_a8", 0), Slot("tern", 0)), None,
                       presets=TRANSFORMER_RULES)
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


def _quantized_layers(model, rules):
    """``{kernel path: mode}`` of the layers of ``quantize_inputs(model, rules)`` that quantize."""
    out = {}
    for path, module in nnx.iter_graph(quantize_inputs(model, rules, unused="ignore")):
        mode = getattr(getattr(module, "dot_general", None), "keywords", {}).get("mode")
        if mode is not None:
            out["/".join(map(str, path)) + "/kernel"] = mode
    return out


def test_a_layer_takes_the_activations_of_the_rule_that_governs_its_kernel():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    rules = (Rule(r".*/attn/(query|key)/kernel", None),  # full precision, plain inputs
             Rule(r"blocks/.*", strict=False, activations="int8"),  # passes over the norms
             Rule(r"(.*/)?(kernel|embedding)", activations="int8_block"))
    governing = {m.path: m.rule for m in match_params(nnx.state(model, nnx.Param), rules)[0]}
    layers = _quantized_layers(model, rules)
    expected = {path: rule.activations for path, rule in governing.items()
                if path.endswith("/kernel") and rule is not None and rule.activations}
    assert layers == expected
    assert layers["blocks/0/attn/value/kernel"] == layers["blocks/0/mlp/up/kernel"] == "int8"
    assert layers["head/kernel"] == "int8_block"
    assert governing["blocks/0/attn_norm/scale"] is None
    assert "blocks/0/attn/query/kernel" not in layers


def test_an_activations_rule_that_governs_no_layer_is_reported_as_unused_weight_rules_are():
    linear = nnx.Linear(256, 8, rngs=nnx.Rngs(0))
    rules = [Rule(r"kernel", None, activations="int8"),
             Rule(r"embedding", None, activations="int8_block")]  # no such layer
    with pytest.warns(UnusedRuleWarning, match=r"no layer.*\['embedding'\]"):
        quantize_inputs(linear, rules)
    with pytest.raises(ValueError, match=r"rules matched no layer.*\['embedding'\]"):
        quantize_inputs(linear, rules, unused="error")
    with pytest.raises(ValueError, match="quantize_inputs: unused must be"):
        quantize_inputs(linear, rules, unused="loud")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quantize_inputs(linear, rules, unused="ignore") is not linear
        quantize_inputs(linear, rules[:1])  # every rule used: silent
        quantize_inputs(linear, [Rule(r"embedding", None)])  # no activations: the weights' job


def test_the_linen_context_reports_its_unused_activations_rules_on_leaving():
    net, x = _Net(), _x((3, 10))
    params = net.init(jax.random.key(0), x)["params"]
    rules = (Rule(r"body/kernel", None, activations="int8"),
             Rule(r"tail/kernel", None, activations="int8"))
    with pytest.warns(UnusedRuleWarning, match=r"no layer.*\['tail/kernel'\]"):
        with quantized_activations(rules):
            net.apply({"params": params}, x)
    with pytest.raises(ValueError, match="tail/kernel"):
        with quantized_activations(rules, unused="error"):
            net.apply({"params": params}, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quantized_activations(rules[:1]):
            net.apply({"params": params}, x)


def test_nnx_layers_in_the_context_count_for_it_and_are_reported_once():
    linear, x = nnx.Linear(256, 8, rngs=nnx.Rngs(0)), _x((2, 256))
    used = (Rule(r"kernel", None, activations="int8"),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quantized_activations(used):
            y = quantize_inputs(linear, active_rules())(x)
    np.testing.assert_array_equal(y, quantize_inputs(linear, used)(x))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quantized_activations(used + (Rule(r"bias", None, activations="int8"),)):
            quantize_inputs(linear, active_rules())
    assert [(w.category, str(w.message).split(";")[0]) for w in caught] == [
        (UnusedRuleWarning, "rules matched no layer for their 8-bit activations: ['bias']")]
