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
