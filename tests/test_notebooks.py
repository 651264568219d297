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


# Run first in the kernel: the audit of tests/helpers/notebook_audit.py, as a module of its own
# so that no name of it is one a notebook could replace.
AUDIT_SOURCE = Path(__file__).parent / "helpers" / "notebook_audit.py"
AUDIT = f"""\
import types as _types
_audit_module = _types.ModuleType("_notebook_audit")
exec(compile({AUDIT_SOURCE.read_text()!r}, {str(AUDIT_SOURCE)!r}, "exec"), _audit_module.__dict__)
_outside = _audit_module.install()
"""


def execute(path: Path, kernel_name: str, timeout: int = 600, audit: bool = False):
    """Runs every cell of ``path`` in a fresh kernel; a failing cell fails the test.

    With ``audit`` a first cell records the files opened outside the repository and a last
    cell prints them as JSON (the last cell's output).
    """
    notebook = nbformat.read(path, as_version=4)
    if audit:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(AUDIT))
        notebook.cells.append(nbformat.v4.new_code_cell(
            "import json as _json; print(_json.dumps(sorted(set(_outside))))"))
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{ANSI.sub('', str(e))}", pytrace=False)
    return notebook


def _readme_notebooks() -> dict[str, list[str]]:
    """The notebooks the README's Notebooks section lists, each with the pictures under it."""
    readme = (NOTEBOOKS_DIR.parent / "README.md").read_text()
    section = readme.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for item in re.split(r"^\d+\. ", section, flags=re.M)[1:]:
        name = re.match(r"\*\*`([\w.]+\.ipynb)`\*\*", item).group(1)
        listed[name] = re.findall(r"\(docs/images/(\w+)\.png\)", item)
    return listed


def test_the_readme_lists_every_notebook_with_the_pictures_it_draws():
    listed = _readme_notebooks()
    assert sorted(listed) == [p.name for p in NOTEBOOKS]
    for name, pictures in listed.items():
        notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        drawn = [c.metadata["figure"] for c in notebook.cells if c.metadata.get("figure")]
        assert set(pictures) <= set(drawn), (name, pictures, drawn)
        for picture in drawn:  # what docs/images/render.py writes from this notebook
            assert (NOTEBOOKS_DIR.parent / "docs" / "images" / f"{picture}.png").is_file()


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_reading_only_the_repository(path, kernel_name):
    notebook = execute(path, kernel_name, audit=True)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    outside = json.loads(code[-1].outputs[-1]["text"])
    assert outside == [], f"{path.name} reads files a checkout does not have: {outside}"


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


def test_a_notebook_reading_beside_the_repository_is_caught(tmp_path, kernel_name):
    (tmp_path / "shared.txt").write_text("not in a user's checkout")
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    path = tmp_path / "repo" / "notebooks" / "reads_outside.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("text = open('../../shared.txt').read()"),
        nbformat.v4.new_code_cell("from pathlib import Path; Path('inside.txt').write_text('x')"),
    ]), path)
    notebook = execute(path, kernel_name, timeout=120, audit=True)
    outside = json.loads(notebook.cells[-1].outputs[-1]["text"])
    assert outside == [str((tmp_path / "shared.txt").resolve())]


def _checkout_beside(tmp_path):
    """``tmp_path/work`` holding a checkout ``repo/`` and, beside it, ``shared.txt``."""
    work = tmp_path / "work"
    (work / "repo" / "notebooks").mkdir(parents=True)
    (work / "shared.txt").write_text("not in a user's checkout")
    return work


def test_the_audit_skips_the_interpreters_folders_but_not_a_folder_above_the_checkout(
        tmp_path, monkeypatch):
    from helpers.notebook_audit import Audit, interpreter_roots

    work = _checkout_beside(tmp_path)
    prefix, extra = work / "venv", work / "vendored"
    site_dir = prefix / "lib" / "python3" / "site-packages"
    site_dir.mkdir(parents=True)
    extra.mkdir()
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.syspath_prepend(str(extra))
    monkeypatch.syspath_prepend(str(work))  # the checkout's own folder on sys.path hides nothing
    audit = Audit(work / "repo", interpreter_roots())
    assert not audit.reads_outside(prefix / "pyvenv.cfg")
    assert not audit.reads_outside(site_dir / "numpy" / "__init__.py")
    assert not audit.reads_outside(extra / "module.py")
    assert not audit.reads_outside(work / "repo" / "README.md")
    assert audit.reads_outside(work / "shared.txt")
    assert audit.reads_outside(work)  # listing the folder beside the checkout
    # a folder put on sys.path after the audit started is counted like any other
    (work / "late").mkdir()
    monkeypatch.syspath_prepend(str(work / "late"))
    assert Audit(work / "repo", [prefix]).reads_outside(work / "late" / "module.py")
    audit.hook("open", (str(work / "shared.txt"), "r", 0))
    audit.hook("open", (str(prefix / "pyvenv.cfg"), "r", 0))
    audit.hook("open", (7, "r", 0))  # a file descriptor: already audited when opened
    assert audit.outside == [str((work / "shared.txt").resolve())]


@pytest.mark.parametrize("where", ["beside", "inside"])
def test_the_audit_counts_no_file_of_a_venv_beside_or_inside_the_checkout(tmp_path, where):
    """A real virtual environment, its interpreter running the audit as a kernel would."""
    import subprocess
    import venv

    work = _checkout_beside(tmp_path)
    env_dir = work / "venv" if where == "beside" else work / "repo" / "venv"
    venv.create(env_dir, with_pip=False)
    site_dir = next(env_dir.glob("lib/python*/site-packages"))
    (site_dir / "venv_module.py").write_text("VALUE = 42\n")
    script = (f"exec(compile(open({str(AUDIT_SOURCE)!r}).read(), 'audit', 'exec'))\n"
              "outside = install()\n"
              "import json, sys, venv_module\n"
              "assert venv_module.VALUE == 42 and sys.prefix != sys.base_prefix\n"
              "open(sys.prefix + '/pyvenv.cfg').read()\n"
              "open('../../shared.txt').read()\n"
              "print(json.dumps(outside))\n")
    done = subprocess.run([str(env_dir / "bin" / "python"), "-c", script], text=True,
                          capture_output=True, cwd=work / "repo" / "notebooks", timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [str((work / "shared.txt").resolve())]


def test_rendering_an_unchanged_picture_leaves_its_file_untouched(tmp_path):
    """docs/images/render.py on an unchanged tree changes no committed picture."""
    import importlib.util

    Image = pytest.importorskip("PIL.Image")
    spec = importlib.util.spec_from_file_location(
        "render", NOTEBOOKS_DIR.parent / "docs" / "images" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    committed = NOTEBOOKS_DIR.parent / "docs" / "images" / "expansion.png"
    path = tmp_path / "expansion.png"
    Image.open(committed).convert("RGB").save(path, compress_level=1)  # same pixels, other bytes
    before = path.read_bytes()
    assert render.write_picture(Image.open(committed), path) is False
    assert path.read_bytes() == before
    changed = Image.open(committed).convert("RGB")
    changed.putpixel((0, 0), (255, 0, 0) if changed.getpixel((0, 0)) != (255, 0, 0) else (0, 0, 0))
    assert render.write_picture(changed, path) is True
    assert Image.open(path).convert("RGB").getpixel((0, 0)) == changed.getpixel((0, 0))
