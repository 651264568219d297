"""GGUF export: the file read back with the gguf package holds the ternary model exactly, and a
llama-architecture forward pass over its tensors computes tern_jax's logits."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tern_jax import core, fs, save_ternary
from tern_jax.checkpoint import load_ternary
from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.nnx_utils import ternarized, with_params
from tern_jax.presets import TRANSFORMER_RULES
from tern_jax.rules import Rule, match_params

gguf = pytest.importorskip("gguf")
from tern_jax.export import GGUF_TYPES, byte_vocabulary, rotary_permutation, to_gguf  # noqa: E402

CONFIG = TransformerConfig(max_len=32, d_model=256, num_heads=4, num_layers=1, mlp_ratio=1,
                           num_kv_heads=2, mlp="swiglu")
TOKENS = np.frombuffer(b"def f(x):\n    return x", np.uint8).astype(np.int32)[None]


@pytest.fixture(scope="module")
def params():
    return nnx.to_pure_dict(nnx.state(Transformer(CONFIG, rngs=nnx.Rngs(0)), nnx.Param))


def _read(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    return reader, tensors


def _values(tensor):
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, np.float32).reshape(tuple(reversed(tensor.shape.tolist())))


def _reference_logits(tensors, config, tokens):
    """The llama architecture in numpy over the GGUF tensors: llama.cpp's computation in f32.

    Rotary positions on interleaved pairs ``(x_2i, x_2i+1)`` (llama.cpp's "normal" rope).
    """
    w = {name: _values(t) for name, t in tensors.items()}
    hd, h, kv = config.head_dim, config.num_heads, config.kv_heads

    def norm(x, scale):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * scale

    def rope(x):  # (T, heads, hd), interleaved pairs
        t = np.arange(x.shape[0])[:, None]
        angle = t * 10000.0 ** (-np.arange(0, hd, 2) / hd)  # (T, hd/2)
        cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out

    x = w["token_embd.weight"][tokens[0]]
    T = x.shape[0]
    for i in range(config.num_layers):
        b = f"blk.{i}."
        y = norm(x, w[b + "attn_norm.weight"])
        q = rope((y @ w[b + "attn_q.weight"].T).reshape(T, h, hd))
        k = rope((y @ w[b + "attn_k.weight"].T).reshape(T, kv, hd))
        v = (y @ w[b + "attn_v.weight"].T).reshape(T, kv, hd)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", p, v).reshape(T, h * hd)
        x = x + attn @ w[b + "attn_output.weight"].T
        y = norm(x, w[b + "ffn_norm.weight"])
        gate, up = y @ w[b + "ffn_gate.weight"].T, y @ w[b + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[b + "ffn_down.weight"].T
    x = norm(x, w["output_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T  # tied: llama.cpp's fallback


def _ternary_logits(params, rules, config=CONFIG):
    model = with_params(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), params)
    model = ternarized(model, rules, unused="ignore")
    return np.asarray(model(jnp.asarray(TOKENS)))[0]


@pytest.mark.parametrize("preset, tied", [("tern", False), ("tern_pc", False), ("tern", True)])
def test_a_llama_forward_over_the_gguf_tensors_gives_tern_jax_logits(params, tmp_path, preset,
                                                                      tied):
    rules, config = TRANSFORMER_RULES[preset], dataclasses.replace(CONFIG, tie_embeddings=tied)
    if tied:
        params = {k: v for k, v in params.items() if k != "head"}
    path = to_gguf(tmp_path / "m.gguf", params, config, rules, type="tq2_0")
    _, tensors = _read(path)
    assert ("output.weight" in tensors) == (not tied)
    ours = _ternary_logits(params, rules, config)
    theirs = _reference_logits(tensors, config, TOKENS)
    # equal up to fp16(α): a relative error of at most 2^-11 per scale
    np.testing.assert_allclose(theirs, ours, atol=2e-3 * np.abs(ours).max())


@pytest.mark.parametrize("type_", ["tq2_0", "tq1_0"])
def test_ternary_tensors_read_back_as_fp16_alpha_times_codes(params, tmp_path, type_):
    rules = TRANSFORMER_RULES["tern_pc"]
    path = to_gguf(tmp_path / "m.gguf", params, CONFIG, rules, type=type_)
    reader, tensors = _read(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    expected_type = getattr(gguf.GGMLQuantizationType, type_.upper())
    block = params["blocks"][0]
    # (GGUF name, Flax kernel, its rule, rows of the (in, out) matrix = contracted axes)
    kernels = [("blk.0.ffn_up.weight", block["mlp"]["up"]["kernel"], rules[-1], 1),
               ("blk.0.attn_v.weight", block["attn"]["value"]["kernel"], rules[0], 1),
               ("blk.0.attn_output.weight", block["attn"]["out"]["kernel"], rules[-1], 2)]
    for name, kernel, rule, contracted in kernels:
        levels, scales = rule.codes(kernel)
        alpha16 = np.asarray(scales[0], np.float16).astype(np.float32)
        inputs = int(np.prod(np.shape(kernel)[:contracted]))
        expected = (np.asarray(levels) * alpha16).reshape(inputs, -1).T
        assert tensors[name].tensor_type == expected_type
        np.testing.assert_array_equal(_values(tensors[name]), expected)
    norm = params["blocks"][0]["attn_norm"]["scale"]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(_values(tensors["blk.0.attn_norm.weight"]), norm)


def test_the_vocabulary_is_the_256_bytes_in_order(params, tmp_path):
    reader, _ = _read(to_gguf(tmp_path / "m.gguf", params, CONFIG, TRANSFORMER_RULES["tern"]))
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    assert tokens == byte_vocabulary() and len(set(tokens)) == 256
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"


# llama.cpp's blocks (ggml-common.h): (values per block, bytes per block)
BLOCK_BYTES = {"tq2_0": (256, 66),  # 2 bits per code + an fp16 scale
               "tq1_0": (256, 54),  # 240 codes 5 per byte, 16 codes 4 per byte, an fp16 scale
               "q8_0": (32, 34),  # 32 int8 + an fp16 scale
               "f16": (1, 2)}


def _gguf_tensors(config):
    """``{GGUF name: (Flax path, GGUF shape (rows, row width))}`` of a swiglu model's tensors."""
    d, hd, ff = config.d_model, config.head_dim, config.mlp_ratio * config.d_model
    out = {"token_embd.weight": ("embed/embedding", (config.vocab_size, d)),
           "output_norm.weight": ("final_norm/scale", (d,)),
           "output.weight": ("head/kernel", (config.vocab_size, d))}
    for i in range(config.num_layers):
        b, p = f"blk.{i}.", f"blocks/{i}/"
        out |= {b + "attn_norm.weight": (p + "attn_norm/scale", (d,)),
                b + "ffn_norm.weight": (p + "mlp_norm/scale", (d,)),
                b + "attn_q.weight": (p + "attn/query/kernel", (config.num_heads * hd, d)),
                b + "attn_k.weight": (p + "attn/key/kernel", (config.kv_heads * hd, d)),
                b + "attn_v.weight": (p + "attn/value/kernel", (config.kv_heads * hd, d)),
                b + "attn_output.weight": (p + "attn/out/kernel", (d, config.num_heads * hd)),
                b + "ffn_gate.weight": (p + "mlp/gate/kernel", (ff, d)),
                b + "ffn_up.weight": (p + "mlp/up/kernel", (ff, d)),
                b + "ffn_down.weight": (p + "mlp/down/kernel", (d, ff))}
    return out


def _leaf(params, path):
    for key in path.split("/"):
        params = params[int(key) if key.isdigit() else key]
    return params


def _as_gguf_matrix(path, value, config):
    """A Flax kernel in GGUF's (rows, row width) layout, q/k features in llama.cpp's pairs."""
    value = np.asarray(value)
    if path.endswith(("attn/query/kernel", "attn/key/kernel")):
        value = value[..., rotary_permutation(config.head_dim)]
    if "/attn/" in path and not path.endswith("out/kernel"):
        return value.reshape(value.shape[0], -1).T
    if path.endswith("attn/out/kernel"):
        return value.reshape(-1, value.shape[-1]).T
    return value if path == "embed/embedding" else value.T


@pytest.mark.parametrize("type_", list(GGUF_TYPES))
def test_every_tensor_has_the_exact_byte_count_of_its_type(params, tmp_path, type_):
    reader, tensors = _read(to_gguf(tmp_path / "m.gguf", params, CONFIG,
                                    TRANSFORMER_RULES["tern"], type=type_))
    expected = _gguf_tensors(CONFIG)
    assert sorted(tensors) == sorted(expected)
    per_block, block_bytes = BLOCK_BYTES[type_]
    for name, (_, shape) in expected.items():
        tensor, count = tensors[name], int(np.prod(shape))
        assert tuple(reversed(tensor.shape.tolist())) == shape, name
        if len(shape) == 1:  # norm scales: F32
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
            assert tensor.n_bytes == 4 * count, name
        else:  # "tern" ternarizes every matrix, the embedding and head included
            assert tensor.tensor_type.name == type_.upper(), name
            assert count % per_block == 0
            assert tensor.n_bytes == count // per_block * block_bytes, name
    # the 256x256 embedding: 2.06, 1.69, 8.5 and 16 bits per weight
    assert tensors["token_embd.weight"].n_bytes == {"tq2_0": 16896, "tq1_0": 13824,
                                                    "q8_0": 69632, "f16": 131072}[type_]


def test_codes_from_a_packed_checkpoint_export_the_same_file(params, tmp_path):
    rules = TRANSFORMER_RULES["tern_pc"]
    save_ternary(tmp_path / "ckpt", params, rules)
    loaded = load_ternary(tmp_path / "ckpt", codes=True)
    up = loaded["blocks"][0]["mlp"]["up"]["kernel"]
    levels, scales = rules[-1].codes(params["blocks"][0]["mlp"]["up"]["kernel"])
    assert isinstance(up, core.TernaryCodes) and up.levels.dtype == np.int8
    np.testing.assert_array_equal(up.levels, levels)
    np.testing.assert_array_equal(up.scales, scales)
    with pytest.raises(TypeError, match="codes must be True or False"):
        load_ternary(tmp_path / "ckpt", codes=1)
    dense = load_ternary(tmp_path / "ckpt")
    np.testing.assert_array_equal(core.decode(up), dense["blocks"][0]["mlp"]["up"]["kernel"])
    a = to_gguf(tmp_path / "a.gguf", params, CONFIG, rules)
    b = to_gguf(tmp_path / "b.gguf", loaded, CONFIG)
    assert a.read_bytes() == b.read_bytes()


def test_what_llama_cpp_cannot_represent_is_one_clear_error(params, tmp_path):
    out = tmp_path / "m.gguf"
    gelu = dataclasses.replace(CONFIG, mlp="gelu")
    with pytest.raises(ValueError, match="gated MLP.*mlp='swiglu'"):
        to_gguf(out, params, gelu, TRANSFORMER_RULES["tern"])
    with pytest.raises(ValueError, match=r"residual expansion \(t_ex=2.*type='f16'"):
        to_gguf(out, params, CONFIG, TRANSFORMER_RULES["tern_t2"])
    with pytest.raises(ValueError, match="scales vary along a row.*per-head"):
        to_gguf(out, params, CONFIG, TRANSFORMER_RULES["tern_ph"])
    narrow = TransformerConfig(max_len=8, d_model=128, num_heads=2, num_layers=1, mlp="swiglu")
    narrow_params = nnx.to_pure_dict(nnx.state(Transformer(narrow, rngs=nnx.Rngs(0)), nnx.Param))
    with pytest.raises(ValueError, match="rows of 128 inputs.*multiples of 256"):
        to_gguf(out, narrow_params, narrow, TRANSFORMER_RULES["tern"])
    with pytest.raises(ValueError, match="no parameter is ternary.*type='f16'"):
        to_gguf(out, params, CONFIG)
    with pytest.raises(ValueError, match="type must be one of"):
        to_gguf(out, params, CONFIG, type="q4_k")
    with pytest.raises(ValueError, match="has shape"):
        to_gguf(out, narrow_params, CONFIG, TRANSFORMER_RULES["tern"])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _assert_f16_file_holds(path, params, config, rules):
    """Every tensor read back: fp16(decode(codes)) for a ternary one, fp16/f32 of the rest."""
    _, tensors = _read(path)
    expected = _gguf_tensors(config)
    assert sorted(tensors) == sorted(expected)
    quantized = {m.path: m.rule for m in match_params(params, rules, unused="ignore")[0]
                 if m.quantized}
    for name, (flax_path, shape) in expected.items():
        value = _leaf(params, flax_path)
        if flax_path in quantized:
            value = core.decode(quantized[flax_path].codes(value))
        if len(shape) == 1:
            assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
            want = np.asarray(value, np.float32)
        else:
            assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F16, name
            want = _as_gguf_matrix(flax_path, value, config).astype(np.float16)
        got = np.asarray(tensors[name].data).reshape(shape)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    return quantized


def test_what_tq_types_cannot_hold_f16_holds_exactly(params, tmp_path):
    """5 levels (t_ex=2) and rows narrower than 256: each tensor is fp16(decode(codes))."""
    rules = TRANSFORMER_RULES["tern_t2"]
    path = to_gguf(tmp_path / "t2.gguf", params, CONFIG, rules, type="f16")
    quantized = _assert_f16_file_holds(path, params, CONFIG, rules)
    assert len(quantized) == 9  # 7 kernels of the block, the embedding and the head
    up = core.decode(rules[0].codes(params["blocks"][0]["mlp"]["up"]["kernel"]))
    assert len(np.unique(np.asarray(up))) == 5  # the file holds 5 levels
    narrow = TransformerConfig(max_len=8, d_model=128, num_heads=2, num_layers=1, mlp="swiglu")
    narrow_params = nnx.to_pure_dict(nnx.state(Transformer(narrow, rngs=nnx.Rngs(0)), nnx.Param))
    path = to_gguf(tmp_path / "narrow.gguf", narrow_params, narrow, TRANSFORMER_RULES["tern"],
                   type="f16")
    _assert_f16_file_holds(path, narrow_params, narrow, TRANSFORMER_RULES["tern"])


def test_an_existing_file_is_never_overwritten_unless_ours(params, tmp_path):
    rules = TRANSFORMER_RULES["tern"]
    mine = tmp_path / "notes.gguf"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        to_gguf(mine, params, CONFIG, rules)
    with pytest.raises(fs.NotOwnedError):
        to_gguf(mine, params, CONFIG, rules, overwrite=True)
    assert mine.read_bytes() == b"the user's own file"
    ours = to_gguf(tmp_path / "m.gguf", params, CONFIG, rules, type="tq1_0")
    first = ours.read_bytes()
    to_gguf(ours, params, CONFIG, rules, type="tq2_0", overwrite=True)
    assert ours.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".tern_jax")) \
        == ["m.gguf", "notes.gguf"]


def test_a_rule_with_8_bit_activations_exports_like_one_without(params, tmp_path):
    plain = (Rule(r"(.*/)?(kernel|embedding)"),)
    a8 = (Rule(r"(.*/)?(kernel|embedding)", activations="int8_block"),)
    a = to_gguf(tmp_path / "a.gguf", params, CONFIG, plain)
    b = to_gguf(tmp_path / "b.gguf", params, CONFIG, a8)
    assert a.read_bytes() == b.read_bytes()  # llama.cpp quantizes the inputs of TQ layers itself
