"""The import structure as docs/ARCHITECTURE.md states it: the backend's layers import only the
layers before them, no package imports another module's private names, and the packages have no
import cycles; every module has one name: the add-on's imports resolve inside its zip and on
disk alike, no package extends its search path, and the checkout's folders do not import under
names of their own."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = os.path.join(ROOT, "backend")
#: The add-on's source folders; the zip holds them (and backend/formats) at these paths under flamediff/.
ADDON_FOLDERS = ("blender_addon", "operators", "ui_panels")

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


# ----------------------------------------------------------------------------- one name per module

def _sources(*folders: str) -> list[str]:
    """Checkout-relative paths of the Python files in ``folders``."""
    return sorted(os.path.relpath(os.path.join(base, name), ROOT) for folder in folders
                  for base, _, names in os.walk(os.path.join(ROOT, folder)) for name in names if name.endswith(".py"))


def _parsed(relative: str) -> ast.Module:
    with open(os.path.join(ROOT, relative), encoding="utf-8") as handle:
        return ast.parse(handle.read(), relative)


def _relative_imports(relative: str) -> list[tuple[int, str, list[str]]]:
    """``(level, module, names)`` of each relative import in one checkout file."""
    return [(node.level, node.module or "", [a.name for a in node.names]) for node in ast.walk(_parsed(relative))
            if isinstance(node, ast.ImportFrom) and node.level]


def _defines(init: str, name: str) -> bool:
    """Whether the checkout's package ``init`` (a '/'-separated ``__init__.py`` path) assigns ``name``."""
    path = os.path.join(ROOT, *init.split("/"))
    return os.path.isfile(path) and any(
        isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets)
        or isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name
        for node in _parsed(os.path.relpath(path, ROOT)).body)


def _unresolved(relative: str, imports: list[tuple[int, str, list[str]]], tree: set[str]) -> list[str]:
    """The imports of ``relative`` (a path in ``tree``, '/'-separated) that name nothing in ``tree``:
    ``from ..x import y`` needs the module or package ``x`` there; ``from .. import y`` needs ``y`` to be
    a module there or a name the package's ``__init__.py`` defines. The tree's root is the zip's package
    (in the checkout: the folder that holds the add-on's folders)."""
    folder = relative.replace(os.sep, "/").split("/")[:-1]

    def exists(path: list[str]) -> bool:
        return "/".join(path) + ".py" in tree or "/".join(path + ["__init__.py"]) in tree

    wrong = []
    for level, module, names in imports:
        base = folder[:len(folder) - (level - 1)] if level - 1 <= len(folder) else None
        parts = (base or []) + [p for p in module.split(".") if p]
        init = "/".join(parts + ["__init__.py"])
        found = base is not None and (not parts or exists(parts)) and (bool(module) or all(
            exists(parts + [name]) or init in tree and _defines(init, name) for name in names))
        if not found:
            wrong.append(f"{relative.replace(os.sep, '/')}: from {'.' * level}{module} import {', '.join(names)}")
    return wrong


@pytest.fixture(scope="module")
def zip_tree(installed_addon: dict) -> set[str]:
    """The built zip's files, relative to its ``flamediff/`` package."""
    names = zipfile.ZipFile(installed_addon["zip"]).namelist()
    assert all(n.startswith("flamediff/") for n in names)
    return {n[len("flamediff/"):] for n in names}


def test_the_zip_holds_the_add_on_folders_at_their_checkout_paths(zip_tree: set[str]) -> None:
    sources = {p.replace(os.sep, "/") for p in _sources(*ADDON_FOLDERS, os.path.join("backend", "formats"))}
    assert sources <= zip_tree
    assert zip_tree - sources == {"__init__.py", "backend/__init__.py", "blender_manifest.toml",
                                  "source_checkout.txt"} | {p for p in zip_tree - sources if not p.endswith(".py")}


def test_every_add_on_import_resolves_inside_the_zip_and_on_disk(zip_tree: set[str]) -> None:
    """The same import text names the same file in the checkout and in the zip, and never a file the
    zip lacks (the backend outside ``backend/formats``)."""
    on_disk = {p.replace(os.sep, "/") for p in _sources(*ADDON_FOLDERS, "backend")}
    wrong = []
    for relative in _sources(*ADDON_FOLDERS, os.path.join("backend", "formats")):
        imports = _relative_imports(relative)
        wrong += _unresolved(relative, imports, zip_tree) + _unresolved(relative, imports, on_disk)
    assert not wrong


