"""Specification of the NNX transformer, its ternarization rules, NNX training and sampling."""

import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tern_jax
from tern_jax.models.transformer import (
    Transformer,
    TransformerConfig,
    generate,
    transformer_config,
    truncate_logits,
)
from tern_jax.nnx_utils import param_dict, ternarized, with_params
from tern_jax.presets import EMBEDDINGS_AND_HEAD_FP, TRANSFORMER_RULES, preset_rules
from tern_jax.rules import UnusedRuleWarning

CONFIG = TransformerConfig(max_len=16, d_model=16, num_heads=2, num_layers=2, mlp_ratio=2)
KERNELS = [f"blocks/{i}/{name}/kernel" for i in range(2)
           for name in ("attn/key", "attn/out", "attn/query", "attn/value", "mlp/down", "mlp/up")]
TEXT = b"def add(a, b):\n    return a + b\n\n" * 8

# Compiled forwards: op-by-op (eager) NNX calls compile every primitive and are slow on CPU.
forward = nnx.jit(lambda model, x: model(x))
ternary_forward = nnx.jit(lambda model, x, rules: ternarized(model, rules)(x),
                          static_argnums=2)


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.frombuffer(TEXT, np.uint8)[: 2 * 16].reshape(2, 16), jnp.int32)


def _matches(model, rules):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedRuleWarning)
        matches, _ = tern_jax.match_params(nnx.state(model, nnx.Param), rules)
    return {m.path: m.rule for m in matches}


def test_parameter_paths_and_rank3_attention_kernels(model):
    shapes = {path: leaf.shape for path, leaf in
              ((m.path, m.leaf) for m in tern_jax.match_params(
                  nnx.state(model, nnx.Param), (), unused="ignore")[0])}
    assert shapes["embed/embedding"] == (256, 16)
    assert shapes["head/kernel"] == (16, 256)
    assert shapes["blocks/0/attn/query/kernel"] == (16, 2, 8)  # (d_model, heads, head_dim)
    assert shapes["blocks/1/attn/out/kernel"] == (2, 8, 16)  # (heads, head_dim, d_model)
    assert shapes["blocks/0/mlp/up/kernel"] == (16, 32)
    assert sorted(p for p in shapes if p.endswith("/scale")) == [
        "blocks/0/attn_norm/scale", "blocks/0/mlp_norm/scale", "blocks/1/attn_norm/scale",
        "blocks/1/mlp_norm/scale", "final_norm/scale"]
    assert len(shapes) == 12 + 2 + 5


def test_tied_head_has_no_head_kernel_and_uses_the_embedding():
    tied = Transformer(TransformerConfig(max_len=8, d_model=8, num_heads=2, num_layers=1,
                                         tie_embeddings=True), rngs=nnx.Rngs(1))
    assert not hasattr(tied, "head")
    x = jnp.arange(8, dtype=jnp.int32)[None]
    hidden = nnx.jit(lambda m, x: m.final_norm(m.blocks[0](m.embed(x))))(tied, x)
    np.testing.assert_allclose(forward(tied, x), hidden @ tied.embed.embedding[...].T,
                               rtol=1e-5, atol=1e-6)


def test_whole_network_rules_match_every_kernel_and_the_embedding(model):
    rules = _matches(model, TRANSFORMER_RULES["tern"])
    quantized = sorted(p for p, r in rules.items() if r is not None and r.method is not None)
    assert quantized == sorted(KERNELS + ["embed/embedding", "head/kernel"])
    assert rules["final_norm/scale"] is None


