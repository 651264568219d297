"""The Hugging Face export: transformers loads the folder on CPU and computes tern_jax's logits,
bits per byte and greedy tokens; the packed weights unpack, with transformers' own code, to
the codes; what its BitNet format cannot hold is one clear error, nothing written. Skipped
without torch, transformers, safetensors or tokenizers (pip install '.[hf]')."""

import dataclasses
import math

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
pytest.importorskip("accelerate")  # transformers loads a BitNet model with it
from helpers.bpe import CORPUS, train_bpe  # noqa: E402

from tern_jax import fs  # noqa: E402
from tern_jax.export_hf import pack_bitnet, to_hf, unpack_bitnet  # noqa: E402
from tern_jax.models.transformer import Transformer, TransformerConfig  # noqa: E402
from tern_jax.nnx_utils import ternarized  # noqa: E402
from tern_jax.presets import TRANSFORMER_RULES  # noqa: E402
from tern_jax.rules import Rule  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def eager_torch():
    """transformers' BitLinear compiles three functions with torch.compile (C++ through a
    compiler, minutes on a loaded 2-core CPU); the tests run them eagerly: the same math."""
    with torch._dynamo.config.patch(disable=True):
        yield


HELD_OUT = ("def h(z):\n    return z * 3  # it's déjà 42\n\tclass Q:\n\t\tpass 🙂 "
            "Größe 東京 12345")


