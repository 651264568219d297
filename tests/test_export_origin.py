"""Exports say what they hold, and a language model's figures are bits per byte.

One small language-model run (fp and tern, one seed) serves every test: an export records
its model, variant, seed and rules; ``sample`` and ``eval`` refuse the export of another
model; weights of another architecture are refused by tern_jax, naming the parameter.
"""

import json
import shutil

import numpy as np
import pytest

import tern_jax
from tern_jax.checkpoint import CheckpointError, read_origin
from tern_jax.cli import main
from tern_jax.presets import TRANSFORMER_RULES
from tern_jax.train import Config, restore_run, run
from tern_jax.train.families import family_of

TEXT = b"".join(b"def g%d(y):\n    return y + %d\n\n" % (i, i) for i in range(200))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    (root / "code.py").write_bytes(TEXT)
    config = Config(
        name="lm_exports", seeds=(0,),
        model={"name": "transformer_tiny", "variants": ("fp", "tern")},
        data={"dataset": "text", "text_path": str(root / "code.py"), "steps_per_epoch": 4,
              "batch_size": 8, "seq_len": 16, "augment": False, "test_subset": 16,
              "eval_batch_size": 8},
        optimizer={"name": "adam", "learning_rate": 3e-3, "weight_decay": 0.0},
        schedule={"epochs": 1, "name": "constant"}, checkpointing={"every": 1},
        progress=False)
    results = run(config, root / "run", log=lambda *a: None)
    for model in ("fp/seed0", "tern/seed0"):
        out = root / model.replace("/", "_")
        assert main(["export", "--workdir", str(root / "run"), "--model", model,
                     "--out", str(out)]) == 0
    return root, results


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_an_export_records_the_model_variant_seed_and_rules(lm_run):
    root, _ = lm_run
    origin = read_origin(root / "tern_seed0")
    assert {k: origin[k] for k in ("model", "variant", "seed", "run", "epoch")} == {
        "model": "transformer_tiny", "variant": "tern", "seed": 0, "run": "lm_exports",
        "epoch": 1}
    rules = family_of("transformer_tiny").rules("tern")
    assert rules == TRANSFORMER_RULES["tern"]
    assert [r["pattern"] for r in origin["rules"]] == ["params/" + r.pattern for r in rules]
    assert [r["method"] for r in origin["rules"]] == [r.method for r in rules]
    assert read_origin(root / "fp_seed0")["variant"] == "fp"


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_an_export_without_an_origin_is_refused_naming_what_it_lacks(lm_run, tmp_path):
    """A packed file whose metadata lost its origin (save_ternary always writes one): nothing
    could be checked against it, so neither its origin nor its weights are read."""
    root, _ = lm_run
    old = tmp_path / "old"
    shutil.copytree(root / "tern_seed0", old)
    meta_file = old / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["origin"]
    meta_file.write_text(json.dumps(meta))
    for read in (read_origin, tern_jax.load_ternary):
        with pytest.raises(CheckpointError, match=r"metadata records no 'origin', which "
                                                  r"save_ternary always writes"):
            read(old)
    assert tern_jax.load_ternary(root / "tern_seed0")["params"]["head"]["kernel"].shape == (
        32, 256)


