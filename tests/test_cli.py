"""The command line: every wrong flag, ``--set`` field or path ends with exit status 2 and one
line on stderr (no traceback unless ``--debug``), and nothing it did not write is replaced.

The bad calls fail in their argument checks, before any model is built or trained; the
quickstart test at the end trains one epoch on 128 digits to run the commands it prints.
"""

import json
import os
import sys

import pytest

from tern_jax import cli
from tern_jax.train.config import Config, override, quickstart_config


def _run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err


def _fake_run(folder):
    """A run folder as training leaves it: config.json and one epoch of metrics."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(quickstart_config().to_json())
    record = {"epoch": 1, "lr": 0.1, "seconds": 1.0, "models": [
        {"name": "tern/seed0", "variant": "tern", "seed": 0, "train_loss": 1.0,
         "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5, "zero_fraction": 0.4}]}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return folder


# (id, argv after "tern-jax", text the one line must hold); {tmp} is the test's folder
BAD_CALLS = [
    ("unknown-flag", ["train", "--workdir", "{tmp}/w", "--bogus"], "unrecognized arguments"),
    ("missing-workdir", ["train"], "--workdir"),
    ("unknown-command", ["fly"], "invalid choice"),
    ("set-unknown-field", ["train", "--workdir", "{tmp}/w", "--set", "lr=0.1"],
     "unknown config field 'lr'"),
    ("set-undotted-field", ["train", "--workdir", "{tmp}/w", "--set", "batch_size=4"],
     "unknown config field 'batch_size'; did you mean data.batch_size?"),
    ("set-field-of-another-section", ["train", "--workdir", "{tmp}/w", "--set",
                                      "optimizer.epochs=4"],
     "unknown config field 'optimizer.epochs'; did you mean schedule.epochs?"),
    ("set-unknown-section", ["train", "--workdir", "{tmp}/w", "--set", "training.epochs=4"],
     "unknown config field 'training.epochs'; did you mean schedule.epochs?"),
    ("set-unknown-model-kwarg", ["train", "--workdir", "{tmp}/w", "--set",
                                 "model.kwargs.widht=8"],
     "model 'small_cnn' (SmallCNN) has no field widht; its fields are dtype, width"),
    ("set-bad-model-kwarg-value", ["train", "--workdir", "{tmp}/w", "--set",
                                   "model.kwargs.width=0"], "width"),
    ("set-unknown-transformer-kwarg", ["train", "--workdir", "{tmp}/w", "--set",
                                       "model.name=transformer_tiny", "--set", "data.dataset=text",
                                       "--set", "model.variants=fp", "--set",
                                       "model.kwargs.dmodel=64"],
     "unknown TransformerConfig fields ['dmodel']"),
    ("set-kwargs-not-json", ["train", "--workdir", "{tmp}/w", "--set", "model.kwargs=[8"],
     "bad value for model.kwargs: '[8'"),
    ("set-kwargs-not-a-dict", ["train", "--workdir", "{tmp}/w", "--set", "model.kwargs=8"],
     "model.kwargs must be a dict of keyword arguments"),
    ("set-not-field-value", ["train", "--workdir", "{tmp}/w", "--set", "schedule.epochs"],
     "not of the form field=value"),
    ("set-wrong-type", ["train", "--workdir", "{tmp}/w", "--set", "schedule.epochs=abc"],
     "bad value for schedule.epochs: 'abc' (expected an integer)"),
    ("set-float-for-int", ["train", "--workdir", "{tmp}/w", "--set", "data.batch_size=1.5"],
     "bad value for data.batch_size"),
    ("set-bool", ["train", "--workdir", "{tmp}/w", "--set", "data.augment=maybe"],
     "bad value for data.augment"),
    ("set-negative-learning-rate", ["train", "--workdir", "{tmp}/w", "--set",
                                    "optimizer.learning_rate=-0.1"],
     "optimizer.learning_rate must be a number > 0"),
    ("set-nan-learning-rate", ["train", "--workdir", "{tmp}/w", "--set",
                               "optimizer.learning_rate=nan"],
     "optimizer.learning_rate must be a finite number"),
    ("set-checkpointing.every", ["train", "--workdir", "{tmp}/w", "--set",
                                 "checkpointing.every=-1"],
     "checkpointing.every must be an integer >= 0"),
    ("set-checkpointing.keep", ["train", "--workdir", "{tmp}/w", "--set",
                                "checkpointing.keep=0"],
     "checkpointing.keep must be an integer >= 1"),
    ("set-train_subset", ["train", "--workdir", "{tmp}/w", "--set", "data.train_subset=0"],
     "data.train_subset must be an integer >= 1 or None"),
    ("set-epochs", ["train", "--workdir", "{tmp}/w", "--set", "schedule.epochs=0"],
     "schedule.epochs must be an integer >= 1"),
    ("set-momentum", ["train", "--workdir", "{tmp}/w", "--set", "optimizer.momentum=1.5"],
     "optimizer.momentum must be a number in [0, 1)"),
    ("set-seeds", ["train", "--workdir", "{tmp}/w", "--set", "seeds=0,0"],
     "seeds must be distinct integers >= 0"),
    ("set-milestones", ["train", "--workdir", "{tmp}/w", "--set", "schedule.milestones=80"],
     "EPOCH:FACTOR pairs"),
    ("set-variant", ["train", "--workdir", "{tmp}/w", "--set", "model.variants=fp,tern9"],
     "unknown variant 'tern9'"),
    ("set-model", ["train", "--workdir", "{tmp}/w", "--set", "model.name=resnet7"],
     "unknown model 'resnet7'"),
    ("set-dataset", ["train", "--workdir", "{tmp}/w", "--set", "data.dataset=mnist"],
     "unknown dataset 'mnist'"),
    ("set-text_path-on-images", ["train", "--workdir", "{tmp}/w", "--set",
                                 "data.text_path={tmp}/afile"],
     "data.text_path='{tmp}/afile' is not read by this run (image classification, model "
     "'small_cnn' on dataset 'digits'); it is read by dataset text"),
    ("set-image-model-on-text", ["train", "--workdir", "{tmp}/w", "--set", "data.dataset=text"],
     "model 'small_cnn' (image classification) reads images, but dataset 'text' holds tokens"),
    ("set-compute_dtype", ["train", "--workdir", "{tmp}/w", "--set",
                           "model.compute_dtype=int8"], "model.compute_dtype must be"),
    ("set-label_smoothing", ["train", "--workdir", "{tmp}/w", "--set",
                             "optimizer.label_smoothing=1"],
     "optimizer.label_smoothing must be a number in [0, 1)"),
    ("set-name-empty", ["train", "--workdir", "{tmp}/w", "--set", "name="],
     "name must be a non-empty string"),
    ("config-missing", ["train", "--config", "{tmp}/nope.py", "--workdir", "{tmp}/w"],
     "config '{tmp}/nope.py' not found"),
    ("data_dir-missing", ["train", "--workdir", "{tmp}/w", "--set", "data.dataset=cifar10",
                          "--set", "data.data_dir={tmp}/nodata"],
     "data.data_dir {tmp}/nodata does not exist"),
    ("data_dir-file", ["train", "--workdir", "{tmp}/w", "--set", "data.dataset=cifar10",
                       "--set", "data.data_dir={tmp}/afile"],
     "data.data_dir {tmp}/afile is a file"),
    ("workdir-file", ["train", "--workdir", "{tmp}/afile"], "--workdir {tmp}/afile is a file"),
    ("workdir-unrelated", ["train", "--workdir", "{tmp}/project"],
     "--workdir {tmp}/project holds files tern_jax did not write (notes.txt)"),
    ("quickstart-workdir-unrelated", ["quickstart", "--workdir", "{tmp}/project"],
     "holds files tern_jax did not write"),
    ("eval-workdir-missing", ["eval", "--workdir", "{tmp}/nothing"],
     "--workdir {tmp}/nothing does not exist"),
    ("eval-not-a-run", ["eval", "--workdir", "{tmp}/project"], "holds no run (no config.json)"),
    ("eval-epoch", ["eval", "--workdir", "{tmp}/w", "--epoch", "-1"],
     "argument --epoch: expected a positive integer, got -1"),
    ("export-out-exists", ["export", "--workdir", "{tmp}/project", "--model", "tern/seed0",
                           "--out", "{tmp}/afile"], "--out {tmp}/afile already exists"),
    ("summary-model", ["summary", "--model", "resnet7"], "unknown model 'resnet7'"),
    ("summary-variant", ["summary", "--variant", "tern9"], "unknown variant 'tern9'"),
    ("summary-num_classes", ["summary", "--num_classes", "0"],
     "argument --num_classes: expected a positive integer"),
    ("summary-image_size", ["summary", "--image_size", "x"],
     "argument --image_size: expected a positive integer"),
    ("summary-image-flag-for-a-language-model",
     ["summary", "--model", "transformer_tiny", "--image_size", "8"],
     "--image_size size image models; 'transformer_tiny' is a language model"),
    ("summary-variant-of-another-family", ["summary", "--model", "transformer_tiny",
                                           "--variant", "tern_t4"], "unknown variant 'tern_t4'"),
    ("sample-top_k", ["sample", "--workdir", "{tmp}/run", "--model", "tern/seed0", "--top_k",
                      "0"], "argument --top_k: expected a positive integer"),
    ("sample-top_p", ["sample", "--workdir", "{tmp}/run", "--model", "tern/seed0", "--top_p",
                      "1.5"], "argument --top_p: expected a number in (0, 1], got '1.5'"),
    ("sample-top_p-nan", ["sample", "--workdir", "{tmp}/run", "--model", "tern/seed0",
                          "--top_p", "nan"], "argument --top_p: expected a number in (0, 1]"),
    ("plot-missing-run", ["plot", "{tmp}/nothing", "--out", "{tmp}/c.png"],
     "run folder {tmp}/nothing does not exist"),
    ("plot-out-no-format", ["plot", "{tmp}/run", "--out", "{tmp}/curves"],
     "plot path {tmp}/curves names no image format matplotlib writes (no suffix)"),
    ("plot-out-users-file", ["plot", "{tmp}/run", "--out", "{tmp}/mine.png"],
     "{tmp}/mine.png is an existing file that tern_jax did not write as a plot"),
    ("plot-out-users-folder", ["plot", "{tmp}/run", "--out", "{tmp}/figures.png"],
     "{tmp}/figures.png is an existing folder that tern_jax did not write"),
]


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "afile").write_text("the user's file")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("the user's notes")
    (tmp_path / "mine.png").write_bytes(b"the user's figure")
    (tmp_path / "figures.png").mkdir()  # a folder named like a plot
    (tmp_path / "figures.png" / "a.png").write_bytes(b"the user's figure")
    _fake_run(tmp_path / "run")
    return tmp_path


def _tree(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("argv, expected", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_a_bad_flag_exits_2_with_one_line(tmp, capsys, argv, expected):
    before = _tree(tmp)
    status, err = _run(capsys, *[a.format(tmp=tmp) for a in argv])
    assert status == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "error: " in err and "Traceback" not in err
    assert expected.format(tmp=tmp) in err, err
    assert _tree(tmp) == before  # a refused call writes and deletes nothing
    assert not (tmp / "w").exists()


def test_debug_shows_the_traceback_instead(tmp, capsys):
    with pytest.raises(ValueError, match="optimizer.learning_rate must be a number > 0"):
        cli.main(["train", "--workdir", str(tmp / "w"), "--set", "optimizer.learning_rate=-1",
                  "--debug"])
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
        cli.main(["--debug", "train", "--workdir", str(tmp / "w"), "--set",
                  "optimizer.learning_rate=-1"])


def test_a_misspelt_section_key_is_named_with_the_sections_fields():
    with pytest.raises(ValueError, match="data has no field batch_sise; its fields: .*batch_size"):
        Config(data={"batch_sise": 4})
    with pytest.raises(ValueError, match="model has no field kwarg; its fields: .*kwargs"):
        Config(model={"name": "small_cnn", "kwarg": {"width": 8}})


def test_a_field_given_outside_its_section_is_named_by_its_dotted_path():
    with pytest.raises(ValueError, match="optimizer has no field batch_size.*data.batch_size"):
        Config(optimizer={"batch_size": 4})
    with pytest.raises((TypeError, ValueError), match="data.batch_size"):
        Config(batch_size=4)


def test_plot_without_matplotlib_is_one_line(tmp, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    status, err = _run(capsys, "plot", str(tmp / "run"), "--out", str(tmp / "c.png"))
    assert status == 2 and err.count("\n") == 1
    assert "plotting needs matplotlib, which is not installed: pip install matplotlib" in err
    status, err = _run(capsys, "train", "--workdir", str(tmp / "w2"), "--plot")
    assert status == 2 and "plotting needs matplotlib" in err and not (tmp / "w2").exists()


def test_plot_replaces_only_its_own_plot(tmp, capsys):
    out = tmp / "curves.png"
    assert cli.main(["plot", str(tmp / "run"), "--out", str(out)]) == 0
    first = out.read_bytes()
    assert first.startswith(b"\x89PNG")
    assert cli.main(["plot", str(tmp / "run"), "--out", str(out), "--title", "again"]) == 0
    assert out.read_bytes() != first  # its own plot is replaced
    out.write_bytes(b"edited by the user")
    capsys.readouterr()
    status, err = _run(capsys, "plot", str(tmp / "run"), "--out", str(out))
    assert status == 2 and "did not write as a plot" in err
    assert out.read_bytes() == b"edited by the user"


def test_help_shows_plain_text_not_rst_markup(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Command line: tern-jax (or python -m tern_jax)." in out
    assert "``" not in out


@pytest.fixture
def one_epoch_quickstart(monkeypatch):
    """``tern-jax quickstart`` trains 1 epoch on 128 digits (its checks and printing unchanged)."""
    import tern_jax.train

    tiny = override(quickstart_config(), {"schedule.epochs": 1, "data.train_subset": 128})
    monkeypatch.setattr(tern_jax.train, "quickstart_config", lambda: tiny)


def _next_commands(out: str) -> list[list[str]]:
    """The commands of the quickstart's ``next:`` line, as argv lists after ``tern-jax``."""
    line = next(line for line in out.splitlines() if line.startswith("next: "))
    return [c.split()[1:] for c in line.removeprefix("next: ").split(" && ")]


