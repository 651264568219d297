"""Specification of tern_jax.Rule and quantize_params over linen and nnx parameter pytrees."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import tern_jax
from tern_jax.rules import UnusedRuleWarning


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem_conv")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="body_conv")(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(4, name="head")(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.stem_conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem_conv(x)))
        return self.head(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def linen_params():
    return LinenNet().init(jax.random.key(0), jnp.ones((1, 6, 6, 1)))["params"]


def _is_ternary(a):
    return len(np.unique(np.asarray(a))) <= 3


def test_default_rules_ternarize_every_kernel_and_nothing_else(linen_params):
    q = tern_jax.quantize_params(linen_params)
    for name in ("stem_conv", "body_conv", "head"):
        assert _is_ternary(q[name]["kernel"])
        np.testing.assert_array_equal(q[name]["bias"], linen_params[name]["bias"])


def test_first_matching_rule_wins_and_none_keeps_full_precision(linen_params):
    rules = [tern_jax.Rule(r"head/kernel", None), tern_jax.Rule(r".*/kernel")]
    q = tern_jax.quantize_params(linen_params, rules)
    np.testing.assert_array_equal(q["head"]["kernel"], linen_params["head"]["kernel"])
    assert _is_ternary(q["stem_conv"]["kernel"]) and _is_ternary(q["body_conv"]["kernel"])


def test_pattern_must_match_the_whole_path(linen_params):
    rules = [tern_jax.Rule(r"conv/kernel")]  # a substring of ".../stem_conv/kernel" only
    with pytest.raises(ValueError, match=r"matched no parameter: \['conv/kernel'\]"):
        tern_jax.quantize_params(linen_params, rules, unused="error")


def test_unused_rule_warns_by_default_and_can_be_silenced(linen_params):
    rules = [tern_jax.Rule(r"typo/kernel"), tern_jax.Rule(r".*/kernel")]
    with pytest.warns(UnusedRuleWarning, match="typo/kernel"):
        tern_jax.quantize_params(linen_params, rules)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tern_jax.quantize_params(linen_params, rules, unused="ignore")


def test_rule_matching_a_bias_is_an_error_naming_the_path(linen_params):
    with pytest.raises(ValueError, match=r"'head/bias'.*rank 1"):
        tern_jax.quantize_params(linen_params, [tern_jax.Rule(r"head/.*")])


def test_rule_matching_an_integer_leaf_is_an_error():
    params = {"table": {"kernel": jnp.ones((4, 4), jnp.int32)}}
    with pytest.raises(ValueError, match=r"'table/kernel'.*int32"):
        tern_jax.quantize_params(params, [tern_jax.Rule(r".*kernel")])


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "ternary"}, "unknown method 'ternary'"),
    ({"threshold": 1.5}, "outside \\(0, 1\\)"),
    ({"threshold": 0.0}, "outside \\(0, 1\\)"),
    ({"thresholds": (0.1, 0.05)}, "strictly increasing"),
    ({"t_ex": 0}, "positive integer"),
    ({"t_ex": 3, "thresholds": (0.05, 0.1)}, "disagrees"),
    ({"method": "absmean", "t_ex": 2}, "t_ex=1 only"),
    ({"method": "twn", "t_ex": 2}, "method='paper' only"),
])
def test_bad_rules_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tern_jax.Rule(r".*/kernel", **kwargs)
    with pytest.raises(ValueError, match="not a valid regex"):
        tern_jax.Rule(r"(unclosed")


def test_expansion_rule_derives_the_paper_thresholds():
    assert tern_jax.Rule(".*", t_ex=4).thresholds == (0.05, 0.1, 0.15, 0.2)
    assert tern_jax.Rule(".*", t_ex=2, threshold=0.04).thresholds == (0.04, 0.08)
    assert tern_jax.Rule(".*", thresholds=(0.05, 0.2)).t_ex == 2


def test_expansion_rule_gives_the_folded_kernel(linen_params):
    q = tern_jax.quantize_params(linen_params, [tern_jax.Rule(r".*/kernel", t_ex=2)])
    w = linen_params["body_conv"]["kernel"]
    np.testing.assert_array_equal(q["body_conv"]["kernel"], tern_jax.fold(tern_jax.expand(w)))
    assert 3 < len(np.unique(np.asarray(q["body_conv"]["kernel"]))) <= 5


def test_nnx_state_paths_drop_the_value_suffix_and_keep_the_type():
    model = NnxNet(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    rules = [tern_jax.Rule(r"head/kernel", None), tern_jax.Rule(r"stem_conv/kernel")]
    q = tern_jax.quantize_params(state, rules, unused="error")
    assert type(q) is type(state)
    assert _is_ternary(q["stem_conv"]["kernel"][...])
    np.testing.assert_array_equal(q["head"]["kernel"][...], state["head"]["kernel"][...])


def _sgd_losses(loss_fn, params, steps=25, lr=0.1):
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for _ in range(steps):
        loss, g = grad_fn(params)
        params = jax.tree.map(lambda p, g: p - lr * g, params, g)
        losses.append(float(loss))
    return losses, params


def _toy_data():
    x = jax.random.normal(jax.random.key(1), (32, 6, 6, 1))
    y = (x[:, :3].mean(axis=(1, 2, 3)) > x[:, 3:].mean(axis=(1, 2, 3))).astype(jnp.int32)
    return x, y


def _xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def test_linen_model_trains_on_ternarized_parameters(linen_params):
    x, y = _toy_data()
    model = LinenNet()

    def loss_fn(p):
        return _xent(model.apply({"params": tern_jax.quantize_params(p)}, x), y)

    losses, trained = _sgd_losses(loss_fn, linen_params)
    assert losses[-1] < 0.8 * losses[0]
    # the latent weights moved and stayed full precision
    assert not np.array_equal(trained["body_conv"]["kernel"], linen_params["body_conv"]["kernel"])
    assert len(np.unique(np.asarray(trained["body_conv"]["kernel"]))) > 3


def test_nnx_model_trains_on_ternarized_parameters():
    x, y = _toy_data()
    model = NnxNet(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p):
        m = nnx.merge(graphdef, tern_jax.quantize_params(p), rest)
        return _xent(m(x), y)

    losses, _ = _sgd_losses(loss_fn, params)
    assert losses[-1] < 0.8 * losses[0]


def test_quantize_params_commutes_with_vmap_over_a_model_axis(linen_params):
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), linen_params)
    q = jax.vmap(tern_jax.quantize_params)(stacked)
    single = tern_jax.quantize_params(jax.tree.map(lambda a: 2 * a, linen_params))
    np.testing.assert_allclose(q["head"]["kernel"][1], single["head"]["kernel"], rtol=1e-6)


@pytest.mark.parametrize("presets", ["PRESETS", "TRANSFORMER_RULES"])
def test_full_precision_preset_keeps_every_weight(presets):
    # None would mean the default rules, which ternarize every kernel: the fp preset must not
    import tern_jax.presets as p

    params = {"conv": {"kernel": jnp.linspace(-1.0, 1.0, 36).reshape(3, 3, 2, 2),
                       "bias": jnp.ones(2)},
              "embed": {"embedding": jnp.linspace(-2.0, 2.0, 12).reshape(4, 3)}}
    rules = getattr(p, presets)[p.FULL_PRECISION]
    out = tern_jax.quantize_params(params, rules, unused="error")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), out, params)
    # one form of full precision: the preset's rules themselves, which keep every parameter
    assert p.preset_rules(p.FULL_PRECISION, getattr(p, presets)) == p.FULL_PRECISION_RULES
    assert p.is_full_precision_rules(rules)
    assert not any(p.is_full_precision_rules(r)
                   for name, r in getattr(p, presets).items() if name != p.FULL_PRECISION)