def test_embeddings_and_head_stay_full_precision_with_one_rule(model):
    rules = _matches(model, TRANSFORMER_RULES["tern_fl"])
    assert rules["embed/embedding"] is EMBEDDINGS_AND_HEAD_FP
    assert rules["head/kernel"] is EMBEDDINGS_AND_HEAD_FP
    assert all(rules[k].method == "paper" for k in KERNELS)
    q = ternarized(model, (EMBEDDINGS_AND_HEAD_FP, *TRANSFORMER_RULES["absmean"]))
    np.testing.assert_array_equal(q.embed.embedding[...], model.embed.embedding[...])
    np.testing.assert_array_equal(q.head.kernel[...], model.head.kernel[...])
    assert len(np.unique(np.asarray(q.blocks[0].mlp.up.kernel[...]))) == 3


def test_per_channel_rules_give_rank3_kernels_one_scale_per_output(model):
    rules = _matches(model, TRANSFORMER_RULES["tern_pc"])
    assert rules["blocks/0/attn/query/kernel"].axis == (1, 2)
    assert rules["blocks/0/attn/out/kernel"].axis == -1
    assert rules["embed/embedding"].axis == 0
    w = model.blocks[0].attn.query.kernel[...]  # (16, 2, 8)
    codes = rules["blocks/0/attn/query/kernel"].codes(w)
    assert codes.scales.shape == (1, 1, 2, 8)
    # one output unit (head 1, feature 3) is ternarized with its own statistics
    column = np.abs(np.asarray(w[:, 1, 3]))
    kept = column[column >= 0.05 * column.max()]
    np.testing.assert_allclose(codes.scales[0, 0, 1, 3], kept.mean(), rtol=1e-6)


def test_per_head_rules_give_one_scale_per_head(model):
    rules = _matches(model, TRANSFORMER_RULES["tern_ph"])
    w = model.blocks[1].attn.key.kernel[...]
    codes = rules["blocks/1/attn/key/kernel"].codes(w)
    assert codes.scales.shape == (1, 1, 2, 1)
    head = np.abs(np.asarray(w[:, 0, :]))
    np.testing.assert_allclose(codes.scales[0, 0, 0, 0],
                               head[head >= 0.05 * head.max()].mean(), rtol=1e-6)
    out = rules["blocks/1/attn/out/kernel"].codes(model.blocks[1].attn.out.kernel[...])
    assert out.scales.shape == (1, 2, 1, 1)


def test_every_preset_applies_to_the_model(model):
    params = nnx.state(model, nnx.Param)
    for name in TRANSFORMER_RULES:
        rules = preset_rules(name, TRANSFORMER_RULES)
        eight_bit = any(r.activations for r in rules)  # the inputs too: where the model runs
        out = jax.eval_shape(lambda p, r=rules, a=eight_bit: tern_jax.quantize_params(
            p, r, unused="error", activations_applied=a), params)
        assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, params), name
    with pytest.raises(ValueError, match="unknown variant 'tern_xx'; choose from fp, tern, "):
        preset_rules("tern_xx", TRANSFORMER_RULES)


def test_ternarized_leaves_the_model_unchanged_and_gives_ternary_kernels(model):
    before = np.asarray(model.blocks[0].attn.value.kernel[...]).copy()
    q = ternarized(model, TRANSFORMER_RULES["tern"])
    np.testing.assert_array_equal(model.blocks[0].attn.value.kernel[...], before)
    values = np.unique(np.abs(np.asarray(q.blocks[0].attn.value.kernel[...])))
    assert len(values) == 2 and values[0] == 0.0
    np.testing.assert_array_equal(q.final_norm.scale[...], model.final_norm.scale[...])


