"""End-to-end specification of the trainer, configs, CLI, checkpoints and resume (CPU)."""

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.runs import command, short_run
from jax.sharding import Mesh

from tern_jax import cli
from tern_jax.train import (
    Config,
    Trainer,
    TrainingDiverged,
    latest_checkpoint,
    load_config,
    override,
    restore_run,
    run,
    train_and_evaluate,
)
from tern_jax.train.config import from_json
from tern_jax.train.inputs import load_inputs
from tern_jax.train.metrics import read
from tern_jax.train.task import DeviceResident, Streamed

REPO = Path(__file__).parent.parent


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return env


def test_quickstart_trains_both_variants_and_writes_run_files(tmp_path):
    results = train_and_evaluate(short_run(epochs=3), tmp_path, log=lambda *_: None)
    assert set(results["variants"]) == {"fp", "tern"}
    assert results["variants"]["fp"]["mean"] > 0.5  # 10 classes: chance is 0.1
    assert results["variants"]["tern"]["mean"] > 0.3
    records = read(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    model = records[-1]["models"][1]
    assert model["variant"] == "tern" and 0.05 < model["zero_fraction"] < 0.6
    assert records[-1]["models"][0]["zero_fraction"] == 0.0
    assert records[0]["models"][0]["train_loss"] > records[-1]["models"][0]["train_loss"]
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 3
    assert latest_checkpoint(tmp_path) == 3


def test_relative_workdir_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # orbax needs absolute paths; the trainer must resolve them
    # a constant rate: more epochs leave the epoch already run as it was
    train_and_evaluate(short_run(epochs=1, schedule="constant"), "runs/relative",
                       log=lambda *_: None)
    assert latest_checkpoint("runs/relative") == 1
    results = train_and_evaluate(short_run(epochs=2, schedule="constant"), "runs/relative",
                                 resume=True, log=lambda *_: None)
    assert results["epochs"] == 2


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    train_and_evaluate(short_run(epochs=1), tmp_path, log=lambda *_: None)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train_and_evaluate(short_run(epochs=1), tmp_path, log=lambda *_: None)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resume_with_a_different_config_is_refused(tmp_path):
    train_and_evaluate(short_run(epochs=1), tmp_path, log=lambda *_: None)
    with pytest.raises(ValueError, match="learning_rate"):
        train_and_evaluate(short_run(epochs=2, learning_rate=0.5), tmp_path, resume=True,
                           log=lambda *_: None)


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    config = short_run(learning_rate=1e30, schedule="constant", epochs=2, variants=("fp",))
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+ of 8 for model fp/seed0"):
        train_and_evaluate(config, tmp_path, log=lambda *_: None)


def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(command(f"killable_run({str(reference)!r})"), check=True, env=_env(),
                   capture_output=True, timeout=600)
    proc = subprocess.Popen(command(f"killable_run({str(killed)!r})"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (latest_checkpoint(killed) or 0) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= (latest_checkpoint(killed) or 0) < 5, "the run was not killed mid-way"
    subprocess.run(command(f"killable_run({str(killed)!r}, resume=True)"), check=True,
                   env=_env(), capture_output=True, timeout=600)
    ref, got = read(reference), read(killed)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4, 5]
    for a, b in zip(ref, got):
        for ma, mb in zip(a["models"], b["models"]):
            for key in ("train_loss", "train_acc", "test_acc", "test_loss"):
                assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7), (a["epoch"], key)


def test_interrupted_save_leaves_the_previous_checkpoint_usable(tmp_path):
    train_and_evaluate(short_run(epochs=1, schedule="constant"), tmp_path, log=lambda *_: None)
    # what a kill during orbax's save of epoch 2 leaves behind: an uncommitted temporary folder
    partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
    (partial / "default").mkdir(parents=True)
    (partial / "default" / "garbage").write_bytes(b"\x00" * 100)
    assert latest_checkpoint(tmp_path) == 1
    results = train_and_evaluate(short_run(epochs=2, schedule="constant"), tmp_path, resume=True,
                                 log=lambda *_: None)
    assert results["epochs"] == 2 and latest_checkpoint(tmp_path) == 2


def test_eight_device_data_parallel_matches_one_device():
    env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run(command("compare_data_parallel()"), env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["devices"] == 8
    np.testing.assert_allclose(figures["sharded"], figures["single"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(figures["acc8"], figures["acc1"], atol=1 / 64 + 1e-6)


def test_streaming_path_trains(tmp_path):
    results = train_and_evaluate(short_run(stream=True, eval_batch_size=40), tmp_path,
                                 log=lambda *_: None)
    assert results["variants"]["fp"]["mean"] > 0.3


def test_distillation_moves_only_the_student_and_per_channel_variant_trains(tmp_path):
    base = short_run(variants=("fp", "tern_pc"), epochs=1, checkpoint_every=0)
    plain = train_and_evaluate(base, tmp_path / "plain", log=lambda *_: None)
    distilled = train_and_evaluate(dataclasses.replace(base, distill_weight=1.0),
                                   tmp_path / "distilled", log=lambda *_: None)
    a, b = read(tmp_path / "plain")[-1]["models"], read(tmp_path / "distilled")[-1]["models"]
    # the teacher's own loss and updates ignore the KL term; the student's do not
    assert a[0]["train_loss"] == b[0]["train_loss"] and a[0]["test_acc"] == b[0]["test_acc"]
    assert a[1]["train_loss"] != b[1]["train_loss"]
    for results in (plain, distilled):
        assert 0.0 < results["variants"]["tern_pc"]["zero_fraction"] < 0.6
        assert results["variants"]["tern_pc"]["mean"] > 0.15  # above chance after one epoch


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """The documented default CIFAR recipe (fp, then ternary fine-tuning) on a tiny folder."""
    from helpers.cifar import write_cifar_batches

    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 120)
    images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = (labels[:, None, None] * 25).astype(np.uint8)  # a learnable signal
    write_cifar_batches(root / "cifar-10-batches-py", images, labels, per_batch=16)
    workdir = root / "run"
    common = ["--config", str(REPO / "experiments" / "configs" / "cifar10_resnet20.py"),
              "--workdir", str(workdir), "--set", f"data_dir={root}", "--set", "batch_size=16",
              "--set", "seeds=0", "--set", "progress=false", "--set", "checkpoint_every=1",
              "--set", "eval_batch_size=20", "--set", "finetune_schedule=constant",
              "--set", "model_axis=vmap", "--set", "epochs=1"]
    assert cli.main(["train", *common, "--set", "finetune_epochs=1"]) == 0
    return root, workdir, common


def test_cifar_two_stage_run_writes_both_stages(cifar_run):
    _, workdir, _ = cifar_run
    assert latest_checkpoint(workdir / "pretrain") == 1
    assert latest_checkpoint(workdir / "finetune") == 1
    results = json.loads((workdir / "results.json").read_text())
    assert results["stages"] == {"pretrain": 1, "finetune": 1}
    assert set(results["variants"]) == {"fp", "tern"}


def test_cifar_two_stage_resume_grows_only_the_second_stage(cifar_run, capsys):
    _, workdir, common = cifar_run
    assert cli.main(["train", *common, "--set", "finetune_epochs=2", "--resume"]) == 0
    assert [r["epoch"] for r in read(workdir / "pretrain")] == [1]
    assert [r["epoch"] for r in read(workdir / "finetune")] == [1, 2]
    assert json.loads((workdir / "results.json").read_text())["stages"] == {
        "pretrain": 1, "finetune": 2}
    # stage 2 started from the fp model of epoch 1: lengthening stage 1 now is refused
    assert cli.main(["train", *common[:-2], "--set", "epochs=2", "--set", "finetune_epochs=2",
                     "--resume"]) == 2
    assert "already fine-tuned" in capsys.readouterr().err


def test_cifar_eval_reports_the_ternary_stage(cifar_run, capsys):
    _, workdir, _ = cifar_run
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "tern/seed0" in out and "fp/seed0" not in out and "test acc" in out


def test_cifar_export_writes_a_loadable_packed_model(cifar_run, capsys):
    import tern_jax

    root, workdir, _ = cifar_run
    assert cli.main(["export", "--workdir", str(workdir), "--model", "tern/seed0",
                     "--out", str(root / "packed")]) == 0
    assert "exported tern/seed0" in capsys.readouterr().out
    packed = tern_jax.load_ternary(root / "packed")
    assert packed["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
    assert len(np.unique(np.asarray(packed["params"]["stem_conv"]["kernel"]))) <= 3
    assert cli.main(["export", "--workdir", str(workdir), "--model", "tern/seed7",
                     "--out", str(root / "nope")]) == 2
    assert "no model 'tern/seed7'" in capsys.readouterr().err and not (root / "nope").exists()


def _drawn(ax) -> dict:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()}


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


def test_config_overrides_parse_types_and_reject_unknown_fields():
    c = override(Config(), ["seeds=0,1,2", "milestones=80:0.1,120:0.1", "augment=false",
                            "learning_rate=0.05", "data_dir=none", "variants=fp,tern_t2"])
    assert c.seeds == (0, 1, 2) and c.milestones == ((80, 0.1), (120, 0.1))
    assert c.augment is False and c.learning_rate == 0.05 and c.data_dir is None
    assert c.variants == ("fp", "tern_t2")
    with pytest.raises(ValueError, match="unknown config field 'lr'"):
        override(Config(), ["lr=0.1"])
    with pytest.raises(ValueError, match="unknown variant 'tern9'"):
        override(Config(), ["variants=tern9"])


def test_every_form_of_image_inputs_follows_its_protocol():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    device = load_inputs(short_run(), [0], mesh)
    streamed = load_inputs(short_run(stream=True), [0], mesh)
    assert isinstance(device, DeviceResident) and not device.streamed
    assert isinstance(streamed, Streamed) and streamed.streamed
    assert not isinstance(device, Streamed) and not isinstance(streamed, DeviceResident)
    assert device.num_train == streamed.num_train == 256
    assert device.num_test == streamed.num_test == 96


def test_saved_configs_of_earlier_versions_load_and_unknown_keys_are_named():
    saved = sorted((REPO / "experiments" / "results").rglob("config.json"))
    assert saved  # run folders written by earlier versions (fewer fields)
    for path in saved:
        written = json.loads(path.read_text())
        loaded = json.loads(from_json(path.read_text()).to_json())
        assert {k: loaded[k] for k in written} == written, path
    data = json.loads(Config().to_json())
    with pytest.raises(ValueError, match="keys that are no Config field: lr, vmap"):
        from_json(json.dumps({**data, "lr": 0.1, "vmap": True}))


def test_a_field_the_run_does_not_read_is_refused_with_its_name():
    with pytest.raises(ValueError, match="seq_len=64 is not read by this run .image "
                                         "classification.*it is read by language model runs"):
        Config(seq_len=64)
    with pytest.raises(ValueError, match="data_dir='/data' is not read by this run .*dataset "
                                         "'digits'.; it is read by dataset cifar10"):
        Config(data_dir="/data")
    assert Config(dataset="cifar10", data_dir="/data").data_dir == "/data"


def test_every_experiment_config_loads_with_a_distinct_name():
    configs = sorted((REPO / "experiments" / "configs").glob("*.py"))
    names = {p.stem for p in configs}
    for depth in (20, 32, 44, 56):  # the paper's CIFAR table, both recipes
        assert {f"cifar10_resnet{depth}", f"cifar10_resnet{depth}_paper"} <= names
    loaded = [load_config(str(path)) for path in configs]
    assert all(isinstance(c, Config) for c in loaded)
    assert len({c.name for c in loaded}) == len(loaded)
    best = load_config(str(REPO / "experiments" / "configs" / "cifar10_resnet20.py"))
    assert best.finetune_epochs == 80 and best.epochs == 200


def test_cli_reports_bad_config_path_clearly(capsys):
    assert cli.main(["train", "--config", "nope.py", "--workdir", "/tmp/x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_threshold_warmup_ramps_the_ternary_forward_and_leaves_fp_alone():
    def first_losses(step, **changes):
        trainer = Trainer(short_run(seeds=(0,), **changes))
        idx, keys = trainer.inputs.epoch_plan(0)
        _, metrics = trainer.step_at(trainer.init_state(), trainer.inputs.arrays, idx[0],
                                     keys[0], np.int32(step))
        return np.asarray(metrics["loss"]), trainer.steps_per_epoch

    plain, steps_per_epoch = first_losses(0)
    start = first_losses(0, threshold_warmup=1.0)[0]          # scale 0: Δ = 0
    done = first_losses(steps_per_epoch, threshold_warmup=1.0)[0]  # scale 1: the plain Δ
    assert start[0] == plain[0]  # fp: untouched by the warm-up
    assert start[1] != plain[1]  # ternary: a different forward while warming up
    np.testing.assert_allclose(done, plain, rtol=1e-6)
    with pytest.raises(ValueError, match=r"threshold_warmup_start must be a number in \[0, 1\], "
                                         "got 1.5"):
        short_run(threshold_warmup=2.0, threshold_warmup_start=1.5)


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_stage")
    config = short_run(epochs=2, finetune_epochs=1, finetune_learning_rate=0.01)
    return config, workdir, run(config, workdir, log=lambda *_: None)


def test_two_stage_recipe_fine_tunes_ternary_from_the_fp_model(two_stage):
    config, workdir, results = two_stage
    assert results["stages"] == {"pretrain": 2, "finetune": 1} and results["epochs"] == 3
    pre, fine = read(workdir / "pretrain"), read(workdir / "finetune")
    assert [m["name"] for m in pre[0]["models"]] == ["fp/seed0"]
    assert [m["name"] for m in fine[0]["models"]] == ["tern/seed0"]
    assert results["variants"]["fp"]["test_acc"] == [pre[-1]["models"][0]["test_acc"]]
    assert results["variants"]["tern"]["test_acc"] == [fine[-1]["models"][0]["test_acc"]]
    # the ternary model starts from the trained fp model, not from a fresh init
    assert fine[0]["models"][0]["train_loss"] < pre[0]["models"][0]["train_loss"]
    assert fine[0]["lr"] < 0.01  # its own cosine schedule, not stage 1's lr 0.05


def test_two_stage_resume_of_a_finished_run_trains_nothing(two_stage):
    config, workdir, results = two_stage
    again = run(config, workdir, resume=True, log=lambda *_: None)
    assert again["variants"] == results["variants"]
    assert len(read(workdir / "finetune")) == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run(config, workdir, log=lambda *_: None)


def test_two_stage_restores_the_ternary_stage_without_data(two_stage, monkeypatch):
    from tern_jax.data.specs import Dataset

    config, workdir, _ = two_stage

    def no_data(*args, **kwargs):
        raise AssertionError("restoring weights must not load a dataset")

    monkeypatch.setattr(Dataset, "open", no_data)  # the one place a dataset is loaded
    restored = restore_run(workdir)  # the ternary stage, for eval and export
    assert [s.name for s in restored.config.slots] == ["tern/seed0"]
    assert restored.epoch == 1
    leaf = jax.tree_util.tree_leaves(restored.state.params)[0]
    assert leaf.shape[0] == 1  # one model on the model axis


def test_the_loop_alone_refuses_a_two_stage_config(tmp_path):
    with pytest.raises(ValueError, match="tern_jax.train.run"):
        train_and_evaluate(short_run(finetune_epochs=1), tmp_path, log=lambda *_: None)


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
    assert drawn["tern/seed0"] == ([3], pytest.approx([fine[0]["models"][0]["train_loss"]]))
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
    assert "| fp | 2 |" in table and "| tern | 2+1 |" in table


def test_two_stage_config_checks():
    with pytest.raises(ValueError, match="needs a ternary variant"):
        short_run(variants=("fp",), finetune_epochs=2)
    with pytest.raises(ValueError, match="finetune_schedule"):
        short_run(finetune_epochs=2, finetune_schedule="multistep")


def test_scanned_chunks_match_single_steps_with_threshold_warmup(tmp_path):
    """The GPU/TPU path (steps inside lax.scan, model axis vmapped) against the CPU path."""
    base = short_run(epochs=1, threshold_warmup=1.0, checkpoint_every=0)
    single = train_and_evaluate(dataclasses.replace(base, scan_steps=1, model_axis="unroll"),
                                tmp_path / "single", log=lambda *_: None)
    scanned = train_and_evaluate(dataclasses.replace(base, scan_steps=3, model_axis="vmap"),
                                 tmp_path / "scanned", log=lambda *_: None)
    a, b = read(tmp_path / "single")[-1], read(tmp_path / "scanned")[-1]
    for m, n in zip(a["models"], b["models"]):
        np.testing.assert_allclose(m["train_loss"], n["train_loss"], rtol=1e-4)
    for v in ("fp", "tern"):
        np.testing.assert_allclose(single["variants"][v]["mean"], scanned["variants"][v]["mean"],
                                   atol=2 / 96 + 1e-6)  # at most two of 96 test images flip
