"""An exported GGUF file in the real llama.cpp (llama-cpp-python): the bytes come back exactly,
and its logits are tern_jax's with 8-bit activations. Skipped where llama.cpp is not
installed (pip install 'tern_jax[llama]')."""

import numpy as np
import pytest
from flax import nnx

from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.nnx_utils import ternarized
from tern_jax.presets import TRANSFORMER_RULES

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
from tern_jax.export import to_gguf  # noqa: E402

CONFIG = TransformerConfig(max_len=32, d_model=256, num_heads=4, num_layers=2, mlp_ratio=2,
                           num_kv_heads=2, mlp="swiglu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    rules = TRANSFORMER_RULES["tern_a8"]
    path = to_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf", nnx.state(model, nnx.Param),
                   CONFIG, rules, type="tq2_0")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CONFIG.max_len, logits_all=True,
                          verbose=False, n_threads=2)
    return model, rules, llm


def test_every_byte_detokenizes_and_tokenizes_to_itself(exported):
    _, _, llm = exported
    assert llm.n_vocab() == 256
    assert [llm.detokenize([b]) for b in range(256)] == [bytes([b]) for b in range(256)]
    text = "def f(x):\n\treturn x  # é ✓ \x00\x7f".encode()
    assert llm.tokenize(text, add_bos=False, special=False) == list(text)


def test_llama_cpp_logits_are_tern_jax_logits_with_8_bit_activations(exported):
    model, rules, llm = exported
    tokens = list(b"import numpy as np\nx = np.")
    llm.reset()
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)])
    ours = np.asarray(ternarized(model, rules)(np.asarray([tokens], np.int32)))[0]
    scale = np.abs(ours).max()
    assert np.abs(theirs - ours).max() < 0.03 * scale  # measured: 1.3 %
    assert np.mean(theirs.argmax(-1) == ours.argmax(-1)) >= 0.9
