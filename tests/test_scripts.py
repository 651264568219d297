"""Every script under benchmarks/ and experiments/ runs, at its smallest size, so a rename in
the library can no longer break one unseen.

Python scripts run as their users run them (a subprocess, ``JAX_PLATFORMS=cpu``) with their
own flags set small. The shell scripts hand all their work to ``tern-jax train`` (hours of
it, and CIFAR-10 or a GPU that a checkout lacks): they run with stand-ins for ``python`` and
``tern-jax`` on the PATH that record each command line, and every ``train`` command they
would run is then parsed by the real command line and its config built with its ``--set``
values. Scripts that need llama.cpp run when it is installed, else only ``--help``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import lm_config

from tern_jax.train import load_config, override, run

REPO = Path(__file__).parent.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

#: What tests each script (a new script must get a smoke test here).
SCRIPTS = {
    "benchmarks/export_parity.py": "test_export_parity_compares_the_hf_export_with_tern_jax",
    "benchmarks/gather_bytes.py": "test_gather_bytes_counts_code_gathers_against_fp32",
    "benchmarks/gguf_parity.py": "test_the_gguf_benchmarks_take_their_flags",
    "benchmarks/gguf_speed.py": "test_the_gguf_benchmarks_take_their_flags",
    "benchmarks/input_pipeline.py": "test_input_pipeline_times_every_pipeline",
    "benchmarks/lm_throughput.py": "test_lm_throughput_times_every_contender",
    "benchmarks/lm_train_step.py": "test_lm_train_step_times_each_variant",
    "benchmarks/memory_scale.py": "test_memory_scale_compiles_every_layout",
    "benchmarks/quantize_overhead.py": "test_quantize_overhead_times_both_steps",
    "benchmarks/train_step.py": "test_train_step_times_the_variants",
    "experiments/collect.py": "test_collect_recollects_a_committed_row",
    "experiments/lm_collect.py": "test_lm_collect_writes_the_table_sizes_and_curves",
    "experiments/lm_recipes_collect.py": "test_lm_recipes_collect_runs_as_a_script",
    "experiments/lm_recipe_study.sh": "test_the_lm_recipe_study_trains_every_arm",
    "experiments/lm_tokenizers_collect.py": "test_lm_tokenizers_collect_runs_as_a_script",
    "experiments/lm_tokenizer_study.sh": "test_the_lm_tokenizer_study_trains_every_arm",
    "experiments/cpu_proxy/run.sh": "test_the_cpu_proxy_scripts_train_their_configs",
    "experiments/cpu_proxy/run2.sh": "test_the_cpu_proxy_scripts_train_their_configs",
    "experiments/gpu/cifar_row.sh": "test_the_gpu_scripts_train_both_rows",
    "experiments/gpu/r20_session.sh": "test_the_gpu_scripts_train_both_rows",
}


def _run(argv, *, env=None, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, argv))}: exit {done.returncode}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _python(script, *args, **kw) -> subprocess.CompletedProcess:
    return _run([sys.executable, str(REPO / script), *map(str, args)], **kw)


def test_every_script_has_a_smoke_test():
    found = {p.relative_to(REPO).as_posix()
             for pattern in ("benchmarks/*.py", "experiments/*.py", "experiments/**/*.sh")
             for p in REPO.glob(pattern)}
    assert found == set(SCRIPTS), found ^ set(SCRIPTS)
    tests = {name for name in globals() if name.startswith("test_")}
    assert set(SCRIPTS.values()) <= tests


def test_every_experiment_config_loads():
    """Each config file runs (get_config()) and gives a Config the library checked: fields,
    model family, dataset, variants."""
    configs = sorted((REPO / "experiments" / "configs").glob("*.py"))
    assert len(configs) >= 40
    names = {}
    for path in configs:
        config = load_config(str(path))
        names[path.stem] = config.name
        assert config.seeds and config.model.variants, path.name
    assert names["lm_recipe_fp"] == "lm_recipe_fp" and names["cifar10_resnet20"] == (
        "cifar10_resnet20_best")
    assert len(set(names.values())) == len(names)  # no two configs name their runs alike


# -- benchmarks ----------------------------------------------------------------------------

def test_quantize_overhead_times_both_steps():
    out = _python("benchmarks/quantize_overhead.py", "--batch", 2, "--steps", 1).stdout
    assert "full precision step:" in out and "ternarized step:" in out
    assert "ratio ternarized/full precision:" in out


@pytest.fixture(scope="module")
def lm_benchmark(tmp_path_factory):
    """benchmarks/lm_train_step.py's figures of transformer_tiny (fp and tern), as JSON."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    out = _python("benchmarks/lm_train_step.py", "--model", "transformer_tiny", "--batch", 2,
                  "--steps", 1, "--rounds", 1, "--variants", "tern", "--json", path).stdout
    return path, out


