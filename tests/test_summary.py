"""Specification of tern_jax.summary against hand-computed examples, and of ``tern-jax summary``
for a transformer against the function on the model's own parameters."""

import jax.numpy as jnp
import pytest
from flax import nnx

import tern_jax
from tern_jax import cli, packing
from tern_jax.models.transformer import Transformer, transformer_config
from tern_jax.presets import TRANSFORMER_RULES

# A 2x4 dense kernel with max|W| = 1: Δ = 0.05 keeps 7 weights (0.01 drops); Δ = 0.1 keeps 6.
KERNEL = jnp.array([[1.0, -0.5, 0.01, 0.2], [0.07, -0.3, 0.6, -0.1]])
PARAMS = {"dense": {"kernel": KERNEL, "bias": jnp.zeros(4)}}


def test_hand_computed_figures():
    s = tern_jax.summary(PARAMS, print_fn=None)
    assert [r.path for r in s.layers] == ["dense/bias", "dense/kernel"]
    bias, kernel = s.layers
    assert not bias.quantized and bias.bytes_packed == 16 and bias.bytes_fp32 == 16
    assert kernel.shape == (2, 4) and kernel.count == 8 and kernel.method == "paper"
    assert kernel.t_ex == 1
    assert kernel.zero_fraction == (0.125,)
    assert kernel.scales[0] == pytest.approx((1.0 + 0.5 + 0.2 + 0.07 + 0.3 + 0.6 + 0.1) / 7)
    assert kernel.bits_per_weight == pytest.approx(1.6)
    assert kernel.bytes_fp32 == 32
    assert kernel.bytes_packed == 8 + 4  # one uint64 word for 8 trits + one float32 scale
    assert kernel.compression == pytest.approx(32 / 12)
    assert kernel.adds_per_position == 7  # one add/sub per nonzero weight
    assert kernel.muls_per_position == 4  # one scale per output unit
    assert kernel.macs_per_position == 8
    assert s.total_params == 12 and s.ternary_params == 8
    assert s.bytes_fp32 == 48 and s.bytes_packed == 28
    assert s.zero_fraction == pytest.approx(0.125)


def test_expansion_counts_zeros_per_branch():
    # Δ_1 = 0.05 keeps 7, Δ_2 = 0.1 keeps 6 (0.1 itself is kept: |W| >= Δ).
    s = tern_jax.summary(PARAMS, [tern_jax.Rule(r".*/kernel", t_ex=2)], print_fn=None,
                         unused="error")
    kernel = s.layers[1]
    assert kernel.zero_fraction == (0.125, 0.25)
    assert kernel.scales[0] == pytest.approx(2.77 / 7)
    assert kernel.scales[1] == pytest.approx(2.7 / 6)
    assert kernel.adds_per_position == 7 + 6
    assert kernel.bits_per_weight == pytest.approx(64 / 27)
    assert kernel.bytes_packed == 8 + 2 * 4


def test_table_is_printed_and_readable():
    lines = []
    tern_jax.summary(PARAMS, print_fn=lines.append)
    table = lines[0]
    assert "dense/kernel" in table and "paper" in table and "1.60" in table
    assert "1 of 2 tensors ternarized" in table


def test_as_dict_is_plain_data():
    d = tern_jax.summary(PARAMS, print_fn=None).as_dict()
    assert d["bytes_packed"] == 28
    assert d["layers"][1]["compression"] == pytest.approx(32 / 12)
    assert isinstance(d["layers"][1]["zero_fraction"], tuple)
    assert d["bytes_fp32"] == 48 and d["compression"] == pytest.approx(48 / 28)


def test_a_full_precision_model_is_summed_up_without_an_infinite_ratio():
    lines = []
    tern_jax.summary(PARAMS, [tern_jax.Rule(".*", None)], print_fn=lines.append)
    last = lines[0].splitlines()[-1]
    assert last == ("0 of 2 tensors ternarized: every weight in full precision; "
                    "48 B fp32 -> 48 B stored (1.0x)")
    assert "inf" not in lines[0]


# Hand counts: transformer_tiny (vocab 256, d 32, 2 heads of 16, 2 layers, GELU MLP 4x): embed
# and head 256·32 each; a block's query/key/value/out 32·2·16 each, up and down 32·128 each,
# two norms of 32; one final norm. transformer_llama (d 256, 4 heads of 64, 2 key/value heads,
# 2 layers, SwiGLU MLP 2x): embed and head 256·256; a block's query and out 256·4·64, key and
# value 256·2·64, gate/up/down 256·512, two norms of 256; a final norm of 256.
TINY_PARAMS = 2 * 256 * 32 + 2 * (4 * 32 * 2 * 16 + 2 * 32 * 128 + 2 * 32) + 32
LLAMA_PARAMS = 2 * 256 * 256 + 2 * (2 * 256 * 4 * 64 + 2 * 256 * 2 * 64 + 3 * 256 * 512
                                    + 2 * 256) + 256


@pytest.mark.parametrize("model, variant, total, norms", [
    ("transformer_tiny", "tern", TINY_PARAMS, 5 * 32),
    ("transformer_llama", "tern_pc", LLAMA_PARAMS, 5 * 256),
])
def test_the_command_line_sums_up_a_transformer_as_summary_does_on_its_params(
        capsys, model, variant, total, norms):
    assert cli.main(["summary", "--model", model, "--variant", variant]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    net = Transformer(transformer_config(model), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    s = tern_jax.summary(params, TRANSFORMER_RULES[variant], print_fn=None)
    assert s.total_params == total and s.ternary_params == total - norms
    assert s.bytes_fp32 == 4 * total
    rows = [line.split() for line in printed[2:-1]]
    # path, shape, method, fp32 bytes and packed bytes of every tensor, as in Python
    assert [(r[0], r[1], r[2], int(r[7]), int(r[8])) for r in rows] == [
        (r.path, "x".join(map(str, r.shape)), r.method or "fp", r.bytes_fp32, r.bytes_packed)
        for r in s.layers]
    head = next(r for r in s.layers if r.path == "head/kernel")
    scales = 1 if variant == "tern" else 256  # per tensor, or one per output (vocabulary) row
    assert head.bytes_packed == 8 * -(-(256 * head.shape[0]) // 40) + 4 * scales  # 40 trits/word
    assert packing.values_per_word(3) == 40
    assert (f"{s.ternary_params:,} of {s.total_params:,} parameters; {s.bytes_fp32:,} B fp32 -> "
            f"{s.bytes_packed:,} B packed ({s.compression:.1f}x overall, "
            f"{s.ternary_compression:.1f}x on ternary tensors)") in printed[-1]
