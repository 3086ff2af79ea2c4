"""Build the Blender extension zip: the add-on's folders, as they lie in the checkout.

``python build_addon.py [OUT_DIR]`` writes ``dist/flamediff-<version>.zip``: one ``flamediff/``
package holding the checkout's ``blender_addon/``, ``operators/``, ``ui_panels/`` and
``backend/formats/`` at the same relative paths, so every relative import reads the same on disk
and in the zip (``from ..backend.formats.animation import ...`` in ``blender_addon/`` is
``backend/formats/animation.py`` in both). This zip is the add-on: the checkout's folders are its
sources and are not importable as it. The zip's root gets ``blender_manifest.toml`` (from
``blender_addon/``), an ``__init__.py`` that hands Blender ``blender_addon``'s ``register`` and
``unregister``, and ``backend/__init__.py`` (only ``formats`` of the backend ships). Only source
files go in: no caches, no generated assets, and a check refuses any torch or absolute backend
import, because the add-on runs in Blender's own Python. ``source_checkout.txt`` records this
checkout, so the add-on finds the backend's Python in its ``.venv`` (``make``'s) without being told.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "flamediff"  # the extension's id (blender_manifest.toml); Blender imports it as bl_ext.<repo>.flamediff
SOURCES = ("blender_addon", "operators", "ui_panels", os.path.join("backend", "formats"))
MANIFEST = os.path.join("blender_addon", "blender_manifest.toml")
INCLUDE = (".py", ".toml", ".md", ".txt")
FORBIDDEN_IMPORT = re.compile(r"^\s*(import|from)\s+(torch|backend|flamediff|blender_addon)\b", re.MULTILINE)
WRITTEN = {
    "__init__.py": '"""The flamediff extension, as built by build_addon.py: its add-on is blender_addon/."""\n\n'
                   "from .blender_addon import register, unregister  # noqa: F401\n",
    "backend/__init__.py": '"""The backend\'s shared formats package, the only part of the backend the add-on ships."""\n',
    "source_checkout.txt": ROOT,
}


def manifest_version() -> str:
    """The version in ``blender_manifest.toml`` (the zip's name follows it)."""
    with open(os.path.join(ROOT, MANIFEST), encoding="utf-8") as handle:
        match = re.search(r'^version\s*=\s*"([^"]+)"', handle.read(), re.MULTILINE)
    if match is None:
        raise SystemExit("blender_manifest.toml has no version")
    return match.group(1)


def source_files() -> list[str]:
    """The checkout-relative paths that go into the zip (at the same path under ``flamediff/``)."""
    found = []
    for source in SOURCES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, source)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            found += [os.path.relpath(os.path.join(folder, name), ROOT) for name in sorted(files)
                      if name.endswith(INCLUDE) and os.path.join(folder, name) != os.path.join(ROOT, MANIFEST)]
    return found


def build(out_dir: str = os.path.join(ROOT, "dist")) -> str:
    """Zip the add-on sources under one ``flamediff/`` package; returns the zip path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{PACKAGE}-{manifest_version()}.zip")
    tmp = f"{path}.tmp-{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative in source_files():
            full = os.path.join(ROOT, relative)
            if relative.endswith(".py"):
                with open(full, encoding="utf-8") as handle:
                    if FORBIDDEN_IMPORT.search(handle.read()):
                        raise SystemExit(f"{full} imports torch or the backend by name; the add-on may not")
            archive.write(full, f"{PACKAGE}/{relative.replace(os.sep, '/')}")
        archive.write(os.path.join(ROOT, MANIFEST), f"{PACKAGE}/blender_manifest.toml")
        for name, text in WRITTEN.items():
            archive.writestr(f"{PACKAGE}/{name}", text)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(build(*sys.argv[1:2]))
