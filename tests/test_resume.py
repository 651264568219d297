"""Resume continues the same run, and a start that fails writes nothing.

A resumed run must be the run that was started: a change to anything that shaped the epochs
already run is refused, naming the fields; fields that only say how to save, print or
evaluate may change; ``config.json`` never claims a run that did not happen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tern_jax import cli
from tern_jax.train import override, quickstart_config, run, train_and_evaluate
from tern_jax.train.config import differences
from tern_jax.train.metrics import read

REPO = Path(__file__).parent.parent
QUIET = {"log": lambda *_: None}


def _small(changes=None):
    """The quickstart's tern model on 128 training and 64 test digits, 1 epoch of batches of
    32, a checkpoint every epoch; ``changes`` (dotted paths) replace the rest."""
    base = override(quickstart_config(), {
        "data.train_subset": 128, "data.test_subset": 64, "schedule.epochs": 1,
        "data.batch_size": 32, "progress": False, "checkpointing.every": 1,
        "model.variants": ("tern",)})
    return override(base, changes or {})


#: The multistep schedule with a milestone at epoch 1.
MULTISTEP = {"schedule.name": "multistep", "schedule.milestones": ((1, 0.1),)}


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """Runs of 1 epoch: cosine (the quickstart's schedule) and multistep."""
    root = tmp_path_factory.mktemp("resume")
    train_and_evaluate(_small(), root / "cosine", **QUIET)
    train_and_evaluate(_small(MULTISTEP), root / "multistep", **QUIET)
    return root


def _copy(one_epoch, name, tmp_path) -> Path:
    import shutil

    target = tmp_path / name
    shutil.copytree(one_epoch / name, target)
    return target


def test_differences_names_each_changed_field_with_both_values():
    a = _small()
    b = _small({"schedule.epochs": 3, "seeds": (0, 1), "progress": True,
                "model.kwargs": {"width": 16}})
    assert differences(a, b) == {"seeds": ((0,), (0, 1)), "model.kwargs": ({}, {"width": 16}),
                                 "schedule.epochs": (1, 3), "progress": (False, True)}
    assert list(differences(a, b)) == ["seeds", "model.kwargs", "schedule.epochs", "progress"]
    assert differences(a, override(a, {})) == {}


def test_more_epochs_of_a_cosine_run_are_refused_and_config_json_kept(one_epoch, tmp_path):
    """Cosine decays over all epochs: epoch 1 of a 2-epoch run is not epoch 1 of this one."""
    workdir = _copy(one_epoch, "cosine", tmp_path)
    before = (workdir / "config.json").read_text()
    with pytest.raises(ValueError, match=r"schedule.epochs \(1 -> 2: the cosine schedule spans "
                                         r"every epoch.*another --workdir"):
        train_and_evaluate(_small({"schedule.epochs": 2}), workdir, resume=True, **QUIET)
    assert (workdir / "config.json").read_text() == before
    assert [r["epoch"] for r in read(workdir)] == [1]


def test_more_epochs_of_a_multistep_run_equal_a_run_started_with_them(one_epoch, tmp_path):
    """Multistep milestones are in epochs: extending 1 -> 2 epochs gives the metrics of a run
    started with 2, so config.json may say schedule.epochs=2."""
    config = _small({**MULTISTEP, "schedule.epochs": 2})
    extended = _copy(one_epoch, "multistep", tmp_path)
    train_and_evaluate(config, extended, resume=True, **QUIET)
    train_and_evaluate(config, tmp_path / "fresh", **QUIET)
    got, want = read(extended), read(tmp_path / "fresh")
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want] == [1, 2]
    for a, b in zip(got, want):
        assert a["lr"] == b["lr"]
        for key in ("train_loss", "test_loss", "test_acc"):
            np.testing.assert_allclose(a["models"][0][key], b["models"][0][key], rtol=1e-6)
    assert got[0]["lr"] != got[1]["lr"]  # the milestone at epoch 1 took effect
    assert json.loads((extended / "config.json").read_text())["schedule"]["epochs"] == 2


def test_fewer_epochs_than_already_run_are_refused(one_epoch, tmp_path):
    workdir = _copy(one_epoch, "multistep", tmp_path)
    train_and_evaluate(_small({**MULTISTEP, "schedule.epochs": 2}), workdir, resume=True,
                       **QUIET)
    with pytest.raises(ValueError, match=r"schedule.epochs \(2 -> 1: the run already trained "
                                         r"2\)"):
        train_and_evaluate(_small(MULTISTEP), workdir, resume=True, **QUIET)


