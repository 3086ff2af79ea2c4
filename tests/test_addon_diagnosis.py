"""Test Connection's diagnosis as plain Python (no Blender): a scripted client answers for the backend
and the local-backend state is set per case. The add-on is the one installed from the built zip
(tests/conftest.py); the bpy tests (test_addon.py, test_addon_render.py) run the operator itself."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from extension_repo.flamediff.backend.formats.flame_asset import FlameAssetError
from extension_repo.flamediff.backend.formats.paths import PythonChoice
from extension_repo.flamediff.backend.formats.protocol import PROTOCOL_VERSION
from extension_repo.flamediff.blender_addon import diagnosis, local_backend
from extension_repo.flamediff.blender_addon.backend_client import BackendError

URL = {"mode": "URL", "python": "", "port": 8765}
LOCAL = {"mode": "LOCAL", "python": "", "port": 8765}
ASSET = {"name": "procedural-head", "hash": "abc"}
GPU_HEALTH = {"protocol_version": PROTOCOL_VERSION, "flamediff_version": "0.1.0", "device": "cuda:0",
              "flame_asset": ASSET}
DEMO = [{"name": "demo", "matches_flame_asset": True}]
REFUSED = BackendError("the flamediff backend is not running at http://127.0.0.1:8765 (connection refused)",
                       "start it with 'flamediff serve'")


class Backend:
    """Answers like ``BackendClient``: ``health`` raises ``error`` when set, else reports ``health``."""

    url = "http://127.0.0.1:8765"

    def __init__(self, health: dict | None = None, models: list[dict] | None = None,
                 error: BackendError | None = None) -> None:
        self.answer, self.listed, self.error = health or GPU_HEALTH, DEMO if models is None else models, error

    def health(self, check_version: bool = True) -> dict:
        if self.error is not None:
            raise self.error
        if check_version and self.answer["protocol_version"] != PROTOCOL_VERSION:
            raise BackendError("protocol version mismatch", "install the add-on zip built from the same version")
        return self.answer

    def models(self) -> list[dict]:
        return self.listed


@pytest.fixture
def local(monkeypatch):
    """The local backend as a case sets it: ``process`` started by this Blender (or None), how long ago,
    its exit code, and whether the backend Python has flamediff (``missing``: the check's error)."""
    state = SimpleNamespace(process=None, seconds=0.0, code=None, missing=None, unresolved=None)
    choice = PythonChoice("/venv/bin/python", "the checkout's .venv")

    def resolve(preference: str) -> PythonChoice:
        if state.unresolved is not None:
            raise state.unresolved
        return choice

    def check(found: PythonChoice) -> None:
        if state.missing is not None:
            raise state.missing

    for name, value in {"running": lambda: state.process, "started_python": lambda: choice,
                        "resolve_python": resolve, "check_python": check, "log_path": lambda: "/tmp/serve.log",
                        "seconds_since_start": lambda: state.seconds, "exit_code": lambda: state.code,
                        "last_log_line": lambda: "ModuleNotFoundError: torch"}.items():
        monkeypatch.setattr(local_backend, name, value)
    return state


def _asset() -> dict:
    return ASSET


def test_a_gpu_backend_with_a_model_for_the_addons_asset_is_info():
    assert diagnosis.diagnose(Backend(), URL, _asset) == (
        "INFO", "Connected to flamediff 0.1.0 at http://127.0.0.1:8765 on cuda:0; models: demo")


def test_each_problem_of_an_answering_backend_is_named():
    cpu = GPU_HEALTH | {"device": "cpu", "flame_asset": {"name": "FLAME 2023", "hash": "def"}}
    level, text = diagnosis.diagnose(Backend(cpu, models=[]), URL, _asset)
    assert level == "WARNING" and "models: none" in text
    assert "the backend has no model" in text and "no GPU" in text
    assert "the backend uses FLAME asset FLAME 2023, the add-on procedural-head" in text
    level, text = diagnosis.diagnose(Backend(models=[{"name": "demo", "matches_flame_asset": False}]), URL, _asset)
    assert level == "WARNING" and "models: none" in text and "no model on the backend fits its FLAME asset" in text


def test_an_unreadable_addon_asset_skips_only_the_asset_check():
    def unreadable() -> dict:
        raise FlameAssetError("no FLAME asset at /nowhere")

    other = GPU_HEALTH | {"flame_asset": {"name": "FLAME 2023", "hash": "def"}}
    assert diagnosis.diagnose(Backend(other), URL, unreadable)[0] == "INFO"


def test_a_backend_that_does_not_answer_is_an_error_and_the_asset_is_not_read():
    def never() -> dict:
        raise AssertionError("the asset is read only once the backend answers")

    assert diagnosis.diagnose(Backend(error=REFUSED), URL, never) == ("ERROR", str(REFUSED))


def test_another_protocol_version_is_an_error_with_advice():
    level, text = diagnosis.diagnose(Backend(GPU_HEALTH | {"protocol_version": PROTOCOL_VERSION + 1}), URL, _asset)
    assert level == "ERROR" and "protocol version mismatch" in text and "Install the add-on zip" in text


def test_start_locally_names_the_python_and_who_started_the_backend(local):
    level, text = diagnosis.diagnose(Backend(), LOCAL, _asset)
    assert level == "INFO" and text.endswith("; Backend Python /venv/bin/python (the checkout's .venv); backend "
                                             "already running on port 8765, not started by this Blender")
    local.process = SimpleNamespace(pid=4242)
    assert diagnosis.diagnose(Backend(), LOCAL, _asset)[1].endswith("backend started by this Blender (pid 4242)")


def test_start_locally_says_why_the_backend_does_not_answer(local):
    level, text = diagnosis.diagnose(Backend(error=REFUSED), LOCAL, _asset)
    assert level == "INFO" and "flamediff installed there. The backend is not started yet" in text
    local.missing = BackendError("flamediff is not installed in /venv/bin/python", "run the set-up command")
    assert diagnosis.diagnose(Backend(error=REFUSED), LOCAL, _asset) == ("ERROR", str(local.missing))
    local.code = 1
    level, text = diagnosis.diagnose(Backend(error=REFUSED), LOCAL, _asset)
    assert level == "ERROR" and "exited with code 1: ModuleNotFoundError: torch. Log: /tmp/serve.log" in text
    local.process, local.seconds = SimpleNamespace(pid=7), 5.0
    level, text = diagnosis.diagnose(Backend(error=REFUSED), LOCAL, _asset)
    assert level == "INFO" and "(pid 7) is starting (5 s so far" in text
    local.seconds = 1e4
    level, text = diagnosis.diagnose(Backend(error=REFUSED), LOCAL, _asset)
    assert level == "ERROR" and "(pid 7) does not answer: see its log /tmp/serve.log" in text


def test_start_locally_names_a_strangers_backend_on_the_port(local):
    stranger = BackendError("the token was refused", "", 401)
    level, text = diagnosis.diagnose(Backend(error=stranger), LOCAL, _asset)
    assert level == "ERROR" and "Port 8765 is used by a flamediff backend this Blender did not start" in text
    local.process = SimpleNamespace(pid=7)   # ours answering 401: the backend's own words
    assert diagnosis.diagnose(Backend(error=stranger), LOCAL, _asset)[1].endswith(". the token was refused")


def test_start_locally_without_a_backend_python_is_an_error(local):
    local.unresolved = BackendError("no backend Python found", "run the set-up command")
    assert diagnosis.diagnose(Backend(), LOCAL, _asset) == ("ERROR", str(local.unresolved))
