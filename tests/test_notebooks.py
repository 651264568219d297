"""The notebooks run top to bottom in a real Jupyter kernel, and are committed without outputs.

Each notebook is executed by nbclient in a kernel started from this interpreter
(``sys.executable``, so the kernel sees the installed tern_jax), with its working directory in
``notebooks/`` as in Jupyter. A cell that raises fails the test with that cell's source and
error in the message.
"""

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL = "tern-jax-test"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, request):
    """A kernel spec for this interpreter in a temporary Jupyter path (nothing installed)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tern_jax tests", "language": "python",
        "env": {"MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"},
    }))
    patch = pytest.MonkeyPatch()
    patch.setenv("JUPYTER_PATH", str(root))
    request.addfinalizer(patch.undo)
    return KERNEL


def execute(path: Path, kernel_name: str, timeout: int = 600):
    """Runs every cell of ``path`` in a fresh kernel; a failing cell fails the test."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{ANSI.sub('', str(e))}", pytrace=False)
    return notebook


def test_there_are_the_four_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_small_and_without_outputs(path):
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size:,} bytes"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} has outputs in cell:\n{cell.source[:200]}\n"
                "clear them (Jupyter: Edit > Clear Outputs of All Cells) before committing")
    assert "../shared" not in path.read_text(), f"{path.name} points outside the repository"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, kernel_name):
    notebook = execute(path, kernel_name)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_a_failing_cell_fails_with_its_source_in_the_message(tmp_path, kernel_name):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("assert x == 2, 'x is not two'"),
    ])
    path = tmp_path / "broken.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(pytest.fail.Exception) as info:
        execute(path, kernel_name, timeout=120)
    message = str(info.value)
    assert "broken.ipynb: a cell failed" in message
    assert "assert x == 2, 'x is not two'" in message
    assert "AssertionError" in message and "x is not two" in message
