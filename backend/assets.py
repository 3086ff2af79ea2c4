"""What flamediff renders with by default: the FLAME asset (an explicit folder,
``$FLAMEDIFF_FLAME_ASSET``, or the procedural head generated once into the user's cache) and the
checkpoint shipped inside the package. Both sit here, below every layer, because the server, the
evaluation, the demo and ``flamediff doctor`` all fall back to them."""

from __future__ import annotations

import functools
import os

from flamediff.formats.flame_asset import FlameAsset, load_flame_asset
from flamediff.formats.paths import cache_dir
from flamediff.formats.procedural_head import ensure_procedural_head

ASSET_ENV = "FLAMEDIFF_FLAME_ASSET"
__all__ = ["ASSET_ENV", "DEMO_CHECKPOINT", "DEMO_NAME", "SHIPPED_DIR", "cache_dir", "load_asset",
           "resolve_asset_folder"]  # cache_dir: the shared rule

#: Checkpoint folders shipped inside the package (``backend/checkpoints``; the wheel's too).
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
#: The shipped demo checkpoint: the default model of serve, render, eval, results and the demo.
DEMO_NAME = "demo"
DEMO_CHECKPOINT = os.path.join(SHIPPED_DIR, DEMO_NAME)


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
