"""Specification of tern_jax.summary against a hand-computed example."""

import jax.numpy as jnp
import pytest

import tern_jax

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
