"""Run folders: verified checkpoints, fallback on damage, folders that move."""

import json

import jax
import numpy as np
import pytest
from helpers.runs import copy_run

from tern_jax.train import (
    CheckpointDamaged,
    DamagedCheckpointWarning,
    latest_checkpoint,
    override,
    quickstart_config,
    restore_run,
    train_and_evaluate,
)
from tern_jax.train.metrics import read
from tern_jax.train.run_folder import UnverifiedCheckpointWarning


def _config(changes=None):
    """The quickstart's tern model on 128 training and 64 test digits at a constant rate, 2
    epochs of batches of 32, every epoch's checkpoint kept; ``changes`` (dotted paths)."""
    base = override(quickstart_config(), {
        "data.train_subset": 128, "data.test_subset": 64, "schedule.epochs": 2,
        "data.batch_size": 32, "progress": False, "checkpointing.every": 1,
        "checkpointing.keep": 3, "model.variants": ("tern",), "schedule.name": "constant"})
    return override(base, changes or {})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "run"
    train_and_evaluate(_config(), workdir, log=lambda *_: None)
    return workdir


def _array_files(step_dir):
    """The files holding array data (orbax/tensorstore chunks under ``d/``), largest first."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files found in {step_dir}"
    return sorted(files, key=lambda p: -p.stat().st_size)


def _flip_bytes(path, count=8):
    data = bytearray(path.read_bytes())
    for i in range(count):
        k = len(data) // 2 + i * 3
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_checkpoint_carries_a_hash_per_array(finished):
    for epoch in (1, 2):
        integrity = json.loads((finished / "checkpoints" / str(epoch) / "integrity.json")
                               .read_text())
        assert integrity["format"] == "tern_jax.integrity.v1"
        keys = list(integrity["sha256"])
        assert any(k.startswith("['params']") for k in keys)
        # the TrainState's model_state (BatchNorm's statistics of small_cnn), not batch_stats
        assert any(k.startswith("['model_state']") and "mean" in k for k in keys)
        assert not any("batch_stats" in k for k in keys)
        assert all(len(v) == 64 for v in integrity["sha256"].values())


def test_a_moved_run_folder_restores_and_resumes(finished, tmp_path):
    moved = copy_run(finished, tmp_path)
    assert str(finished) not in (moved / "config.json").read_text()
    restored = restore_run(moved)
    assert restored.epoch == 2
    results = train_and_evaluate(_config({"schedule.epochs": 3}), moved, resume=True,
                                 log=lambda *_: None)
    assert results["epochs"] == 3 and latest_checkpoint(moved) == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_metadata"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, damage):
    run = copy_run(finished, tmp_path)
    step_dir = run / "checkpoints" / "2"
    target = _array_files(step_dir)[0]
    if damage == "flip":
        _flip_bytes(target)
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    else:
        (step_dir / "default" / "_METADATA").unlink()
    with pytest.warns(DamagedCheckpointWarning, match="epoch 1"):
        restored = restore_run(run)
    assert restored.epoch == 1


def test_resume_after_damage_never_trains_on_it(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    for path in _array_files(run / "checkpoints" / "2"):
        _flip_bytes(path)
    with pytest.warns(DamagedCheckpointWarning):
        train_and_evaluate(_config(), run, resume=True, log=lambda *_: None)
    # epoch 2 was trained again from the intact epoch 1, the damaged folder set aside
    assert [r["epoch"] for r in read(run)] == [1, 2]
    np.testing.assert_allclose(read(run)[-1]["models"][0]["train_loss"],
                               read(finished)[-1]["models"][0]["train_loss"], rtol=1e-6)
    assert list((run / "checkpoints").glob("damaged_2_*"))


def test_no_usable_checkpoint_names_the_damaged_files(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    damaged = []
    for epoch in (2, 1):
        path = _array_files(run / "checkpoints" / str(epoch))[0]
        _flip_bytes(path)
        damaged.append(str(path))
    with pytest.raises(CheckpointDamaged) as info:
        restore_run(run)
    message = str(info.value)
    assert damaged[0] in message and damaged[1] in message and "SHA-256" in message


def test_a_damaged_run_on_the_command_line_warns_in_one_line(finished, tmp_path, capsys):
    from tern_jax import cli

    run = copy_run(finished, tmp_path)
    path = _array_files(run / "checkpoints" / "2")[0]
    _flip_bytes(path)
    assert cli.main(["eval", "--workdir", str(run)]) == 0
    captured = capsys.readouterr()
    assert "epoch 1," in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tern-jax: warning: ") and str(path) in lines[0]
    assert "Traceback" not in captured.err


def _drop_integrity(run, epochs=(1, 2)):
    for epoch in epochs:
        (run / "checkpoints" / str(epoch) / "integrity.json").unlink()


def _params(restored):
    return np.asarray(jax.tree.leaves(restored.state.params)[0])


def test_a_checkpoint_without_its_integrity_file_is_refused_naming_it(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    _drop_integrity(run)
    with pytest.raises(CheckpointDamaged) as info:
        restore_run(run)
    message = str(info.value)
    assert "\n" not in message
    for epoch in (1, 2):
        assert f"{run / 'checkpoints' / str(epoch) / 'integrity.json'} is missing" in message
    assert "--unverified (verify=False)" in message
    with pytest.raises(CheckpointDamaged, match=r"2/integrity.json is missing"):
        restore_run(run, epoch=2)


def test_a_newest_checkpoint_without_its_integrity_file_falls_back(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    _drop_integrity(run, epochs=(2,))
    with pytest.warns(DamagedCheckpointWarning, match=r"2/integrity.json is missing.*epoch 1"):
        restored = restore_run(run)
    assert restored.epoch == 1


def test_an_integrity_file_of_another_form_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    step_dir = run / "checkpoints" / "2"
    record = json.loads((step_dir / "integrity.json").read_text())
    # a file list of bare SHA-256 strings: it names no sizes, so it is not this format's
    record["files"] = {name: r["sha256"] for name, r in record["files"].items()}
    (step_dir / "integrity.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointDamaged, match=r"the record of .*2/.* is '[0-9a-f]{64}', not"):
        restore_run(run, epoch=2)
    del record["files"]
    (step_dir / "integrity.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointDamaged, match=r"2/integrity.json is unreadable \(KeyError"):
        restore_run(run, epoch=2)


def test_verify_false_restores_a_checkpoint_without_its_integrity_file(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    _drop_integrity(run)
    with pytest.warns(UnverifiedCheckpointWarning, match=r"2 restored unverified"):
        restored = restore_run(run, verify=False)
    assert restored.epoch == 2
    np.testing.assert_array_equal(_params(restored), _params(restore_run(finished)))
    with pytest.raises(CheckpointDamaged, match="integrity.json is missing"):
        restore_run(run)  # verify=True, the default
    with pytest.raises(TypeError, match="verify must be True or False, got 'no'"):
        restore_run(run, verify="no")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_the_command_line_refuses_it_in_one_line_and_unverified_restores_it(
        finished, tmp_path, capsys, command):
    from tern_jax import cli

    run = copy_run(finished, tmp_path)
    _drop_integrity(run)
    args = [command, "--workdir", str(run)]
    if command == "export":
        args += ["--model", "tern/seed0", "--out", str(tmp_path / "packed")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tern-jax: error: no usable checkpoint: ")
    assert "2/integrity.json is missing" in err[0] and "--unverified" in err[0]
    assert cli.main(args + ["--unverified"]) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tern-jax: warning: ")
    assert "restored unverified" in err[0]
    if command == "eval":
        assert "epoch 2," in captured.out
    else:
        assert (tmp_path / "packed" / "meta" / "metadata").is_file()


def test_train_resume_unverified_continues_a_run_without_integrity_files(finished, tmp_path,
                                                                         capsys):
    from tern_jax import cli

    run = copy_run(finished, tmp_path)
    _drop_integrity(run)
    args = ["train", "--workdir", str(run), "--resume", "--set", "schedule.epochs=3"]
    assert cli.main(args) == 2
    assert "integrity.json is missing" in capsys.readouterr().err
    assert cli.main(args + ["--unverified"]) == 0
    assert "restored unverified" in capsys.readouterr().err
    assert latest_checkpoint(run) == 3 and [r["epoch"] for r in read(run)] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["schedule"]["epochs"] == 3
    # the checkpoint written by the resumed run carries its integrity file again
    assert (run / "checkpoints" / "3" / "integrity.json").is_file()


def test_a_new_run_refuses_a_folder_of_unrelated_files_and_leaves_it_untouched(tmp_path):
    from tern_jax.fs import NotOwnedError
    from tern_jax.train import run

    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"my": "settings"}')
    (project / "notes.txt").write_bytes(b"\x00precious\xff")
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    for train in (train_and_evaluate, run):
        with pytest.raises(NotOwnedError, match="holds files tern_jax did not write"):
            train(_config({"schedule.epochs": 1}), project, log=lambda *_: None)
    with pytest.raises(NotOwnedError, match="is a file"):
        train_and_evaluate(_config({"schedule.epochs": 1}), project / "notes.txt",
                           log=lambda *_: None)
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before
