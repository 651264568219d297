"""The README is true: its commands are the ones CI runs and the CLI accepts, its snippets run,
and its figures are the ones the code computes."""

import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest

from tern_jax import cli

REPO = Path(__file__).parent.parent


def _shell_commands(text: str) -> list[list[str]]:
    """The commands of the README's indented shell blocks, as argv lists (``&&`` splits)."""
    lines, out = [], []
    for line in text.splitlines():
        if line.startswith("    ") and not line.lstrip().startswith("#"):
            lines.append(line.strip())
        else:
            lines.append("")
    joined = "\n".join(lines).replace("\\\n", " ")  # backslash continuations
    for line in joined.splitlines():
        if line.startswith(("pip ", "tern-jax ", "python ")):
            for command in line.split("&&"):
                argv = shlex.split(command)
                out.append([a for a in argv if a != "&"])
    return out


def test_ci_runs_the_readme_test_command_and_the_extras_exist():
    commands = _shell_commands((REPO / "README.md").read_text())
    pips = [c for c in commands if c[:2] == ["pip", "install"]]
    assert pips == [["pip", "install", "."], ["pip", "install", ".[test]"]], pips
    script, = [e for e in metadata.entry_points(group="console_scripts") if e.name == "tern-jax"]
    assert "test" in metadata.metadata(script.dist.name).get_all("Provides-Extra")
    readme_test = ["pip", "install", ".[test]"], ["python", "-m", "pytest", "-q"]
    assert list(readme_test) == [c for c in commands if c in readme_test][:2]
    ci = [shlex.split(c) for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") for c in line.split("&&")]
    assert ci[-2:] == list(readme_test), ci  # CI ends with exactly the README's test command


def test_every_tern_jax_command_in_the_readme_is_one_the_cli_accepts():
    from tern_jax.cli import build_parser

    script, = [e for e in metadata.entry_points(group="console_scripts") if e.name == "tern-jax"]
    assert script.load() is cli.main  # the installed command is this command line
    commands = [c for c in _shell_commands((REPO / "README.md").read_text())
                if c[0] == "tern-jax"]
    assert len(commands) >= 10 and commands[0] == ["tern-jax", "quickstart"]
    for argv in commands:
        args = build_parser().parse_args(argv[1:])  # a wrong flag exits: the test fails
        if getattr(args, "config", "quickstart") != "quickstart":
            assert (REPO / args.config).is_file(), argv


def test_the_readme_figures_are_what_the_code_computes():
    from tern_jax.packing import bits_per_weight
    from tern_jax.presets import PRESETS
    from tern_jax.train.recipes import cifar10_best

    readme = (REPO / "README.md").read_text()
    number = r"(\d+(?:\.\d+)?)"
    stated = re.search(rf"t_ex=1 \(3 levels\) {number} bits.*?t_ex=2\s+\(5 levels\) {number} "
                       rf"bits.*?t_ex=4 \(9 levels\) {number} bits", readme, flags=re.S).groups()
    assert [float(b) for b in stated] == [round(bits_per_weight(n), 2) for n in (3, 5, 9)]
    recipe = cifar10_best()
    epochs, lr, schedule = re.search(r"fine-tunes for (\d+)\s+epochs \(lr (\d+(?:\.\d+)?), (\w+)\)",
                                     readme).groups()
    assert (int(epochs), float(lr), schedule) == (
        recipe.stages.finetune_epochs, recipe.stages.finetune_learning_rate,
        recipe.stages.finetune_schedule)
    named = re.search(r"Variants are\s+named rule presets: (.*?)\.", readme, flags=re.S).group(1)
    variants = re.findall(r"`(\w+)`", named)
    assert len(variants) >= 6 and set(variants) <= set(PRESETS), set(variants) - set(PRESETS)


@pytest.mark.slow  # the README's snippets train a model
def test_the_api_snippets_run_as_written_in_sequence(tmp_path, monkeypatch, capsys):
    import warnings

    import numpy as np

    import tern_jax

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the snippets write model.tern into the working folder
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a snippet that warns is not "as written"
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    assert set(np.unique(np.asarray(ns["codes"]))) <= {-1, 0, 1}
    np.testing.assert_allclose(ns["w_hat"], ns["alpha"] * ns["codes"], rtol=1e-6)
    assert ns["stack"].shape == (2, 3, 3, 16, 32)
    assert np.isfinite(float(ns["loss"](ns["params"], ns["x"], ns["y"])))
    folded = tern_jax.quantize_params(ns["params"], ns["rules"])
    np.testing.assert_allclose(ns["logits"], ns["model"].apply({"params": folded}, ns["x"]),
                               rtol=1e-5, atol=1e-5)  # branch by branch == folded
    np.testing.assert_array_equal(ns["params_again"]["conv"]["kernel"], folded["conv"]["kernel"])
    assert "conv/kernel" in capsys.readouterr().out  # the summary table was printed


def test_method_md_quotes_the_paper_and_states_where_table_and_abstract_disagree():
    """The abstract's ResNet-18 expansion claim, recomputed from the figures the page quotes."""
    text = " ".join((REPO / "docs" / "method.md").read_text().split())

    def pair(pattern):
        number = r"(\d+(?:\.\d+)?)"
        return tuple(float(v) for v in re.search(pattern.replace("NUM", number), text).groups())

    fp = pair(r"\| ResNet-18, \$t_\{ex\} = 1\$ \| NUM / NUM \|")
    t2 = pair(r"\| ResNet-18, \$t_\{ex\} = 2\$[^|]*\| \| NUM / NUM \|")
    below, above = pair(r"NUM points below full precision in top-1 and NUM above")
    gain = pair(r"and NUM / NUM points above ABC-Net")
    abc = pair(r"ABC-Net's NUM / NUM")
    stated = pair(r"both statements give NUM / NUM")
    assert (below, above, gain) == (0.42, 0.61, (1.03, 1.78))  # the abstract's figures
    assert stated == (round(fp[0] - below, 2), round(fp[1] + above, 2))
    assert stated == (round(abc[0] + gain[0], 2), round(abc[1] + gain[1], 2))
    assert t2 != stated and "table and abstract disagree" in text


def test_every_set_flag_in_the_docs_and_scripts_names_a_config_field():
    """``--set PATH=VALUE`` as the README, docs, experiment READMEs, configs and scripts write
    it: each PATH is a field of Config by its dotted path (placeholders aside)."""
    from tern_jax.train import Config
    from tern_jax.train.config import flatten

    fields = set(flatten(Config()))
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"),
             *(REPO / "experiments").rglob("*.md"), *(REPO / "experiments").rglob("*.sh"),
             *(REPO / "experiments" / "configs").glob("*.py")]
    placeholders = {"PATH", "FIELD", "path", "field", "section.field"}
    seen = []
    for path in files:
        for name in re.findall(r"--set[\s\\`]+([A-Za-z_][\w.]*)=", path.read_text()):
            if name not in placeholders:
                seen.append(name)
                assert name in fields or name.startswith("model.kwargs."), (path, name)
    assert len(seen) >= 40 and "model.kwargs.d_model" in seen
