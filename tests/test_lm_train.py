"""The language model through the project's trainer: config, task, run, resume, sample, export.

Two module-scoped runs serve several tests each (training is what costs here): ``trained`` (fp
and tern, one seed, two epochs) and ``study`` (three arms of the recipe study, one of them two
stages, collected once by ``experiments/lm_recipes_collect.py``).
"""

import importlib.util
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.runs import lm_config
from jax.sharding import Mesh

from tern_jax.cli import main
from tern_jax.data.inputs import DeviceText
from tern_jax.data.text import eval_windows, load_text
from tern_jax.models.transformer import TransformerConfig
from tern_jax.train import Config, ModelStack, override, resolve, run
from tern_jax.train.language_model import LanguageModel
from tern_jax.train.metrics import read

REPO = Path(__file__).parent.parent
TEXT = b"".join(b"def f%d(x):\n    return x * %d\n\n" % (i, i) for i in range(200))
QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "code.py"
    path.write_bytes(TEXT)
    return path


def _config(text_file, changes: dict | None = None) -> Config:
    return lm_config(text_file, changes)


@pytest.fixture(scope="module")
def trained(text_file, tmp_path_factory):
    """fp and tern, seed 0, two epochs of four steps, a checkpoint every epoch."""
    workdir = tmp_path_factory.mktemp("trained") / "full"
    results = run(_config(text_file), workdir, **QUIET)
    return workdir, results, read(workdir)


def test_language_model_configs_are_checked_before_any_text_is_read(text_file):
    with pytest.raises(ValueError, match=r"data.seq_len=64 is above the model's max_len=32 "
                                         r"\(transformer_tiny\)"):
        _config(text_file, {"data.seq_len": 64})
    with pytest.raises(ValueError, match="model 'transformer_tiny' .language model. reads "
                                         "tokens, but dataset 'cifar10' holds images"):
        _config(text_file, {"data.dataset": "cifar10", "data.text_path": None})
    with pytest.raises(ValueError, match="data.text_path=.* is not read by this run .language "
                                         "model, model 'transformer_tiny' on dataset "
                                         "'tiny_shakespeare'.; it is read by dataset text"):
        _config(text_file, {"data.dataset": "tiny_shakespeare"})
    with pytest.raises(ValueError, match="unknown variant 'tern_t4'; choose from fp, tern, "):
        _config(text_file, {"model.variants": ("fp", "tern_t4")})
    with pytest.raises(ValueError, match="unknown model 'transformer_huge'"):
        _config(text_file, {"model.name": "transformer_huge", "model.variants": ("fp",)})
    with pytest.raises(ValueError, match=r"unknown TransformerConfig fields \['width'\]"):
        _config(text_file, {"model.kwargs": {"width": 64}})


def test_fields_an_image_task_reads_are_refused_on_a_language_model(text_file):
    for field, value in (("optimizer.label_smoothing", 0.1), ("data.stream", True),
                         ("data.train_subset", 100)):
        with pytest.raises(ValueError, match=f"{field}={value!r} is not read by this run "
                                             r"\(language model.*image classification runs"):
            _config(text_file, {field: value})
    assert _config(text_file, {"data.augment": False}).data.augment is False  # "off": accepted


def test_a_text_model_on_images_and_an_image_model_on_text_name_both():
    with pytest.raises(ValueError, match="model 'resnet20' .image classification. reads images, "
                                         "but dataset 'text' holds tokens"):
        Config(model={"name": "resnet20"}, data={"dataset": "text"})
    with pytest.raises(ValueError, match="model 'transformer_tiny' .language model. reads "
                                         "tokens, but dataset 'digits' holds images"):
        Config(model={"name": "transformer_tiny", "variants": ("fp",)},
               data={"dataset": "digits"})


