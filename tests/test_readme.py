"""The README's set-up commands are the ones CI and users run."""

import re
from pathlib import Path

REPO = Path(__file__).parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"^    (pip install .+)$", readme, flags=re.M)
    assert len(commands) == 2, commands
    install_and_main, install_and_tests = commands
    assert "tern-jax quickstart" in install_and_main
    assert install_and_tests in ci.splitlines()


def test_the_main_job_is_a_registered_command():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'tern-jax = "tern_jax.cli:main"' in pyproject
    from tern_jax.cli import build_parser

    assert build_parser().parse_args(["quickstart"]).command == "quickstart"


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