def test_an_import_of_the_zip_s_old_shape_is_unresolved(zip_tree: set[str]) -> None:
    operator = os.path.join("operators", "render_ops.py")
    assert _unresolved(operator, [(2, "", ["animation_io"]), (2, "formats.protocol", ["PROTOCOL_VERSION"]),
                                  (2, "backend.server.jobs", ["Job"]), (3, "", ["x"])], zip_tree) == [
        "operators/render_ops.py: from .. import animation_io",
        "operators/render_ops.py: from ..formats.protocol import PROTOCOL_VERSION",
        "operators/render_ops.py: from ..backend.server.jobs import Job",
        "operators/render_ops.py: from ... import x"]
    assert not _unresolved(operator, [(2, "blender_addon", ["animation_io"]), (1, "common", ["NO_RIG"])], zip_tree)


#: The add-on's plain-Python modules (docs/ARCHITECTURE.md): the logic that operators, panels and the
#: render engine call, tested without Blender.
PLAIN_PYTHON = ("backend_client", "backend_job", "diagnosis", "engine_job", "local_backend", "render_inputs",
                "render_job", "track_job")


def _plain_python_breaches(name: str) -> list[str]:
    """What ``blender_addon/<name>.py`` imports that is bpy, or add-on code that is not plain Python."""
    wrong = []
    for node in ast.walk(_parsed(os.path.join("blender_addon", name + ".py"))):
        if isinstance(node, ast.Import):
            wrong += [a.name for a in node.names if a.name.split(".")[0] in ("bpy", "bpy_extras")]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            wrong += [node.module or ""] if (node.module or "").split(".")[0] in ("bpy", "bpy_extras") else []
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            modules = [node.module.split(".")[0]] if node.module else [
                a.name if os.path.isfile(os.path.join(ROOT, "blender_addon", a.name + ".py")) else "__init__"
                for a in node.names]
            wrong += [f".{module}" for module in modules if module not in (*PLAIN_PYTHON, "__init__")]
        elif isinstance(node, ast.ImportFrom):
            wrong += [] if (node.module or "").startswith("backend.formats") else [f"..{node.module or ''}"]
    return [f"{name}: {target}" for target in wrong]


def test_the_add_on_s_plain_python_modules_reach_no_bpy() -> None:
    assert not [breach for name in PLAIN_PYTHON for breach in _plain_python_breaches(name)]
    package = _parsed(os.path.join("blender_addon", "__init__.py")).body   # bpy comes at register()
    top = [a.name for node in package if isinstance(node, ast.Import) for a in node.names] + [
        "." * node.level + (node.module or "") for node in package if isinstance(node, ast.ImportFrom)]
    assert top and not [name for name in top if name.split(".")[0] in ("bpy", "bpy_extras", "")], top
    assert _plain_python_breaches("render_scene")   # the check sees a bpy module for what it is


def test_the_plain_python_modules_are_those_docs_architecture_names() -> None:
    """Every add-on module without bpy is listed (so the check covers a new one), as the page says."""
    without_bpy = {os.path.basename(relative)[:-3] for relative in _sources("blender_addon")
                   if relative.endswith(".py") and not relative.endswith("__init__.py")
                   and not _imports_bpy(relative)}
    assert without_bpy == set(PLAIN_PYTHON)
    with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8") as handle:
        page = " ".join(handle.read().split())
    named = page.split("checks that these modules (", 1)[1].split(")", 1)[0]
    assert named == ", ".join(f"`{name}`" for name in PLAIN_PYTHON)


def _imports_bpy(relative: str) -> bool:
    return any(name.split(".")[0] in ("bpy", "bpy_extras") for node in ast.walk(_parsed(relative))
               for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []))


