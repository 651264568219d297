"""End-to-end specification of the trainer, configs, CLI, checkpoints and resume (CPU)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tern_jax import cli
from tern_jax.train import (
    Config,
    TrainingDiverged,
    latest_checkpoint,
    load_config,
    override,
    quickstart_config,
    train_and_evaluate,
)
from tern_jax.train.metrics import read

HELPERS = Path(__file__).parent / "helpers"
REPO = Path(__file__).parent.parent


def _small(**changes):
    base = dataclasses.replace(quickstart_config(), train_subset=256, test_subset=96, epochs=2,
                               batch_size=32, progress=False, checkpoint_every=1)
    return dataclasses.replace(base, **changes)


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return env


def test_quickstart_trains_both_variants_and_writes_run_files(tmp_path):
    results = train_and_evaluate(_small(epochs=3), tmp_path, log=lambda *_: None)
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
    train_and_evaluate(_small(epochs=1), "runs/relative", log=lambda *_: None)
    assert latest_checkpoint("runs/relative") == 1
    results = train_and_evaluate(_small(epochs=2), "runs/relative", resume=True,
                                 log=lambda *_: None)
    assert results["epochs"] == 2


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    train_and_evaluate(_small(epochs=1), tmp_path, log=lambda *_: None)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train_and_evaluate(_small(epochs=1), tmp_path, log=lambda *_: None)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resume_with_a_different_config_is_refused(tmp_path):
    train_and_evaluate(_small(epochs=1), tmp_path, log=lambda *_: None)
    with pytest.raises(ValueError, match="learning_rate"):
        train_and_evaluate(_small(epochs=2, learning_rate=0.5), tmp_path, resume=True,
                           log=lambda *_: None)


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    config = _small(learning_rate=1e30, schedule="constant", epochs=2, variants=("fp",))
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+ of 8 for model fp/seed0"):
        train_and_evaluate(config, tmp_path, log=lambda *_: None)


def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([sys.executable, str(HELPERS / "killable_run.py"), str(reference)],
                   check=True, env=_env(), capture_output=True, timeout=600)
    proc = subprocess.Popen([sys.executable, str(HELPERS / "killable_run.py"), str(killed)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (latest_checkpoint(killed) or 0) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= (latest_checkpoint(killed) or 0) < 5, "the run was not killed mid-way"
    subprocess.run([sys.executable, str(HELPERS / "killable_run.py"), str(killed), "--resume"],
                   check=True, env=_env(), capture_output=True, timeout=600)
    ref, got = read(reference), read(killed)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4, 5]
    for a, b in zip(ref, got):
        for ma, mb in zip(a["models"], b["models"]):
            for key in ("train_loss", "train_acc", "test_acc", "test_loss"):
                assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7), (a["epoch"], key)


def test_interrupted_save_leaves_the_previous_checkpoint_usable(tmp_path):
    train_and_evaluate(_small(epochs=1), tmp_path, log=lambda *_: None)
    # what a kill during orbax's save of epoch 2 leaves behind: an uncommitted temporary folder
    partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
    (partial / "default").mkdir(parents=True)
    (partial / "default" / "garbage").write_bytes(b"\x00" * 100)
    assert latest_checkpoint(tmp_path) == 1
    results = train_and_evaluate(_small(epochs=2), tmp_path, resume=True, log=lambda *_: None)
    assert results["epochs"] == 2 and latest_checkpoint(tmp_path) == 2


def test_eight_device_data_parallel_matches_one_device():
    out = subprocess.run([sys.executable, str(HELPERS / "data_parallel.py")], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert "DATA_PARALLEL_OK" in out.stdout, out.stdout + out.stderr[-3000:]


def test_streaming_path_trains(tmp_path):
    results = train_and_evaluate(_small(stream=True, eval_batch_size=40), tmp_path,
                                 log=lambda *_: None)
    assert results["variants"]["fp"]["mean"] > 0.3


def test_distillation_and_per_channel_variants_train(tmp_path):
    config = _small(variants=("fp", "tern_pc"), distill_weight=1.0, epochs=2)
    results = train_and_evaluate(config, tmp_path, log=lambda *_: None)
    assert np.isfinite(results["variants"]["tern_pc"]["mean"])
    assert results["variants"]["tern_pc"]["zero_fraction"] > 0


def test_cifar_folder_run_trains_evaluates_checkpoints_resumes_and_exports(tmp_path, capsys):
    from tern_jax.data.cifar10 import write_cifar_batches

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 120)
    images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = (labels[:, None, None] * 25).astype(np.uint8)  # a learnable signal
    write_cifar_batches(tmp_path / "cifar-10-batches-py", images, labels, per_batch=16)
    workdir = tmp_path / "run"
    # the documented default recipe: fp first, then ternary fine-tuning from it
    common = ["--config", str(REPO / "experiments" / "configs" / "cifar10_resnet20.py"),
              "--workdir", str(workdir), "--set", f"data_dir={tmp_path}", "--set", "batch_size=16",
              "--set", "seeds=0", "--set", "progress=false", "--set", "checkpoint_every=1",
              "--set", "eval_batch_size=20", "--set", "model_axis=vmap", "--set", "epochs=1"]
    assert cli.main(["train", *common, "--set", "finetune_epochs=1"]) == 0
    assert latest_checkpoint(workdir / "pretrain") == 1
    assert latest_checkpoint(workdir / "finetune") == 1
    assert cli.main(["train", *common, "--set", "finetune_epochs=2", "--resume"]) == 0
    assert [r["epoch"] for r in read(workdir / "pretrain")] == [1]
    assert [r["epoch"] for r in read(workdir / "finetune")] == [1, 2]
    assert json.loads((workdir / "results.json").read_text())["stages"] == {
        "pretrain": 1, "finetune": 2}
    # stage 2 started from the fp model of epoch 1: lengthening stage 1 now is refused
    assert cli.main(["train", *common[:-2], "--set", "epochs=2", "--set", "finetune_epochs=2",
                     "--resume"]) == 2
    assert "already fine-tuned" in capsys.readouterr().err
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    assert cli.main(["export", "--workdir", str(workdir), "--model", "tern/seed0",
                     "--out", str(tmp_path / "packed")]) == 0
    assert cli.main(["plot", str(workdir), "--out", str(tmp_path / "curves.png")]) == 0
    out = capsys.readouterr().out
    assert "tern/seed0" in out and "exported" in out
    assert (tmp_path / "curves.png").stat().st_size > 1000
    import tern_jax

    packed = tern_jax.load_ternary(tmp_path / "packed")
    assert packed["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 16)


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


def test_every_experiment_config_loads():
    configs = sorted((REPO / "experiments" / "configs").glob("*.py"))
    assert len(configs) >= 8
    for path in configs:
        config = load_config(str(path))
        assert isinstance(config, Config) and config.name


def test_cli_reports_bad_config_path_clearly(capsys):
    assert cli.main(["train", "--config", "nope.py", "--workdir", "/tmp/x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_threshold_warmup_ramps_the_ternary_forward_and_leaves_fp_alone():
    from tern_jax.train.trainer import Trainer, load_data

    def first_losses(step, **changes):
        config = _small(seeds=(0,), **changes)
        trainer = Trainer(config, load_data(config))
        trainer.put_data()
        idx, keys = trainer._epoch_plan(0)
        _, (loss, _) = trainer._step_at(trainer.init_state(), trainer.train_images,
                                        trainer.train_labels, idx[0], keys[0], np.int32(step))
        return np.asarray(loss), trainer.steps_per_epoch

    plain, steps_per_epoch = first_losses(0)
    start = first_losses(0, threshold_warmup=1.0)[0]          # scale 0: Δ = 0
    done = first_losses(steps_per_epoch, threshold_warmup=1.0)[0]  # scale 1: the plain Δ
    assert start[0] == plain[0]  # fp: untouched by the warm-up
    assert start[1] != plain[1]  # ternary: a different forward while warming up
    np.testing.assert_allclose(done, plain, rtol=1e-6)
    with pytest.raises(ValueError, match="threshold_warmup_start in \\[0, 1\\]"):
        _small(threshold_warmup=2.0, threshold_warmup_start=1.5)


def test_two_stage_recipe_fine_tunes_ternary_from_the_fp_model(tmp_path, capsys):
    from tern_jax.train import restore_run
    from tern_jax.train.metrics import plot_runs

    config = _small(epochs=2, finetune_epochs=1, finetune_learning_rate=0.01)
    results = train_and_evaluate(config, tmp_path, log=lambda *_: None)
    assert results["stages"] == {"pretrain": 2, "finetune": 1} and results["epochs"] == 3
    pre, fine = read(tmp_path / "pretrain"), read(tmp_path / "finetune")
    assert [m["name"] for m in pre[0]["models"]] == ["fp/seed0"]
    assert [m["name"] for m in fine[0]["models"]] == ["tern/seed0"]
    assert results["variants"]["fp"]["test_acc"] == [pre[-1]["models"][0]["test_acc"]]
    assert results["variants"]["tern"]["test_acc"] == [fine[-1]["models"][0]["test_acc"]]
    # the ternary model starts from the trained fp model, not from a fresh init
    assert fine[0]["models"][0]["train_loss"] < pre[0]["models"][0]["train_loss"]
    assert fine[0]["lr"] < 0.01  # its own cosine schedule, not stage 1's lr 0.05
    # resuming a finished run trains nothing and gives the same results
    again = train_and_evaluate(config, tmp_path, resume=True, log=lambda *_: None)
    assert again["variants"] == results["variants"]
    assert len(read(tmp_path / "finetune")) == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train_and_evaluate(config, tmp_path, log=lambda *_: None)
    _, trainer, _ = restore_run(tmp_path)  # the ternary stage, for eval and export
    assert trainer.names == ["tern/seed0"]
    assert plot_runs([tmp_path], tmp_path / "curves.png").stat().st_size > 1000
    import importlib.util

    spec = importlib.util.spec_from_file_location("collect", REPO / "experiments" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    collect.main([str(tmp_path), "--out", str(tmp_path / "collected")])
    kept = tmp_path / "collected" / tmp_path.name
    assert (kept / "finetune" / "metrics.jsonl").exists() and (kept / "results.json").exists()
    assert not list(kept.rglob("checkpoints"))
    table = (tmp_path / "collected" / "table.md").read_text()
    assert "| fp | 2 |" in table and "| tern | 2+1 |" in table
    with pytest.raises(ValueError, match="needs a ternary variant"):
        _small(variants=("fp",), finetune_epochs=2)
    with pytest.raises(ValueError, match="finetune_schedule"):
        _small(finetune_epochs=2, finetune_schedule="multistep")


def test_scanned_chunks_match_single_steps_with_threshold_warmup(tmp_path):
    """The GPU/TPU path (steps inside lax.scan, model axis vmapped) against the CPU path."""
    base = _small(epochs=1, threshold_warmup=1.0, checkpoint_every=0)
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
