"""Specification of tern_jax.packing: dense base-L storage of codes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tern_jax import packing


@pytest.mark.parametrize("levels,per_word,bits", [(3, 40, 1.6), (5, 27, 64 / 27), (9, 20, 3.2)])
def test_density_per_expansion_level(levels, per_word, bits):
    assert packing.values_per_word(levels) == per_word
    assert packing.bits_per_weight(levels) == pytest.approx(bits)
    assert levels**per_word <= 2**64 < levels ** (per_word + 1)


def test_density_meets_the_targets():
    assert packing.bits_per_weight(3) <= 1.6  # t_ex=1, paper stores 2 bits
    assert packing.bits_per_weight(5) <= 2.4  # t_ex=2, paper 4
    assert packing.bits_per_weight(9) <= 3.2  # t_ex=4, paper 8


@st.composite
def codes_and_levels(draw):
    levels = draw(st.sampled_from([2, 3, 5, 7, 9, 17, 255, 256, 300]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9))
    values = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, levels - 1)))
    return values, levels


@given(codes_and_levels())
def test_pack_then_unpack_is_the_identity(data):
    values, levels = data
    words = packing.pack(values, levels)
    assert words.dtype == np.uint64
    assert words.nbytes == packing.packed_nbytes(values.size, levels)
    out = packing.unpack(words, levels, values.size)
    np.testing.assert_array_equal(out.reshape(values.shape), values)


@given(st.integers(0, 200), st.sampled_from([3, 5, 9]))
def test_extreme_codes_round_trip(n, levels):
    for fill in (0, levels - 1):
        values = np.full(n, fill)
        np.testing.assert_array_equal(packing.unpack(packing.pack(values, levels), levels, n),
                                      values)


def test_out_of_range_codes_are_rejected():
    with pytest.raises(ValueError, match=r"values must be codes in \[0, 3\)"):
        packing.pack(np.array([0, 1, 3]), 3)
    with pytest.raises(ValueError, match="shift signed levels"):
        packing.pack(np.array([-1, 0, 1]), 3)
    with pytest.raises(TypeError, match="integer codes"):
        packing.pack(np.array([0.5]), 3)


def test_corrupt_words_are_detected():
    words = packing.pack(np.array([1, 2, 0, 1]), 3)
    words[0] = np.uint64(3**40)  # one past the largest valid word
    with pytest.raises(ValueError, match="corrupt"):
        packing.unpack(words, 3, 4)
    with pytest.raises(ValueError, match="does not fit"):
        packing.unpack(words, 3, 41)