def test_the_add_on_names_no_top_level_package_of_the_checkout() -> None:
    """Inside the add-on every import of its own code is relative (absolute names differ per install)."""
    ours = {"blender_addon", "operators", "ui_panels", "backend", "flamediff", "formats"}
    wrong = [f"{relative}: {name}" for relative in _sources(*ADDON_FOLDERS, os.path.join("backend", "formats"))
             for node in ast.walk(_parsed(relative))
             for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                          [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
             if name.split(".")[0] in ours and not relative.startswith("backend")]
    assert not wrong


def test_no_package_extends_its_search_path() -> None:
    wrong = [relative for relative in _sources(*ADDON_FOLDERS, "backend", "build_addon.py") for node in
             ast.walk(_parsed(relative)) if isinstance(node, ast.Name) and node.id == "__path__"
             or isinstance(node, ast.Attribute) and node.attr == "__path__"]
    assert not wrong


def test_the_checkout_folders_do_not_import_under_names_of_their_own(tmp_path) -> None:
    """From the checkout root, ``backend`` (the source folder of ``flamediff``) and the add-on's folders
    refuse to import: their modules exist once, as ``flamediff.*`` and inside the built add-on."""
    names = ["backend", "backend.formats.protocol", "blender_addon", "blender_addon.render_job", "operators",
             "ui_panels"]
    code = ("import importlib, json, sys\nout = {}\nfor name in sys.argv[1:]:\n    try:\n"
            "        importlib.import_module(name)\n        out[name] = 'imported'\n"
            "    except ImportError as exc:\n        out[name] = str(exc)\nprint(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert "imported" not in found.values(), found
    assert "source folder of the package 'flamediff'" in found["backend.formats.protocol"]
    assert "build_addon.py" in found["blender_addon.render_job"]
    assert "beyond top-level package" in found["operators"] and "beyond top-level package" in found["ui_panels"]


def test_the_installed_add_on_has_one_module_per_file_and_one_object_per_class(installed_addon: dict,
                                                                                 tmp_path) -> None:
    """In Blender's shape (bpy importable), every module of the installed zip loaded: each file is one
    module, named by its path; none comes from the checkout; and what an operator, a panel or the
    engine uses is the object the add-on's own module defines."""
    addon, package = installed_addon["name"], installed_addon["package"]
    code = f"""
import importlib, json, os, sys
package = {package!r}
for base, _, names in os.walk(package):
    for name in sorted(n for n in names if n.endswith(".py")):
        relative = os.path.relpath(os.path.join(base, name), package)[:-3].replace(os.sep, ".")
        importlib.import_module({addon!r} + ("" if relative == "__init__" else "." + relative.removesuffix(".__init__")))
a = importlib.import_module({addon!r})
files = {{}}
for name, module in list(sys.modules.items()):
    if getattr(module, "__file__", None):
        files.setdefault(os.path.realpath(module.__file__), []).append(name)
ours = {{f: n for f, n in files.items() if f.startswith(os.path.realpath(package))}}
same = {{
    "operator's render_job": a.operators.render_ops.render_job is a.blender_addon.render_job,
    "operator's FlameAssetError": a.operators.rig_ops.FlameAssetError is a.backend.formats.flame_asset.FlameAssetError,
    "operator's AnimationFormatError":
        a.operators.animation_ops.AnimationFormatError is a.backend.formats.animation.AnimationFormatError,
    "panel's rig module": a.ui_panels.panels.rigmod is a.blender_addon.rig,
    "engine's RenderJob": a.blender_addon.engine_job.RenderJob is a.blender_addon.render_job.RenderJob,
    "track job's BackendJob": a.blender_addon.track_job.BackendJob is a.blender_addon.backend_job.BackendJob,
    "operators' job registry": a.operators.common.backend_job is a.blender_addon.backend_job,
    "client's protocol version": a.blender_addon.backend_client.PROTOCOL_VERSION
        is a.backend.formats.protocol.PROTOCOL_VERSION,
}}
print(json.dumps({{"ours": ours, "same": same, "names": sorted(n for ns in files.values() for n in ns),
                  "checkout": sorted(f for f in files if f.startswith({ROOT!r} + os.sep)
                                     and not f.startswith({ROOT!r} + os.sep + ".venv"))}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONPATH=installed_addon["path"]))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["same"] and all(found["same"].values()), found["same"]
    assert len(found["ours"]) == len(_sources(*ADDON_FOLDERS, os.path.join("backend", "formats"))) + 2
    for file, names in found["ours"].items():
        relative = os.path.relpath(file, os.path.realpath(installed_addon["package"]))[:-3].replace(os.sep, ".")
        assert names == [addon + ("" if relative == "__init__" else "." + relative.removesuffix(".__init__"))]
    assert not found["checkout"], "modules loaded from the checkout instead of the installed add-on"
    assert not [n for n in found["names"] if n.split(".")[0] in {"flamediff", "backend", "blender_addon", "torch"}]
