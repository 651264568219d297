"""Specification of the pure train and eval steps, called directly on fake data."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tern_jax.models import get_model
from tern_jax.train import ImageClassification, ModelStack, Slot, eval_step, train_step
from tern_jax.train.config import Config, override


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


# One stack serves most tests (its step compiles once): fp and tern of seed 3, fp of seed 4.
SLOTS = (Slot("fp", 3), Slot("tern", 3), Slot("fp", 4))


@pytest.fixture(scope="module")
def stack():
    return _stack(SLOTS)


@pytest.fixture(scope="module")
def step(stack):
    return jax.jit(functools.partial(train_step, stack))


@pytest.fixture(scope="module")
def first_step(stack, step):
    """The fresh state, and the state and metrics after one step on ``_batch(3)``."""
    state = stack.init()
    return state, step(state, _batch(3)[1], jnp.int32(0))


def test_train_step_lowers_the_loss_of_every_model(step, first_step):
    (state, metrics), batch = first_step[1], _batch(3)[1]
    first = metrics["loss"]
    for i in range(1, 15):
        state, metrics = step(state, batch, jnp.int32(i))
    assert metrics["loss"].shape == (3,) and metrics["accuracy"].shape == (3,)
    assert np.all(np.asarray(metrics["loss"]) < 0.5 * np.asarray(first))


def test_models_of_one_seed_start_alike_and_variants_differ(first_step):
    state, (_, metrics) = first_step
    kernel = np.asarray(state.params["head"]["kernel"])
    np.testing.assert_array_equal(kernel[0], kernel[1])
    assert not np.array_equal(kernel[0], kernel[2])
    loss = np.asarray(metrics["loss"])
    assert loss[0] != loss[1]  # same weights, ternarized forward for the second


def test_vmap_and_unrolled_model_axis_agree(first_step):
    vmapped_state, vmapped = first_step[1]
    unrolled = _stack(SLOTS, "unroll")
    state, metrics = jax.jit(functools.partial(train_step, unrolled))(
        unrolled.init(), _batch(3)[1], jnp.int32(0))
    np.testing.assert_allclose(vmapped["loss"], metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(vmapped_state.params["head"]["kernel"],
                               state.params["head"]["kernel"], rtol=1e-5, atol=1e-6)


def test_eval_step_sums_only_unmasked_examples(stack, first_step):
    state = first_step[0]
    evaluate = jax.jit(functools.partial(eval_step, stack))
    one, _ = _batch(3, b=8)
    full = evaluate(state, one, jnp.ones(8))
    half = evaluate(state, one, jnp.asarray([1.0] * 4 + [0.0] * 4))
    first4 = jax.tree.map(lambda a: a[:4], one)
    direct = evaluate(state, first4, jnp.ones(4))
    np.testing.assert_array_equal(np.asarray(full["count"]), [8, 8, 8])
    np.testing.assert_allclose(np.asarray(half["loss"]), np.asarray(direct["loss"]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(half["correct"]), np.asarray(direct["correct"]))
    assert not np.allclose(np.asarray(full["loss"]), np.asarray(half["loss"]))


def test_distillation_needs_a_full_precision_model_for_every_seed():
    with pytest.raises(ValueError, match=r"seeds \[1\] have none"):
        _stack([Slot("fp", 0), Slot("tern", 0), Slot("tern", 1)], distill_weight=1.0)


def test_zero_fraction_counts_the_ruled_weights_only():
    stack = _stack([Slot("fp", 0), Slot("tern", 0), Slot("tern_fl", 0)])
    from tern_jax.train.step import zero_fractions

    z = np.asarray(jax.jit(functools.partial(zero_fractions, stack))(stack.init()))
    assert z[0] == 0.0 and 0.0 < z[1] < 0.6 and 0.0 < z[2] < 0.6 and z[1] != z[2]


def test_slot_names_round_trip_and_bad_names_are_refused():
    assert Slot.parse("tern_t2/seed12") == Slot("tern_t2", 12)
    assert Slot.parse(Slot("fp", 3).name) == Slot("fp", 3)
    assert Config(model={"variants": ("fp", "tern")}, seeds=(0, 1)).slots[1] == Slot("fp", 1)
    for bad in ("tern", "tern/seedX", "", None):
        with pytest.raises(ValueError, match="VARIANT/seedN"):
            Slot.parse(bad)


def test_the_stack_checks_its_model_axis_by_the_configs_own_rule():
    with pytest.raises(ValueError, match="model_axis must be 'auto', 'vmap' or 'unroll', got "
                                         "'vamp'"):
        _stack([Slot("fp", 0)], model_axis="vamp")
    with pytest.raises(ValueError, match="model.axis must be 'auto', 'vmap' or 'unroll', got "
                                         "'vamp'"):
        Config(model={"axis": "vamp"})


def test_rules_given_as_the_preset_dict_say_pick_one():
    from tern_jax.presets import PRESETS, preset_rules

    with pytest.raises(TypeError, match="model.variants: you passed a dict of presets; pick "
                                        "names from it, e.g. model.variants=.'fp', 'tern'. "
                                        ".the dict has fp, tern, "):
        Config(model={"variants": PRESETS})
    with pytest.raises(TypeError, match="you passed a dict of presets; pick one by name: one "
                                        "of fp, tern, "):
        preset_rules(PRESETS)


def _bitnet_config(changes: dict | None = None):
    config = Config(optimizer={"name": "adamw", "learning_rate": 1.5e-3, "weight_decay": 0.1},
                    schedule={"epochs": 10, "name": "bitnet", "weight_decay": "bitnet",
                              "warmup_epochs": 1})
    return override(config, changes or {})


def test_the_bitnet_schedules_take_their_stated_values_at_chosen_steps():
    from tern_jax.train.optim import make_schedule, make_weight_decay

    lr, wd = make_schedule(_bitnet_config(), 10), make_weight_decay(_bitnet_config(), 10)
    # 100 steps: warm-up to step 10, cosine 1.5e-3 -> 8e-4 over steps 10..50, drop to 5e-4 at
    # step 50, cosine to 0 at step 100; weight decay: cosine 0.1 -> 0 over steps 0..50, then 0
    expected_lr = {0: 1.5e-4, 5: 1.5e-4 + (1.5e-3 - 1.5e-4) * 5 / 10,  # warm-up from lr / 10 steps
                   10: 1.5e-3, 30: 8e-4 + (1.5e-3 - 8e-4) * 0.5,
                   49: 8e-4 + (1.5e-3 - 8e-4) * 0.5 * (1 + np.cos(np.pi * 39 / 40)),
                   50: 5e-4, 75: 5e-4 * 0.5, 100: 0.0}
    for step, value in expected_lr.items():
        assert float(lr(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step
    for step, value in {0: 0.1, 25: 0.05, 49: 0.05 * (1 + np.cos(np.pi * 49 / 50)), 50: 0.0,
                        99: 0.0}.items():
        assert float(wd(step)) == pytest.approx(value, rel=1e-5, abs=1e-12), step
    with pytest.raises(ValueError, match="schedule.warmup_epochs=5 with schedule.epochs=10; "
                                         "use warmup_epochs < epochs / 2"):
        _bitnet_config({"schedule.warmup_epochs": 5})


def test_adamw_decays_each_weight_by_the_scheduled_decay_times_the_rate():
    """With a zero gradient Adam's step is 0, so the update is -lr(t) * wd(t) * w exactly."""
    from tern_jax.train.optim import make_optimizer, make_schedule, make_weight_decay

    config = _bitnet_config()
    lr, wd = make_schedule(config, 10), make_weight_decay(config, 10)
    tx = make_optimizer(config, lr, wd)
    params = {"w": jnp.asarray([1.0, -2.0, 4.0])}
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    for step in range(60):
        updates, state = tx.update(zero, state, params)
        np.testing.assert_allclose(updates["w"], -lr(step) * wd(step) * params["w"], rtol=1e-5)
    # a constant decay keeps the optimizer of earlier versions (same state, no step count)
    plain = make_optimizer(Config(optimizer={"name": "adam"}), lr)
    assert jax.tree.structure(plain.init(params)) == jax.tree.structure(
        optax.chain(optax.add_decayed_weights(3e-4), optax.adam(lr)).init(params))