def test_text_inputs_hold_the_evaluation_windows_of_the_validation_split(text_file):
    config = _config(text_file, {"seeds": (0, 1)})
    resolved = resolve(config)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    inputs = resolved.dataset.inputs(config, resolved.task(config), mesh)
    assert isinstance(inputs, DeviceText) and not inputs.streamed
    for image_field in ("image_shape", "mean", "std", "num_classes"):
        assert not hasattr(inputs, image_field), image_field
    text = load_text(text_path=text_file)
    assert bytes(text.validation) == TEXT[int(len(TEXT) * 0.9):]  # the last 10%, by position
    windows = eval_windows(text.validation, 16, 16)  # test_subset=16 of seq_len=16 (+1)
    assert inputs.num_test == len(windows) == 16 and inputs.steps_per_epoch == 4
    tokens, masks = zip(*((np.asarray(b["tokens"]), np.asarray(m))
                          for b, m in inputs.test_batches()))
    assert [len(m) for m in masks] == [8, 8] and np.concatenate(masks).all()  # 2 full batches
    np.testing.assert_array_equal(np.concatenate(tokens), windows)
    # the training split in device memory, windows drawn from it per seed
    np.testing.assert_array_equal(np.asarray(inputs.arrays["tokens"]), text.train)
    idx, keys = inputs.epoch_plan(0)
    batch = np.asarray(inputs.batch_at(inputs.arrays, idx[0], keys[0])["tokens"])
    assert batch.shape == (4, 8, 17)  # fp/seed0, fp/seed1, tern/seed0, tern/seed1
    np.testing.assert_array_equal(batch[0], batch[2])  # one seed, one batch
    assert not np.array_equal(batch[0], batch[1])
    for window, start in zip(batch[1], np.asarray(idx[0])[1]):
        np.testing.assert_array_equal(window, text.train[start: start + 17])


def test_the_task_is_built_from_the_declared_specs_without_text(text_file):
    config = _config(text_file, {"model.kwargs": {"d_model": 48}})
    task = resolve(config).task(config)
    assert isinstance(task, LanguageModel) and task.seq_len == 16
    assert (task.config.max_len, task.config.d_model, task.config.vocab_size) == (32, 48, 256)


def test_the_task_scores_bits_per_byte_and_ignores_padded_windows():
    task = LanguageModel(TransformerConfig(max_len=8, d_model=8, num_heads=2, num_layers=1), 8)
    tokens = jnp.asarray(np.arange(18).reshape(2, 9) % 256, jnp.int32)
    uniform = jnp.zeros((2, 8, 256))
    batch = {"tokens": tokens}
    assert float(task.loss(uniform, batch)) == pytest.approx(8.0, rel=1e-6)  # log2(256) bits
    sums = task.eval_sums(uniform, batch, jnp.asarray([1.0, 0.0]))
    assert float(sums["count"]) == 8 and float(sums["loss"]) == pytest.approx(64.0, rel=1e-6)


def test_the_transformer_presets_reach_the_trainer(text_file):
    config = _config(text_file, {"model.variants": ("fp", "tern_pc", "tern_fl")})
    resolved = resolve(config)
    stack = ModelStack.from_config(config, resolved.task(config), resolved.family, 4)
    fp, tern_pc, tern_fl = stack.rule_sets
    assert all(r.method is None for r in fp)
    assert any(r.axis == (1, 2) for r in tern_pc)  # rank-3 attention kernels per output
    assert tern_fl[0].method is None  # embeddings and head in full precision


@pytest.mark.slow  # trains language models
def test_a_language_model_trains_and_resumes_to_the_same_figures(text_file, trained,
                                                                   tmp_path):
    workdir, results, records = trained
    first, last = records[0]["models"], records[-1]["models"]
    for before, after in zip(first, last):
        assert 0 < after["test_loss"] < before["test_loss"] < math.log2(256) + 0.5
    assert last[1]["zero_fraction"] > 0 and last[0]["zero_fraction"] == 0
    assert set(results["variants"]) == {"fp", "tern"} and results["loss_name"] == "bits/byte"
    assert {r["loss_name"] for r in records} == {"bits/byte"}

    # an interrupted run resumed gives the uninterrupted run's metrics
    run(_config(text_file, {"schedule.epochs": 1}), tmp_path / "cut", **QUIET)
    run(_config(text_file), tmp_path / "cut", resume=True, **QUIET)
    resumed = read(tmp_path / "cut")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(resumed[-1]["models"], last):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


@pytest.mark.slow  # trains language models
def test_a_language_model_samples_and_exports(trained, tmp_path, capsys):
    workdir = str(trained[0])
    argv = ["sample", "--workdir", workdir, "--model", "tern/seed0", "--prompt", "def ",
            "--steps", "24", "--seed", "3"]
    assert main(argv) == 0
    first_text = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first_text and first_text.startswith("def ")

    packed = str(tmp_path / "tern_packed")
    assert main(["export", "--workdir", workdir, "--model", "tern/seed0", "--out", packed]) == 0
    capsys.readouterr()
    greedy = argv[:-2] + ["--temperature", "0"]
    assert main(greedy) == 0
    latent = capsys.readouterr().out
    assert main(greedy + ["--packed", packed]) == 0
    assert capsys.readouterr().out == latent
    assert main(argv + ["--temperature", "2", "--top_k", "1"]) == 0  # top-1: greedy at any heat
    assert capsys.readouterr().out == latent

    gguf_out = tmp_path / "tern.gguf"  # a GELU transformer has no llama.cpp form
    assert main(["export", "--workdir", workdir, "--model", "tern/seed0", "--format", "gguf",
                 "--out", str(gguf_out)]) == 2
    assert "gated MLP; this model has mlp='gelu'" in capsys.readouterr().err
    assert not gguf_out.exists()


