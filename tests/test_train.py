"""End-to-end specification of the trainer, configs, CLI, checkpoints and resume (CPU).

Runs are cut to what each behaviour needs; tests that only read a finished run share one
(module fixtures), and tests that extend or damage a run work on a copy of it.
"""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.runs import command, data_parallel_losses
from jax.sharding import Mesh

from tern_jax import cli
from tern_jax.train import (
    Config,
    Trainer,
    TrainingDiverged,
    latest_checkpoint,
    load_config,
    override,
    quickstart_config,
    restore_run,
    run,
    train_and_evaluate,
)
from tern_jax.train.config import from_json
from tern_jax.train.families import resolve
from tern_jax.train.metrics import read
from tern_jax.train.run_folder import RunFolder
from tern_jax.train.task import DeviceResident, Streamed

REPO = Path(__file__).parent.parent
QUIET = {"log": lambda *_: None}


#: The quickstart on 256 training and 96 test digits: 2 epochs of 8 steps (batches of 32), a
#: checkpoint every epoch, no progress bar (dotted paths).
SMALL = {"data.train_subset": 256, "data.test_subset": 96, "schedule.epochs": 2,
         "data.batch_size": 32, "progress": False, "checkpointing.every": 1}


#: The threshold Δ ramped up over the first epoch.
WARMUP = {"schedule.threshold_warmup": 1.0}


