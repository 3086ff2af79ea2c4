"""Which FLAME asset flamediff uses: an explicit folder, ``$FLAMEDIFF_FLAME_ASSET``, or the
procedural head generated once into the user's cache."""

from __future__ import annotations

import functools
import os

from flamediff.formats.flame_asset import FlameAsset, load_flame_asset
from flamediff.formats.paths import cache_dir
from flamediff.formats.procedural_head import ensure_procedural_head

ASSET_ENV = "FLAMEDIFF_FLAME_ASSET"
__all__ = ["ASSET_ENV", "cache_dir", "load_asset", "resolve_asset_folder"]  # cache_dir: the shared rule


def resolve_asset_folder(path: str | None = None) -> str:
    """The asset folder to use: ``path``, else ``$FLAMEDIFF_FLAME_ASSET``, else the procedural head."""
    chosen = path or os.environ.get(ASSET_ENV)
    if chosen:
        return os.path.expanduser(chosen)
    return ensure_procedural_head(os.path.join(cache_dir(), "assets"))


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str) -> FlameAsset:
    return load_flame_asset(folder)


def load_asset(path: str | None = None) -> FlameAsset:
    """Load (once per process) the asset :func:`resolve_asset_folder` picks."""
    return _load_cached(os.path.abspath(resolve_asset_folder(path)))
