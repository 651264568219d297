"""A BPE language model's GGUF file in the real llama.cpp (llama-cpp-python): llama.cpp splits
held-out and adversarial text into the tokens the tokenizers package gives, and its logits and
bits per byte are tern_jax's with 8-bit activations. Skipped where llama.cpp is not installed
(pip install 'tern_jax[llama]'); benchmarks/export_parity.py measures a trained model."""

import math

import numpy as np
import pytest
from flax import nnx

from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.nnx_utils import ternarized
from tern_jax.presets import TRANSFORMER_RULES

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
from helpers.bpe import CORPUS, train_bpe  # noqa: E402

from tern_jax.export import to_gguf  # noqa: E402

STRINGS = [
    " ", "   x", "x   ", "\t\t\tdef", "\n\n\n", " \n \n", "\r\n", "word  \n  word",
    "   \t  \n\t  end", "it's I'm you're we've they'll he'd IT'S", "12345678901234567890",
    "Déjà vu, naïve café", "Größe Straße", "東京タワー 2024年", "مرحبا", "🙂🚀✓ a🙂b",
    "“curly” — dash …", b"caf\xe9 \xff \xe2\x82".decode("utf-8", "replace"),
    "def h(z):\n    return z * 3  # it's 42\n", "text<|endoftext|>more",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = train_bpe(CORPUS, vocab_size=320)
    config = TransformerConfig(vocab_size=tok.get_vocab_size(), max_len=32, d_model=256,
                               num_heads=4, num_layers=2, mlp_ratio=2, num_kv_heads=2,
                               mlp="swiglu")
    model = Transformer(config, rngs=nnx.Rngs(0))
    rules = TRANSFORMER_RULES["tern_a8"]
    path = to_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf", nnx.state(model, nnx.Param),
                   config, rules, type="tq2_0", tokenizer=tok)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=config.max_len, logits_all=True,
                          verbose=False, n_threads=2)
    return tok, model, rules, llm


def test_llama_cpp_tokenizes_as_the_tokenizers_package(exported):
    tok, _, _, llm = exported
    assert llm.n_vocab() == tok.get_vocab_size()
    for text in STRINGS + CORPUS[::7]:
        ids = tok.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert llm.detokenize(ids) == tok.decode(ids, skip_special_tokens=True).encode()


def test_llama_cpp_computes_tern_jax_logits_and_bits_per_byte(exported):
    tok, model, rules, llm = exported
    text = "def h(z):\n    return z * 3  # it's déjà 42\n"
    ids = tok.encode(text).ids[:32]
    llm.reset()
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], np.float64)
    ours = np.asarray(ternarized(model, rules)(np.asarray([ids], np.int32)))[0]
    assert np.abs(theirs - ours).max() < 0.03 * np.abs(ours).max()
    assert np.mean(theirs.argmax(-1) == ours.argmax(-1)) >= 0.9

    def bits(logits):
        logits = logits.astype(np.float64)
        top = logits.max(-1)
        log_z = top + np.log(np.exp(logits - top[:, None]).sum(-1))
        nats = log_z[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
        return nats.sum() / math.log(2) / len(tok.decode(ids[1:]).encode())

    assert abs(bits(theirs) - bits(ours)) < 0.01
