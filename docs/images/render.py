"""Re-renders the README's pictures from the notebooks: python docs/images/render.py

Executes each notebook in notebooks/ (nbclient, matplotlib's inline backend) and writes the
first PNG of every code cell whose metadata carries ``"figure": NAME`` to docs/images/NAME.png,
in a 64-colour palette (small files). The notebooks themselves stay without outputs.

Rendering twice on an unchanged tree gives the same files:

* the kernel is this interpreter (not whatever ``python3`` kernel Jupyter finds) with a fixed
  environment: JAX on the CPU, matplotlib's bundled DejaVu Sans at a fixed resolution;
* the notebooks seed every random draw themselves, and the PNG is re-encoded here without
  metadata (no date, no software version);
* a picture whose pixels are those of the committed file is not written at all, so a different
  PNG encoder (zlib, Pillow version) cannot change a committed file either.
"""

import base64
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "tern-jax-render"
# Run before the notebook's own cells, in its kernel: one font, one resolution, everywhere.
SETUP = """\
import matplotlib
matplotlib.rcParams.update({"font.family": "DejaVu Sans", "figure.dpi": 100})
"""


def _kernel_spec(root: Path) -> None:
    """A kernel for this interpreter with a fixed environment, in a private Jupyter path."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tern_jax render", "language": "python",
        "env": {"JAX_PLATFORMS": "cpu", "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"},
    }))


def write_picture(image: Image.Image, path: Path) -> bool:
    """Writes ``image`` to ``path`` in a 64-colour palette unless ``path`` already holds its
    pixels; returns whether the file was written."""
    # a 64-colour palette keeps line plots sharp at a fraction of the size
    image = image.convert("RGB").quantize(colors=64)
    if path.exists():
        old = Image.open(path)
        if old.size == image.size and np.array_equal(np.asarray(old.convert("RGB")),
                                                     np.asarray(image.convert("RGB"))):
            return False  # the committed picture already: leave its file untouched
    image.save(path, optimize=True)
    return True


def render(notebook_path: Path, out_dir: Path) -> list[Path]:
    """Writes the notebook's figures to ``out_dir``; returns the paths written (changed)."""
    notebook = nbformat.read(notebook_path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    with tempfile.TemporaryDirectory() as jupyter:
        _kernel_spec(Path(jupyter))
        previous = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = jupyter
        try:
            NotebookClient(notebook, timeout=600, kernel_name=KERNEL,
                           resources={"metadata": {"path": str(notebook_path.parent)}}).execute()
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH")
            else:
                os.environ["JUPYTER_PATH"] = previous
    written = []
    for cell in notebook.cells:
        name = cell.metadata.get("figure")
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if "image/png" in o.get("data", {})]
        if name and pngs:
            path = out_dir / f"{name}.png"
            if write_picture(Image.open(io.BytesIO(base64.b64decode(pngs[0]))), path):
                written.append(path)
    return written


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in names:
        written = render(ROOT / "notebooks" / name, Path(__file__).parent)
        for path in written:
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes (changed)")
        if not written:
            print(f"{name}: every picture unchanged")
