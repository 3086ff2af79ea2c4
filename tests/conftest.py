"""Shared fixtures: one procedural head per test session, in a private cache; the add-on installed
from its built zip.

The add-on is the zip that build_addon.py builds (blender_addon/__init__.py says why): at the
start of the session it is built once and extracted as Blender installs an extension (the zip's
``flamediff/`` folder inside a repository folder), and that repository is importable as the
package ``extension_repo``, so ``extension_repo.flamediff.blender_addon.render_job`` is the module
Blender would load as ``bl_ext.user_default.flamediff.blender_addon.render_job``. (Not ``bl_ext``
itself: importing bpy defines that package.) The bpy tests install the zip into bpy instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The installed add-on's package: the extension repository's name, then the extension's id.
ADDON = "extension_repo.flamediff"
_INSTALLED: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    sys.path.insert(0, ROOT)
    from build_addon import build

    folder = tempfile.mkdtemp(prefix="flamediff-addon-")
    zip_path = build(os.path.join(folder, "dist"))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(os.path.join(folder, ADDON.partition(".")[0]))
    _INSTALLED.update(folder=folder, zip=zip_path, package=os.path.join(folder, *ADDON.split(".")))
    sys.path.insert(0, folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    if "folder" in _INSTALLED:
        shutil.rmtree(_INSTALLED["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def installed_addon() -> dict[str, str]:
    """``{name, zip, package, path}``: the installed add-on's package name, the session's built zip, the
    folder of its installed ``flamediff/`` package and the ``sys.path`` entry that imports it."""
    return {"name": ADDON, "zip": _INSTALLED["zip"], "package": _INSTALLED["package"], "path": _INSTALLED["folder"]}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Keep tests out of the user's ~/.cache and of any FLAME asset set in the environment."""
    cache = str(tmp_path_factory.mktemp("flamediff-cache"))
    os.environ["FLAMEDIFF_CACHE"] = cache
    os.environ.pop("FLAMEDIFF_FLAME_ASSET", None)
    return cache


@pytest.fixture(scope="session")
def head_folder(private_cache: str) -> str:
    from flamediff.assets import resolve_asset_folder

    return resolve_asset_folder()


@pytest.fixture(scope="session")
def head_asset(head_folder: str):
    from flamediff.formats.flame_asset import load_flame_asset

    return load_flame_asset(head_folder)
