"""The language model through the project's trainer: config, task, run, resume, sample, export."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from tern_jax.cli import main
from tern_jax.models.transformer import TransformerConfig
from tern_jax.train import Config, run
from tern_jax.train.families import task_for
from tern_jax.train.inputs import load_inputs
from tern_jax.train.language_model import LanguageModel
from tern_jax.train.stack import ModelStack
from tern_jax.train.task import DeviceResident

REPO = Path(__file__).parent.parent
TEXT = b"".join(b"def f%d(x):\n    return x * %d\n\n" % (i, i) for i in range(200))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "code.py"
    path.write_bytes(TEXT)
    return path


def _config(text_file, **changes):
    fields = dict(name="lm_test", dataset="text", text_path=str(text_file),
                  model="transformer_tiny", variants=("fp", "tern"), seeds=(0,), epochs=2,
                  steps_per_epoch=4, batch_size=8, seq_len=16, optimizer="adam",
                  learning_rate=3e-3, weight_decay=0.0, schedule="constant", augment=False,
                  test_subset=16, eval_batch_size=8, checkpoint_every=1, progress=False)
    fields.update(changes)
    return Config(**fields)


def test_language_model_configs_are_checked_before_any_text_is_read(text_file):
    with pytest.raises(ValueError, match="seq_len=64 is above the model's max_len=32"):
        _config(text_file, seq_len=64)
    with pytest.raises(ValueError, match="model 'transformer_tiny' .language model. reads "
                                         "tokens, but dataset 'cifar10' holds images"):
        _config(text_file, dataset="cifar10", text_path=None)
    with pytest.raises(ValueError, match="text_path=.* is not read by this run .language "
                                         "model, model 'transformer_tiny' on dataset "
                                         "'tiny_shakespeare'.; it is read by dataset text"):
        _config(text_file, dataset="tiny_shakespeare")
    with pytest.raises(ValueError, match="unknown variant 'tern_t4'; choose from fp, tern, "):
        _config(text_file, variants=("fp", "tern_t4"))
    with pytest.raises(ValueError, match="unknown model 'transformer_huge'"):
        _config(text_file, model="transformer_huge", variants=("fp",))


def test_fields_an_image_task_reads_are_refused_on_a_language_model(text_file):
    for field, value in (("label_smoothing", 0.1), ("stream", True), ("train_subset", 100)):
        with pytest.raises(ValueError, match=f"{field}={value!r} is not read by this run "
                                             r"\(language model.*image classification runs"):
            _config(text_file, **{field: value})
    _config(text_file, augment=False)  # "off" asks for nothing: accepted


def test_a_text_model_on_images_and_an_image_model_on_text_name_both(text_file):
    with pytest.raises(ValueError, match="model 'resnet20' .image classification. reads images, "
                                         "but dataset 'text' holds tokens"):
        Config(model="resnet20", dataset="text")
    with pytest.raises(ValueError, match="model 'transformer_tiny' .language model. reads "
                                         "tokens, but dataset 'digits' holds images"):
        Config(model="transformer_tiny", dataset="digits", variants=("fp",))


def test_text_inputs_are_device_resident_with_no_image_fields(text_file):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    inputs = load_inputs(_config(text_file), [0], mesh)
    assert isinstance(inputs, DeviceResident) and not inputs.streamed
    for image_field in ("image_shape", "mean", "std", "num_classes"):
        assert not hasattr(inputs, image_field), image_field
    assert inputs.num_test == 16 and inputs.steps_per_epoch == 4


def test_the_task_is_built_from_the_declared_specs_without_text(text_file):
    task = task_for(_config(text_file))
    assert isinstance(task, LanguageModel) and task.config.max_len == 32


def test_the_task_scores_bits_per_byte_and_ignores_padded_windows():
    task = LanguageModel(TransformerConfig(max_len=8, d_model=8, num_heads=2, num_layers=1))
    tokens = jnp.asarray(np.arange(18).reshape(2, 9) % 256, jnp.int32)
    uniform = jnp.zeros((2, 8, 256))
    batch = {"tokens": tokens}
    assert float(task.loss(uniform, batch)) == pytest.approx(8.0, rel=1e-6)  # log2(256) bits
    sums = task.eval_sums(uniform, batch, jnp.asarray([1.0, 0.0]))
    assert float(sums["count"]) == 8 and float(sums["loss"]) == pytest.approx(64.0, rel=1e-6)


def test_the_transformer_presets_reach_the_trainer(text_file):
    config = _config(text_file, variants=("fp", "tern_pc", "tern_fl"))
    stack = ModelStack(LanguageModel(TransformerConfig(max_len=32, d_model=32, num_heads=2,
                                                       num_layers=2)),
                       config.slots, None, model=config.model)
    tern_pc = stack.rule_sets[1]
    assert any(r.axis == (1, 2) for r in tern_pc)  # rank-3 attention kernels per output
    assert stack.rule_sets[2][0].method is None  # embeddings and head in full precision


def test_a_language_model_trains_resumes_samples_and_exports(text_file, tmp_path, capsys):
    results = run(_config(text_file), tmp_path / "full", log=lambda *a: None)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    first, last = records[0]["models"], records[-1]["models"]
    for before, after in zip(first, last):
        assert 0 < after["test_loss"] < before["test_loss"] < math.log2(256) + 0.5
    assert last[1]["zero_fraction"] > 0 and last[0]["zero_fraction"] == 0
    assert set(results["variants"]) == {"fp", "tern"}

    # an interrupted run resumed gives the uninterrupted run's metrics
    run(_config(text_file, epochs=1), tmp_path / "cut", log=lambda *a: None)
    run(_config(text_file), tmp_path / "cut", resume=True, log=lambda *a: None)
    resumed = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    for a, b in zip(resumed[-1]["models"], last):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)

    workdir = str(tmp_path / "full")
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
    (tmp_path / "config.json").write_text(
        json.dumps(dataclasses.asdict(Config()), default=list))
    status = main(["sample", "--workdir", str(tmp_path), "--model", "tern/seed0"])
    assert status == 2
    assert "'small_cnn', a model of image classification; sample needs" in capsys.readouterr().err


def test_a_two_stage_language_model_fine_tunes_ternary_from_the_fp_model_and_resumes(
        text_file, tmp_path):
    from tern_jax.train import restore_run, stage_configs
    from tern_jax.train.metrics import read
    from tern_jax.train.warm_start import from_run

    config = _config(text_file, finetune_epochs=1, finetune_learning_rate=1e-3,
                     finetune_schedule="constant")
    workdir = tmp_path / "two"
    results = run(config, workdir, log=lambda *a: None)
    assert results["stages"] == {"pretrain": 2, "finetune": 1}
    pre, fine = read(workdir / "pretrain"), read(workdir / "finetune")
    assert [m["name"] for m in fine[0]["models"]] == ["tern/seed0"]
    # stage 2's models start as the final fp model of stage 1, weight for weight
    finetune = stage_configs(config, workdir)[1]
    stack = ModelStack.from_config(finetune, task_for(finetune), 4)
    start = from_run(stack, finetune, finetune.init_from)
    fp = restore_run(workdir / "pretrain").state.params
    jax.tree.map(np.testing.assert_array_equal, start.params, fp)
    assert fine[0]["models"][0]["train_loss"] < pre[0]["models"][0]["train_loss"]

    # resumed with one more fine-tuning epoch: stage 1 is not trained again
    run(dataclasses.replace(config, finetune_epochs=2), workdir, resume=True,
        log=lambda *a: None)
    assert len(read(workdir / "pretrain")) == 2
    assert [r["epoch"] for r in read(workdir / "finetune")] == [1, 2]
    assert read(workdir / "finetune")[0] == fine[0]


def test_a_language_model_distils_per_token_and_only_the_student_moves(text_file, tmp_path):
    from tern_jax.train.metrics import read
    from tern_jax.train.step import _kl

    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 3, 5, 7))
    per_token = [np.sum(jax.nn.softmax(teacher[b, i] / 2)
                        * (jax.nn.log_softmax(teacher[b, i] / 2)
                           - jax.nn.log_softmax(student[b, i] / 2)))
                 for b in range(3) for i in range(5)]
    assert float(_kl(teacher, student, 2.0)) == pytest.approx(np.mean(per_token), rel=1e-5)

    base = _config(text_file, epochs=1, checkpoint_every=0)
    run(base, tmp_path / "plain", log=lambda *a: None)
    run(dataclasses.replace(base, distill_weight=1.0), tmp_path / "distilled",
        log=lambda *a: None)
    a, b = read(tmp_path / "plain")[-1]["models"], read(tmp_path / "distilled")[-1]["models"]
    assert a[0]["train_loss"] == b[0]["train_loss"] and a[0]["test_loss"] == b[0]["test_loss"]
    assert a[1]["train_loss"] != b[1]["train_loss"] and a[1]["test_loss"] != b[1]["test_loss"]


def test_the_recipe_study_collector_compares_each_arm_with_fp_seed_by_seed(text_file, tmp_path):
    import importlib.util

    from tern_jax.train.metrics import read

    root = tmp_path / "study"
    base = dict(seeds=(0, 1), checkpoint_every=0)
    run(_config(text_file, name="lm_recipe_fp", variants=("fp",), epochs=2, **base),
        root / "fp", log=lambda *a: None)
    run(_config(text_file, name="lm_recipe_half", epochs=1, finetune_epochs=1, **base),
        root / "half", log=lambda *a: None)
    run(_config(text_file, name="lm_recipe_fp_cold", variants=("fp",), epochs=2,
                learning_rate=1e-5, **base), root / "fp_cold", log=lambda *a: None)
    spec = importlib.util.spec_from_file_location(
        "lm_recipes_collect", REPO / "experiments" / "lm_recipes_collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    out = tmp_path / "collected"
    collect.main([str(root), "--out", str(out), "--width", "32"])

    rows = {(r["arm"], r["variant"]): r for r in json.loads((out / "summary.json").read_text())}
    fp = [m["test_loss"] for m in read(root / "fp")[-1]["models"]]
    tern = [m["test_loss"] for m in read(root / "half" / "finetune")[-1]["models"]]
    assert rows["fp", "fp"]["bits_per_byte"] == pytest.approx(fp)
    assert rows["fp", "fp"]["reference"] and not rows["fp_cold", "fp"]["reference"]
    cold = [m["test_loss"] for m in read(root / "fp_cold")[-1]["models"]]  # the worse fp arm
    assert rows["fp_cold", "fp"]["gap"] == pytest.approx([c - f for c, f in zip(cold, fp)])
    assert rows["half", "tern"]["steps"] == 8  # 1 fp epoch, then 1 ternary epoch, of 4 steps
    assert rows["half", "tern"]["gap"] == pytest.approx([t - f for t, f in zip(tern, fp)])
    assert rows["half", "fp"]["steps"] == 4 and rows["half", "fp"]["gap"] is None  # stage 1
    assert rows["half", "tern"]["stored_bytes"] < rows["fp", "fp"]["stored_bytes"] / 4
    table = (out / "table.md").read_text()
    gaps = [t - f for t, f in zip(tern, fp)]
    assert "| half | tern | 32 |" in table and f"{np.mean(gaps):.3f} ± " in table
    assert "| fp (**ref**) | fp | 32 |" in table
    assert (out / "half" / "finetune" / "metrics.jsonl").exists()
    assert not list(out.rglob("checkpoints")) and (out / "curves.png").stat().st_size > 0


def test_the_default_lm_recipe_is_the_study_arms_it_was_chosen_from():
    from tern_jax.train import load_config
    from tern_jax.train.recipes import lm_best

    configs = REPO / "experiments" / "configs"
    best = load_config(str(configs / "lm_best.py"))
    assert best == lm_best() and best.variants == ("fp", "tern") and not best.finetune_epochs
    # field for field the study's ternary and fp arms at lr 2e-3, trained together
    for arm, variants in (("scratch_slow", ("tern",)), ("fp_slow", ("fp",))):
        study = load_config(str(configs / f"lm_recipe_{arm}.py"))
        assert dataclasses.replace(best, name=study.name, variants=variants, model=study.model,
                                   finetune_learning_rate=study.finetune_learning_rate  # unused
                                   ) == study
    assert lm_best("transformer_tiny", seq_len=32).model == "transformer_tiny"
