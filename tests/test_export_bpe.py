"""A BPE language model in GGUF: the file's vocabulary, merges, token types and pre-tokenizer,
read back with the gguf package, are the tokenizer's; what llama.cpp cannot reproduce is one
clear error before anything is written. (llama.cpp itself: tests/test_llama_cpp_bpe.py.)"""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.presets import TRANSFORMER_RULES

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
from helpers.bpe import CORPUS, train_bpe  # noqa: E402

from tern_jax.export import to_gguf  # noqa: E402
from tern_jax.export_vocab import byte_symbols, byte_tokenizer, gguf_vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def model(tok):
    config = TransformerConfig(vocab_size=tok.get_vocab_size(), max_len=16, d_model=256,
                               num_heads=4, num_kv_heads=2, num_layers=1, mlp_ratio=1,
                               mlp="swiglu")
    return config, nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param))


def _strings(field):
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def test_the_gguf_vocabulary_is_the_tokenizers(tok, model, tmp_path):
    config, params = model
    path = to_gguf(tmp_path / "m.gguf", params, config, TRANSFORMER_RULES["tern"],
                   tokenizer=tok)
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    vocab = tok.get_vocab(with_added_tokens=True)
    assert _strings(fields["tokenizer.ggml.tokens"]) == sorted(vocab, key=vocab.get)
    spec = json.loads(tok.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert len(merges) > 50 and _strings(fields["tokenizer.ggml.merges"]) == merges
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "trillion"
    types = fields["tokenizer.ggml.token_type"].contents()
    end = vocab["<|endoftext|>"]
    assert types[end] == gguf.TokenType.CONTROL
    assert set(types[:end] + types[end + 1:]) == {gguf.TokenType.NORMAL}
    assert fields["tokenizer.ggml.eos_token_id"].contents() == end
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    embedding = {t.name: t for t in reader.tensors}["token_embd.weight"]
    assert tuple(reversed(embedding.shape.tolist())) == (tok.get_vocab_size(), 256)
    # the file round-trips: a tokenizer rebuilt from it alone tokenizes as the original
    rebuilt = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={t: i for i, t in enumerate(_strings(fields["tokenizer.ggml.tokens"]))},
        merges=[tuple(m.split(" ")) for m in _strings(fields["tokenizer.ggml.merges"])]))
    rebuilt.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = "def f(x):\n\treturn x  # déjà vu 123456 ✓ 🙂 it's"
    assert rebuilt.encode(text).ids == tok.encode(text).ids


def test_the_byte_export_is_unchanged_by_the_tokenizer_path(tmp_path):
    """The 256-byte vocabulary as before: no merge applies, NUL ends generation."""
    config = TransformerConfig(max_len=8, d_model=256, num_heads=2, num_layers=1, mlp_ratio=1,
                               mlp="swiglu")
    params = nnx.to_pure_dict(nnx.state(Transformer(config, rngs=nnx.Rngs(1)), nnx.Param))
    fields = gguf.GGUFReader(to_gguf(tmp_path / "b.gguf", params, config,
                                     TRANSFORMER_RULES["tern"])).fields
    assert fields["tokenizer.ggml.pre"].contents() == "default"
    assert _strings(fields["tokenizer.ggml.tokens"]) == byte_symbols()
    assert _strings(fields["tokenizer.ggml.merges"]) == ["ĀĀ ĀĀ"]
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 0


def test_the_byte_tokenizer_reads_text_as_its_utf8_bytes():
    tok = byte_tokenizer()
    text = "def f(x):\n\treturn x  # é ✓ 🙂 \x00\x7f"
    assert tok.encode(text).ids == list(text.encode())
    assert tok.decode(list(text.encode())) == text
    assert tok.get_vocab_size() == 256 and byte_symbols() == [
        tok.id_to_token(b) for b in range(256)]


def _variant(tok, edit):
    spec = json.loads(tok.to_str())
    edit(spec)
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def test_what_llama_cpp_cannot_reproduce_is_one_clear_error(tok, model, tmp_path):
    config, params = model
    rules, out = TRANSFORMER_RULES["tern"], tmp_path / "m.gguf"

    def prefix(spec):
        spec["pre_tokenizer"]["add_prefix_space"] = True

    def normalizer(spec):
        spec["normalizer"] = {"type": "NFC"}

    def decoder(spec):
        spec["decoder"] = None

    def post(spec):
        spec["post_processor"] = {"type": "BertProcessing", "sep": ["<|endoftext|>", 0],
                                  "cls": ["<|endoftext|>", 0]}

    cases = [(prefix, "adds a space before the text.*add_prefix_space=False"),
             (normalizer, r"normalizer \(NFC\).*without a normalizer"),
             (decoder, "decoder is None, not ByteLevel"),
             (post, "post-processor.*other than one BOS")]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            to_gguf(out, params, config, rules, tokenizer=_variant(tok, edit))
    with pytest.raises(ValueError, match="vocabulary is the tokenizer's 256 tokens; this model "
                                         "has vocab_size="):
        to_gguf(out, params, config, rules, tokenizer=byte_tokenizer())
    small = dataclasses.replace(config, vocab_size=256)
    with pytest.raises(ValueError, match=r"has shape"):  # the tokenizer fits, the weights not
        to_gguf(out, params, small, rules, tokenizer=byte_tokenizer())
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": ')
    with pytest.raises(ValueError, match="bad.json does not parse as a tokenizer.json"):
        to_gguf(out, params, config, rules, tokenizer=bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        to_gguf(out, params, config, rules, tokenizer=tmp_path / "missing.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_a_bos_template_is_added_by_llama_cpp_too(tok):
    end = tok.token_to_id("<|endoftext|>")

    def template(spec):
        spec["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [end],
                                                 "tokens": ["<|endoftext|>"]}}}

    vocab = gguf_vocabulary(_variant(tok, template))
    assert vocab.add_bos and vocab.bos == end == vocab.eos
    assert not gguf_vocabulary(tok).add_bos


def test_the_byte_tokenizer_has_a_gguf_vocabulary_of_its_bytes():
    vocab = gguf_vocabulary(byte_tokenizer())
    assert vocab.tokens == byte_symbols() and vocab.pre == "trillion"
    assert np.unique(vocab.types).tolist() == [1] and vocab.eos == 0
