"""Re-renders the README's pictures from the notebooks: python docs/images/render.py

Executes each notebook in notebooks/ (nbclient, the default python3 kernel, matplotlib's
inline backend) and writes the first PNG of every code cell whose metadata carries
``"figure": NAME`` to docs/images/NAME.png, in a 64-colour palette (small files). The
notebooks themselves stay without outputs.
"""

import base64
import io
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def render(notebook_path: Path, out_dir: Path) -> list[Path]:
    notebook = nbformat.read(notebook_path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook_path.parent)}}).execute()
    written = []
    for cell in notebook.cells:
        name = cell.metadata.get("figure")
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if "image/png" in o.get("data", {})]
        if name and pngs:
            path = out_dir / f"{name}.png"
            image = Image.open(io.BytesIO(base64.b64decode(pngs[0]))).convert("RGB")
            # a 64-colour palette keeps line plots sharp at a fraction of the size
            image.quantize(colors=64).save(path, optimize=True)
            written.append(path)
    return written


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in names:
        for path in render(ROOT / "notebooks" / name, Path(__file__).parent):
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")