@pytest.fixture(scope="module")
def lm():
    tok = train_bpe(CORPUS, vocab_size=320)
    config = TransformerConfig(vocab_size=tok.get_vocab_size(), max_len=48, d_model=64,
                               num_heads=4, num_kv_heads=2, num_layers=2, mlp_ratio=2,
                               mlp="swiglu")
    return tok, config, Transformer(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def exported(lm, tmp_path_factory):
    tok, config, model = lm
    rules = TRANSFORMER_RULES["tern_hf"]
    path = to_hf(tmp_path_factory.mktemp("hf") / "model", nnx.state(model, nnx.Param), config,
                 rules, tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    ours = ternarized(model, rules)  # ternary weights, 8-bit inputs
    return path, hf, ours


def _bits_per_byte(logits, ids, text) -> float:
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    nats = np.sum(log_z[:-1] - logits[np.arange(len(ids) - 1), ids[1:]])
    return float(nats / math.log(2) / len(text.encode()))


def _greedy(step, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(step(ids)[len(ids) - 1])))
    return ids[len(prompt):]


def _padded(model, max_len):
    """``ids -> logits (max_len, vocab)`` of ``model`` over ``ids`` padded to ``max_len``,
    compiled once (a causal model's logits at ``i < len(ids)`` ignore the padding)."""
    import jax

    forward = jax.jit(lambda x: model(x))

    def logits(ids):
        window = np.zeros((1, max_len), np.int32)
        window[0, :len(ids)] = ids
        return np.asarray(forward(window))[0]

    return logits


def test_transformers_computes_tern_jax_logits_bits_per_byte_and_greedy_tokens(lm, exported):
    tok, config, _ = lm
    path, hf, ours = exported
    assert hf.config.quantization_config["quant_method"] == "bitnet" if isinstance(
        hf.config.quantization_config, dict) else hf.config.quantization_config.quant_method
    ids = tok.encode(HELD_OUT).ids[: config.max_len]
    assert len(ids) > 20
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    ours_logits = _padded(ours, config.max_len)
    mine = ours_logits(ids)[: len(ids)]
    # equal up to float rounding, and an int8 level where rounding an input falls the other
    # way after such a difference (measured: 1e-4 of the largest logit)
    assert np.abs(theirs - mine).max() < 1e-2 * np.abs(mine).max()
    assert np.mean(theirs.argmax(-1) == mine.argmax(-1)) >= 0.95
    text = tok.decode(ids)
    assert abs(_bits_per_byte(theirs, ids, text) - _bits_per_byte(mine, ids, text)) < 0.01

    def hf_step(x):
        with torch.no_grad():
            return hf(torch.tensor([x])).logits[0].numpy()

    prompt = ids[:8]
    same = np.mean(np.asarray(_greedy(hf_step, prompt, 16)) == np.asarray(
        _greedy(ours_logits, prompt, 16)))
    assert same >= 0.95
    loaded = transformers.AutoTokenizer.from_pretrained(path)
    assert loaded(HELD_OUT)["input_ids"] == tok.encode(HELD_OUT).ids
    assert loaded.eos_token == "<|endoftext|>"


def test_the_packed_weights_unpack_with_transformers_code_to_the_codes(lm, exported):
    from safetensors.numpy import load_file
    from transformers.integrations import bitnet

    _, _, model = lm
    path, _, _ = exported
    tensors = load_file(path / "model.safetensors")
    rule = TRANSFORMER_RULES["tern_hf"][1]
    kernel = np.asarray(model.blocks[1].mlp.down.kernel[...])
    levels, scales = rule.codes(kernel)
    packed = tensors["model.layers.1.mlp.down_proj.weight"]
    assert packed.dtype == np.uint8 and packed.shape == (kernel.shape[1] // 4, kernel.shape[0])
    unpack = getattr(bitnet.unpack_weights, "__wrapped__", bitnet.unpack_weights)
    theirs = unpack(torch.from_numpy(packed), dtype=torch.float32).numpy()
    np.testing.assert_array_equal(theirs, np.asarray(levels).T)
    np.testing.assert_array_equal(unpack_bitnet(packed), np.asarray(levels).T)
    scale = tensors["model.layers.1.mlp.down_proj.weight_scale"]
    np.testing.assert_allclose(scale, [1 / float(np.asarray(scales).reshape(-1)[0])], rtol=1e-6)
    # the embedding, ternary under tern_hf, is a full-precision module there: alpha * codes
    emb_levels, emb_scales = TRANSFORMER_RULES["tern_hf"][0].codes(
        np.asarray(model.embed.embedding[...]))
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"],
                                  np.asarray(emb_levels) * np.asarray(emb_scales)[0])
    codes = np.random.default_rng(0).integers(-1, 2, (12, 5))
    np.testing.assert_array_equal(unpack_bitnet(pack_bitnet(codes)), codes)


def test_latent_weights_in_bfloat16_load_as_a_plain_llama(lm, tmp_path):
    tok, config, model = lm
    path = to_hf(tmp_path / "bf16", nnx.state(model, nnx.Param), config,
                 TRANSFORMER_RULES["tern_hf"], tokenizer=tok, latent_dtype="bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
    assert getattr(hf.config, "quantization_config", None) is None
    weight = hf.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.bfloat16
    latent = torch.from_numpy(np.asarray(model.blocks[0].mlp.up.kernel[...]).T.copy())
    assert torch.equal(weight, latent.to(torch.bfloat16))
    ids = tok.encode(HELD_OUT).ids[: config.max_len]
    with torch.no_grad():
        theirs = hf.float()(torch.tensor([ids])).logits[0].numpy()
    mine = np.asarray(model(np.asarray([ids], np.int32)))[0]  # latent (fp) weights
    assert np.abs(theirs - mine).max() < 0.02 * np.abs(mine).max()  # bf16 weights


def test_the_byte_vocabulary_goes_as_a_byte_level_tokenizer(tmp_path):
    config = TransformerConfig(max_len=16, d_model=32, num_heads=2, num_layers=1,
                               mlp="swiglu")
    model = Transformer(config, rngs=nnx.Rngs(0))
    path = to_hf(tmp_path / "bytes", nnx.state(model, nnx.Param), config,
                 TRANSFORMER_RULES["tern_hf"])
    loaded = transformers.AutoTokenizer.from_pretrained(path)
    text = "def f(x):\n\treturn x  # é ✓ 🙂"
    assert loaded(text)["input_ids"] == list(text.encode())
    assert loaded.decode(list(text.encode())) == text
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    rules = TRANSFORMER_RULES["tern_hf"]
    ours = ternarized(model, rules)
    ids = list(text.encode())[:16]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    mine = np.asarray(ours(np.asarray([ids], np.int32)))[0]
    assert np.abs(theirs - mine).max() < 1e-2 * np.abs(mine).max()  # measured: 0.2 %


def test_what_the_bitnet_format_cannot_hold_is_one_clear_error(lm, tmp_path):
    tok, config, model = lm
    params, out = nnx.state(model, nnx.Param), tmp_path / "m"
    int8 = Rule(r"(.*/)?(kernel|embedding)", activations="int8")
    cases = [(TRANSFORMER_RULES["tern_pc"], "scales vary across channels or heads"),
             (TRANSFORMER_RULES["tern_ph"], "scales vary across channels or heads"),
             (TRANSFORMER_RULES["tern_t2"], r"residual expansion \(t_ex=2"),
             (TRANSFORMER_RULES["tern_a8"], "activations='int8_block'"),
             ((int8,), "quantize the head's input"),
             ((Rule(r".*/mlp/.*"), ), "is full precision while .* is ternary")]
    for rules, message in cases:
        with pytest.raises(ValueError, match=message):
            to_hf(out, params, config, rules, tokenizer=tok)
    gelu = dataclasses.replace(config, mlp="gelu")
    with pytest.raises(ValueError, match="gated MLP"):
        to_hf(out, params, gelu, TRANSFORMER_RULES["tern_hf"], tokenizer=tok)
    with pytest.raises(ValueError, match="vocabulary is the 256 bytes"):
        to_hf(out, params, config, TRANSFORMER_RULES["tern_hf"])
    with pytest.raises(ValueError, match="latent_dtype must be None or one of"):
        to_hf(out, params, config, tokenizer=tok, latent_dtype="float16")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_replaced_only_when_asked_and_ours(lm, tmp_path, monkeypatch):
    tok, config, model = lm
    params, rules = nnx.state(model, nnx.Param), TRANSFORMER_RULES["tern_hf"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        to_hf(mine, params, config, rules, tokenizer=tok)
    with pytest.raises(fs.NotOwnedError):
        to_hf(mine, params, config, rules, tokenizer=tok, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    ours = to_hf(tmp_path / "ours", params, config, rules, tokenizer=tok)
    files = sorted(p.name for p in ours.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(files)
    to_hf(ours, params, config, rules, tokenizer=tok, latent_dtype="float32", overwrite=True)
    assert "quantization_config" not in (ours / "config.json").read_text()
    import tern_jax.export_hf as export_hf

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_hf, "_save_weights", broken)
    with pytest.raises(OSError, match="could not write .*new.*No space left"):
        to_hf(tmp_path / "new", params, config, rules, tokenizer=tok)
    with pytest.raises(OSError, match="No space left"):  # the earlier export stays whole
        to_hf(ours, params, config, rules, tokenizer=tok, overwrite=True)
    assert "quantization_config" not in (ours / "config.json").read_text()
    assert fs.owned_folder(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]


def test_the_export_command_flags_are_checked_before_the_run_is_read(tmp_path, capsys):
    from tern_jax.cli import main

    argv = ["export", "--workdir", str(tmp_path / "none"), "--model", "tern/seed0", "--out",
            str(tmp_path / "hf")]
    assert main([*argv, "--dtype", "bfloat16"]) == 2
    assert "--dtype bfloat16 chooses the latent weights" in capsys.readouterr().err
    assert main([*argv, "--format", "hf", "--type", "tq2_0"]) == 2
    assert "--format hf writes no GGUF file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains a tiny language model (2 steps)
def test_the_export_command_writes_a_run_with_its_tokenizer_json(tmp_path, capsys):
    from helpers.runs import lm_config

    from tern_jax.cli import main
    from tern_jax.export_vocab import byte_tokenizer
    from tern_jax.train import restore_run, run

    text = tmp_path / "code.py"
    text.write_bytes(b"".join(b"def g%d(y):\n    return y + %d\n" % (i, i) for i in range(80)))
    config = lm_config(text, {"model.variants": ("tern_hf",), "schedule.epochs": 1,
                              "data.steps_per_epoch": 2, "model.kwargs": {"mlp": "swiglu"}})
    run(config, tmp_path / "run", log=lambda *a: None)
    byte_tokenizer().save(str(tmp_path / "run" / "tokenizer.json"))  # the run's vocabulary
    out = tmp_path / "hf"
    argv = ["export", "--workdir", str(tmp_path / "run"), "--model", "tern_hf/seed0",
            "--format", "hf", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ternary (BitNet format)" in printed and "tokenizer.json" in printed
    assert main(argv) == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    restored = restore_run(tmp_path / "run")
    import jax

    from tern_jax.nnx_utils import with_params

    params = jax.tree.map(lambda a: np.asarray(a[0]), restored.state.params)
    model = with_params(nnx.eval_shape(lambda: Transformer(restored.stack.task.config,
                                                           rngs=nnx.Rngs(0))), params)
    ours = ternarized(model, TRANSFORMER_RULES["tern_hf"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = list(b"def g3(y):\n    return")
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    mine = np.asarray(ours(np.asarray([ids], np.int32)))[0]
    assert np.abs(theirs - mine).max() < 1e-2 * np.abs(mine).max()

