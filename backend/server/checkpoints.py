"""Which checkpoints the service can load: a shipped folder, the user's models folder, and
hub ids already in the local Hugging Face cache (never downloaded here: a render must not
start a multi-gigabyte download behind the user's back)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from flamediff.assets import DEMO_NAME, SHIPPED_DIR
from flamediff.server.inputs import InputError
from flamediff.server.security import AllowedRoots

#: File names of a checkpoint folder, as ``flamediff.models.flamediff_model`` writes them (a test
#: checks they agree). Not imported from there: that module pulls in torch and diffusers, which
#: the HTTP process of ``serve`` otherwise never needs (seconds of start-up, a GB of memory).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"



@dataclass
class CheckpointInfo:
    name: str
    path: str
    source: str                  # "shipped" | "folder" | "hub" | "path"
    preset: str | None
    resolution: int | None
    flame_asset: dict[str, str]
    fingerprint: str             # size + mtime of the weights: a retrained folder is a new job
    training_domain: str = ""    # what it learned from ("procedural": generated heads only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(folder: str, name: str, source: str) -> CheckpointInfo | None:
    """A :class:`CheckpointInfo` for ``folder``, or None when it is not a flamediff checkpoint."""
    config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        stat = os.stat(weights_path)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("_class_name") != "FlameDiffModel":
        return None
    return CheckpointInfo(name=name, path=os.path.abspath(folder), source=source, preset=config.get("preset"),
                          resolution=config.get("resolution"), flame_asset=dict(config.get("flame_asset") or {}),
                          fingerprint=f"{stat.st_size}-{stat.st_mtime_ns}",
                          training_domain=str(config.get("training_domain") or ""))


def _folders(root: str, source: str) -> list[CheckpointInfo]:
    found: list[CheckpointInfo] = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return found
    for entry in entries:
        info = describe(os.path.join(root, entry), entry, source)
        if info is not None:
            found.append(info)
    return found


def _hub_cached(hub_cache_dir: str | None = None) -> list[CheckpointInfo]:
    """flamediff models in the local HF cache (latest snapshot of each repo); never networked."""
    try:
        from huggingface_hub import scan_cache_dir
        cache = scan_cache_dir(hub_cache_dir)
    except Exception:  # no cache folder, or an unreadable one: nothing cached
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda revision: revision.last_modified)
        info = describe(str(newest.snapshot_path), repo.repo_id, "hub")
        if info is not None:
            found.append(info)
    return found


class CheckpointRegistry:
    """Lists and resolves checkpoints; the listing is cached a few seconds (scanning the HF
    cache walks many files and clients poll). A checkpoint named by folder must lie in the
    models folder or under ``roots`` (the server's ``--allow-path``; the CLI allows any)."""

    def __init__(self, models_dir: str, shipped_dir: str = SHIPPED_DIR, ttl_s: float = 5.0,
                 hub_cache_dir: str | None = None, roots: AllowedRoots = AllowedRoots(None)) -> None:
        self.models_dir, self.shipped_dir, self.ttl_s = models_dir, shipped_dir, ttl_s
        self.roots = AllowedRoots(None if roots.roots is None else (*roots.roots, models_dir))
        self.hub_cache_dir = hub_cache_dir  # None: huggingface_hub's default ($HF_HUB_CACHE)
        self._lock = threading.Lock()
        self._cached: tuple[float, list[CheckpointInfo]] | None = None

    def list(self, refresh: bool = False) -> list[CheckpointInfo]:
        with self._lock:
            if refresh or self._cached is None or time.monotonic() - self._cached[0] > self.ttl_s:
                found = _folders(self.shipped_dir, "shipped") + _folders(self.models_dir, "folder") + _hub_cached(self.hub_cache_dir)
                self._cached = (time.monotonic(), found)
            return list(self._cached[1])

    def resolve(self, name: str | None, asset_hash: str | None = None) -> CheckpointInfo:
        """The checkpoint a request names (a listed name or a checkpoint folder), or the default:
        ``demo`` if present, else the first one trained for the FLAME asset ``asset_hash``."""
        available = self.list(refresh=True)
        if not name:
            usable = [info for info in available
                      if not asset_hash or info.flame_asset.get("hash") in (None, "", asset_hash)]
            if not usable:
                raise InputError("no checkpoint is available for this FLAME asset",
                                 f"train one ('flamediff train') into {self.models_dir}, or name a checkpoint "
                                 "folder in settings.checkpoint", 422)
            named = [info for info in usable if info.name == DEMO_NAME]  # the preferred default when a request names none
            return (named or usable)[0]
        for info in available:
            if info.name == name:
                return info
        for info in available:  # a listed checkpoint named by its folder keeps its listed name
            if os.path.abspath(os.path.expanduser(name)) == info.path:
                return info
        folder = os.path.expanduser(name)
        if os.path.isabs(folder) and not self.roots.contains(folder):
            raise InputError("the checkpoint folder is outside the folders this server reads",
                             "name a checkpoint from GET /v1/models, put it into the models folder, or start the "
                             "server with --allow-path for its folder", 422)
        if os.path.isabs(folder) and os.path.isdir(folder):
            described = describe(folder, name, "path")
            if described is not None:
                return described
            raise InputError(f"{name} is not a flamediff checkpoint folder",
                             f"it needs {CONFIG_NAME} (class FlameDiffModel) and {WEIGHTS_NAME}", 422)
        names = [info.name for info in available] or ["(none)"]
        raise InputError(f"unknown checkpoint {name!r}", f"available: {', '.join(names)} (GET /v1/models), "
                         "or give the absolute path of a checkpoint folder", 422)
