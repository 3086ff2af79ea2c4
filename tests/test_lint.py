"""Lint and types are part of the suite (so `make test` and `.ci/run` check them): ruff over every
source folder, mypy over the typed packages; both are configured in pyproject.toml
([tool.ruff], [tool.mypy]) and pinned in the `test` extra."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
LINTED = ["backend", "blender_addon", "operators", "ui_panels", "tests", "benchmarks", "build_addon.py"]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed: it is in the test extra (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "--no-cache", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    result = _run("mypy")   # the files and settings of [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_catch_real_defects(tmp_path):
    """An unused import, an undefined name, a loop variable a closure captures late and a wrong
    annotation: what the configuration is for."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f() -> int:\n    calls = [lambda: i for i in range(3)]\n"
                   "    value: int = 'text'\n    return undefined_name + len(calls) + value\n")
    lint = _run("ruff", "check", "--no-cache", "--config", PYPROJECT, str(bad))
    assert lint.returncode == 1 and all(code in lint.stdout for code in ("F401", "F821", "B023"))
    types = _run("mypy", "--config-file", PYPROJECT, str(bad))
    assert types.returncode == 1 and "Incompatible types in assignment" in types.stdout