@pytest.mark.slow  # trains the module's language model (lm_run)
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_refuse_the_export_of_another_variant_naming_both(lm_run, capsys,
                                                                          command):
    root, _ = lm_run
    status = main([command, "--workdir", str(root / "run"), "--model", "tern/seed0",
                   "--packed", str(root / "fp_seed0")])
    err = capsys.readouterr().err
    assert status == 2
    assert "holds fp/seed0 of transformer_tiny, not tern/seed0 of transformer_tiny" in err


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_eval_of_an_export_gives_the_figures_of_its_model(lm_run, capsys):
    root, results = lm_run
    workdir = str(root / "run")
    assert main(["eval", "--workdir", workdir]) == 0
    whole = capsys.readouterr().out
    assert main(["eval", "--workdir", workdir, "--model", "tern/seed0",
                 "--packed", str(root / "tern_seed0")]) == 0
    packed = capsys.readouterr().out
    row = next(line for line in whole.splitlines() if "tern/seed0" in line)
    assert row in packed.splitlines() and "fp/seed0" not in packed
    bits = results["variants"]["tern"]["bits_per_byte"]["mean"]
    assert f"bits/byte {bits:.4f}" in row


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_eval_refuses_weights_of_another_architecture_naming_the_parameter(lm_run, capsys,
                                                                          tmp_path):
    """An export of the same model name, variant and seed at another width (as another
    ``model.kwargs`` gives): the origin agrees, the shapes do not."""
    from flax import nnx

    from tern_jax.models.transformer import Transformer, transformer_config

    root, _ = lm_run
    wide = Transformer(transformer_config("transformer_tiny", d_model=64), rngs=nnx.Rngs(0))
    params = {"params": nnx.to_pure_dict(nnx.state(wide, nnx.Param))}
    origin = {"model": "transformer_tiny", "variant": "tern", "seed": 0}
    tern_jax.save_ternary(tmp_path / "wide", params, origin=origin)
    argv = ["eval", "--workdir", str(root / "run"), "--model", "tern/seed0", "--packed"]
    assert main(argv + [str(tmp_path / "wide")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "the packed checkpoint does not fit the model: parameter" in err
    assert "has shape (64" in err and "the model expects (32" in err
    # without the model, variant and seed of an export nothing can be compared: refused first
    tern_jax.save_ternary(tmp_path / "bare", params)
    assert main(argv + [str(tmp_path / "bare")]) == 2
    assert "does not record its model, variant and seed (it was not written by tern-jax " \
           "export)" in capsys.readouterr().err


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_a_training_checkpoint_of_another_architecture_names_the_parameter(lm_run, tmp_path):
    root, _ = lm_run
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["kwargs"] = {"d_model": 64}  # the checkpoint holds d_model 32
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not fit the model: parameter '.*' has shape "
                                         r"\(2, 32.*the model expects \(2, 64"):
        restore_run(copy)
    config["model"] = {**config["model"], "name": "transformer_small", "kwargs": {}}
    (copy / "config.json").write_text(json.dumps(config))  # another named size: the same
    with pytest.raises(ValueError, match=r"does not fit the model: parameter '.*' has shape "
                                         r"\(2, 32.*the model expects \(2, 64"):
        restore_run(copy)


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_a_language_model_reports_bits_per_byte(lm_run, capsys):
    root, results = lm_run
    last = [json.loads(line) for line in (root / "run" / "metrics.jsonl").open()][-1]
    saved = json.loads((root / "run" / "results.json").read_text())
    assert saved["variants"] == results["variants"]
    for m in last["models"]:
        bits = saved["variants"][m["variant"]]["bits_per_byte"]
        assert bits["per_seed"] == [m["test_loss"]] and bits["mean"] == m["test_loss"]
    from tern_jax.train.metrics import results_table

    table = results_table(saved)
    assert "bits per byte" in table.splitlines()[0]
    assert f"{saved['variants']['fp']['bits_per_byte']['mean']:9.4f}" in table


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_the_files_of_a_run_share_their_permissions(lm_run):
    root, _ = lm_run
    modes = {name: (root / "run" / name).stat().st_mode & 0o777
             for name in ("config.json", "metrics.jsonl", "results.json")}
    assert len(set(modes.values())) == 1, modes


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_exporting_a_full_precision_model_prints_no_infinite_ratio(lm_run, capsys, tmp_path):
    root, _ = lm_run
    assert main(["export", "--workdir", str(root / "run"), "--model", "fp/seed0",
                 "--out", str(tmp_path / "fp")]) == 0
    out = capsys.readouterr().out
    assert "inf" not in out and "every weight in full precision" in out
    assert "exported fp/seed0 (transformer_tiny)" in out


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_sample_refuses_the_export_of_another_model(lm_run, tmp_path, capsys):
    """The model name is compared too: a packed file of another model, same variant."""
    root, _ = lm_run
    other = tmp_path / "other"
    shutil.copytree(root / "tern_seed0", other)
    meta_file = other / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["origin"]["model"] = "transformer_small"
    meta_file.write_text(json.dumps(meta))
    assert main(["sample", "--workdir", str(root / "run"), "--model", "tern/seed0",
                 "--packed", str(other)]) == 2
    assert "tern/seed0 of transformer_small, not tern/seed0 of transformer_tiny" in (
        capsys.readouterr().err)


def test_save_ternary_refuses_an_origin_that_is_not_json(tmp_path):
    params = {"kernel": np.ones((4, 4), np.float32)}
    with pytest.raises(TypeError, match="origin must hold JSON values"):
        tern_jax.save_ternary(tmp_path / "x", params, origin={"seed": object()})
    with pytest.raises(TypeError, match="origin must be a dict with str keys"):
        tern_jax.save_ternary(tmp_path / "x", params, origin=["tern"])
    assert not (tmp_path / "x").exists()


def _untrained_run(config, path):
    """A run folder of ``config`` whose checkpoint (epoch 1) holds its freshly initialized
    models: what ``stages.init_from`` reads, without compiling a training step."""
    from tern_jax.train import ModelStack, resolve
    from tern_jax.train.run_folder import RunFolder

    folder = RunFolder(path)
    folder.write_config(config)
    resolved = resolve(config)
    stack = ModelStack.from_config(config, resolved.task(config), resolved.family, 1)
    manager = folder.manager(config.checkpointing.keep)
    try:
        folder.save(manager, 1, stack.init())
    finally:
        manager.close()


def test_init_from_a_run_of_another_architecture_names_the_parameter(tmp_path):
    """A digits small_cnn (8x8x1 inputs) started into a CIFAR-10 small_cnn (32x32x3), and
    into a narrower one (model.kwargs): the model name matches, the shapes do not."""
    from helpers.cifar import write_cifar_batches
    from helpers.runs import small_config

    from tern_jax.train import train_and_evaluate

    fp_only = {"schedule.epochs": 1, "model.variants": ("fp",)}
    _untrained_run(small_config(fp_only), tmp_path / "digits")
    rng = np.random.default_rng(0)
    write_cifar_batches(tmp_path / "cifar-10-batches-py",
                        rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, 48), per_batch=7)
    start = {**fp_only, "stages.init_from": str(tmp_path / "digits")}
    for name, changes in (("cifar", {"data.dataset": "cifar10", "data.test_subset": None,
                                     "data.data_dir": str(tmp_path)}),
                          ("narrow", {"model.kwargs": {"width": 16}})):
        with pytest.raises(ValueError, match=r"init_from run .*digits does not fit the model: "
                                             r"parameter '.*' has shape"):
            train_and_evaluate(small_config({**start, **changes}), tmp_path / name,
                               log=lambda *a: None)


@pytest.mark.slow  # trains the module's language model (lm_run)
def test_the_hf_export_refuses_a_gelu_model_before_writing(lm_run, capsys, tmp_path):
    """transformers' llama has a gated MLP: named before any file (or import of torch)."""
    root, _ = lm_run
    out = tmp_path / "hf"
    assert main(["export", "--workdir", str(root / "run"), "--model", "tern/seed0",
                 "--format", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gated MLP" in err and "mlp='gelu'" in err and not out.exists()