def test_gradient_reaches_the_latent_weights_through_the_straight_through_estimator(
        model, tokens):
    rules = TRANSFORMER_RULES["tern"]

    def loss(m):
        return jnp.mean(m(tokens) ** 2)

    @nnx.jit
    def both(model):
        grads = nnx.grad(lambda m: loss(ternarized(m, rules)))(model)
        # the STE gradient of W is the gradient at the ternary weights (all |W| < 1 here)
        return grads, nnx.grad(loss)(ternarized(model, rules))

    grads, expected = both(model)
    g = nnx.to_pure_dict(grads)
    e = nnx.to_pure_dict(expected)
    np.testing.assert_allclose(g["blocks"][0]["attn"]["query"]["kernel"],
                               e["blocks"][0]["attn"]["query"]["kernel"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g["embed"]["embedding"], e["embed"]["embedding"], rtol=1e-5,
                               atol=1e-9)
    assert float(jnp.abs(g["blocks"][0]["attn"]["query"]["kernel"]).sum()) > 0


@pytest.mark.slow  # 30 steps
def test_a_few_ternary_train_steps_lower_the_loss():
    model = Transformer(CONFIG, rngs=nnx.Rngs(3))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    rules = TRANSFORMER_RULES["tern"]
    data = np.frombuffer(TEXT, np.uint8).astype(np.int32)
    batch = jnp.asarray(np.stack([data[i:i + 17] for i in range(0, 128, 16)]))

    @nnx.jit
    def train_step(model, optimizer, batch):
        def loss_fn(model):
            logits = ternarized(model, rules)(batch[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, batch)) for _ in range(30)]
    assert losses[0] == pytest.approx(np.log(256), abs=0.1)  # uniform at initialization
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("preset", ["tern", "tern_pc", "tern_t2"])
def test_packed_checkpoint_reloads_bit_identical_logits(model, tokens, tmp_path, preset):
    rules = TRANSFORMER_RULES[preset]
    expected = ternary_forward(model, tokens, rules)
    path = tern_jax.save_ternary(tmp_path / "lm", nnx.state(model, nnx.Param), rules)
    loaded = tern_jax.load_ternary(path)
    np.testing.assert_array_equal(forward(with_params(model, loaded), tokens), expected)
    fresh = Transformer(CONFIG, rngs=nnx.Rngs(99))  # the NNX way: update a model in place
    nnx.update(fresh, loaded)
    np.testing.assert_array_equal(forward(fresh, tokens), expected)


def test_with_params_names_the_parameter_that_does_not_fit(model):
    params = param_dict(model)
    params["head"]["kernel"] = np.zeros((16, 255), np.float32)
    with pytest.raises(ValueError, match=r"'head/kernel' has shape \(16, 255\)"):
        with_params(model, params)
    del params["head"]
    with pytest.raises(ValueError, match="lacks parameter 'head/kernel'"):
        with_params(model, params)
    with pytest.raises(TypeError, match="flax.nnx.Module"):
        ternarized({"kernel": np.ones((2, 2))})


def test_sampling_is_deterministic_for_a_seed(model):
    a = generate(model, b"def ", steps=24, key=jax.random.key(0))
    b = generate(model, b"def ", steps=24, key=jax.random.key(0))
    c = generate(model, b"def ", steps=24, key=jax.random.key(1))
    assert isinstance(a, bytes) and len(a) == 24
    assert a == b and a != c


def test_greedy_sampling_follows_the_argmax_with_a_sliding_window(model):
    prompt = TEXT[:14]  # the window (16) fills after 2 steps and then slides
    out = generate(model, prompt, steps=5, key=jax.random.key(0), temperature=0.0)
    tokens = list(prompt)
    for _ in range(5):
        window = jnp.asarray(tokens[-16:], jnp.int32)[None]
        tokens.append(int(jnp.argmax(forward(model, window)[0, -1])))
    assert out == bytes(tokens[len(prompt):])


def _steps_logits(model, prompt, out):
    """The model's own next-token logits before each generated token (window of 16).

    Every forward is of 16 tokens (one compile): the model is causal, so the logits after
    ``tokens[:n]`` for ``n <= 16`` are those at position ``n - 1`` of the first 16 tokens."""
    tokens = list(prompt) + list(out)
    assert len(tokens) >= 16
    head = forward(model, jnp.asarray(tokens[:16], jnp.int32)[None])[0]
    return [head[n - 1] if n <= 16 else
            forward(model, jnp.asarray(tokens[n - 16:n], jnp.int32)[None])[0, -1]
            for n in range(len(prompt), len(tokens))]


