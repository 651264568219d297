"""Specification of the pure train and eval steps, called directly on fake data."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tern_jax.models import get_model
from tern_jax.train import ImageClassification, ModelStack, Slot, eval_step, train_step
from tern_jax.train.config import Config


def _stack(slots, model_axis="vmap", **changes):
    task = ImageClassification(get_model("small_cnn", 10), 10, (8, 8, 1), (0.5,), (0.25,))
    return ModelStack(task, tuple(slots), optax.sgd(0.05, 0.9), model_axis, **changes)


def _batch(m, b=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (b,))
    images = rng.integers(0, 60, (b, 8, 8, 1)).astype(np.uint8)
    images[:, 0, 0, 0] = (labels * 25).astype(np.uint8)  # a learnable signal
    one = {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}
    return one, jax.tree.map(lambda a: jnp.broadcast_to(a, (m,) + a.shape), one)


def test_train_step_lowers_the_loss_of_every_model():
    stack = _stack([Slot("fp", 0), Slot("tern", 0)])
    step = jax.jit(functools.partial(train_step, stack))
    state = stack.init()
    _, batch = _batch(2)
    first = None
    for i in range(15):
        state, metrics = step(state, batch, jnp.int32(i))
        first = metrics["loss"] if first is None else first
    assert metrics["loss"].shape == (2,) and metrics["accuracy"].shape == (2,)
    assert np.all(np.asarray(metrics["loss"]) < 0.5 * np.asarray(first))


def test_models_of_one_seed_start_alike_and_variants_differ():
    stack = _stack([Slot("fp", 3), Slot("tern", 3), Slot("fp", 4)])
    state = stack.init()
    kernel = np.asarray(state.params["head"]["kernel"])
    np.testing.assert_array_equal(kernel[0], kernel[1])
    assert not np.array_equal(kernel[0], kernel[2])
    _, batch = _batch(3)
    _, metrics = jax.jit(functools.partial(train_step, stack))(state, batch, jnp.int32(0))
    loss = np.asarray(metrics["loss"])
    assert loss[0] != loss[1]  # same weights, ternarized forward for the second


def test_vmap_and_unrolled_model_axis_agree():
    slots = [Slot("fp", 0), Slot("tern", 1)]
    _, batch = _batch(2)
    out = {}
    for mode in ("vmap", "unroll"):
        stack = _stack(slots, mode)
        state, metrics = jax.jit(functools.partial(train_step, stack))(
            stack.init(), batch, jnp.int32(0))
        out[mode] = (metrics["loss"], state.params["head"]["kernel"])
    np.testing.assert_allclose(out["vmap"][0], out["unroll"][0], rtol=1e-5)
    np.testing.assert_allclose(out["vmap"][1], out["unroll"][1], rtol=1e-5, atol=1e-6)


def test_eval_step_sums_only_unmasked_examples():
    stack = _stack([Slot("fp", 0), Slot("tern", 0)])
    state = stack.init()
    one, _ = _batch(2, b=8)
    full = eval_step(stack, state, one, jnp.ones(8))
    half = eval_step(stack, state, one, jnp.asarray([1.0] * 4 + [0.0] * 4))
    first4 = jax.tree.map(lambda a: a[:4], one)
    direct = eval_step(stack, state, first4, jnp.ones(4))
    np.testing.assert_array_equal(np.asarray(full["count"]), [8, 8])
    np.testing.assert_allclose(np.asarray(half["loss"]), np.asarray(direct["loss"]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(half["correct"]), np.asarray(direct["correct"]))


def test_distillation_needs_a_full_precision_model_for_every_seed():
    with pytest.raises(ValueError, match=r"seeds \[1\] have none"):
        _stack([Slot("fp", 0), Slot("tern", 0), Slot("tern", 1)], distill_weight=1.0)


def test_zero_fraction_counts_the_ruled_weights_only():
    stack = _stack([Slot("fp", 0), Slot("tern", 0), Slot("tern_fl", 0)])
    from tern_jax.train.step import zero_fractions

    z = np.asarray(zero_fractions(stack, stack.init()))
    assert z[0] == 0.0 and 0.0 < z[1] < 0.6 and 0.0 < z[2] < 0.6 and z[1] != z[2]


def test_slot_names_round_trip_and_bad_names_are_refused():
    assert Slot.parse("tern_t2/seed12") == Slot("tern_t2", 12)
    assert Slot.parse(Slot("fp", 3).name) == Slot("fp", 3)
    assert Config(variants=("fp", "tern"), seeds=(0, 1)).slots[1] == Slot("fp", 1)
    for bad in ("tern", "tern/seedX", "", None):
        with pytest.raises(ValueError, match="VARIANT/seedN"):
            Slot.parse(bad)


def test_the_stack_checks_its_model_axis_by_the_configs_own_rule():
    with pytest.raises(ValueError, match="model_axis must be 'auto', 'vmap' or 'unroll', got "
                                         "'vamp'"):
        _stack([Slot("fp", 0)], model_axis="vamp")
    with pytest.raises(ValueError, match="model_axis must be 'auto', 'vmap' or 'unroll'"):
        Config(model_axis="vamp")


def test_rules_given_as_the_preset_dict_say_pick_one():
    from tern_jax.presets import PRESETS, preset_rules

    with pytest.raises(TypeError, match="variants: you passed a dict of presets; pick names "
                                        "from it, e.g. variants=.'fp', 'tern'. .the dict has "
                                        "fp, tern, "):
        Config(variants=PRESETS)
    with pytest.raises(TypeError, match="you passed a dict of presets; pick one by name: one "
                                        "of fp, tern, "):
        preset_rules(PRESETS)
