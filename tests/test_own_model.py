"""A user's own model and dataset, named by import path, go through the trainer like built-in
ones: train (command line and Python), resume, restore without data, evaluate and export."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tern_jax import cli
from tern_jax.data.specs import Dataset
from tern_jax.train import Config, restore_run, run

REPO = Path(__file__).parent.parent

# a module outside tern_jax: a linen classifier and a declared in-memory image dataset
USER_MODULE = textwrap.dedent('''
    import flax.linen as nn
    import numpy as np

    from tern_jax.data import IMAGES, ArrayDataset, Dataset


    class TinyNet(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x)).mean(axis=(1, 2))
            return nn.Dense(self.num_classes, name="head")(x)


    def load_blobs():
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 3, 240).astype(np.int32)
        images = rng.normal(60.0 * labels[:, None, None, None] + 60.0, 20.0, (240, 6, 6, 1))
        images = images.clip(0, 255).astype(np.uint8)
        pixels = images[:180] / 255.0
        return ArrayDataset(images[:180], labels[:180], images[180:], labels[180:], 3,
                            (float(pixels.mean()),), (float(pixels.std()),), "blobs")


    blobs = Dataset("blobs", IMAGES, 3, (6, 6, 1), load_blobs)
''')

SETTINGS = dict(model="user_nets:TinyNet", dataset="user_nets:blobs", augment=False, epochs=2,
                batch_size=30, eval_batch_size=60, learning_rate=0.1, schedule="constant",
                checkpoint_every=1, progress=False)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _test_accuracies(workdir):
    last = [json.loads(line) for line in (workdir / "metrics.jsonl").open()][-1]
    return {(m["name"], key): m[key] for m in last["models"] for key in ("test_acc", "test_loss")}


def test_own_model_and_dataset_train_resume_evaluate_and_export(user_module, tmp_path, capsys):
    # the command line, in a fresh process that finds the user's module on PYTHONPATH
    cli_dir = tmp_path / "cli_run"
    sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(user_module), str(REPO)]),
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "tern_jax", "train", "--workdir", str(cli_dir),
                           *sets], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    by_cli = _test_accuracies(cli_dir)
    assert by_cli["fp/seed0", "test_acc"] > 0.9  # three well-separated blobs: a working classifier

    # the Python API: the same run (up to the float noise of another process), and a run cut
    # after one epoch and resumed, which gives the uninterrupted run's figures
    api_dir, cut_dir = tmp_path / "api_run", tmp_path / "cut_run"
    run(Config(**SETTINGS), api_dir, log=lambda *a: None)
    by_api = _test_accuracies(api_dir)
    assert by_api == pytest.approx(by_cli, rel=1e-2)
    run(Config(**{**SETTINGS, "epochs": 1}), cut_dir, log=lambda *a: None)
    run(Config(**SETTINGS), cut_dir, resume=True, log=lambda *a: None)
    assert _test_accuracies(cut_dir) == pytest.approx(by_api, rel=1e-6)

    # restored from its checkpoint without loading the data, then evaluated and exported
    def no_data(*args, **kwargs):
        raise AssertionError("restoring weights must not load a dataset")

    original = Dataset.open
    Dataset.open = no_data
    try:
        restored = restore_run(api_dir)
    finally:
        Dataset.open = original
    assert restored.epoch == 2 and restored.config.model == "user_nets:TinyNet"
    assert restored.stack.task.num_classes == 3
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(api_dir)]) == 0
    printed = capsys.readouterr().out
    acc = by_api["tern/seed0", "test_acc"]
    assert f"{'tern/seed0':20s} test acc {100 * acc:6.2f}%" in printed, printed
    out = tmp_path / "tern_packed"
    assert cli.main(["export", "--workdir", str(api_dir), "--model", "tern/seed0", "--out",
                     str(out)]) == 0
    assert "exported tern/seed0 (user_nets:TinyNet)" in capsys.readouterr().out


def test_own_names_that_do_not_resolve_are_clear_errors(user_module):
    with pytest.raises(ImportError, match="model 'no_such_pkg:Net': cannot import module"):
        Config(model="no_such_pkg:Net")
    with pytest.raises(ValueError, match="dataset 'user_nets:nothing': module 'user_nets' has "
                                         "no 'nothing'"):
        Config(dataset="user_nets:nothing")
    with pytest.raises(TypeError, match="dataset 'user_nets:TinyNet' names the class TinyNet; it "
                                        "must name a tern_jax.data.Dataset"):
        Config(dataset="user_nets:TinyNet")
    with pytest.raises(ValueError, match="unknown variant 'tern_ph'"):  # the CNN presets
        Config(model="user_nets:TinyNet", variants=("tern_ph",))
