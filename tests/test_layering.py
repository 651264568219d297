"""The package's import layering (tern_jax/__init__.py) is the real one: no module imports up."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "tern_jax"

# floor of each top-level part; a module may import only parts on its own floor or below
FLOORS = {"core": 1, "packing": 1, "_args": 1, "fs": 1,
          "rules": 2, "summary": 2, "checkpoint": 2, "layers": 2, "nnx_utils": 2,
          "presets_lm": 2, "activations": 2, "models": 3, "data": 3, "train": 4, "export": 4,
          "cli": 5, "__main__": 5,
          "report": 4}


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


def test_core_imports_nothing_but_jax():
    source = (PACKAGE / "core.py").read_text()
    assert "import flax" not in source and "from tern_jax" not in source
    assert "import numpy" not in source and "open(" not in source


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
