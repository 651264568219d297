"""Run folders: verified checkpoints, fallback on damage, folders that move."""

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest

from tern_jax.train import (
    CheckpointDamaged,
    DamagedCheckpointWarning,
    latest_checkpoint,
    quickstart_config,
    restore_run,
    train_and_evaluate,
)
from tern_jax.train.metrics import read


def _config(**changes):
    base = dataclasses.replace(quickstart_config(), train_subset=128, test_subset=64, epochs=2,
                               batch_size=32, progress=False, checkpoint_every=1,
                               keep_checkpoints=3, variants=("tern",))
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "run"
    train_and_evaluate(_config(), workdir, log=lambda *_: None)
    return workdir


def _copy(finished, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(finished, target)
    return target


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
        assert any("params" in k for k in integrity["sha256"])
        assert all(len(v) == 64 for v in integrity["sha256"].values())


def test_a_moved_run_folder_restores_and_resumes(finished, tmp_path):
    moved = _copy(finished, tmp_path)
    assert str(finished) not in (moved / "config.json").read_text()
    restored = restore_run(moved)
    assert restored.epoch == 2
    results = train_and_evaluate(_config(epochs=3), moved, resume=True, log=lambda *_: None)
    assert results["epochs"] == 3 and latest_checkpoint(moved) == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_metadata"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, damage):
    run = _copy(finished, tmp_path)
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
    run = _copy(finished, tmp_path)
    for path in _array_files(run / "checkpoints" / "2"):
        _flip_bytes(path)
    with pytest.warns(DamagedCheckpointWarning):
        train_and_evaluate(_config(), run, resume=True, log=lambda *_: None)
    # epoch 2 was trained again from the intact epoch 1, the damaged folder set aside
    assert [r["epoch"] for r in read(run)] == [1, 2]
    np.testing.assert_allclose(read(run)[-1]["models"][0]["train_loss"],
                               read(finished)[-1]["models"][0]["train_loss"], rtol=1e-6)
    assert list((run / "checkpoints").glob("damaged_2_*"))


def test_no_usable_checkpoint_names_the_damage(finished, tmp_path):
    run = _copy(finished, tmp_path)
    for epoch in (1, 2):
        for path in _array_files(run / "checkpoints" / str(epoch)):
            _flip_bytes(path)
    with pytest.raises(CheckpointDamaged, match=r"checkpoints/2.*checkpoints/1"):
        restore_run(run)


def test_checkpoints_without_integrity_files_load_unverified(finished, tmp_path):
    run = _copy(finished, tmp_path)
    for f in (run / "checkpoints").rglob("integrity.json"):
        f.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = restore_run(run)
    assert restored.epoch == 2
    assert any("unverified" in str(w.message) for w in caught)
