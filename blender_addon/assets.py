"""Which FLAME asset the add-on builds rigs from, loaded once per folder.

Only the shared ``formats`` package is used (numpy + stdlib): the add-on never imports torch or
the backend, so it runs in Blender's own Python.
"""

from __future__ import annotations

import os

import bpy

from . import EXTENSION
from ..backend.formats.flame_asset import FlameAsset, FlameAssetError, load_flame_asset
from ..backend.formats.procedural_head import ensure_procedural_head

_CACHE: dict[str, tuple[float, FlameAsset, dict]] = {}


def asset_folder(context: bpy.types.Context) -> str:
    """The preference's folder, else the procedural head generated into Blender's user data folder."""
    from .preferences import get_preferences

    folder = get_preferences(context).asset_folder.strip()
    if folder:
        return os.path.abspath(bpy.path.abspath(folder))
    return ensure_procedural_head(bpy.utils.extension_path_user(EXTENSION, path="assets", create=True))


def _stamp(folder: str) -> float:
    """Newest modification time in the folder, so an edited asset is reloaded."""
    return max((os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)), default=0.0)


def load(folder: str) -> tuple[FlameAsset, dict]:
    """``(asset, identity)`` for ``folder``; loading and hashing happen once per folder version."""
    if not os.path.isdir(folder):
        raise FlameAssetError(f"{folder} is not a folder: set the FLAME asset folder in the flamediff "
                              f"preferences, or leave it empty for the procedural head")
    stamp = _stamp(folder)
    cached = _CACHE.get(folder)
    if cached is None or cached[0] != stamp:
        asset = load_flame_asset(folder)
        cached = (stamp, asset, dict(asset.identity()))
        _CACHE[folder] = cached
    return cached[1], cached[2]


def current(context: bpy.types.Context) -> tuple[FlameAsset, dict]:
    """The asset the preferences select, with its identity ``{name, hash}``."""
    return load(asset_folder(context))
