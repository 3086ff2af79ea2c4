"""The import package is ``flamediff`` (its source folder is ``backend/``), and a wheel built from
the project carries the shipped demo checkpoint and the protocol document, so ``pip install`` of
the wheel renders the demo without a checkout."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

from flamediff.formats.animation import make_clip, save_animation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _source_packages() -> set[str]:
    found = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "backend")):
        if "__init__.py" in files:
            relative = os.path.relpath(folder, os.path.join(ROOT, "backend"))
            found.add("flamediff" if relative == "." else "flamediff." + relative.replace(os.sep, "."))
    return found


def test_every_source_package_is_listed_in_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        setuptools = tomllib.load(handle)["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"flamediff": "backend"}
    assert set(setuptools["packages"]) == _source_packages()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """Built from a copy of the sources, so a stale ``build/`` folder of the checkout cannot leak in."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(os.path.join(ROOT, "backend"), source / "backend",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(source)], capture_output=True, text=True, timeout=600, cwd=str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return glob.glob(str(out / "*.whl"))[0]


def test_wheel_ships_the_demo_checkpoint_under_flamediff(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"flamediff/" + os.path.relpath(os.path.join(folder, name), os.path.join(ROOT, "backend"))
               .replace(os.sep, "/")
               for folder, _, files in os.walk(os.path.join(ROOT, "backend", "checkpoints", "demo")) for name in files}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "flamediff/server/PROTOCOL.md" in names
    assert not any(name.startswith("backend/") for name in names), "the wheel must not install a 'backend' package"


@pytest.mark.slow
def test_installed_wheel_renders_the_demo_in_a_fresh_venv(wheel, tmp_path):
    """The wheel goes into a new venv; its dependencies come from this environment's
    site-packages through a plain path line (no .pth processing, so this checkout's editable
    install stays invisible), and ``flamediff render`` runs from outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python"))
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                                "-q", wheel], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "deps_from_test_env.pth"), "w") as handle:
        handle.write(sysconfig.get_path("purelib") + "\n")
    animation = tmp_path / "head.npz"
    save_animation(animation, make_clip(2))
    script = os.path.join(os.path.dirname(python), "flamediff.exe" if os.name == "nt" else "flamediff")
    environment = {**os.environ, "FLAMEDIFF_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import flamediff, os; print(os.path.dirname(flamediff.__file__))"],
                           capture_output=True, text=True, check=True, cwd=str(tmp_path), env=environment).stdout.strip()
    assert os.path.realpath(where).startswith(os.path.realpath(str(venv))), where
    reference = os.path.join(where, "checkpoints", "demo", "reference.png")
    rendered = subprocess.run([script, "render", "--reference", reference, "--animation", str(animation),
                               "--out", str(tmp_path / "frames"), "--device", "cpu"],
                              capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=environment)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert len(glob.glob(str(tmp_path / "frames" / "frame_*.png"))) == 2