@pytest.mark.slow
def test_the_next_commands_quickstart_prints_run_as_printed_also_after_a_rerun(
        tmp_path, capsys, one_epoch_quickstart):
    workdir = tmp_path / "quick"
    for attempt in ("first run", "rerun after the printed commands ran"):
        assert cli.main(["quickstart", "--workdir", str(workdir)]) == 0, attempt
        captured = capsys.readouterr()
        assert "\r" not in captured.out + captured.err  # no progress bar in a redirected log
        assert "epoch" in captured.out + captured.err  # the epoch lines are still written
        for argv in _next_commands(captured.out):
            status = cli.main(argv)
            assert status == 0, (attempt, argv, capsys.readouterr().err)
        assert (workdir / "tern_packed").exists() and (workdir / "curves.png").exists()


def test_a_two_stage_recipe_announces_the_epochs_it_will_train(tmp_path, capsys, monkeypatch):
    """``--set schedule.epochs=1`` on the default CIFAR recipe: the line states both stages'
    real epochs."""
    from pathlib import Path

    from tern_jax.train import load_config, stages

    trained = []

    class Stop(Exception):
        pass

    def record(config, workdir, **kwargs):  # stands in for training stage 1
        trained.append(config)
        raise Stop

    monkeypatch.setattr(stages, "train_and_evaluate", record)
    path = str(Path(__file__).parent.parent / "experiments" / "configs" / "cifar10_resnet20.py")
    cli.main(["train", "--config", path, "--workdir", str(tmp_path / "w"), "--set",
              "schedule.epochs=1"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "two stages" in ln)
    pretrain, finetune = stages.stage_configs(override(load_config(path), ["schedule.epochs=1"]),
                                              tmp_path / "w")
    assert trained == [pretrain]
    assert (pretrain.schedule.epochs, finetune.schedule.epochs) == (1, 80)
    assert ("two stages, 1 epoch full precision (schedule.epochs), then 80 epochs fine-tuning"
            in line)
    assert "(stages.finetune_epochs): 81 epochs in all" in line
