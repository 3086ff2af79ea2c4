"""Which FLAME asset flamediff uses: an explicit folder, ``$FLAMEDIFF_FLAME_ASSET``, or the
procedural head generated once into the user's cache."""

from __future__ import annotations

import functools
import os

from backend.formats.flame_asset import FlameAsset, load_flame_asset
from backend.formats.procedural_head import ensure_procedural_head

ASSET_ENV = "FLAMEDIFF_FLAME_ASSET"


def cache_dir() -> str:
    """flamediff's cache folder (``$FLAMEDIFF_CACHE``, else ``$XDG_CACHE_HOME/flamediff``)."""
    explicit = os.environ.get("FLAMEDIFF_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "flamediff")


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