def _small(changes=None):
    """:data:`SMALL`, with ``changes`` (dotted paths) replacing any field."""
    return override(quickstart_config(), {**SMALL, **(changes or {})})


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def _same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want):
        for ma, mb in zip(a["models"], b["models"]):
            for key in ("train_loss", "train_acc", "test_acc", "test_loss"):
                assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7), (a["epoch"], key)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart recipe (fp and tern, cosine) for 2 epochs, never changed by a test;
    trained into a relative workdir (orbax needs absolute paths: the trainer resolves them)."""
    root = tmp_path_factory.mktemp("quickstart")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        results = train_and_evaluate(_small(), "run", **QUIET)
    finally:
        os.chdir(cwd)
    return root / "run", results


def _cut_after_epoch_1(source: Path, target: Path) -> Path:
    """A copy of a 2-epoch run as a kill during epoch 2 leaves it: no checkpoint of epoch 2."""
    shutil.copytree(source, target)
    shutil.rmtree(target / "checkpoints" / "2")
    assert latest_checkpoint(target) == 1
    return target


def test_quickstart_trains_both_variants_and_writes_run_files(quickstart_run):
    workdir, results = quickstart_run
    assert set(results["variants"]) == {"fp", "tern"}
    assert results["variants"]["fp"]["mean"] > 0.5  # 10 classes: chance is 0.1
    assert results["variants"]["tern"]["mean"] > 0.3
    records = read(workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    model = records[-1]["models"][1]
    assert model["variant"] == "tern" and 0.05 < model["zero_fraction"] < 0.6
    assert records[-1]["models"][0]["zero_fraction"] == 0.0
    assert records[0]["models"][0]["train_loss"] > records[-1]["models"][0]["train_loss"]
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 2
    saved = json.loads((workdir / "config.json").read_text())  # sections, as Config.to_dict
    assert saved["data"]["train_subset"] == 256 and saved["model"]["name"] == "small_cnn"
    assert from_json((workdir / "config.json").read_text()) == _small()
    assert latest_checkpoint(workdir) == 2


def test_relative_workdir_checkpoints_and_resumes(quickstart_run, tmp_path, monkeypatch):
    workdir, _ = quickstart_run  # trained in a relative workdir
    monkeypatch.chdir(tmp_path)
    _cut_after_epoch_1(workdir, Path("runs/relative"))
    results = train_and_evaluate(_small(), "runs/relative", resume=True, **QUIET)
    assert results["epochs"] == 2 and latest_checkpoint("runs/relative") == 2
    _same_metrics(read("runs/relative"), read(workdir))


def test_existing_run_is_not_overwritten_without_resume(quickstart_run):
    workdir, _ = quickstart_run
    before = (workdir / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train_and_evaluate(_small(), workdir, **QUIET)
    assert (workdir / "metrics.jsonl").read_text() == before


def test_resume_with_a_different_config_is_refused(quickstart_run):
    workdir, _ = quickstart_run
    before = (workdir / "config.json").read_text()
    with pytest.raises(ValueError, match=r"optimizer.learning_rate \(0.05 -> 0.5\)"):
        train_and_evaluate(_small({"optimizer.learning_rate": 0.5}), workdir, resume=True,
                           **QUIET)
    assert (workdir / "config.json").read_text() == before


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    config = _small({"optimizer.learning_rate": 1e30, "schedule.name": "constant",
                     "model.variants": ("fp",)})
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+ of 8 for model fp/seed0"):
        train_and_evaluate(config, tmp_path, **QUIET)


def test_killed_run_resumes_to_the_uninterrupted_metrics(quickstart_run, tmp_path):
    """SIGKILL in the middle of epoch 2 (another process); resumed, the run's metrics are the
    uninterrupted run's, epoch by epoch."""
    workdir, _ = quickstart_run
    killed = tmp_path / "killed"
    done = subprocess.run(command(f"killed_run({str(killed)!r}, {SMALL!r}, kill_at_step=12)"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert latest_checkpoint(killed) == 1 and [r["epoch"] for r in read(killed)] == [1]
    train_and_evaluate(_small(), killed, resume=True, **QUIET)
    assert latest_checkpoint(killed) == 2
    _same_metrics(read(killed), read(workdir))


def test_sigterm_saves_the_epoch_stops_with_143_and_resumes(quickstart_run, tmp_path, capsys,
                                                             monkeypatch):
    """SIGTERM while epoch 1 of 2 trains: the command line finishes the epoch, saves its
    checkpoint (checkpointing.every=0: saved for the stop alone) and exits 143 with one line;
    --resume gives the uninterrupted run's metrics."""
    workdir, _ = quickstart_run
    train_epoch = Trainer.train_epoch

    def signalled(self, state, index, progress=None):
        if index == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the loop's handler
        return train_epoch(self, state, index, progress)

    stopped = tmp_path / "stopped"
    sets = {**SMALL, "checkpointing.every": 0, "progress": "false"}
    argv = ["train", "--workdir", str(stopped)]
    argv += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    monkeypatch.setattr(Trainer, "train_epoch", signalled)
    assert cli.main(argv) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tern-jax: error: SIGTERM stopped {stopped} after epoch 1 of 2, its "
                   "checkpoint saved; continue with --resume"]
    assert latest_checkpoint(stopped) == 1 and [r["epoch"] for r in read(stopped)] == [1]
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert cli.main([*argv, "--resume"]) == 0
    _same_metrics(read(stopped), read(workdir))


def test_interrupted_save_leaves_the_previous_checkpoint_usable(quickstart_run, tmp_path):
    workdir, _ = quickstart_run
    copy = _cut_after_epoch_1(workdir, tmp_path / "run")
    # what a kill during orbax's save of epoch 2 leaves behind: an uncommitted temporary folder
    partial = copy / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
    (partial / "default").mkdir(parents=True)
    (partial / "default" / "garbage").write_bytes(b"\x00" * 100)
    assert latest_checkpoint(copy) == 1
    results = train_and_evaluate(_small(), copy, resume=True, **QUIET)
    assert results["epochs"] == 2 and latest_checkpoint(copy) == 2
    _same_metrics(read(copy), read(workdir))


@pytest.mark.slow
def test_eight_device_data_parallel_matches_one_device():
    """Eight (fake) devices in another process against one here: the same steps."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = dict(_env(), XLA_FLAGS=flags.strip())
    out = subprocess.run(command(f"print_data_parallel({SMALL!r})"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    sharded = json.loads(out.stdout.strip().splitlines()[-1])
    assert sharded["devices"] == 8
    single, acc = data_parallel_losses(SMALL, jax.devices()[:1])
    np.testing.assert_allclose(sharded["losses"], single, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(sharded["acc"], acc, atol=1 / 96 + 1e-6)


def test_streaming_path_trains(tmp_path):
    results = train_and_evaluate(_small({"data.stream": True, "data.eval_batch_size": 40,
                                         "checkpointing.every": 0}), tmp_path, **QUIET)
    assert results["variants"]["fp"]["mean"] > 0.3
    assert read(tmp_path)[-1]["models"][0]["test_acc"] == results["variants"]["fp"]["mean"]


def test_distillation_moves_only_the_student(quickstart_run, tmp_path):
    """The quickstart run again with the tern model distilled from the fp one beside it."""
    workdir, plain = quickstart_run
    distilled = train_and_evaluate(_small({"stages.distill_weight": 1.0}), tmp_path, **QUIET)
    for a, b in zip(read(workdir), read(tmp_path)):
        teacher, student = zip(a["models"], b["models"])
        # the teacher's own loss and updates ignore the KL term; the student's do not
        assert teacher[0]["train_loss"] == teacher[1]["train_loss"]
        assert teacher[0]["test_acc"] == teacher[1]["test_acc"]
        assert student[0]["train_loss"] != student[1]["train_loss"]
    assert distilled["variants"]["fp"] == plain["variants"]["fp"]
    assert distilled["variants"]["tern"]["mean"] > 0.3


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """The documented default CIFAR recipe (fp, then ternary fine-tuning) on a tiny folder,
    its ResNet swapped for a small CNN of stem width 8 (``--set model.kwargs.width=8``): the
    same stages and commands, a fraction of the compile."""
    from helpers.cifar import write_cifar_batches

    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 120)
    images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = (labels[:, None, None] * 25).astype(np.uint8)  # a learnable signal
    write_cifar_batches(root / "cifar-10-batches-py", images, labels, per_batch=16)
    workdir = root / "run"
    common = ["--config", str(REPO / "experiments" / "configs" / "cifar10_resnet20.py"),
              "--workdir", str(workdir), "--set", "model.name=small_cnn",
              "--set", "model.kwargs.width=8",
              "--set", f"data.data_dir={root}", "--set", "data.batch_size=16",
              "--set", "seeds=0", "--set", "progress=false", "--set", "checkpointing.every=1",
              "--set", "data.eval_batch_size=20", "--set", "stages.finetune_schedule=constant",
              "--set", "model.axis=vmap", "--set", "schedule.epochs=1"]
    assert cli.main(["train", *common, "--set", "stages.finetune_epochs=1"]) == 0
    return root, workdir, common


@pytest.mark.slow
def test_cifar_two_stage_run_writes_both_stages(cifar_run):
    _, workdir, _ = cifar_run
    assert latest_checkpoint(workdir / "pretrain") == 1
    assert latest_checkpoint(workdir / "finetune") == 1
    results = json.loads((workdir / "results.json").read_text())
    assert results["stages"] == {"pretrain": 1, "finetune": 1}
    assert set(results["variants"]) == {"fp", "tern"}
    saved = json.loads((workdir / "finetune" / "config.json").read_text())
    assert saved["model"]["name"] == "small_cnn" and saved["stages"]["init_variant"] == "fp"
    assert saved["stages"]["init_from"] == str(workdir / "pretrain")


@pytest.mark.slow
def test_cifar_two_stage_resume_grows_only_the_second_stage(cifar_run, capsys):
    _, workdir, common = cifar_run
    assert cli.main(["train", *common, "--set", "stages.finetune_epochs=2", "--resume"]) == 0
    assert [r["epoch"] for r in read(workdir / "pretrain")] == [1]
    assert [r["epoch"] for r in read(workdir / "finetune")] == [1, 2]
    assert json.loads((workdir / "results.json").read_text())["stages"] == {
        "pretrain": 1, "finetune": 2}
    # stage 2 started from the fp model of epoch 1: lengthening stage 1 now is refused
    assert common[-1] == "schedule.epochs=1"
    assert cli.main(["train", *common[:-2], "--set", "schedule.epochs=2", "--set",
                     "stages.finetune_epochs=2", "--resume"]) == 2
    assert "already fine-tuned" in capsys.readouterr().err


@pytest.mark.slow
def test_cifar_eval_reports_the_ternary_stage(cifar_run, capsys):
    _, workdir, _ = cifar_run
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "tern/seed0" in out and "fp/seed0" not in out and "test acc" in out


@pytest.mark.slow
def test_cifar_export_writes_a_loadable_packed_model(cifar_run, capsys):
    import tern_jax

    root, workdir, _ = cifar_run
    assert cli.main(["export", "--workdir", str(workdir), "--model", "tern/seed0",
                     "--out", str(root / "packed")]) == 0
    assert "exported tern/seed0" in capsys.readouterr().out
    packed = tern_jax.load_ternary(root / "packed")
    assert packed["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 8)  # model.kwargs.width
    assert len(np.unique(np.asarray(packed["params"]["stem_conv"]["kernel"]))) <= 3
    assert cli.main(["export", "--workdir", str(workdir), "--model", "tern/seed7",
                     "--out", str(root / "nope")]) == 2
    assert "no model 'tern/seed7'" in capsys.readouterr().err and not (root / "nope").exists()


def _drawn(ax) -> dict:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()}


@pytest.mark.slow
def test_cifar_plot_draws_both_stages(cifar_run, capsys):
    import matplotlib.pyplot as plt

    from tern_jax import report

    root, workdir, _ = cifar_run
    assert cli.main(["plot", str(workdir), "--out", str(root / "curves.png")]) == 0
    assert plt.imread(root / "curves.png").shape[:2] == (360, 990)  # 11x4 inches at 90 dpi
    fig = report.runs_figure([report.load_run(workdir)])  # what the command drew
    test_ax, loss_ax = fig.axes
    pre, fine = read(workdir / "pretrain"), read(workdir / "finetune")
    drawn, last = _drawn(test_ax), pre[-1]["epoch"]
    assert drawn["fp/seed0"][0] == [r["epoch"] for r in pre]
    assert drawn["tern/seed0"][0] == [last + r["epoch"] for r in fine]  # one timeline
    assert drawn["tern/seed0"][1] == pytest.approx([100 * r["models"][0]["test_acc"]
                                                    for r in fine])
    assert _drawn(loss_ax)["fp/seed0"][1] == pytest.approx([r["models"][0]["train_loss"]
                                                            for r in pre])
    plt.close(fig)


@pytest.mark.slow
def test_model_kwargs_on_the_command_line_size_the_run(cifar_run):
    """``--set model.kwargs.width=8``: both stages built, trained, saved and restored a
    small_cnn of stem width 8 (its later convolutions 2 x 8); config.json holds the argument."""
    _, workdir, _ = cifar_run
    for stage in ("pretrain", "finetune"):
        saved = json.loads((workdir / stage / "config.json").read_text())
        assert saved["model"]["kwargs"] == {"width": 8}
        restored = restore_run(workdir / stage)
        assert restored.config.model.kwargs == {"width": 8}
        shapes = jax.tree.map(lambda a: a.shape, restored.state.params)
        assert shapes["stem_conv"]["kernel"] == (1, 3, 3, 3, 8)  # (models, kh, kw, in, out)
        assert shapes["conv2"]["kernel"] == (1, 3, 3, 8, 16)
        assert shapes["head"]["kernel"] == (1, 16, 10)


def test_model_kwargs_size_a_transformer():
    """``model.kwargs.d_model`` over a named transformer's sizes, as ``--set`` gives it."""
    base = Config(model={"name": "transformer_tiny", "variants": ("fp",)},
                  data={"dataset": "text"})
    config = override(base, ["model.kwargs.d_model=48", "model.kwargs.num_layers=1"])
    assert config.model.kwargs == {"d_model": 48, "num_layers": 1}
    shapes = {}
    for c in (base, config):
        variables = jax.eval_shape(resolve(c).task(c).init, jax.random.key(0))
        shapes[c.model.kwargs.get("d_model", 32)] = variables["params"]
    small, wide = shapes[32], shapes[48]
    assert [leaf.shape[-1] for leaf in jax.tree.leaves(small["embed"])] == [32]
    assert [leaf.shape[-1] for leaf in jax.tree.leaves(wide["embed"])] == [48]
    assert len(wide["blocks"]) == 1 and len(small["blocks"]) == 2
    with pytest.raises(ValueError, match="unknown TransformerConfig fields .'dmodel'."):
        override(base, ["model.kwargs.dmodel=48"])


def test_config_overrides_parse_types_and_reject_unknown_fields():
    c = override(Config(), ["seeds=0,1,2", "schedule.milestones=80:0.1,120:0.1",
                            "data.augment=false", "optimizer.learning_rate=0.05",
                            "data.data_dir=none", "model.variants=fp,tern_t2",
                            "model.kwargs.width=16"])
    assert c.seeds == (0, 1, 2) and c.schedule.milestones == ((80, 0.1), (120, 0.1))
    assert c.data.augment is False and c.optimizer.learning_rate == 0.05
    assert c.data.data_dir is None and c.model.variants == ("fp", "tern_t2")
    assert c.model.kwargs == {"width": 16}
    assert override(c, {"data.batch_size": 16}).data.batch_size == 16
    with pytest.raises(ValueError, match="unknown config field 'lr'"):
        override(Config(), ["lr=0.1"])
    with pytest.raises(ValueError, match="unknown config field 'learning_rate'; did you mean "
                                         "optimizer.learning_rate"):
        override(Config(), ["learning_rate=0.1"])
    with pytest.raises(ValueError, match="unknown variant 'tern9'"):
        override(Config(), ["model.variants=tern9"])


def test_every_form_of_image_inputs_follows_its_protocol():
    mesh = Mesh(np.array(jax.devices()), ("data",))

    def inputs(config):
        resolved = resolve(config)
        return resolved.dataset.inputs(config, resolved.task(config), mesh)

    device = inputs(_small())
    streamed = inputs(_small({"data.stream": True}))
    assert isinstance(device, DeviceResident) and not device.streamed
    assert isinstance(streamed, Streamed) and streamed.streamed
    assert not isinstance(device, Streamed) and not isinstance(streamed, DeviceResident)
    assert device.num_train == streamed.num_train == 256
    assert device.num_test == streamed.num_test == 96
    assert device.steps_per_epoch == streamed.steps_per_epoch == 8


def test_a_saved_config_loads_with_defaults_and_unknown_keys_are_named():
    data = json.loads(Config().to_json())
    assert from_json(json.dumps(data)) == Config()
    # a config.json of fewer fields (an earlier version's) takes the defaults of the others
    older = {**data, "data": {k: v for k, v in data["data"].items() if k != "stream"}}
    del older["stages"]
    assert from_json(json.dumps(older)) == Config()
    with pytest.raises(ValueError, match="keys that are no Config field: lr, vmap"):
        from_json(json.dumps({**data, "lr": 0.1, "vmap": True}))
    with pytest.raises(ValueError, match="data has no field lr"):
        from_json(json.dumps({**data, "data": {**data["data"], "lr": 0.1}}))
    # a config.json of flat fields (before sections) is refused, naming them
    with pytest.raises(ValueError, match="keys that are no Config field: batch_size, epochs"):
        from_json(json.dumps({"name": "old", "batch_size": 32, "epochs": 2}))


def test_the_configs_of_the_saved_runs_load_unchanged():
    saved = sorted((REPO / "experiments" / "results").rglob("config.json"))
    assert saved  # the run folders kept in the repository
    for path in saved:
        written = json.loads(path.read_text())
        folder = RunFolder(path.parent)  # a BPE run reads the copy of its tokenizer it keeps
        loaded = json.loads(folder.read_config().to_json())
        if folder.tokenizer_file.is_file():
            assert loaded["data"]["tokenizer"] == str(folder.tokenizer_file)
            loaded["data"]["tokenizer"] = written["data"]["tokenizer"]
        for key, value in written.items():
            got = {k: loaded[key][k] for k in value} if isinstance(value, dict) else loaded[key]
            assert got == value, (path, key)


def test_a_field_the_run_does_not_read_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"data.seq_len=64 is not read by this run .image "
                                         "classification.*it is read by language model runs"):
        Config(data={"seq_len": 64})
    with pytest.raises(ValueError, match="data.data_dir='/data' is not read by this run "
                                         ".*dataset 'digits'.; it is read by dataset cifar10"):
        Config(data={"data_dir": "/data"})
    assert Config(data={"dataset": "cifar10", "data_dir": "/data"}).data.data_dir == "/data"


