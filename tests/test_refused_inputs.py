"""Wrong inputs at every door end in one clear line (or a correct result), and nothing a user
owns is overwritten: the command line's and the trainer's cases.

Two tiny runs are shared by the module (digits, and a byte model); every other case fails
before anything trains.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tern_jax import cli, report
from tern_jax.train import override, run
from tern_jax.train.families import resolve

ROOT = Path(__file__).parent.parent


def _cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def _small(changes=None):
    from helpers.runs import small_config

    return small_config({"schedule.epochs": 1, **(changes or {})})


def _lm(changes=None):
    base = {"name": "lm", "seeds": (0,), "progress": False,
            "model": {"name": "transformer_tiny", "variants": ("fp", "tern")},
            "data": {"dataset": "text", "steps_per_epoch": 2, "batch_size": 4,
                     "test_subset": 8, "eval_batch_size": 8},
            "optimizer": {"name": "adam", "learning_rate": 1e-3, "weight_decay": 0.0},
            "schedule": {"epochs": 1, "name": "constant"}}
    from tern_jax.train import Config

    return override(Config(**base), changes or {})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "run"
    run(_small(), folder, log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm") / "run"
    run(_lm(), folder, log=lambda *_: None)
    return folder


def _user_package(root: Path, name: str, files: dict) -> Path:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for file, text in files.items():
        (package / file).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def user_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


# -- training doors ----------------------------------------------------------------------------

def test_resume_of_a_folder_without_a_run_is_refused_and_creates_nothing(tmp_path, capsys):
    folder = tmp_path / "typo"
    status, _, err = _cli(capsys, "train", "--workdir", folder, "--resume")
    assert status == 2 and "holds no run to resume" in err and str(folder) in err
    status, _, err = _cli(capsys, "train", "--workdir", folder, "--config", "quickstart",
                          "--resume")
    assert status == 2 and "holds no run to resume" in err
    assert not folder.exists()


def test_resume_without_config_continues_from_the_runs_own_config(tmp_path, capsys):
    folder = tmp_path / "run"
    run(override(_small({"optimizer.learning_rate": 0.02, "schedule.name": "constant"}),
                 {}), folder, log=lambda *_: None)
    status, _, err = _cli(capsys, "train", "--workdir", folder, "--resume", "--set",
                          "schedule.epochs=2")
    assert status == 0, err
    saved = json.loads((folder / "config.json").read_text())
    assert saved["optimizer"]["learning_rate"] == 0.02 and saved["schedule"]["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in
            (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_quickstart_refuses_a_folder_holding_another_run(digits_run, capsys):
    before = (digits_run / "metrics.jsonl").read_text()
    status, _, err = _cli(capsys, "quickstart", "--workdir", digits_run)
    assert status == 2 and "holds a different run" in err
    assert (digits_run / "metrics.jsonl").read_text() == before


def test_an_edited_config_json_is_named_with_the_key_or_the_line(digits_run, tmp_path, capsys):
    import shutil

    bad_json, bad_key = tmp_path / "a", tmp_path / "b"
    for folder in (bad_json, bad_key):
        shutil.copytree(digits_run, folder)
    (bad_json / "config.json").write_text('{"name": "x",\n  oops}')
    saved = json.loads((bad_key / "config.json").read_text())
    saved["data"]["batchsize"] = 3
    (bad_key / "config.json").write_text(json.dumps(saved))
    for command in (["train", "--resume"], ["eval"]):
        status, _, err = _cli(capsys, *command[:1], "--workdir", bad_json, *command[1:])
        assert status == 2 and f"{bad_json / 'config.json'} is not valid JSON (line 2" in err
        status, _, err = _cli(capsys, *command[:1], "--workdir", bad_key, *command[1:])
        assert status == 2 and str(bad_key / "config.json") in err and "batchsize" in err


def test_a_deleted_config_json_is_named(digits_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(digits_run, folder)
    (folder / "config.json").unlink()
    status, _, err = _cli(capsys, "train", "--workdir", folder)
    assert status == 2 and "but no config.json: it was deleted or moved" in err
    assert "checkpoints" in err and not (folder / "config.json").exists()


def test_a_model_with_the_wrong_number_of_outputs_is_refused_before_anything_is_written(
        user_path, tmp_path):
    _user_package(user_path, "userpkg", {"nets.py": """
        from flax import linen as nn
        class Five(nn.Module):
            num_classes: int
            @nn.compact
            def __call__(self, x, train=False):
                return nn.Dense(5)(x.reshape((x.shape[0], -1)))
        """})
    folder = tmp_path / "run"
    with pytest.raises(ValueError, match=r"gives 5 outputs per example, but its task needs 10"):
        run(_small({"model.name": "userpkg.nets:Five"}), folder)
    assert not folder.exists()


def test_block_activations_on_a_model_too_narrow_are_refused_when_the_config_is_made(tmp_path):
    with pytest.raises(ValueError, match=r"tern_a8.*not all multiples of 256.*d_model=256"):
        _lm({"model.variants": ("fp", "tern_a8")})
    _lm({"model.variants": ("fp", "tern_a8"), "model.kwargs": {"d_model": 256}})  # fits


@pytest.mark.parametrize("module,text,line,kind", [
    ("raises", "import os\nx = 1\ny = 1 / 0\n", 3, "ZeroDivisionError"),
    ("broken", "def f(:\n    pass\n", 1, "SyntaxError"),
])
def test_an_error_in_a_users_module_names_its_file_and_line(user_path, tmp_path, capsys,
                                                            module, text, line, kind):
    _user_package(user_path, "userpkg", {f"{module}.py": text})
    for field in ("model.name", "data.dataset"):
        status, _, err = _cli(capsys, "train", "--workdir", tmp_path / "w", "--set",
                              f"{field}=userpkg.{module}:thing")
        assert status == 2, err
        assert f"{user_path / 'userpkg' / f'{module}.py'}, line {line}: {kind}" in err
        assert "internal error" not in err and "report it" not in err
    assert not (tmp_path / "w").exists()


def test_an_error_in_a_config_file_names_its_file_and_line(tmp_path, capsys):
    config = tmp_path / "cfg.py"
    config.write_text("def get_config():\n    return {}['missing']\n")
    status, _, err = _cli(capsys, "train", "--workdir", tmp_path / "w", "--config", config)
    assert status == 2 and f"{config}, line 2: KeyError" in err and "report it" not in err


@pytest.mark.parametrize("images,labels,message", [
    ("float01", "ok", r"float32.*uint8 pixels 0\.\.255.*\(images \* 255\)"),
    ("ok", "seven", r"label\(s\) outside 0\.\.2 \(e\.g\. 7\).*num_classes=3"),
])
def test_a_users_dataset_is_checked_against_its_declaration_when_opened(
        user_path, tmp_path, images, labels, message):
    _user_package(user_path, "userpkg", {"data.py": f"""
        import numpy as np
        from tern_jax.data import ArrayDataset, ImageDataset
        def load():
            rng = np.random.default_rng(0)
            x = rng.integers(0, 256, (96, 6, 6, 1)).astype(np.uint8)
            y = (np.arange(96) % 3).astype(np.int32)
            if {images!r} == "float01":
                x = x.astype(np.float32) / 255
            if {labels!r} == "seven":
                y[5] = 7
            return ArrayDataset(x[:64], y[:64], x[64:], y[64:], 3, (0.5,), (0.25,), "blobs")
        blobs = ImageDataset("blobs", 3, (6, 6, 1), load, mean=(0.5,), std=(0.25,))
        """})
    folder = tmp_path / "run"
    config = _small({"data.dataset": "userpkg.data:blobs", "data.train_subset": None,
                     "data.test_subset": None})
    with pytest.raises(ValueError, match=message):
        run(config, folder)
    assert not folder.exists()


def test_a_quickstart_run_on_other_data_is_named_after_it(capsys):
    args = cli.build_parser().parse_args(
        ["train", "--workdir", "w", "--set", "model.name=resnet8"])
    assert cli._train_config(args).name == "digits_resnet8"
    args = cli.build_parser().parse_args(
        ["train", "--workdir", "w", "--set", "model.name=resnet8", "--set", "name=mine"])
    assert cli._train_config(args).name == "mine"


def test_the_log_says_what_a_run_does_before_the_first_epoch_and_what_it_trains_on(tmp_path):
    lines = []
    run(_lm(), tmp_path / "lm", log=lines.append)
    assert lines[0] == "lm: loading text and building the models"
    trained_on = next(line for line in lines if " on " in line and "steps/epoch" in line)
    assert " training tokens, " in trained_on and "examples" not in trained_on
    assert "the first steps compile" in trained_on


def test_a_diverged_run_names_the_parameters_that_went_bad(tmp_path):
    from tern_jax.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"parameters holding NaN/inf after that step: "
                                               r"\S+ \(\d+ of \d+ values\)"):
        run(_small({"optimizer.learning_rate": 1e6, "schedule.epochs": 3}), tmp_path / "run",
            log=lambda *_: None)


# -- reading and exporting a run ------------------------------------------------------------

def test_plot_writes_the_format_its_suffix_names_and_refuses_unknown_ones(digits_run, tmp_path,
                                                                          capsys):
    pytest.importorskip("matplotlib")
    status, _, err = _cli(capsys, "plot", digits_run, "--out", tmp_path / "c.pdf")
    assert status == 0, err
    assert (tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"
    status, _, err = _cli(capsys, "plot", digits_run, "--out", tmp_path / "c.svg")
    assert status == 0 and b"<svg" in (tmp_path / "c.svg").read_bytes()[:400]
    status, _, err = _cli(capsys, "plot", digits_run, "--out", tmp_path / "c.xyz")
    assert status == 2 and ".xyz" in err and ".png" in err
    assert not (tmp_path / "c.xyz").exists()


def test_a_runs_report_and_plot_need_not_import_its_model(digits_run, tmp_path):
    pytest.importorskip("matplotlib")
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(digits_run, folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["model"]["name"] = "nowhere_to_be_found.nets:Net"  # a module not on the path
    (folder / "config.json").write_text(json.dumps(saved))
    results = json.loads((folder / "results.json").read_text())
    results["model"] = saved["model"]["name"]
    (folder / "results.json").write_text(json.dumps(results))
    out = subprocess.run([sys.executable, "-m", "tern_jax.cli", "plot", str(folder), "--out",
                          str(tmp_path / "c.png")], capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert report.load_run(folder).model == "nowhere_to_be_found.nets:Net"


def test_compare_table_shows_bits_per_byte_for_a_language_model(lm_run, digits_run):
    table = report.compare_table([report.load_run(lm_run), report.load_run(digits_run)])
    lines = table.splitlines()
    assert "| bits/byte |" in lines[0]
    results = json.loads((lm_run / "results.json").read_text())
    fp = results["variants"]["fp"]["bits_per_byte"]["mean"]
    assert f"| fp | 1 | - | {fp:.4f} |" in table  # next-byte accuracy is not shown
    assert "bits/byte" not in report.compare_table([report.load_run(digits_run)])


def test_export_infers_gguf_from_its_type_and_refuses_a_packed_format_with_one(lm_run, tmp_path,
                                                                             capsys):
    pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    status, _, err = _cli(capsys, "export", "--workdir", lm_run, "--model", "tern/seed0",
                          "--out", out, "--type", "f16")
    # transformer_tiny has a GELU MLP, which llama.cpp's llama architecture cannot hold:
    # the export gets that far (the GGUF path), not to a packed checkpoint
    assert status == 2 and "gated MLP" in err and not out.exists()
    status, _, err = _cli(capsys, "export", "--workdir", lm_run, "--model", "tern/seed0",
                          "--out", out, "--type", "f16", "--format", "packed")
    assert status == 2 and "--type f16 is a GGUF type" in err and not out.exists()


@pytest.mark.parametrize("out,message", [
    ("{tmp}/newdir/", "is a folder, but a GGUF export is one file"),
    ("", "--out is empty"),
    ("{tmp}/afile/x.gguf", "afile is a file, not a folder"),
])
def test_export_names_the_users_path_and_the_true_cause(digits_run, tmp_path, capsys, out,
                                                        message):
    (tmp_path / "afile").write_text("mine")
    status, _, err = _cli(capsys, "export", "--workdir", digits_run, "--model", "tern/seed0",
                          "--out", out.format(tmp=tmp_path), "--format", "gguf")
    assert status == 2 and message in err
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "newdir").exists()


def test_sample_takes_prompt_bytes_that_are_not_utf8(lm_run, tmp_path, capsys):
    raw = b"\xff\xfe def"
    prompt_file = tmp_path / "p.bin"
    prompt_file.write_bytes(raw)
    status, out, err = _cli(capsys, "sample", "--workdir", lm_run, "--model", "tern/seed0",
                            "--prompt-file", prompt_file, "--steps", "4", "--temperature", "0")
    assert status == 0, err
    # on the command line the same bytes arrive as surrogates: they are taken back as bytes
    status, again, err = _cli(capsys, "sample", "--workdir", lm_run, "--model", "tern/seed0",
                              "--prompt", os.fsdecode(raw), "--steps", "4", "--temperature", "0")
    assert status == 0, err
    assert out == again


def test_resolve_gives_the_family_that_declares_what_a_language_model_run_writes():
    family = resolve(_lm()).family
    assert family.loss_name == "bits/byte" and "gguf" in family.exports and family.samples
    assert resolve(_small()).family.exports == ("packed",)


# -- found by trying inputs beyond the list ---------------------------------------------

@pytest.mark.parametrize("body,message", [
    ("class Net(nn.Module):\n    num_classes: int\n    def __call__(self, x, train=False):\n"
     "        return x.reshape((x.shape[0], -1))[:, :10]\n", "cannot be initialized and run"),
    ("class Net(nn.Module):\n    num_classes: int\n    @nn.compact\n"
     "    def __call__(self, x, train=False):\n"
     "        y = nn.Dense(10)(x.reshape((x.shape[0], -1)))\n"
     "        return y, y\n", "cannot be initialized and run.*'tuple'"),
])
def test_a_user_model_without_parameters_or_with_two_outputs_is_refused_by_name(
        user_path, tmp_path, body, message):
    _user_package(user_path, "userpkg", {"odd.py": "from flax import linen as nn\n" + body})
    with pytest.raises(ValueError, match=message):
        run(_small({"model.name": "userpkg.odd:Net"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arrays,message", [
    ("x[:64], y[:10], x[64:], y[64:]", "64 train images and 10 train labels"),
    ("x[:64], y[:64], x[64:64], y[64:64]", "0 test images and 0 test labels"),
    ("tuple", "returned a tuple; an ImageDataset's load\\(\\) returns"),
])
def test_a_users_loader_returning_mismatched_or_wrong_things_is_refused(
        user_path, tmp_path, arrays, message):
    result = ("(x, y)" if arrays == "tuple" else
              f"ArrayDataset({arrays}, 3, (0.5,), (0.25,), 'blobs')")
    _user_package(user_path, "userpkg", {"data.py": f"""
        import numpy as np
        from tern_jax.data import ArrayDataset, ImageDataset
        def load():
            x = np.zeros((96, 6, 6, 1), np.uint8)
            y = (np.arange(96) % 3).astype(np.int32)
            return {result}
        blobs = ImageDataset("blobs", 3, (6, 6, 1), load, mean=(0.5,), std=(0.25,))
        """})
    config = _small({"data.dataset": "userpkg.data:blobs", "data.train_subset": None,
                     "data.test_subset": None, "data.batch_size": 8})
    with pytest.raises((ValueError, TypeError), match=message):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_bad_declaration_in_a_users_module_names_its_own_line(user_path, tmp_path, capsys):
    _user_package(user_path, "userpkg", {"decl.py": """
        from tern_jax.data import ImageDataset
        blobs = ImageDataset("blobs", 3, (6, 6, 3), print, mean=(0.5,), std=(0.25,))
        """})
    status, _, err = _cli(capsys, "train", "--workdir", tmp_path / "w", "--set",
                          "data.dataset=userpkg.decl:blobs")
    assert status == 2 and f"{user_path / 'userpkg' / 'decl.py'}, line 3" in err
    assert "<string>" not in err


@pytest.mark.parametrize("config,message", [
    ("cfg.txt", "is not a Python file"), (".", "is a folder"),
])
def test_a_config_that_is_no_python_file_is_named(tmp_path, capsys, config, message):
    (tmp_path / "cfg.txt").write_text("def get_config(): pass\n")
    status, _, err = _cli(capsys, "train", "--workdir", tmp_path / "w", "--config",
                          tmp_path / config)
    assert status == 2 and message in err and "internal error" not in err


def test_override_given_one_string_says_it_takes_a_list():
    with pytest.raises(TypeError, match=r"a list of 'path=value' strings or a dict"):
        override(_small(), "data.batch_size=8")


def test_a_workdir_that_is_a_broken_link_or_inside_a_runs_checkpoints_is_refused(
        digits_run, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    status, _, err = _cli(capsys, "train", "--workdir", link)
    assert status == 2 and "is a link to" in err and "does not exist" in err
    inner = digits_run / "checkpoints" / "9"
    status, _, err = _cli(capsys, "train", "--workdir", inner)
    assert status == 2 and "inside the checkpoints of the run" in err and not inner.exists()


def test_eval_refuses_a_packed_export_of_another_run(digits_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(digits_run, other)
    saved = json.loads((other / "config.json").read_text())
    saved["name"] = "another_run"
    (other / "config.json").write_text(json.dumps(saved))
    packed = tmp_path / "other.packed"
    assert _cli(capsys, "export", "--workdir", other, "--model", "tern/seed0", "--out",
                packed)[0] == 0
    status, _, err = _cli(capsys, "eval", "--workdir", digits_run, "--model", "tern/seed0",
                          "--packed", packed)
    assert status == 2 and "is an export of run 'another_run'" in err
