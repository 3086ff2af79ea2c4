"""The backend's import structure as docs/ARCHITECTURE.md states it: layers import only the layers
before them, no package imports another module's private names, and the packages split for
issue 16 and their neighbours have no import cycles."""

from __future__ import annotations

import ast
import os

import pytest

BACKEND = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backend")

#: docs/ARCHITECTURE.md's order: a module may import its own layer's package and lower ranks.
RANK = {"formats": 0, "errors": 0, "devices": 1, "assets": 1, "geometry": 1, "flame": 2, "gaussians": 3, "models": 4, "pipelines": 5,
        "data": 6, "tracking": 7, "server": 8, "training": 8, "evaluation": 8, "demo": 9, "cli": 10,
        "__main__": 11, "": 11}
#: The documented exceptions (inside functions): training writes the VAE report, curves load runs.
ALLOWED = {("training", "evaluation.reconstruction"), ("evaluation.curve", "training")}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, BACKEND)[:-3].replace(os.sep, ".")
    return "" if rel == "__init__" else rel.removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Every backend module (``data.splits``) -> the flamediff modules or names it imports."""
    out: dict[str, set[str]] = {}
    for folder, _, files in os.walk(BACKEND):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), path)
            found = out.setdefault(_module_name(path), set())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("flamediff."):
                    found.update(f"{node.module[len('flamediff.'):]}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    found.update(a.name[len("flamediff."):] for a in node.names if a.name.startswith("flamediff."))
    return out


IMPORTS = _imports()


def _resolve(target: str) -> str:
    """``data.splits.read_splits`` -> ``data.splits`` (the module part of an imported name)."""
    while target and target not in IMPORTS:
        target = target.rpartition(".")[0]
    return target


def _layer_violations() -> list[str]:
    wrong = []
    for module, targets in IMPORTS.items():
        layer = module.split(".")[0]
        for target in map(_resolve, targets):
            other = target.split(".")[0]
            allowed = any(module.startswith(a) and target.startswith(b) for a, b in ALLOWED)
            if other != layer and RANK[other] >= RANK[layer] and not allowed:
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def test_layers_import_only_the_layers_before_them():
    assert not _layer_violations(), "imports against docs/ARCHITECTURE.md's layer order"


def test_inference_reaching_into_dataset_code_is_a_violation(monkeypatch):
    monkeypatch.setitem(IMPORTS, "models.geometry_control",
                        IMPORTS["models.geometry_control"] | {"data.procedural.renderer.ProceduralRenderer"})
    assert _layer_violations() == ["models.geometry_control imports data.procedural.renderer"]


def test_no_module_imports_another_modules_private_names():
    private = sorted(f"{module} imports {target}" for module, targets in IMPORTS.items() for target in targets
                     if target.rpartition(".")[2].startswith("_") and not target.endswith("__version__"))
    assert not private


def _cycles(modules: set[str]) -> list[list[str]]:
    graph = {m: {t for t in map(_resolve, IMPORTS[m]) if t in modules and t != m} for m in modules}
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(modules):
        visit(module, [])
    return cycles


@pytest.mark.parametrize("package", ["formats", "geometry", "flame", "gaussians", "models", "pipelines", "data",
                                     "training", "evaluation", "tracking"])
def test_package_has_no_import_cycle(package):
    modules = {m for m in IMPORTS if m == package or m.startswith(package + ".")}
    assert modules and not _cycles(modules)


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(IMPORTS, "evaluation.selection", IMPORTS["evaluation.selection"] | {"evaluation.studies.x"})
    assert _cycles({m for m in IMPORTS if m.startswith("evaluation")})