def test_sampling_an_image_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(Config().to_json())
    status = main(["sample", "--workdir", str(tmp_path), "--model", "tern/seed0"])
    assert status == 2
    assert "'small_cnn', a model of image classification, which does not sample text" in (
        capsys.readouterr().err)


@pytest.mark.slow  # trains language models
def test_a_language_model_distils_per_token_and_only_the_student_moves(text_file, trained,
                                                                       tmp_path):
    from tern_jax.train.step import _kl

    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 3, 5, 7))
    per_token = [np.sum(jax.nn.softmax(teacher[b, i] / 2)
                        * (jax.nn.log_softmax(teacher[b, i] / 2)
                           - jax.nn.log_softmax(student[b, i] / 2)))
                 for b in range(3) for i in range(5)]
    assert float(_kl(teacher, student, 2.0)) == pytest.approx(np.mean(per_token), rel=1e-5)

    # the first epoch of `trained` (a constant rate: a one-epoch run's) against it distilled
    changes = {"schedule.epochs": 1, "checkpointing.every": 0, "stages.distill_weight": 1.0}
    run(_config(text_file, changes), tmp_path / "distilled", **QUIET)
    a, b = trained[2][0]["models"], read(tmp_path / "distilled")[-1]["models"]
    assert a[0]["train_loss"] == b[0]["train_loss"] and a[0]["test_loss"] == b[0]["test_loss"]
    assert a[1]["train_loss"] != b[1]["train_loss"] and a[1]["test_loss"] != b[1]["test_loss"]


