"""Inputs the array-level functions and the exports refuse by name, or now answer correctly:
an axis set that leaves no weight to share a scale, non-finite weights outside ``jit``, paths
that do not exist, are files or cannot be written, a NaN in an exported kernel, rule
activations that cannot take effect, and the 8-bit inputs in a summary."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import tern_jax
from tern_jax import _args, core, export
from tern_jax.activations import quantized_activations
from tern_jax.checkpoint import CheckpointError, load_ternary
from tern_jax.export import to_gguf
from tern_jax.models.transformer import Transformer, TransformerConfig
from tern_jax.nnx_utils import ternarized
from tern_jax.presets import TRANSFORMER_RULES
from tern_jax.rules import ActivationsNotAppliedWarning, Rule, quantize_params

W = jnp.array([[0.9, -0.2, 0.03], [-0.5, 0.4, -0.01], [0.07, -0.8, 0.3], [0.2, 0.0, -0.6]])
# A llama-architecture transformer small enough to export (rows of 256 inputs).
CONFIG = TransformerConfig(max_len=8, d_model=256, num_heads=4, num_layers=1, mlp_ratio=1,
                           num_kv_heads=2, mlp="swiglu")


@pytest.fixture(scope="module")
def lm_params():
    return nnx.to_pure_dict(nnx.state(Transformer(CONFIG, rngs=nnx.Rngs(0)), nnx.Param))


# 1. an axis set that names every axis

@pytest.mark.parametrize("axis", [(0, 1), (1, 0), (-1, 0), (-2, -1)])
def test_an_axis_set_naming_every_axis_is_refused_with_the_axes_and_the_shape(axis):
    for f in (tern_jax.ternarize, tern_jax.encode, tern_jax.expand):
        with pytest.raises(ValueError, match=r"axis=\(-?\d, -?\d\) names every axis of the "
                           r"weight of shape \(4, 3\).*its own scale.*leave at least one axis"):
            f(W, axis=axis)
    with pytest.raises(ValueError, match=r"axis=0 names every axis of the weight of shape \(5,\)"):
        tern_jax.ternarize(jnp.linspace(-1.0, 1.0, 5), axis=0)
    params = {"dense": {"kernel": W}}
    with pytest.raises(ValueError, match=r"matches parameter 'dense/kernel' of shape \(4, 3\).*"
                       r"names every axis"):
        quantize_params(params, Rule(r".*/kernel", axis=axis))
    # one axis short of all is per channel as before: each column on its own statistics
    per_column = np.asarray(tern_jax.ternarize(W, axis=-1))
    for c in range(3):
        np.testing.assert_array_equal(per_column[:, c], np.asarray(tern_jax.ternarize(W[:, c])))


# 2. non-finite weights outside jit

def test_concrete_non_finite_weights_are_refused_naming_the_count():
    bad = W.at[0, 1].set(jnp.nan).at[2, 2].set(jnp.nan).at[3, 0].set(-jnp.inf)
    for f in (tern_jax.ternarize, tern_jax.encode, tern_jax.expand):
        with pytest.raises(ValueError, match=r"w holds 2 NaN and 1 inf values \(of 12\)"):
            f(bad)
    with pytest.raises(ValueError, match=r"w holds 1 NaN value \(of 12\)"):
        tern_jax.ternarize(np.asarray(W.at[1, 1].set(jnp.nan)), axis=-1)  # NumPy too
    with pytest.raises(ValueError, match=r"quantize_params: parameter 'dense/kernel' holds 2 NaN "
                       r"and 1 inf values \(of 12\)"):
        quantize_params({"dense": {"kernel": bad, "bias": jnp.zeros(3)}})
    # under jit nothing can be looked at: the tensor (channel) turns NaN, as the trainer's
    # check of the loss and the parameters expects
    jitted = np.asarray(jax.jit(tern_jax.ternarize)(bad))
    assert np.all(np.isnan(jitted))
    per_channel = np.asarray(jax.jit(lambda w: tern_jax.ternarize(w, axis=-1))(
        W.at[0, 2].set(jnp.nan)))
    assert np.all(np.isnan(per_channel[:, 2])) and np.all(np.isfinite(per_channel[:, :2]))
    q = jax.jit(quantize_params)({"dense": {"kernel": bad}})
    assert np.all(np.isnan(np.asarray(q["dense"]["kernel"])))
    # finite weights: the same numbers as under jit
    np.testing.assert_array_equal(np.asarray(tern_jax.ternarize(W)),
                                  np.asarray(jax.jit(tern_jax.ternarize)(W)))


# 3. load_ternary of a path that does not exist

def test_load_ternary_says_a_missing_path_does_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.tern does not exist; give the folder "
                       "save_ternary wrote"):
        load_ternary(tmp_path / "nope.tern")
    (tmp_path / "weights.tern").write_bytes(b"\x00" * 8)
    with pytest.raises(CheckpointError, match=r"weights\.tern is a file, not a checkpoint folder"):
        load_ternary(tmp_path / "weights.tern")


# 4. to_gguf with a NaN in a kernel

def test_to_gguf_names_the_parameter_holding_nan(lm_params, tmp_path):
    bad = jax.tree.map(lambda a: a, lm_params)
    up = bad["blocks"][0]["mlp"]["up"]["kernel"]
    bad["blocks"][0]["mlp"]["up"]["kernel"] = up.at[3, 5].set(jnp.nan).at[7, 1].set(jnp.nan)
    out = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=r"to_gguf: parameter 'blocks/0/mlp/up/kernel' holds "
                       rf"2 NaN values \(of {up.size}\)"):
        to_gguf(out, bad, CONFIG, TRANSFORMER_RULES["tern"])
    codes = {**lm_params, "head": {"kernel": core.TernaryCodes(
        jnp.zeros((256, 256), jnp.int8), jnp.full((1, 1, 1), jnp.inf))}}
    with pytest.raises(ValueError, match=r"to_gguf: the scales of parameter 'head/kernel' hold "
                       r"1 inf value \(of 1\)"):
        to_gguf(out, codes, CONFIG, TRANSFORMER_RULES["tern"])
    assert list(tmp_path.iterdir()) == []


# 5. paths to write to

def test_to_gguf_paths_name_the_users_path_and_the_true_cause(lm_params, tmp_path):
    rules = TRANSFORMER_RULES["tern"]
    afile = tmp_path / "afile"
    afile.write_text("the user's notes")
    with pytest.raises(NotADirectoryError, match=rf"to_gguf: cannot create {afile}/x\.gguf: "
                       rf"{afile} is a file, not a folder"):
        to_gguf(afile / "x.gguf", lm_params, CONFIG, rules)
    with pytest.raises(NotADirectoryError, match=rf"{afile} is a file, not a folder"):
        to_gguf(afile / "sub" / "x.gguf", lm_params, CONFIG, rules)
    with pytest.raises(ValueError, match="to_gguf: path is an empty path"):
        to_gguf("", lm_params, CONFIG, rules)
    with pytest.raises(IsADirectoryError, match=r"to_gguf: path .*newdir/ is a folder; a GGUF "
                       r"export is one file: give a file path such as .*newdir/model\.gguf"):
        to_gguf(f"{tmp_path}/newdir/", lm_params, CONFIG, rules)
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=r"folder is a folder; a GGUF export is one file"):
        to_gguf(tmp_path / "folder", lm_params, CONFIG, rules, overwrite=True)
    with pytest.raises(FileNotFoundError, match=r"the folder .*missing does not exist"):
        to_gguf(tmp_path / "missing" / "x.gguf", lm_params, CONFIG, rules)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]
    assert afile.read_text() == "the user's notes" and list((tmp_path / "folder").iterdir()) == []
    # save_ternary names the same causes (a checkpoint is a folder: a trailing slash is fine)
    with pytest.raises(NotADirectoryError, match=rf"{afile} is a file, not a folder"):
        tern_jax.save_ternary(afile / "x.tern", {"dense": {"kernel": W}})
    with pytest.raises(ValueError, match="save_ternary: path is empty"):
        tern_jax.save_ternary("", {"dense": {"kernel": W}})
    saved = tern_jax.save_ternary(f"{tmp_path}/ckpt/", {"dense": {"kernel": W}})
    assert saved == tmp_path / "ckpt" and (tmp_path / "ckpt" / "meta" / "metadata").is_file()


def test_the_unwritable_folder_message_names_the_users_path_not_a_temporary_file(
        lm_params, tmp_path, monkeypatch):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(
        readonly) else real_access(p, mode))
    error = _args.unwritable_path_error(readonly / "x.gguf", "to_gguf")
    assert isinstance(error, PermissionError)
    assert str(error) == (f"to_gguf: cannot create {readonly}/x.gguf: the folder {readonly} is "
                          "not writable (permission denied); choose a folder you can write to")
    assert _args.unwritable_path_error(tmp_path / "x.gguf", "to_gguf") is None
    with pytest.raises(PermissionError, match=rf"cannot create {readonly}/x\.gguf: the folder "
                       rf"{readonly} is not writable \(permission denied\)"):
        to_gguf(readonly / "x.gguf", {}, CONFIG)
    assert list(readonly.iterdir()) == []
    # a write that fails after the checks (the folder turned read-only, a full disk) is named
    # by the user's path too, not by the hidden temporary file it failed on

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.gguf.k2j4.tmp"))

    monkeypatch.setattr(export.tempfile, "NamedTemporaryFile", refused)
    with pytest.raises(PermissionError) as caught:
        to_gguf(tmp_path / "x.gguf", lm_params, CONFIG, TRANSFORMER_RULES["tern"])
    assert str(caught.value) == f"to_gguf: cannot write {tmp_path}/x.gguf: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_to_gguf_into_a_folder_the_user_cannot_write(lm_params, tmp_path):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=rf"cannot create {readonly}/x\.gguf: the "
                           rf"folder {readonly} is not writable") as caught:
            to_gguf(readonly / "x.gguf", lm_params, CONFIG, TRANSFORMER_RULES["tern"])
        assert ".tmp" not in str(caught.value)
    finally:
        readonly.chmod(0o755)


# 6. rule activations handed to quantize_params

class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


X = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))


def _cnn_params():
    return _CNN().init(jax.random.key(0), X)["params"]


def test_activations_quantize_params_cannot_apply_warn_once_naming_where_they_apply():
    params = _cnn_params()
    a8 = (Rule(r".*/kernel", activations="int8"),)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_params(params, a8)
    assert [w.category for w in caught] == [ActivationsNotAppliedWarning]
    message = str(caught[0].message)
    assert "Rule('.*/kernel', activations='int8')" in message
    assert "'conv/kernel'" in message and "'head/kernel'" in message
    assert "quantized_activations(rules)" in message and "quantize_inputs" in message
    assert issubclass(ActivationsNotAppliedWarning, UserWarning)
    # the weights are what they are without the activations
    plain = quantize_params(params, (Rule(r".*/kernel"),))
    jax.tree.map(np.testing.assert_array_equal, q, plain)
    # where the activations do apply, or the caller says it applies them: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quantized_activations(a8):  # the documented linen form
            y = _CNN().apply({"params": quantize_params(params, a8)}, X)
        quantize_params(params, a8, activations_applied=True)
        quantize_params(params, a8, unused="ignore")
        quantize_params(params, (Rule(r".*/kernel"),))
        ternarized(nnx.Linear(256, 4, rngs=nnx.Rngs(0)), TRANSFORMER_RULES["tern_a8"])
    # and there the inputs are 8-bit: another result than the weights alone give
    assert not np.allclose(y, _CNN().apply({"params": q}, X), atol=0, rtol=0)
    with pytest.raises(TypeError, match="activations_applied must be True or False"):
        quantize_params(params, a8, activations_applied="yes")


# 7. summary shows 8-bit inputs

def test_summary_shows_the_8_bit_inputs_of_tern_a8(lm_params):
    lines = []
    s = tern_jax.summary(lm_params, TRANSFORMER_RULES["tern_a8"], print_fn=lines.append)
    by_path = {r.path: r for r in s.layers}
    assert by_path["blocks/0/mlp/up/kernel"].activations == "int8_block"
    assert by_path["head/kernel"].activations == "int8_block"
    assert by_path["embed/embedding"].activations is None  # a lookup: no layer input
    assert by_path["final_norm/scale"].activations is None
    table = lines[0].splitlines()
    assert table[0].split()[-1] == "inputs"
    rows = {line.split()[0]: line.split() for line in table[2:-1]}
    assert rows["blocks/0/mlp/up/kernel"][-1] == "int8_block"
    assert rows["embed/embedding"][-1] == "-"
    assert "8-bit inputs (int8_block) to 8 layers" in table[-1]
    assert s.as_dict()["layers"][0]["activations"] in (None, "int8_block")
    # without 8-bit inputs the table is as it was: no inputs column
    plain = []
    tern_jax.summary(lm_params, TRANSFORMER_RULES["tern"], print_fn=plain.append)
    assert "inputs" not in plain[0].splitlines()[0] and "8-bit" not in plain[0]
