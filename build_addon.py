"""Build the Blender extension zip.

``python build_addon.py [OUT_DIR]`` writes ``dist/flamediff-<version>.zip``: one ``flamediff/``
package holding ``blender_addon/`` at its root (with ``blender_manifest.toml``), ``operators/``,
``ui_panels/`` and the shared ``backend/formats`` package as ``formats/``. Only source files go
in: no caches, no generated assets, and a check refuses any torch or backend import, because
the add-on runs in Blender's own Python. ``source_checkout.txt`` records this checkout, so the
add-on finds the backend's Python in its ``.venv`` (``make``'s) without being told.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = {"blender_addon": "", "operators": "operators", "ui_panels": "ui_panels",
           os.path.join("backend", "formats"): "formats"}
INCLUDE = (".py", ".toml", ".md", ".txt")
FORBIDDEN_IMPORT = re.compile(r"^\s*(import|from)\s+(torch|backend|flamediff)\b", re.MULTILINE)


def manifest_version() -> str:
    """The version in ``blender_manifest.toml`` (the zip's name follows it)."""
    with open(os.path.join(ROOT, "blender_addon", "blender_manifest.toml"), encoding="utf-8") as handle:
        match = re.search(r'^version\s*=\s*"([^"]+)"', handle.read(), re.MULTILINE)
    if match is None:
        raise SystemExit("blender_manifest.toml has no version")
    return match.group(1)


def build(out_dir: str = os.path.join(ROOT, "dist")) -> str:
    """Zip the add-on sources under one ``flamediff/`` package; returns the zip path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"flamediff-{manifest_version()}.zip")
    tmp = f"{path}.tmp-{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for source, target in SOURCES.items():
            for folder, dirs, files in os.walk(os.path.join(ROOT, source)):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
                for name in sorted(files):
                    if not name.endswith(INCLUDE):
                        continue
                    full = os.path.join(folder, name)
                    if name.endswith(".py"):
                        with open(full, encoding="utf-8") as handle:
                            if FORBIDDEN_IMPORT.search(handle.read()):
                                raise SystemExit(f"{full} imports torch or the flamediff backend; the add-on may not")
                    relative = os.path.relpath(full, os.path.join(ROOT, source))
                    archive.write(full, os.path.join("flamediff", target, relative))
        archive.writestr("flamediff/source_checkout.txt", ROOT)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(build(*sys.argv[1:2]))