def test_top_k_one_and_a_tiny_top_p_are_greedy(model):
    greedy = generate(model, TEXT[:6], steps=12, key=jax.random.key(0), temperature=0.0)
    for seed in (0, 1):
        key = jax.random.key(seed)
        assert generate(model, TEXT[:6], steps=12, key=key, temperature=2.0, top_k=1) == greedy
        assert generate(model, TEXT[:6], steps=12, key=key, temperature=2.0,
                        top_p=1e-6) == greedy


def test_top_k_samples_only_among_the_k_most_likely_tokens(model):
    k = 3
    out = generate(model, b"def ", steps=20, key=jax.random.key(3), temperature=5.0, top_k=k)
    again = generate(model, b"def ", steps=20, key=jax.random.key(3), temperature=5.0, top_k=k)
    assert out == again  # deterministic for a key
    for token, logits in zip(out, _steps_logits(model, b"def ", out)):
        assert token in set(np.argsort(-np.asarray(logits))[:k].tolist())
    # without the cut, this hot a temperature leaves the top 3 within 20 steps
    free = generate(model, b"def ", steps=20, key=jax.random.key(3), temperature=5.0)
    assert any(token not in set(np.argsort(-np.asarray(logits))[:k].tolist())
               for token, logits in zip(free, _steps_logits(model, b"def ", free)))


def test_the_nucleus_is_the_fewest_most_likely_tokens_reaching_top_p():
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05], np.float32)  # order: 1, 3, 0, then 2 and 4
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda **kw: set(np.flatnonzero(np.isfinite(truncate_logits(logits, **kw))))  # noqa: E731
    assert kept(top_p=0.4) == {1}  # 0.5 >= 0.4 already
    assert kept(top_p=0.7) == {1, 3}  # 0.5 < 0.7 <= 0.8
    assert kept(top_p=0.85) == {1, 3, 0}  # 0.8 < 0.85 <= 0.9
    assert kept(top_p=0.92) == {0, 1, 2, 3, 4}  # the two tied 0.05 tokens stay together
    assert kept(top_p=1.0) == {0, 1, 2, 3, 4}
    assert kept(top_k=2) == {1, 3}
    assert kept(top_k=3, top_p=0.6) == {1, 3}
    np.testing.assert_array_equal(truncate_logits(logits, top_p=0.85)[np.array([1, 3, 0])],
                                  logits[np.array([1, 3, 0])])  # kept logits are unchanged
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 5\]"):
        truncate_logits(logits, top_k=6)
    with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
        truncate_logits(logits, top_p=0)
    # a batch of rows is cut row by row
    both = truncate_logits(jnp.stack([logits, logits[::-1]]), top_p=0.7)
    assert [set(np.flatnonzero(np.isfinite(row))) for row in both] == [{1, 3}, {3, 1}]


def test_bad_inputs_are_clear_errors(model):
    too_long = jnp.zeros((1, 17), jnp.int32)
    with pytest.raises(ValueError, match="sequence length 17 is above the model's max_len=16"):
        model(too_long)
    with pytest.raises(ValueError, match="tokens must be integers"):
        model(jnp.zeros((1, 4), jnp.float32))
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, b"", steps=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        generate(model, b"a", steps=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        generate(model, b"a", steps=2, key=jax.random.key(0), temperature=-1.0)
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        generate(model, b"a", steps=2, key=0)
    for top_k in (0, 257, 2.0, True):
        with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 256\]"):
            generate(model, b"a", steps=2, key=jax.random.key(0), top_k=top_k)
    for top_p in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
            generate(model, b"a", steps=2, key=jax.random.key(0), top_p=top_p)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        TransformerConfig(d_model=16, num_heads=3)
    with pytest.raises(ValueError, match="TransformerConfig.num_layers must be an integer >= 1, "
                                         "got 0"):
        TransformerConfig(num_layers=0)
    with pytest.raises(ValueError, match="unknown transformer 'gpt5'"):
        transformer_config("gpt5")
    assert transformer_config("transformer_tiny", max_len=64).max_len == 64
    assert transformer_config("transformer") == TransformerConfig()  # the defaults
    assert transformer_config("Transformer_Llama", d_model=64) == TransformerConfig(
        max_len=128, d_model=64, num_heads=4, num_layers=2, mlp_ratio=2, num_kv_heads=2,
        mlp="swiglu")
    with pytest.raises(ValueError, match=r"unknown TransformerConfig fields \['width'\]"):
        transformer_config("transformer_tiny", width=64)