def test_every_field_that_shaped_the_run_is_named(one_epoch, tmp_path):
    workdir = _copy(one_epoch, "cosine", tmp_path)
    changed = _small({"seeds": (1,), "data.batch_size": 16, "model.variants": ("fp", "tern"),
                      "optimizer.name": "adam", "data.train_subset": 96, "model.name": "resnet20",
                      "data.augment": True, "checkpointing.eval_every": 2})
    before = (workdir / "config.json").read_text()
    with pytest.raises(ValueError) as refused:
        train_and_evaluate(changed, workdir, resume=True, **QUIET)
    message = str(refused.value)
    for field in ("data.train_subset", "data.augment", "model.name", "model.variants", "seeds",
                  "data.batch_size", "optimizer.name", "checkpointing.eval_every"):
        assert f"{field} (" in message
    assert "epochs" not in message
    with pytest.raises(ValueError, match=r"model.kwargs \(\{\} -> \{'width': 16\}\)"):
        train_and_evaluate(_small({"model.kwargs": {"width": 16}}), workdir, resume=True,
                           **QUIET)
    assert (workdir / "config.json").read_text() == before


def test_fields_that_do_not_shape_the_run_may_change(one_epoch, tmp_path):
    workdir = _copy(one_epoch, "cosine", tmp_path)
    changed = _small({"progress": True, "checkpointing.every": 3, "checkpointing.keep": 4,
                      "data.eval_batch_size": 16})
    results = train_and_evaluate(changed, workdir, resume=True, **QUIET)
    assert results["epochs"] == 1
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["checkpointing"] == {"every": 3, "keep": 4, "eval_every": 1}
    assert saved["data"]["eval_batch_size"] == 16 and saved["progress"] is True


@pytest.mark.slow
def test_a_two_stage_resume_is_refused_before_config_json_changes(tmp_path):
    """Both stages trained with a cosine fine-tune: lengthening it is refused, and the run's
    top config.json still holds the values it ran with."""
    config = _small({"model.variants": ("fp", "tern"), "stages.finetune_epochs": 1,
                     "stages.finetune_schedule": "cosine"})
    run(config, tmp_path, **QUIET)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"finetune with a config that changes the run so far: "
                                         r"schedule.epochs \(1 -> 2: the cosine schedule"):
        run(override(config, {"stages.finetune_epochs": 2}), tmp_path, resume=True, **QUIET)
    assert (tmp_path / "config.json").read_text() == before


def test_a_two_stage_start_that_fails_writes_nothing(tmp_path):
    """The first stage cannot start (batch larger than the training set): no run folder."""
    config = _small({"model.variants": ("fp", "tern"), "stages.finetune_epochs": 1,
                     "data.batch_size": 256})
    with pytest.raises(ValueError, match="data.batch_size 256 exceeds the 128 training"):
        run(config, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made for the run stays, empty
    with pytest.raises(ValueError, match="batch_size 256"):
        run(config, tmp_path / "empty", **QUIET)
    assert list((tmp_path / "empty").iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text(config.to_json())  # an earlier start's
    with pytest.raises(ValueError, match="batch_size 256"):
        run(config, tmp_path / "mine", resume=True, **QUIET)
    assert (tmp_path / "mine" / "config.json").read_text() == config.to_json()


def test_distributed_without_a_cluster_names_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "TPU_", "CLOUD_TPU"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "tern_jax", "train", "--config", "quickstart",
                          "--workdir", str(tmp_path / "run"), "--distributed"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("tern-jax: error: --distributed found no cluster to join")
    for name in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "--coordinator HOST:PORT",
                 "--num_processes N", "--process_id I"):
        assert name in error
    assert not (tmp_path / "run").exists()


def test_the_command_line_refuses_a_changed_resume_with_one_line(one_epoch, tmp_path, capsys):
    workdir = _copy(one_epoch, "cosine", tmp_path)
    flags = ["train", "--config", "quickstart", "--workdir", str(workdir), "--resume"]
    flags += [a for k, v in {"data.train_subset": 128, "data.test_subset": 64,
                             "data.batch_size": 32, "progress": "false",
                             "checkpointing.every": 1, "model.variants": "tern",
                             "schedule.epochs": 2}.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tern-jax: error: --resume of {workdir} with a "
                                               "config that changes the run so far: "
                                               "schedule.epochs (1 -> 2")
