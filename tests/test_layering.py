"""The package's import layering (tern_jax/__init__.py) is the real one: no module imports up."""

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "tern_jax"

# floor of each top-level part; a module may import only parts on its own floor or below
FLOORS = {"core": 1, "packing": 1, "_args": 1, "_imports": 1, "fs": 1, "fields": 1,
          "rules": 2, "summary": 2, "checkpoint": 2, "layers": 2, "nnx_utils": 2,
          "presets": 2, "integrity": 2, "activations": 2, "models": 3,
          "sharding": 2, "data": 3, "gather": 3, "train": 4, "export": 4, "export_vocab": 4,
          "export_hf": 4, "cli": 5, "__main__": 5, "report": 4}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tern_jax"):
            yield node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tern_jax"):
                    yield alias.name


def test_every_module_imports_only_its_floor_or_below():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package root re-exports the public API
        part = rel.parts[0].removesuffix(".py")
        assert part in FLOORS, f"{rel}: add its part {part!r} to the layering"
        for module in _imports(path):
            other = _part(module)
            if not other or other == part:
                continue
            assert other in FLOORS, f"{rel} imports unknown part {module}"
            if FLOORS[other] > FLOORS[part]:
                violations.append(f"{rel} imports {module}")
    assert not violations, violations


def _top_level_imports(path: Path) -> set[str]:
    """The top-level packages a module imports (every ``import`` statement, nested or not)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names.add("tern_jax")  # a relative import is the package itself
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
    return names


def test_core_imports_only_jax_and_the_standard_library():
    imported = _top_level_imports(PACKAGE / "core.py")
    others = {name for name in imported - {"jax", "__future__"}
              if name not in sys.stdlib_module_names}
    assert "jax" in imported and not others, f"core.py imports {sorted(others)}"


def test_core_loads_and_quantizes_alone_without_flax_tern_jax_or_files(tmp_path):
    """core.py run on its own, with ``open`` disabled: nothing above it, no I/O."""
    script = f"""
import builtins, importlib.util, io, sys
spec = importlib.util.spec_from_file_location("core_alone", {str(PACKAGE / "core.py")!r})
core = importlib.util.module_from_spec(spec)
def no_files(*args, **kwargs):
    raise AssertionError(f"core.py opened a file: {{args}}")
import jax, jax.numpy as jnp  # jax itself may read files while it starts
jax.numpy.zeros(1).block_until_ready()
builtins.open = io.open = no_files
spec.loader.exec_module(core)
w = jnp.array([[1.0, -0.5, 0.04], [0.2, -0.06, 0.0]])
out = core.ternarize(w)
assert jnp.allclose(out, 0.44 * jnp.array([[1, -1, 0], [1, -1, 0]]))  # Δ = 0.05, α = 0.44
print(sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "tern_jax", "optax",
                                                                "orbax")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_the_modules_of_train_import_each_other_without_cycles():
    """train/ is one concept per module; a stage or the loop never reaches back up."""
    graph = {}
    for path in sorted((PACKAGE / "train").glob("*.py")):
        if path.name == "__init__.py":
            continue
        name = path.stem
        graph[name] = {m.split(".")[2] for m in _imports(path)
                       if m.startswith("tern_jax.train.") and m.count(".") == 2} - {name}
        # "from tern_jax.train import distributed, warm_start" names modules too
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "tern_jax.train":
                graph[name] |= {a.name for a in node.names
                                if (PACKAGE / "train" / f"{a.name}.py").exists()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for other in graph.get(node, ()):
            visit(other, trail + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])
    assert graph["loop"] and "stages" not in graph["loop"] and "loop" in graph["stages"]
