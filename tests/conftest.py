"""Shared fixtures: one procedural head per test session, in a private cache."""

from __future__ import annotations

import os

import pytest


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
