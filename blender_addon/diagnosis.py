"""What Test Connection says, in plain words: the backend Python "Start locally" found, whether the
backend runs (starting, exited, a stranger's on the port), its version, device and models.

Plain Python (no bpy) like ``backend_job``: the operator hands in the client, the preferences'
backend settings and how to read the add-on's FLAME asset identity; tests drive it with a scripted
client (tests/test_addon_diagnosis.py).
"""

from __future__ import annotations

from typing import Any, Callable

from . import local_backend
from .backend_client import BackendError
from .backend_job import START_TIMEOUT
from ..backend.formats.flame_asset import FlameAssetError
from ..backend.formats.paths import PythonChoice
from ..backend.formats.protocol import PROTOCOL_VERSION


def diagnose(client: Any, settings: dict, asset_identity: Callable[[], dict]) -> tuple[str, str]:
    """``(level, text)`` to report: ``level`` is ``ERROR`` (the backend cannot be used), ``WARNING`` (it
    answers, with problems) or ``INFO``. ``asset_identity`` is read only once the backend answers."""
    found = ""
    if settings["mode"] == "LOCAL":
        level, text, found = local_state(client, settings)
        if level:
            return level, text
    try:
        health = client.health(check_version=False)
        if health.get("protocol_version") != PROTOCOL_VERSION:
            client.health()  # raises the version-mismatch error with advice
        models = client.models()
    except BackendError as exc:
        return "ERROR", f"{found}. {exc}" if found else str(exc)
    usable = [m for m in models if m.get("matches_flame_asset", True)]
    names = ", ".join(m.get("name", "?") for m in usable) or "none"
    summary = (f"Connected to flamediff {health.get('flamediff_version')} at {client.url} on "
               f"{health.get('device')}; models: {names}" + (f"; {found}" if found else ""))
    problems = backend_problems(health, models, asset_identity)
    return ("WARNING", f"{summary}; {'; '.join(problems)}") if problems else ("INFO", summary)


def backend_problems(health: dict, models: list[dict], asset_identity: Callable[[], dict]) -> list[str]:
    """What keeps an answering backend from rendering well: no model, none for its FLAME asset, no GPU,
    another FLAME asset than the add-on's (not checked when the add-on's cannot be read)."""
    problems = []
    if not models:
        problems.append("the backend has no model: train one or put a checkpoint folder into its models "
                        "folder (GET /v1/models)")
    elif not any(m.get("matches_flame_asset", True) for m in models):
        problems.append("no model on the backend fits its FLAME asset: use the asset the models were "
                        "trained for (--flame-asset)")
    if str(health.get("device", "")).startswith("cpu"):
        problems.append("no GPU: the backend renders on the CPU (slow); start it with --device cuda on a "
                        "machine with an NVIDIA GPU for speed")
    try:
        identity = asset_identity()
    except (FlameAssetError, OSError):
        return problems
    served = health.get("flame_asset") or {}
    if served.get("hash") and served.get("hash") != identity["hash"]:
        problems.append(f"the backend uses FLAME asset {served.get('name')}, the add-on "
                        f"{identity['name']}: set the same asset in both")
    return problems


def local_state(client: Any, settings: dict) -> tuple[str, str, str]:
    """``(level, text, found)`` for "Start locally": the backend Python found and the state of the backend
    this Blender starts; ``level`` is empty when the backend answers (the caller then asks it more)."""
    try:  # the python the running backend was started with, else the one a start would use
        choice = local_backend.started_python() if local_backend.running() else local_backend.resolve_python(
            settings["python"])
    except BackendError as exc:
        return "ERROR", str(exc), ""
    found = f"Backend Python {choice.path} ({choice.origin})"
    try:
        client.health(check_version=False)
    except BackendError as exc:
        return (*_not_answering(exc, choice, found, settings), found)
    process = local_backend.running()
    started = (f"started by this Blender (pid {process.pid})" if process is not None else
               f"already running on port {settings['port']}, not started by this Blender")
    return "", "", f"{found}; backend {started}"


def _not_answering(exc: BackendError, choice: PythonChoice, found: str, settings: dict) -> tuple[str, str]:
    """``(level, text)`` when the local backend does not answer: a stranger on the port, starting, hung,
    exited, or not started yet (then whether the backend Python has flamediff)."""
    process, log = local_backend.running(), local_backend.log_path()
    if exc.status == 401 and process is None:
        return "ERROR", (f"{found}. Port {settings['port']} is used by a flamediff backend this Blender did not "
                         f"start (its token differs): stop it, or choose another port")
    if exc.status is not None:
        return "ERROR", f"{found}. {exc}"
    if process is not None:
        seconds = local_backend.seconds_since_start()
        if seconds < START_TIMEOUT:
            return "INFO", (f"{found}. The local backend (pid {process.pid}) is starting ({seconds:.0f} s so "
                            f"far; loading the model takes a while): test again in a few seconds. Log: {log}")
        return "ERROR", f"{found}. The local backend (pid {process.pid}) does not answer: see its log {log}"
    code = local_backend.exit_code()
    if code is not None:
        return "ERROR", (f"{found}. The local backend exited with code {code}: "
                         f"{local_backend.last_log_line() or 'no output'}. Log: {log}")
    try:
        local_backend.check_python(choice)
    except BackendError as check:
        return "ERROR", str(check)
    return "INFO", (f"{found}, flamediff installed there. The backend is not started yet: Render starts it, "
                    f"or press Start backend")
