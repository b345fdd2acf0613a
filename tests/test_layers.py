"""The package's layers: every import inside mlcm_core points down, and nothing in it imports the app.

Why a test: a back-up arrow (models importing train for the checkpoint format, issue 19) makes a lower layer
depend on a higher one, so a change in training can break loading a model. Imports inside functions count too.
"""

from __future__ import annotations

import ast

from tests.conftest import ROOT

# lower number = lower layer; a module may import only from strictly lower layers (and from its own package)
LAYERS = {"io": 0, "scale": 0, "data": 1, "modalities": 2, "featurize": 2, "dft": 2, "models": 3, "losses": 3,
          "train": 4, "explore": 5, "evaluate": 6, "cli": 7, "__init__": 8}


def _imports(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_every_import_in_mlcm_core_points_down_and_never_at_the_app():
    core = ROOT / "mlcm_core"
    upward, unknown = [], set()
    for path in sorted(core.rglob("*.py")):
        rel = path.relative_to(core)
        package = rel.parts[0].removesuffix(".py")
        if package not in LAYERS:
            unknown.add(package)
            continue
        for name in _imports(path):
            if name == "app" or name.startswith("app."):
                upward.append(f"{rel} imports {name}")
            if not name.startswith("mlcm_core."):
                continue
            target = name.split(".")[1]
            if target in LAYERS and target != package and LAYERS[target] >= LAYERS[package]:
                upward.append(f"{rel} imports {name}")
    assert not unknown, f"new packages need a layer in LAYERS: {sorted(unknown)}"
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)