def test_every_experiment_config_loads_with_a_distinct_name():
    configs = sorted((REPO / "experiments" / "configs").glob("*.py"))
    names = {p.stem for p in configs}
    for depth in (20, 32, 44, 56):  # the paper's CIFAR table, both recipes
        assert {f"cifar10_resnet{depth}", f"cifar10_resnet{depth}_paper"} <= names
    loaded = [load_config(str(path)) for path in configs]
    assert all(isinstance(c, Config) for c in loaded)
    assert len({c.name for c in loaded}) == len(loaded)
    best = load_config(str(REPO / "experiments" / "configs" / "cifar10_resnet20.py"))
    assert best.stages.finetune_epochs == 80 and best.schedule.epochs == 200


def test_cli_reports_bad_config_path_clearly(capsys):
    assert cli.main(["train", "--config", "nope.py", "--workdir", "/tmp/x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_threshold_warmup_ramps_the_ternary_forward_and_leaves_fp_alone():
    def first_losses(trainer, step):
        idx, keys = trainer.inputs.epoch_plan(0)
        _, metrics = trainer.step_at(trainer.init_state(), trainer.inputs.arrays, idx[0],
                                     keys[0], np.int32(step))
        return np.asarray(metrics["loss"])

    warming = Trainer(_small(WARMUP))
    plain = first_losses(Trainer(_small()), 0)
    start = first_losses(warming, 0)                          # scale 0: Δ = 0
    done = first_losses(warming, warming.steps_per_epoch)     # scale 1: the plain Δ
    assert start[0] == plain[0]  # fp: untouched by the warm-up
    assert start[1] != plain[1]  # ternary: a different forward while warming up
    np.testing.assert_allclose(done, plain, rtol=1e-6)
    with pytest.raises(ValueError, match=r"schedule.threshold_warmup_start must be a number in "
                                         r"\[0, 1\], got 1.5"):
        _small({"schedule.threshold_warmup": 2.0, "schedule.threshold_warmup_start": 1.5})


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_stage")
    config = _small({"stages.finetune_epochs": 1, "stages.finetune_learning_rate": 0.01,
                     "model.variants": ("fp", "tern_pc")})  # the per-channel ternary variant
    return config, workdir, run(config, workdir, **QUIET)


@pytest.mark.slow
def test_two_stage_recipe_fine_tunes_ternary_from_the_fp_model(two_stage):
    config, workdir, results = two_stage
    assert results["stages"] == {"pretrain": 2, "finetune": 1} and results["epochs"] == 3
    pre, fine = read(workdir / "pretrain"), read(workdir / "finetune")
    assert [m["name"] for m in pre[0]["models"]] == ["fp/seed0"]
    assert [m["name"] for m in fine[0]["models"]] == ["tern_pc/seed0"]
    assert results["variants"]["fp"]["test_acc"] == [pre[-1]["models"][0]["test_acc"]]
    assert results["variants"]["tern_pc"]["test_acc"] == [fine[-1]["models"][0]["test_acc"]]
    assert 0.0 < results["variants"]["tern_pc"]["zero_fraction"] < 0.6
    assert results["variants"]["tern_pc"]["mean"] > 0.15  # above chance (0.1) after 1 epoch
    # the ternary model starts from the trained fp model, not from a fresh init
    assert fine[0]["models"][0]["train_loss"] < pre[0]["models"][0]["train_loss"]
    assert fine[0]["lr"] < 0.01  # its own cosine schedule, not stage 1's lr 0.05


@pytest.mark.slow
def test_two_stage_resume_of_a_finished_run_trains_nothing(two_stage):
    config, workdir, results = two_stage
    again = run(config, workdir, resume=True, **QUIET)
    assert again["variants"] == results["variants"]
    assert len(read(workdir / "finetune")) == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run(config, workdir, **QUIET)


@pytest.mark.slow
def test_two_stage_restores_the_ternary_stage_without_data(two_stage, monkeypatch):
    from tern_jax.data.specs import Dataset

    config, workdir, _ = two_stage

    def no_data(*args, **kwargs):
        raise AssertionError("restoring weights must not load a dataset")

    monkeypatch.setattr(Dataset, "open", no_data)  # the one place a dataset is loaded
    restored = restore_run(workdir)  # the ternary stage, for eval and export
    assert [s.name for s in restored.config.slots] == ["tern_pc/seed0"]
    assert restored.epoch == 1
    leaf = jax.tree_util.tree_leaves(restored.state.params)[0]
    assert leaf.shape[0] == 1  # one model on the model axis
    stats = jax.tree_util.tree_leaves(restored.state.model_state)  # BatchNorm's statistics
    assert stats and all(s.shape[0] == 1 for s in stats)


def test_the_loop_alone_refuses_a_two_stage_config(tmp_path):
    with pytest.raises(ValueError, match="tern_jax.train.run"):
        train_and_evaluate(_small({"stages.finetune_epochs": 1}), tmp_path, **QUIET)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_stage_plot_and_collect_read_both_stages(two_stage):
    import matplotlib.pyplot as plt

    from tern_jax import report

    _, workdir, _ = two_stage
    assert plt.imread(report.plot_runs([workdir], workdir / "curves.png")).shape[:2] == (360, 990)
    fig = report.runs_figure([report.load_run(workdir)])
    drawn = _drawn(fig.axes[1])  # train loss: stage 1 at epochs 1-2, stage 2 at epoch 3
    pre, fine = read(workdir / "pretrain"), read(workdir / "finetune")
    assert drawn["fp/seed0"] == ([1, 2], pytest.approx([r["models"][0]["train_loss"]
                                                         for r in pre]))
    assert drawn["tern_pc/seed0"] == ([3], pytest.approx([fine[0]["models"][0]["train_loss"]]))
    plt.close(fig)
    import importlib.util

    spec = importlib.util.spec_from_file_location("collect", REPO / "experiments" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    collect.main([str(workdir), "--out", str(workdir.parent / "collected")])
    kept = workdir.parent / "collected" / workdir.name
    assert (kept / "finetune" / "metrics.jsonl").exists() and (kept / "results.json").exists()
    assert not list(kept.rglob("checkpoints"))
    table = (workdir.parent / "collected" / "table.md").read_text()
    assert "| fp | 2 |" in table and "| tern_pc | 2+1 |" in table


def test_two_stage_config_checks():
    with pytest.raises(ValueError, match="needs a ternary variant"):
        _small({"model.variants": ("fp",), "stages.finetune_epochs": 2})
    with pytest.raises(ValueError, match="stages.finetune_schedule"):
        _small({"stages.finetune_epochs": 2, "stages.finetune_schedule": "multistep"})


@pytest.mark.slow
def test_scanned_chunks_match_single_steps_with_threshold_warmup(tmp_path):
    """The GPU/TPU path (steps inside lax.scan, model axis vmapped) against the CPU path: one
    epoch of 3 steps, run as chunks of 2 and 1 (XLA:CPU runs a scanned step slowly)."""
    base = {**WARMUP, "data.train_subset": 96, "schedule.epochs": 1}
    single = train_and_evaluate(_small({**base, "scan_steps": 1, "model.axis": "unroll"}),
                                tmp_path / "single", **QUIET)
    scanned = train_and_evaluate(_small({**base, "scan_steps": 2, "model.axis": "vmap"}),
                                 tmp_path / "scanned", **QUIET)
    a, b = read(tmp_path / "single"), read(tmp_path / "scanned")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1]
    for m, n in zip(a[-1]["models"], b[-1]["models"]):
        np.testing.assert_allclose(m["train_loss"], n["train_loss"], rtol=1e-4)
    for v in ("fp", "tern"):
        np.testing.assert_allclose(single["variants"][v]["mean"], scanned["variants"][v]["mean"],
                                   atol=2 / 96 + 1e-6)  # at most two of 96 test images flip