@pytest.mark.slow  # trains (times) language models
def test_lm_train_step_times_each_variant(lm_benchmark):
    path, out = lm_benchmark
    assert "transformer_tiny: d_model 32, 2 layers" in out and "(target <= 1.05" in out
    figures = json.loads(path.read_text())
    assert figures["model"] == "transformer_tiny" and figures["tokens_per_step"] == 2 * 32
    assert set(figures["variants"]) == {"fp", "tern"}
    assert figures["variants"]["fp"]["ratio_to_fp"] == 1.0


@pytest.mark.slow  # compiles six train steps for 8 simulated devices
def test_memory_scale_compiles_every_layout(tmp_path):
    """The tiny shape on 8 simulated devices: DP, FSDP and FSDP x TP, and the four settings of
    scan_layers and remat; sharding divides the state, remat the temporaries."""
    out = tmp_path / "scale"
    printed = _python("benchmarks/memory_scale.py", "--sizes", "tiny", "--devices", 8,
                      "--ablation", "tiny", "--seq_len", 32, "--out", out).stdout
    figures = json.loads((out / "memory.json").read_text())
    rows = {r["strategy"]: r for r in figures["rows"]}
    assert set(rows) == {"dp", "fsdp", "fsdp_tp"}
    assert not [r for r in figures["rows"] + figures["ablation"] if "error" in r]
    assert rows["dp"]["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert rows["fsdp"]["argument"] < rows["dp"]["argument"] / 3  # the state is split
    assert rows["fsdp_tp"]["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
    settings = {(r["scan"], r["remat"]): r for r in figures["ablation"]}
    assert set(settings) == {(False, False), (False, True), (True, False), (True, True)}
    assert settings[(True, True)]["argument"] == settings[(False, False)]["argument"]
    assert (out / "memory.md").read_text() in printed + "\n"
    assert "| tiny |" in printed and "fits 16 / 80 GiB" in printed


def test_lm_throughput_times_every_contender(tmp_path):
    path = tmp_path / "throughput.json"
    out = _python("benchmarks/lm_throughput.py", "--steps", 1, "--rounds", 1, "--json",
                  path).stdout
    figures = json.loads(path.read_text())
    assert figures["contenders"]["tern_jax fp"]["ratio_to_jax_fp"] == 1.0
    assert "tern_jax ternary / fp:" in out
    expected = {"tern_jax fp", "tern_jax tern"}
    if importlib.util.find_spec("torch") is not None:
        expected |= {"PyTorch fp", "PyTorch BitLinear"}
    else:
        assert "skipped: PyTorch is not installed" in out
    if importlib.util.find_spec("tern_jax.sharding") is not None:
        expected |= {"8 devices, dp", "8 devices, fsdp"}
        assert "8 simulated devices, FSDP / DP:" in out
    else:
        assert "has no tern_jax.sharding" in out
    assert set(figures["contenders"]) == expected


def test_input_pipeline_times_every_pipeline():
    out = _python("benchmarks/input_pipeline.py", "--images", 4, "--batch", 2, "--batches", 1,
                  "--warmup", 1, "--rounds", 1, "--workers", 1, "--no-pin").stdout
    table = out.split("pipeline", 1)[1]
    for name in ("threads-1", "grain-0", "grain-1"):
        assert f"\n{name}" in table, out


@pytest.mark.slow
def test_train_step_times_the_variants():
    out = _python("benchmarks/train_step.py", "--model", "resnet8", "--batch", 2, "--steps", 1,
                  "--rounds", 1, "--variants", "fp,t2-vmapped", "--models", "").stdout
    assert "CIFAR resnet8, batch 2" in out
    rows = out.split("target (GPU)", 1)[1]
    assert "full precision" in rows and "t_ex=2 vmapped" in rows and "t_ex=4" not in rows


def _module(script):
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gguf_benchmarks_take_their_flags(capsys):
    """Both need llama.cpp (pip install 'tern_jax[llama]') to measure anything; without it
    they still import and parse their command lines."""
    for script, flag in (("benchmarks/gguf_parity.py", "--workdir"),
                         ("benchmarks/gguf_speed.py", "--d_model")):
        with pytest.raises(SystemExit) as exit_:
            _module(script).main(["--help"])
        assert exit_.value.code == 0 and flag in capsys.readouterr().out


def test_gguf_speed_measures_every_type(tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "speed.json"
    _python("benchmarks/gguf_speed.py", "--d_model", 256, "--layers", 1, "--heads", 2,
            "--kv_heads", 1, "--mlp_ratio", 1, "--tokens", 2, "--rounds", 1, "--out", out)
    assert set(json.loads(out.read_text())["types"]) == {"f16", "q8_0", "tq2_0", "tq1_0"}


def test_gguf_parity_compares_a_trained_run(tmp_path):
    pytest.importorskip("llama_cpp")
    config = _lm_config(tmp_path / "code.py", {
        "model.name": "transformer_llama", "model.kwargs": {"num_heads": 2, "max_len": 32},
        "model.variants": ("tern_a8",), "data.seq_len": 32})
    run(config, tmp_path / "run", log=lambda *a: None)
    out = tmp_path / "parity.json"
    _python("benchmarks/gguf_parity.py", "--workdir", tmp_path / "run", "--model",
            "tern_a8/seed0", "--prompts", 2, "--prompt_len", 4, "--steps", 4, "--types",
            "tq2_0", "--out", out)
    assert "tq2_0" in json.loads(out.read_text())["gguf"]


# -- collectors ----------------------------------------------------------------------------

def test_collect_recollects_a_committed_row(tmp_path):
    """collect.py over committed runs (one stage, and two) writes the rows committed for them."""
    results = REPO / "experiments" / "results"
    runs = [results / "cpu_proxy" / "methods", results / "lm_recipes" / "finetune_half"]
    out = tmp_path / "set"
    printed = _python("experiments/collect.py", *runs, "--out", out, "--device",
                      "CPU, 2 cores (shared)").stdout
    table = (out / "table.md").read_text().splitlines()
    committed = (results / "cpu_proxy" / "table.md").read_text().splitlines()
    assert table[2:7] == [row for row in committed if row.startswith("| methods |")]
    assert table[7].startswith("| lm_recipe_finetune_half | transformer_llama_half | fp | 10 |")
    assert table[8].startswith("| lm_recipe_finetune_half | transformer_llama_half | tern | "
                               "10+10 |")
    assert "\n".join(table[2:]) in printed
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert (out / "methods" / name).read_bytes() == (runs[0] / name).read_bytes()
        assert (out / "finetune_half" / "finetune" / name).is_file()


# As long as test_lm_train's text, and the same run (model, batches, windows, optimizer): one
# compiled program for both files in a session (the XLA cache of tests/conftest.py).
TEXT = b"".join(b"def h%d(z):\n    return z - %d\n\n" % (i, i) for i in range(200))


def _lm_config(text_file, changes=None):

    text_file = Path(text_file)
    if not text_file.exists():
        text_file.write_bytes(TEXT)
    return lm_config(text_file, {"name": "lm_recipe_scripts", "schedule.epochs": 1,
                                 "checkpointing.every": 0, **(changes or {})})


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A finished language-model run (fp and tern, one seed, one epoch of four steps)."""
    root = tmp_path_factory.mktemp("lm_run")
    run(_lm_config(root / "code.py"), root / "runs" / "tiny", log=lambda *a: None)
    return root / "runs" / "tiny"


@pytest.mark.slow  # trains (times) language models
def test_lm_collect_writes_the_table_sizes_and_curves(lm_run, lm_benchmark, tmp_path):
    bench, _ = lm_benchmark
    out = tmp_path / "lm"
    table = _python("experiments/lm_collect.py", lm_run, "--out", out, "--benchmark",
                    bench).stdout
    assert "after 4 steps (512 training bytes per model), seeds [0]" in table
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"| fp", "| tern"}
    figures = json.loads(bench.read_text())["variants"]
    assert f"{figures['tern']['tokens_per_second']:,.0f} | " in rows["| tern"]
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes["fp"]["payload"] == sizes["fp"]["fp32"] == 4 * sizes["fp"]["params"]
    assert sizes["tern"]["payload"] < sizes["fp"]["payload"] / 4
    results = json.loads((lm_run / "results.json").read_text())
    assert f"{np.mean(results['variants']['tern']['bits_per_byte']['per_seed']):.3f}" in (
        rows["| tern"])
    for name in ("table.md", "sizes.json", "curves.png", "benchmark.json", "config.json",
                 "metrics.jsonl", "results.json"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow  # trains (times) language models
def test_lm_recipes_collect_runs_as_a_script(lm_run, tmp_path):
    out = tmp_path / "recipes"
    table = _python("experiments/lm_recipes_collect.py", lm_run.parent, "--out", out,
                    "--width", 32).stdout
    assert "| tiny | fp | 32 |" in table and "| tiny | tern | 32 |" in table
    rows = json.loads((out / "summary.json").read_text())
    assert {(r["arm"], r["variant"], r["steps"]) for r in rows} == {("tiny", "fp", 4),
                                                                   ("tiny", "tern", 4)}
    assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow  # trains (times) language models
def test_lm_tokenizers_collect_runs_as_a_script(lm_run, tmp_path):
    out = tmp_path / "tokenizers"
    table = _python("experiments/lm_tokenizers_collect.py", lm_run.parent, "--out", out).stdout
    rows = {(r["arm"], r["variant"]): r for r in json.loads((out / "summary.json").read_text())}
    assert set(rows) == {("tiny", "fp"), ("tiny", "tern")}
    fp, tern = rows["tiny", "fp"], rows["tiny", "tern"]
    assert fp["vocab"] == 256 and fp["bytes_per_token"] == pytest.approx(1.0)
    assert tern["gap"] == pytest.approx([tern["bits_per_byte"][0] - fp["bits_per_byte"][0]])
    assert fp["gap"] is None and "| tiny | tern | 256 |" in table
    assert (out / "tiny" / "metrics.jsonl").exists() and not list(out.rglob("checkpoints"))


# -- shell scripts: every training command they would run --------------------------------

STUB = """#!/bin/sh
# records its command line (one JSON list a line) instead of running it
"PYTHON" - "$(basename "$0")" "$@" <<'EOF'
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[2:]
print("recorded:", *sys.argv[1:])  # a line of output, as a real run prints many
if "--workdir" in args:  # a finished run, as far as the script can tell
    workdir = args[args.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    open(os.path.join(workdir, "results.json"), "w").write("{}")
EOF
"""


@pytest.fixture
def stubbed(tmp_path):
    """An environment whose python, python3 and tern-jax record their command lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3", "tern-jax"):
        (bin_dir / name).write_text(STUB.replace("PYTHON", sys.executable, 1))
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "commands.jsonl"
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log)}

    def commands():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() \
            else []

    return env, commands


def _train_configs(commands) -> list:
    """Each recorded ``train`` command parsed by tern-jax's own parser, its config built with
    its ``--set`` values (which raises for a field or value the config does not take)."""
    from tern_jax.cli import build_parser

    configs = []
    for command in commands:
        argv = command[1:]
        if command[0] in ("python", "python3") and argv[:2] == ["-m", "tern_jax"]:
            argv = argv[2:]
        elif command[0] != "tern-jax":
            continue
        assert argv[0] == "train", command
        args = build_parser().parse_args(argv)
        configs.append((args, override(load_config(args.config), args.set or [])))
    return configs


def test_the_lm_recipe_study_trains_every_arm(stubbed, tmp_path):
    env, commands = stubbed
    env = {**env, "ROOT": str(tmp_path / "study"), "OUT": str(tmp_path / "collected")}
    _run(["sh", "experiments/lm_recipe_study.sh"], env=env)
    trained = _train_configs(commands())
    arms = {Path(args.workdir).name: config for args, config in trained}
    assert len(arms) == len(trained) == 24 and all(a.resume for a, _ in trained)
    assert {n for n, c in arms.items() if c.model.kwargs == {"d_model": 128}} == set(arms) - {
        "wide", "fp_slow_64", "scratch_slow_64", "fp_slow_256", "scratch_slow_256"}
    assert arms["fp_slow_64"].model.kwargs == {"d_model": 64}
    assert arms["scratch_slow_256"].model.kwargs == arms["wide"].model.kwargs == {}
    assert arms["fp_slow_256"].model.name == "transformer_llama"
    # each arm's config is the one its results were collected from
    from tern_jax.train.config import from_json

    results = REPO / "experiments" / "results" / "lm_recipes"
    for name, config in arms.items():
        assert config == from_json((results / name / "config.json").read_text()), name
    collect = commands()[-1]
    assert collect[1:] == ["experiments/lm_recipes_collect.py", str(tmp_path / "study"),
                           "--out", str(tmp_path / "collected")]


def test_the_lm_tokenizer_study_trains_every_arm(stubbed, tmp_path):
    pytest.importorskip("tokenizers")
    from tern_jax.data import tokens

    env, commands = stubbed
    root = tmp_path / "study"
    data = root / "data"
    data.mkdir(parents=True)
    text = tmp_path / "code.py"
    text.write_bytes(b"def f(x):\n    return x + 1\n\n" * 200)
    for vocab in (1024, 4096):  # made already: the script makes them only when missing
        tokens.train_tokenizer(str(text), 300).save(data / f"bpe{vocab}.json")
        tokens.encode_corpus(tokens.load_tokenizer(data / f"bpe{vocab}.json"), str(text),
                             data / f"stdlib_bpe{vocab}.tok")
    env = {**env, "ROOT": str(root), "OUT": str(tmp_path / "collected")}
    _run(["sh", "experiments/lm_tokenizer_study.sh"], env=env)
    trained = _train_configs(commands())
    arms = {Path(args.workdir).name: config for args, config in trained}
    assert list(arms) == ["bytes", "bpe1024", "bpe4096"] and not any(a.resume for a, _ in trained)
    assert arms["bytes"].data.tokenizer is None
    assert arms["bpe4096"].data.tokenizer == str(data / "bpe4096.json")
    assert arms["bpe4096"].data.text_path == str(data / "stdlib_bpe4096.tok")
    # each arm's config is the one its results were collected from (the data where it was)
    results = REPO / "experiments" / "results" / "lm_tokenizers"
    for name, config in arms.items():
        mine = json.loads(config.to_json())
        if name != "bytes":
            mine["data"]["tokenizer"] = f"runs/lm_tokenizers/data/{name}.json"
            mine["data"]["text_path"] = f"runs/lm_tokenizers/data/stdlib_{name}.tok"
        assert mine == json.loads((results / name / "config.json").read_text()), name
    collect = commands()[-1]
    assert collect[1:] == ["experiments/lm_tokenizers_collect.py", str(root), "--out",
                           str(tmp_path / "collected")]


def test_the_cpu_proxy_scripts_train_their_configs(stubbed, tmp_path):
    env, commands = stubbed
    _run(["bash", "experiments/cpu_proxy/run.sh", tmp_path / "cifar", tmp_path / "p1"],
         env=env)
    first = {config.name: config for _, config in _train_configs(commands())}
    assert list(first) == ["methods", "distill", "cosine", "finetune"]
    assert first["finetune"].stages.init_from == str(tmp_path / "p1" / "methods")
    _run(["bash", "experiments/cpu_proxy/run2.sh", tmp_path / "cifar", tmp_path / "p1",
          tmp_path / "p2"], env=env)
    second = {config.name: config for _, config in _train_configs(commands())[4:]}
    assert list(second) == ["scratch23", "fp23", "warmup", "ft_distill_s0", "ft_distill_s1",
                            "ft15_s0", "ft15_s1"]
    # what the committed results of both rounds were trained with
    from tern_jax.train.config import differences, from_json

    results = REPO / "experiments" / "results"
    for folder, configs in (("cpu_proxy", first), ("cpu_proxy2", second)):
        for name, config in configs.items():
            committed = from_json((results / folder / name / "config.json").read_text())
            changed = set(differences(config, committed))
            assert changed <= {"data.data_dir", "stages.init_from", "progress"}, (name, changed)


def test_the_gpu_scripts_train_both_rows(stubbed, tmp_path):
    env, commands = stubbed
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    env = {**env, "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"),
           "WORK_ROOT": str(tmp_path / "work"), "BUDGET": "300"}
    done = _run(["bash", "experiments/gpu/r20_session.sh", "--set", "schedule.epochs=2"],
                env=env)
    assert "session seconds" in done.stdout
    (paper_args, paper), (finetune_args, finetune) = _train_configs(commands())
    assert paper.name == "cifar10_resnet20_paper" and finetune.name == (
        "cifar10_resnet20_finetune")
    assert paper.schedule.epochs == finetune.schedule.epochs == 2  # extra --set: both runs
    assert paper.data.data_dir == str(tmp_path / "data") and not paper.progress
    assert finetune.stages.init_from == str(tmp_path / "work" / "r20_paper")
    for part in ("paper", "finetune"):  # what a device call brings back
        assert (tmp_path / "out" / part / "results.json").is_file()
        assert (tmp_path / "out" / part / "run.tar").is_file()
        assert (tmp_path / "out" / part / "device.txt").is_file()


def test_gather_bytes_counts_code_gathers_against_fp32():
    """A one-block model on 8 simulated devices: the table, with both targets met."""
    done = _python("benchmarks/gather_bytes.py", "--d-model", "32", "--layers", "1",
                   "--heads", "2", "--seq-len", "16", "--batch", "8", "--variant", "tern")
    assert "codes" in done.stdout and "packed" in done.stdout, done.stdout


@pytest.mark.slow
def test_export_parity_compares_the_hf_export_with_tern_jax(tmp_path):
    """Tiny sizes (transformers only: llama.cpp is not installed here)."""
    for package in ("tokenizers", "torch", "transformers", "safetensors"):
        pytest.importorskip(package)
    out = tmp_path / "parity.json"
    _python("benchmarks/export_parity.py", "--corpus_bytes", "60000", "--vocab", "300",
            "--steps", "3", "--windows", "2", "--prompts", "2", "--prompt_len", "4",
            "--greedy_steps", "3", "--lines", "8", "--out", out,
            env=dict(ENV, TORCH_COMPILE_DISABLE="1"))
    figures = json.loads(out.read_text())
    assert figures["corpus"]["train_bytes"] > 0, figures
