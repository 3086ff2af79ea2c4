"""A wheel built from the project carries the shipped demo checkpoint (the default model) and
the protocol document, so `pip install flamediff` renders without a checkout."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_ships_the_demo_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), ROOT], capture_output=True, text=True, timeout=600,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    names = set(zipfile.ZipFile(glob.glob(str(tmp_path / "*.whl"))[0]).namelist())
    shipped = {os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
               for folder, _, files in os.walk(os.path.join(ROOT, "backend", "checkpoints", "demo")) for name in files}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "backend/server/PROTOCOL.md" in names
