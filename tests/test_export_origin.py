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
from tern_jax.checkpoint import read_origin
from tern_jax.cli import main
from tern_jax.train import Config, restore_run, run
from tern_jax.train.config import variant_rules

TEXT = b"".join(b"def g%d(y):\n    return y + %d\n\n" % (i, i) for i in range(200))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    (root / "code.py").write_bytes(TEXT)
    config = Config(name="lm_exports", dataset="text", text_path=str(root / "code.py"),
                    model="transformer_tiny", variants=("fp", "tern"), seeds=(0,), epochs=1,
                    steps_per_epoch=4, batch_size=8, seq_len=16, optimizer="adam",
                    learning_rate=3e-3, weight_decay=0.0, schedule="constant", augment=False,
                    test_subset=16, eval_batch_size=8, checkpoint_every=1, progress=False)
    results = run(config, root / "run", log=lambda *a: None)
    for model in ("fp/seed0", "tern/seed0"):
        out = root / model.replace("/", "_")
        assert main(["export", "--workdir", str(root / "run"), "--model", model,
                     "--out", str(out)]) == 0
    return root, results


def test_an_export_records_the_model_variant_seed_and_rules(lm_run):
    root, _ = lm_run
    origin = read_origin(root / "tern_seed0")
    assert {k: origin[k] for k in ("model", "variant", "seed", "run", "epoch")} == {
        "model": "transformer_tiny", "variant": "tern", "seed": 0, "run": "lm_exports",
        "epoch": 1}
    rules = variant_rules("tern", "transformer_tiny")
    assert [r["pattern"] for r in origin["rules"]] == ["params/" + r.pattern for r in rules]
    assert [r["method"] for r in origin["rules"]] == [r.method for r in rules]
    assert read_origin(root / "fp_seed0")["variant"] == "fp"


def test_an_export_without_an_origin_is_refused(lm_run, tmp_path):
    root, _ = lm_run
    old = tmp_path / "old"
    shutil.copytree(root / "tern_seed0", old)
    meta_file = old / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["origin"]
    meta_file.write_text(json.dumps(meta))
    for read in (read_origin, tern_jax.load_ternary):
        with pytest.raises(tern_jax.CheckpointError, match="records no 'origin'"):
            read(old)


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_refuse_an_export_that_names_no_model(lm_run, tmp_path, capsys,
                                                              command):
    """save_ternary without an origin records only the rules: which model is unknown."""
    root, _ = lm_run
    packed = tern_jax.load_ternary(root / "tern_seed0")
    tern_jax.save_ternary(tmp_path / "bare", packed)
    assert set(read_origin(tmp_path / "bare")) == {"rules"}
    status = main([command, "--workdir", str(root / "run"), "--model", "tern/seed0",
                   "--packed", str(tmp_path / "bare")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "does not record its model, variant and seed" in err
    assert "tern-jax export --model tern/seed0" in err


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_refuse_the_export_of_another_variant_naming_both(lm_run, capsys,
                                                                          command):
    root, _ = lm_run
    status = main([command, "--workdir", str(root / "run"), "--model", "tern/seed0",
                   "--packed", str(root / "fp_seed0")])
    err = capsys.readouterr().err
    assert status == 2
    assert "holds fp/seed0 of transformer_tiny, not tern/seed0 of transformer_tiny" in err


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


def test_eval_refuses_weights_of_another_architecture_naming_the_parameter(lm_run, capsys,
                                                                          tmp_path):
    """An export that says it is tern/seed0 of transformer_tiny but holds a wider model."""
    from flax import nnx

    from tern_jax.models.transformer import Transformer, transformer_config

    root, _ = lm_run
    wide = Transformer(transformer_config("transformer_small"), rngs=nnx.Rngs(0))
    tern_jax.save_ternary(tmp_path / "wide", {"params": nnx.to_pure_dict(
        nnx.state(wide, nnx.Param))}, origin={"model": "transformer_tiny", "variant": "tern",
                                              "seed": 0})
    status = main(["eval", "--workdir", str(root / "run"), "--model", "tern/seed0",
                   "--packed", str(tmp_path / "wide")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "the packed checkpoint does not fit the model: parameter" in err
    assert "has shape (64" in err and "the model expects (32" in err


def test_a_training_checkpoint_of_another_architecture_names_the_parameter(lm_run, tmp_path):
    root, _ = lm_run
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"] = "transformer_small"  # the checkpoint holds transformer_tiny
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not fit the model: parameter '.*' has shape "
                                         r"\(2, 32.*the model expects \(2, 64"):
        restore_run(copy)


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


def test_the_files_of_a_run_share_their_permissions(lm_run):
    root, _ = lm_run
    modes = {name: (root / "run" / name).stat().st_mode & 0o777
             for name in ("config.json", "metrics.jsonl", "results.json")}
    assert len(set(modes.values())) == 1, modes


def test_exporting_a_full_precision_model_prints_no_infinite_ratio(lm_run, capsys, tmp_path):
    root, _ = lm_run
    assert main(["export", "--workdir", str(root / "run"), "--model", "fp/seed0",
                 "--out", str(tmp_path / "fp")]) == 0
    out = capsys.readouterr().out
    assert "inf" not in out and "every weight in full precision" in out
    assert "exported fp/seed0 (transformer_tiny)" in out


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


def test_init_from_a_run_of_another_architecture_names_the_parameter(tmp_path):
    """A digits small_cnn (8x8x1 inputs) started into a CIFAR-10 small_cnn (32x32x3): the
    model name matches, the shapes do not."""
    from helpers.cifar import write_cifar_batches
    from helpers.runs import small_config

    from tern_jax.train import train_and_evaluate

    source = small_config(epochs=1, variants=("fp",))
    train_and_evaluate(source, tmp_path / "digits", log=lambda *a: None)
    rng = np.random.default_rng(0)
    write_cifar_batches(tmp_path / "cifar-10-batches-py",
                        rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, 48), per_batch=7)
    target = small_config(epochs=1, variants=("fp",), dataset="cifar10", test_subset=None,
                          data_dir=str(tmp_path), init_from=str(tmp_path / "digits"))
    with pytest.raises(ValueError, match=r"init_from run .*digits does not fit the model: "
                                         r"parameter '.*' has shape"):
        train_and_evaluate(target, tmp_path / "cifar", log=lambda *a: None)
