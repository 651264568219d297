"""Specification of save_ternary / load_ternary: density, exactness, safety."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import tern_jax
from tern_jax import CheckpointError


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(16, (3, 3), use_bias=False, name="stem_conv")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
        x = nn.Conv(32, (3, 3), strides=2, use_bias=False, name="conv")(x)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def model_and_variables():
    model = Net()
    variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    # perturb BN statistics so they matter
    variables = {**variables, "batch_stats": jax.tree.map(lambda a: a + 0.3,
                                                          variables["batch_stats"])}
    return model, variables


X = jax.random.normal(jax.random.key(7), (4, 8, 8, 3))

RULE_SETS = {
    "default": None,
    "fp_head": [tern_jax.Rule(r"head/kernel", None), tern_jax.Rule(r".*/kernel")],
    "t_ex2": [tern_jax.Rule(r".*/kernel", t_ex=2)],
    "t_ex4_per_channel": [tern_jax.Rule(r".*/kernel", t_ex=4, axis=-1)],
    "twn": [tern_jax.Rule(r".*/kernel", method="twn")],
    "absmean": [tern_jax.Rule(r".*/kernel", method="absmean")],
}


@pytest.mark.parametrize("name", list(RULE_SETS))
def test_loaded_model_gives_bit_identical_logits(tmp_path, model_and_variables, name):
    model, variables = model_and_variables
    rules = RULE_SETS[name]

    @jax.jit
    def training_forward(params):
        return model.apply({"params": tern_jax.quantize_params(params, rules),
                            "batch_stats": variables["batch_stats"]}, X)

    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"], rules)
    loaded = tern_jax.load_ternary(path)
    logits = jax.jit(lambda p: model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                                           X))(loaded)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(training_forward(
        variables["params"])))


def test_packed_size_meets_the_density_target(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    loaded_meta = tern_jax.checkpoint._read_meta(path)
    kinds = {e["path"]: e["kind"] for e in loaded_meta["leaves"]}
    assert kinds["conv/kernel"] == "ternary" and kinds["head/bias"] == "dense"
    s = tern_jax.summary(variables["params"], print_fn=None)
    conv = next(r for r in s.layers if r.path == "conv/kernel")
    assert conv.bits_per_weight <= 1.6
    assert conv.bytes_packed * 8 / conv.count < 1.7  # codes plus one float32 scale


def test_nnx_state_round_trips(tmp_path):
    model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    path = tern_jax.save_ternary(tmp_path / "ckpt", state)
    loaded = tern_jax.load_ternary(path)
    expected = tern_jax.quantize_params(state)
    np.testing.assert_array_equal(loaded["kernel"], expected["kernel"][...])
    nnx.replace_by_pure_dict(state, loaded)
    nnx.update(model, state)
    np.testing.assert_array_equal(model.kernel[...], expected["kernel"][...])


def test_existing_path_is_refused_without_overwrite(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    before = sorted(os.listdir(path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tern_jax.save_ternary(path, variables["params"])
    assert sorted(os.listdir(path)) == before
    tern_jax.save_ternary(path, variables["params"], [tern_jax.Rule(r".*/kernel", t_ex=2)],
                          overwrite=True)
    assert tern_jax.checkpoint._read_meta(path)["leaves"][-1]["t_ex"] in (1, 2)
    assert [p for p in os.listdir(tmp_path) if p != "ckpt"] == []  # no staging left behind


def test_nan_is_refused_before_anything_is_written(tmp_path, model_and_variables):
    _, variables = model_and_variables
    bad = jax.tree.map(lambda a: a, variables["params"])
    bad["conv"]["kernel"] = bad["conv"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"'conv/kernel' holds NaN or Inf"):
        tern_jax.save_ternary(tmp_path / "ckpt", bad)
    assert not (tmp_path / "ckpt").exists() and os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_previous_checkpoint(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    bad = {**variables["params"], "head": {**variables["params"]["head"],
                                           "bias": jnp.full((10,), jnp.inf)}}
    with pytest.raises(ValueError, match="head/bias"):
        tern_jax.save_ternary(path, bad, overwrite=True)
    assert tern_jax.load_ternary(path)["head"]["bias"].shape == (10,)


def test_missing_and_foreign_paths_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        tern_jax.load_ternary(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.npz").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a tern_jax ternary checkpoint"):
        tern_jax.load_ternary(tmp_path / "other")


def test_metadata_of_another_format_is_refused(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    meta = path / "meta" / "metadata"
    meta.write_text(meta.read_text().replace(tern_jax.checkpoint.FORMAT, "someone.else.v9"))
    with pytest.raises(CheckpointError, match="someone.else.v9"):
        tern_jax.load_ternary(path)
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        tern_jax.load_ternary(path)


def _data_files(path):
    return [os.path.join(root, f) for root, _, files in os.walk(path / "arrays") for f in files
            if os.path.basename(root) == "d"]


def test_truncated_array_data_is_detected(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    for f in _data_files(path):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    with pytest.raises(CheckpointError, match="truncated or corrupt|checksum"):
        tern_jax.load_ternary(path)


def test_flipped_bytes_are_detected(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    for f in _data_files(path):
        data = bytearray(open(f, "rb").read())
        for i in range(len(data) // 3, len(data), 97):
            data[i] ^= 0xFF
        open(f, "wb").write(bytes(data))
    with pytest.raises(CheckpointError):
        tern_jax.load_ternary(path)
