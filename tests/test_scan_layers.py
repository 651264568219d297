"""TransformerConfig's scan_layers and remat: the same function, weights and gradients as the
model without them, ternarized layer by layer, and trained, summarized and exported alike."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tern_jax
from tern_jax.models.transformer import (
    SCANNED,
    Transformer,
    TransformerConfig,
    stack_layers,
    unstack_layers,
)
from tern_jax.nnx_utils import param_dict, ternarized
from tern_jax.presets import ATTENTION_QKV, TRANSFORMER_RULES, WEIGHTS
from tern_jax.rules import Rule

CONFIG = TransformerConfig(max_len=16, d_model=16, num_heads=2, num_layers=3, mlp_ratio=2,
                           mlp="swiglu", num_kv_heads=1)
SETTINGS = {"plain": {}, "scan": {"scan_layers": True}, "remat": {"remat": True},
            "scan_remat": {"scan_layers": True, "remat": True}}


def _tree_close(a, b, rtol=1e-5, atol=1e-6):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def models():
    return {name: Transformer(dataclasses.replace(CONFIG, **kw), rngs=nnx.Rngs(0))
            for name, kw in SETTINGS.items()}


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (2, 17), 0, 256, jnp.int32)


def test_scanned_weights_are_the_unscanned_ones_stacked(models):
    plain, scanned = param_dict(models["plain"]), param_dict(models["scan"])
    assert scanned["blocks"]["attn"]["query"]["kernel"].shape == (3, 16, 2, 8)
    assert scanned["blocks"]["mlp_norm"]["scale"].shape == (3, 16)
    jax.tree.map(np.testing.assert_array_equal, stack_layers(plain), scanned)
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(scanned), plain)
    assert models["scan"].scanned == SCANNED and models["plain"].scanned is None
    with pytest.raises(ValueError, match="stacked already"):
        stack_layers(scanned)
    with pytest.raises(ValueError, match="numbered layers already"):
        unstack_layers(plain)


def _loss_and_grads(model, tokens, rules):
    """Next-token loss of the model ternarized by ``rules`` and its gradient (latent weights)."""
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def run(params):
        def loss_fn(params):
            m = nnx.merge(graphdef, params)
            if rules is not None:
                m = ternarized(m, rules, unused="ignore")
            logits = m(tokens[:, :-1])
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)), logits
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, logits), grads = run(params)
    return loss, logits, nnx.to_pure_dict(grads)


def test_same_logits_loss_and_gradients_with_and_without_scan_and_remat(models, tokens):
    """Per-tensor scales and per-head ones stay each layer's own: the scanned model's ternary
    forward and its gradients equal the unscanned model's."""
    rules = (Rule(ATTENTION_QKV, axis=1), Rule(WEIGHTS))  # per head; the rest per tensor
    base_loss, base_logits, base_grads = _loss_and_grads(models["plain"], tokens, rules)
    for name in ("remat", "scan", "scan_remat"):
        loss, logits, grads = _loss_and_grads(models[name], tokens, rules)
        np.testing.assert_allclose(logits, base_logits, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(loss, base_loss, rtol=1e-6, err_msg=name)
        expected = stack_layers(base_grads) if "scan" in name else base_grads
        _tree_close(grads, expected, rtol=1e-4, atol=1e-6)


def test_stacked_weights_are_ternarized_layer_by_layer(models):
    """With ``scanned`` each layer has its own Δ/α; without it one Δ/α spans the layers."""
    plain, scanned = param_dict(models["plain"]), param_dict(models["scan"])
    for variant in ("tern_pc", "absmean"):
        rules = TRANSFORMER_RULES[variant]
        expected = stack_layers(tern_jax.quantize_params(plain, rules, unused="ignore"))
        got = tern_jax.quantize_params(scanned, rules, unused="ignore", scanned=SCANNED)
        _tree_close(got, expected, rtol=1e-6, atol=0)
    rules = TRANSFORMER_RULES["tern"]
    shared = tern_jax.quantize_params(scanned, rules)["blocks"]["mlp"]["up"]["kernel"]
    own = tern_jax.quantize_params(scanned, rules, scanned=SCANNED)["blocks"]["mlp"]["up"][
        "kernel"]
    assert len({float(jnp.max(own[i])) for i in range(3)}) == 3  # three scales
    assert len({float(jnp.max(shared[i])) for i in range(3)}) == 1  # one over the stack
    with pytest.raises(TypeError, match="scanned"):
        tern_jax.quantize_params(scanned, rules, scanned=3)
    with pytest.raises(ValueError, match="not a valid regex"):
        tern_jax.match_params(scanned, rules, scanned="blocks/(")


def test_summary_and_packed_checkpoint_of_a_scanned_model(models, tmp_path):
    plain, scanned = param_dict(models["plain"]), param_dict(models["scan"])
    rules = TRANSFORMER_RULES["tern"]
    a = tern_jax.summary(plain, rules, print_fn=None)
    b = tern_jax.summary(scanned, rules, print_fn=None, scanned=SCANNED)
    assert (a.total_params, a.ternary_params) == (b.total_params, b.ternary_params)
    # one stacked tensor packs its layers without the padding of each layer's words
    assert a.bytes_packed - 64 <= b.bytes_packed <= a.bytes_packed
    assert a.adds_per_position == b.adds_per_position
    assert sum(r.muls_per_position for r in a.ternary) == sum(
        r.muls_per_position for r in b.ternary)
    assert a.zero_fraction == pytest.approx(b.zero_fraction, abs=1e-9)
    tern_jax.save_ternary(tmp_path / "plain", plain, rules)
    tern_jax.save_ternary(tmp_path / "scan", scanned, rules, scanned=SCANNED)
    loaded = tern_jax.load_ternary(tmp_path / "scan")
    _tree_close(unstack_layers(loaded), tern_jax.load_ternary(tmp_path / "plain"), rtol=1e-6,
                atol=0)
    codes = tern_jax.load_ternary(tmp_path / "scan", codes=True)
    assert codes["blocks"]["attn"]["out"]["kernel"].scales.shape == (1, 3, 1, 1, 1)


def test_gguf_export_of_a_scanned_model_is_the_unscanned_file(models, tmp_path):
    pytest.importorskip("gguf")
    from tern_jax.export import to_gguf

    rules = TRANSFORMER_RULES["tern"]
    to_gguf(tmp_path / "plain.gguf", param_dict(models["plain"]), CONFIG, rules, type="f16")
    to_gguf(tmp_path / "scan.gguf", param_dict(models["scan"]),
            dataclasses.replace(CONFIG, scan_layers=True), rules, type="f16")
    assert (tmp_path / "plain.gguf").read_bytes() == (tmp_path / "scan.gguf").read_bytes()


@pytest.mark.slow  # trains two tiny language models
def test_the_trainer_trains_a_scanned_model_as_the_unscanned_one(tmp_path):
    from helpers.runs import lm_config

    from tern_jax.train import run

    text = tmp_path / "code.py"
    text.write_bytes(b"".join(b"def f%d(x):\n    return x * %d\n\n" % (i, i)
                              for i in range(200)))
    changes = {"name": "lm_scan", "schedule.epochs": 1, "checkpointing.every": 0,
               "model.variants": ("fp", "tern_pc")}
    results = {}
    for name, kwargs in (("plain", {}), ("scan", {"scan_layers": True, "remat": True})):
        config = lm_config(text, {**changes, "model.kwargs": kwargs})
        run(config, tmp_path / name, log=lambda *a: None)
        results[name] = [json.loads(line) for line in
                         (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    plain, scan = results["plain"][-1]["models"], results["scan"][-1]["models"]
    assert [m["name"] for m in scan] == [m["name"] for m in plain] == ["fp/seed0",
                                                                      "tern_pc/seed0"]
    for a, b in zip(plain, scan):
        for key in ("train_loss", "test_loss", "test_acc", "zero_fraction"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["name"], key)
    assert plain[1]["zero_fraction"] > 0.05  # ternarized for real