def test_the_presets_have_one_home_reachable_as_the_docstrings_write_it():
    with pytest.raises(ModuleNotFoundError, match="tern_jax.presets_lm"):
        importlib.import_module("tern_jax.presets_lm")  # gone: tern_jax.presets holds them
    assert tern_jax.presets.TRANSFORMER_RULES is TRANSFORMER_RULES
    assert tern_jax.presets.EMBEDDINGS_AND_HEAD_FP is EMBEDDINGS_AND_HEAD_FP
    assert tern_jax.nnx_utils.ternarized is ternarized
    matches, _ = tern_jax.match_params({"conv": {"kernel": jnp.ones((3, 3, 1, 2))}},
                                       tern_jax.presets.PRESETS["tern"])
    assert isinstance(matches[0], tern_jax.Match) and matches[0].quantized


def test_grouped_query_attention_is_multi_head_attention_with_shared_key_value_heads():
    gqa = TransformerConfig(max_len=8, d_model=16, num_heads=4, num_kv_heads=2, num_layers=1)
    model = Transformer(gqa, rngs=nnx.Rngs(0))
    params = param_dict(model)
    assert params["blocks"][0]["attn"]["key"]["kernel"].shape == (16, 2, 4)
    mha = Transformer(TransformerConfig(max_len=8, d_model=16, num_heads=4, num_layers=1),
                      rngs=nnx.Rngs(1))
    attn = params["blocks"][0]["attn"]
    repeated = {k: np.repeat(attn[k]["kernel"], 2, axis=1) for k in ("key", "value")}
    shared = jax.tree.map(lambda a: a, params)
    for k, v in repeated.items():
        shared["blocks"][0]["attn"][k]["kernel"] = v
    tokens = jnp.asarray([[1, 5, 9, 200, 7, 3]])
    np.testing.assert_allclose(forward(model, tokens), forward(with_params(mha, shared), tokens),
                               rtol=1e-5, atol=1e-6)


def test_the_gated_mlp_is_down_of_silu_gate_times_up():
    config = TransformerConfig(max_len=8, d_model=16, num_heads=2, num_layers=1, mlp="swiglu")
    mlp = Transformer(config, rngs=nnx.Rngs(0)).blocks[0].mlp
    x = jax.random.normal(jax.random.key(2), (3, 16))
    gate, up, down = (np.asarray(m.kernel[...]) for m in (mlp.gate, mlp.up, mlp.down))
    expected = (jax.nn.silu(x @ gate) * (x @ up)) @ down
    np.testing.assert_allclose(mlp(x), expected, rtol=1e-5, atol=1e-6)
    assert TransformerConfig().mlp == "gelu" and TransformerConfig().num_kv_heads is None


def test_gated_mlp_and_kv_heads_options_are_checked():
    with pytest.raises(ValueError, match=r"TransformerConfig.num_kv_heads must divide "
                                         r"num_heads=4 \(or be None\), got 3"):
        TransformerConfig(d_model=16, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="TransformerConfig.num_kv_heads must be an integer "
                                         ">= 1"):
        TransformerConfig(num_kv_heads=0)
    with pytest.raises(ValueError, match="TransformerConfig.mlp must be 'gelu' or 'swiglu', "
                                         "got 'relu'"):
        TransformerConfig(mlp="relu")
