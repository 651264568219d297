"""Specification of save_ternary / load_ternary: density, exactness, safety."""

import json
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
    with pytest.raises(CheckpointError, match="nothing does not exist"):
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
    with pytest.raises(CheckpointError, match=r"arrays/d/\w+ is damaged \(\d+ bytes, expected"):
        tern_jax.load_ternary(path)


def test_flipped_bytes_are_detected(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    for f in _data_files(path):
        data = bytearray(open(f, "rb").read())
        for i in range(len(data) // 3, len(data), 97):
            data[i] ^= 0xFF
        open(f, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"arrays/d/\w+ is damaged \(fails its SHA-256"):
        tern_jax.load_ternary(path)


# -- overwrite replaces only what save_ternary wrote ----------------------------------------


def _tree_bytes(root):
    """Every file and folder below ``root`` (itself included) with its bytes."""
    root = os.fspath(root)
    if os.path.isfile(root):
        return {".": open(root, "rb").read()}
    out = {}
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        out[rel + "/"] = None
        for f in files:
            out[os.path.join(rel, f)] = open(os.path.join(folder, f), "rb").read()
    return out


def _user_project(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "README.txt").write_text("my notes\n")
    (project / "src" / "train.py").write_bytes(b"print('hello')\n" * 50)
    return project


def test_overwrite_refuses_a_users_folder_and_leaves_every_byte(tmp_path, model_and_variables):
    _, variables = model_and_variables
    project = _user_project(tmp_path)
    before, siblings = _tree_bytes(project), sorted(os.listdir(tmp_path))
    with pytest.raises(tern_jax.fs.NotOwnedError, match=f"{project} is an existing folder that "
                       "tern_jax did not write"):
        tern_jax.save_ternary(project, variables["params"], overwrite=True)
    assert _tree_bytes(project) == before
    assert sorted(os.listdir(tmp_path)) == siblings  # no staging or .old file left behind


def test_overwrite_refuses_a_plain_file_and_leaves_no_stray_file(tmp_path, model_and_variables):
    _, variables = model_and_variables
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FileExistsError, match=f"{weights} is an existing file"):
        tern_jax.save_ternary(weights, variables["params"], overwrite=True)
    assert weights.read_bytes() == bytes(range(256)) * 4
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_overwrite_refuses_a_checkpoint_holding_a_users_file(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    (path / "meta" / "notes.txt").write_text("accuracy 91.2% on the held-out set")
    before = _tree_bytes(path)
    with pytest.raises(tern_jax.fs.NotOwnedError, match="ckpt"):
        tern_jax.save_ternary(path, variables["params"], overwrite=True)
    assert _tree_bytes(path) == before


def test_overwrite_refuses_a_symlink(tmp_path, model_and_variables):
    _, variables = model_and_variables
    real = tern_jax.save_ternary(tmp_path / "real", variables["params"])
    (tmp_path / "link").symlink_to(real)
    before = _tree_bytes(real)
    with pytest.raises(tern_jax.fs.NotOwnedError, match="link"):
        tern_jax.save_ternary(tmp_path / "link", variables["params"], overwrite=True)
    assert _tree_bytes(real) == before and (tmp_path / "link").is_symlink()


def test_overwrite_replaces_its_own_checkpoint_without_leftovers(tmp_path, model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    changed = jax.tree.map(lambda a: a + 1.0, variables["params"])
    tern_jax.save_ternary(path, changed, overwrite=True)
    np.testing.assert_array_equal(tern_jax.load_ternary(path)["head"]["bias"],
                                  np.asarray(changed["head"]["bias"]))
    assert os.listdir(tmp_path) == ["ckpt"]


def test_a_write_that_fails_midway_keeps_the_old_checkpoint(tmp_path, model_and_variables,
                                                             monkeypatch):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    before = _tree_bytes(path)

    def disk_full(file, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tern_jax.fs, "write_text_atomic", disk_full)
    with pytest.raises(OSError, match=f"could not write {path}: No space left"):
        tern_jax.save_ternary(path, jax.tree.map(lambda a: a + 1.0, variables["params"]),
                              overwrite=True)
    assert _tree_bytes(path) == before and os.listdir(tmp_path) == ["ckpt"]


@pytest.mark.parametrize("key", ["files", "origin"])
def test_a_checkpoint_without_a_file_list_or_origin_is_refused(tmp_path, model_and_variables,
                                                               key):
    # save_ternary always writes both; metadata without them cannot vouch for the arrays
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta[key]
    meta_file.write_text(json.dumps(meta))
    message = f"{meta_file} records no '{key}', which save_ternary always writes"
    with pytest.raises(CheckpointError, match=message):
        tern_jax.load_ternary(path)
    with pytest.raises(CheckpointError, match=message):
        tern_jax.checkpoint.read_origin(path)
    before = _tree_bytes(path)
    if key == "files":  # no file list: nothing says which files are the save's own
        with pytest.raises(tern_jax.fs.NotOwnedError):
            tern_jax.save_ternary(path, variables["params"], overwrite=True)
        assert _tree_bytes(path) == before


def test_a_file_record_of_another_form_is_refused_naming_the_file(tmp_path,
                                                                  model_and_variables):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    name = sorted(meta["files"])[0]
    meta["files"][name] = meta["files"][name]["sha256"]  # a bare SHA-256, no size
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"the record of {path / name} is '[0-9a-f]{{8}}"):
        tern_jax.load_ternary(path)


def test_a_path_under_a_file_names_the_users_path(tmp_path, model_and_variables):
    _, variables = model_and_variables
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"cannot create .*afile/sub/ckpt: .*afile is a "
                       "file, not a folder"):
        tern_jax.save_ternary(tmp_path / "afile" / "sub" / "ckpt", variables["params"])
    assert os.listdir(tmp_path) == ["afile"]


def test_a_damaged_export_is_one_quiet_error_naming_the_file(tmp_path, model_and_variables,
                                                              capfd):
    _, variables = model_and_variables
    path = tern_jax.save_ternary(tmp_path / "ckpt", variables["params"])
    os.remove(path / "arrays" / "manifest.ocdbt")
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=r"arrays/manifest.ocdbt is missing") as info:
        tern_jax.load_ternary(path)
    assert info.value.__cause__ is None
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_an_unwritable_folder_is_named_as_the_user_gave_it(tmp_path, model_and_variables,
                                                           monkeypatch):
    # As root every folder is writable, so the refusal is simulated at the permission check.
    _, variables = model_and_variables
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(
        readonly) else real_access(p, mode))
    with pytest.raises(PermissionError, match=f"cannot create {readonly}/ckpt: the folder "
                       f"{readonly} is not writable"):
        tern_jax.save_ternary(readonly / "ckpt", variables["params"])
    assert os.listdir(readonly) == []
