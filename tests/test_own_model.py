"""A user's own model and dataset, named by import path, go through the trainer like built-in
ones: train (command line and Python), resume, restore without data, evaluate and export."""

import json
import shutil
import textwrap

import numpy as np
import pytest

from tern_jax import cli
from tern_jax.data import ImageDataset
from tern_jax.data.specs import Dataset
from tern_jax.train import Config, Trainer, override, quickstart_config, restore_run, run

# a module outside tern_jax: a linen classifier and a declared in-memory image dataset that
# reads its folder from the config (its fields: dotted config paths)
USER_MODULE = textwrap.dedent('''
    from pathlib import Path

    import flax.linen as nn
    import numpy as np

    from tern_jax.data import ArrayDataset, ImageDataset


    class TinyNet(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x)).mean(axis=(1, 2))
            return nn.Dense(self.num_classes, name="head")(x)


    def load_blobs(data_dir):
        with np.load(Path(data_dir) / "blobs.npz") as f:
            images, labels = f["images"], f["labels"]
        return ArrayDataset(images[:180], labels[:180], images[180:], labels[180:], 3,
                            (0.47,), (0.2,), "blobs")


    # the pixel statistics the task normalizes with are declared, so restoring reads no data
    blobs = ImageDataset("blobs", 3, (6, 6, 1), load_blobs, ("data.data_dir",),
                         mean=(0.47,), std=(0.2,))
    # a declaration that does not match its data, and one naming no config field
    four_classes = ImageDataset("four", 4, (6, 6, 1), load_blobs, ("data.data_dir",),
                                mean=(0.47,), std=(0.2,))
    misspelt = ImageDataset("misspelt", 3, (6, 6, 1), load_blobs, ("data.data_dri",),
                            mean=(0.47,), std=(0.2,))
''')

#: The run, by dotted path (``--set`` takes the same), besides ``data.data_dir``.
SETTINGS = {"model.name": "user_nets:TinyNet", "data.dataset": "user_nets:blobs",
            "data.augment": False, "schedule.epochs": 2, "data.batch_size": 30,
            "data.eval_batch_size": 60, "optimizer.learning_rate": 0.1,
            "schedule.name": "constant", "checkpointing.every": 1, "progress": False}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's module on the path, and its data folder: three well-separated blobs."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240).astype(np.int32)
    images = rng.normal(60.0 * labels[:, None, None, None] + 60.0, 20.0, (240, 6, 6, 1))
    data = tmp_path / "blobs_data"
    data.mkdir()
    np.savez(data / "blobs.npz", images=images.clip(0, 255).astype(np.uint8), labels=labels)
    return data


def _config(data_dir, changes=None):
    """The run as the command line's default ``--config quickstart`` with SETTINGS gives it."""
    return override(quickstart_config(), {**SETTINGS, "data.data_dir": str(data_dir),
                                          **(changes or {})})


def _test_accuracies(workdir):
    last = [json.loads(line) for line in (workdir / "metrics.jsonl").open()][-1]
    return {(m["name"], key): m[key] for m in last["models"] for key in ("test_acc", "test_loss")}


@pytest.mark.slow
def test_own_model_and_dataset_train_resume_evaluate_and_export(user_module, tmp_path, capsys):
    # the command line: the user's names and the dataset's field as --set values
    cli_dir = tmp_path / "cli_run"
    settings = {**SETTINGS, "data.data_dir": user_module}
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(["train", "--workdir", str(cli_dir), *sets]) == 0, capsys.readouterr().err
    by_cli = _test_accuracies(cli_dir)
    assert by_cli["fp/seed0", "test_acc"] > 0.9  # three well-separated blobs: a working classifier
    saved = json.loads((cli_dir / "config.json").read_text())
    assert saved["model"]["name"] == "user_nets:TinyNet"
    assert saved["data"]["data_dir"] == str(user_module)

    # the Python API: the same run; a copy cut after epoch 1 resumes to the same figures
    api_dir = tmp_path / "api_run"
    run(_config(user_module), api_dir, log=lambda *a: None)
    by_api = _test_accuracies(api_dir)
    assert by_api == pytest.approx(by_cli, rel=1e-6)
    cut_dir = tmp_path / "cut_run"
    shutil.copytree(api_dir, cut_dir)
    shutil.rmtree(cut_dir / "checkpoints" / "2")
    run(_config(user_module), cut_dir, resume=True, log=lambda *a: None)
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
    assert restored.epoch == 2 and restored.config.model.name == "user_nets:TinyNet"
    assert restored.stack.task.num_classes == 3
    assert restored.state.params["conv"]["kernel"].shape == (2, 3, 3, 1, 4)  # fp and tern
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
        Config(model={"name": "no_such_pkg:Net"})
    with pytest.raises(ValueError, match="dataset 'user_nets:nothing': module 'user_nets' has "
                                         "no 'nothing'"):
        Config(data={"dataset": "user_nets:nothing"})
    with pytest.raises(TypeError, match="dataset 'user_nets:TinyNet' names the class TinyNet; it "
                                        "must name a tern_jax.data.Dataset"):
        Config(data={"dataset": "user_nets:TinyNet"})
    with pytest.raises(ValueError, match="unknown variant 'tern_ph'"):  # the CNN presets
        Config(model={"name": "user_nets:TinyNet", "variants": ("tern_ph",)})
    with pytest.raises(TypeError, match="could not be built with num_classes and model.kwargs "
                                        r"\{'width': 8\}"):
        Config(model={"name": "user_nets:TinyNet", "kwargs": {"width": 8}})


def test_own_dataset_declarations_are_checked(user_module):
    load = Dataset.open  # any loader: the declarations fail before it is called
    with pytest.raises(ValueError, match=r"dataset 'x': mean must be a tuple of 1 per-channel "
                                         r"numbers in \[0, 1\] units"):
        ImageDataset("x", 3, (6, 6, 1), load, std=(0.2,))
    with pytest.raises(ValueError, match="dataset 'x': std must be a tuple of 3 per-channel"):
        ImageDataset("x", 3, (6, 6, 3), load, mean=(0.5, 0.5, 0.5), std=(0.2,))
    with pytest.raises(TypeError, match="declare it as an ImageDataset"):
        Dataset("x", 3, (6, 6, 1), load)
    with pytest.raises(ValueError, match="dataset 'misspelt' reads 'data.data_dri', which is no "
                                         "config field"):
        Config(data={"dataset": "user_nets:misspelt"})
    config = _config(user_module)
    assert config.data.data_dir == str(user_module)
    with pytest.raises(ValueError, match="dataset 'four' declares 4 classes of .6, 6, 1. images "
                                         "but loaded 3 classes"):
        Trainer(override(config, {"data.dataset": "user_nets:four_classes"}))
