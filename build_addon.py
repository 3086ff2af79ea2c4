"""Build the Blender extension zip (issue #3 fills in the add-on; this assembles what exists).

``python build_addon.py`` writes ``dist/flamediff-<version>.zip`` from ``blender_addon/``,
``operators/``, ``ui_panels/`` and the shared ``backend/formats`` package.
"""

from __future__ import annotations

import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = {"blender_addon": "", "operators": "operators", "ui_panels": "ui_panels",
           os.path.join("backend", "formats"): "formats"}
SKIP = ("__pycache__", ".pyc", ".gitkeep")


def build(out_dir: str = os.path.join(ROOT, "dist"), version: str = "0.1.0") -> str:
    """Zip the add-on sources under one ``flamediff/`` package; returns the zip path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"flamediff-{version}.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for source, target in SOURCES.items():
            for folder, _, files in os.walk(os.path.join(ROOT, source)):
                for name in sorted(files):
                    if any(part in name for part in SKIP) or "__pycache__" in folder:
                        continue
                    full = os.path.join(folder, name)
                    relative = os.path.relpath(full, os.path.join(ROOT, source))
                    archive.write(full, os.path.join("flamediff", target, relative))
    return path


if __name__ == "__main__":
    print(build(*sys.argv[1:2]))