def _collector():
    spec = importlib.util.spec_from_file_location(
        "lm_recipes_collect", REPO / "experiments" / "lm_recipes_collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    return collect


@pytest.fixture(scope="module")
def study(text_file, tmp_path_factory):
    """Three arms of two seeds, collected: fp; ``half``, two stages (fp one epoch, then tern
    fine-tuned one epoch); and a worse fp arm, ``fp_cold``: the fp arm's recipe on as many
    random bytes, nothing to learn (the same compiled program: no compile of its own). Their
    metrics as collected are kept, since the two-stage test resumes ``half`` afterwards."""
    root = tmp_path_factory.mktemp("study")
    base = {"seeds": (0, 1), "checkpointing.every": 0}
    fp_only = {**base, "model.variants": ("fp",)}
    run(_config(text_file, {**fp_only, "name": "lm_recipe_fp"}), root / "fp", **QUIET)
    half = _config(text_file, {
        **base, "name": "lm_recipe_half", "schedule.epochs": 1, "stages.finetune_epochs": 1,
        "stages.finetune_learning_rate": 1e-3, "stages.finetune_schedule": "constant"})
    results = run(half, root / "half", **QUIET)
    noise = root / "noise.txt"  # no NUL byte: text, as far as the loader can tell
    noise.write_bytes(np.random.default_rng(0).integers(1, 256, len(TEXT), np.uint8).tobytes())
    run(_config(noise, {**fp_only, "name": "lm_recipe_fp_cold"}), root / "fp_cold", **QUIET)
    metrics = {arm: read(root / arm) for arm in ("fp", "fp_cold")}
    metrics.update({f"half/{s}": read(root / "half" / s) for s in ("pretrain", "finetune")})
    out = root / "collected"
    _collector().main([str(root), "--out", str(out), "--width", "32"])
    return {"root": root, "out": out, "half": half, "half_results": results,
            "metrics": metrics}


@pytest.mark.slow  # trains language models
def test_the_recipe_study_collector_compares_each_arm_with_fp_seed_by_seed(study):
    out, metrics = study["out"], study["metrics"]
    rows = {(r["arm"], r["variant"]): r for r in json.loads((out / "summary.json").read_text())}
    assert set(rows) == {("fp", "fp"), ("fp_cold", "fp"), ("half", "fp"), ("half", "tern")}
    fp = [m["test_loss"] for m in metrics["fp"][-1]["models"]]
    tern = [m["test_loss"] for m in metrics["half/finetune"][-1]["models"]]
    assert rows["fp", "fp"]["bits_per_byte"] == pytest.approx(fp)
    assert rows["fp", "fp"]["width"] == 32 and rows["fp", "fp"]["seeds"] == [0, 1]
    assert rows["fp", "fp"]["reference"] and not rows["fp_cold", "fp"]["reference"]
    cold = [m["test_loss"] for m in metrics["fp_cold"][-1]["models"]]  # the worse fp arm
    assert all(c > f for c, f in zip(cold, fp))
    assert rows["fp_cold", "fp"]["gap"] == pytest.approx([c - f for c, f in zip(cold, fp)])
    assert rows["half", "tern"]["steps"] == 8  # 1 fp epoch, then 1 ternary epoch, of 4 steps
    assert rows["half", "tern"]["gap"] == pytest.approx([t - f for t, f in zip(tern, fp)])
    assert rows["half", "fp"]["steps"] == 4 and rows["half", "fp"]["gap"] is None  # stage 1
    assert rows["half", "tern"]["stored_bytes"] < rows["fp", "fp"]["stored_bytes"] / 4
    assert rows["fp", "fp"]["stored_bytes"] == 2 * rows["fp", "fp"]["params"]  # 16 bits
    table = (out / "table.md").read_text()
    gaps = [t - f for t, f in zip(tern, fp)]
    assert "| half | tern | 32 |" in table and f"{np.mean(gaps):.3f} ± " in table
    assert "| fp (**ref**) | fp | 32 |" in table
    assert (out / "half" / "finetune" / "metrics.jsonl").exists()
    assert not list(out.rglob("checkpoints")) and (out / "curves.png").stat().st_size > 0


def test_the_recipe_study_collector_reads_the_width_from_the_models_keyword_arguments():
    collect = _collector()
    llama = {"name": "transformer_llama", "kwargs": {}}
    assert collect._width({"model": llama}) == 256
    assert collect._width({"model": {**llama, "kwargs": {"d_model": 64}}}) == 64
    assert collect._width({"model": {"name": "transformer_tiny", "kwargs": {}}}) == 32


@pytest.mark.slow  # trains language models
def test_a_two_stage_language_model_fine_tunes_ternary_from_the_fp_model_and_resumes(study):
    from tern_jax.train import restore_run, stage_configs
    from tern_jax.train.warm_start import from_run

    config, workdir, metrics = study["half"], study["root"] / "half", study["metrics"]
    assert study["half_results"]["stages"] == {"pretrain": 1, "finetune": 1}
    pre, fine = metrics["half/pretrain"], metrics["half/finetune"]
    assert [m["name"] for m in fine[0]["models"]] == ["tern/seed0", "tern/seed1"]
    # stage 2's models start as the final fp model of their seed in stage 1, weight for weight
    finetune = stage_configs(config, workdir)[1]
    resolved = resolve(finetune)
    stack = ModelStack.from_config(finetune, resolved.task(finetune), resolved.family, 4)
    start = from_run(stack, finetune, finetune.stages.init_from)
    fp = restore_run(workdir / "pretrain").state.params
    jax.tree.map(np.testing.assert_array_equal, start.params, fp)
    for a, b in zip(fine[0]["models"], pre[0]["models"]):
        assert a["train_loss"] < b["train_loss"]

    # resumed with one more fine-tuning epoch: stage 1 is not trained again
    run(override(config, {"stages.finetune_epochs": 2}), workdir, resume=True, **QUIET)
    assert read(workdir / "pretrain") == pre
    assert [r["epoch"] for r in read(workdir / "finetune")] == [1, 2]
    assert read(workdir / "finetune")[0] == fine[0]


def test_the_default_lm_recipe_is_the_study_arms_it_was_chosen_from():
    from tern_jax.train import load_config
    from tern_jax.train.recipes import lm_best

    configs = REPO / "experiments" / "configs"
    best = load_config(str(configs / "lm_best.py"))
    assert best == lm_best() and best.model.variants == ("fp", "tern")
    assert not best.stages.finetune_epochs
    # field for field the study's ternary and fp arms at lr 2e-3, trained together, at the
    # study's width (d_model 128; lm_best keeps transformer_llama's own 256)
    for arm, variants in (("scratch_slow", ("tern",)), ("fp_slow", ("fp",))):
        study = load_config(str(configs / f"lm_recipe_{arm}.py"))
        assert study.model.kwargs == {"d_model": 128}
        assert override(best, {
            "name": study.name, "model.variants": variants, "model.kwargs": {"d_model": 128},
            "stages.finetune_learning_rate": study.stages.finetune_learning_rate,  # unused
        }) == study


def test_the_default_lm_recipe_takes_a_smaller_model_with_its_window():
    from tern_jax.train.recipes import lm_best

    config = lm_best("transformer_tiny", changes={"data.seq_len": 32})
    assert config.model.name == "transformer_tiny" and config.data.seq_len == 32
