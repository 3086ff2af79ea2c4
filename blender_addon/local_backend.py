"""The backend started by the add-on ("Start locally"): one subprocess, stopped with Blender.

``<python> -m flamediff serve --port P --device D --token-file F`` runs non-blocking; its output
goes to a log file next to the token file. Which python: :func:`resolve_python` (the preference,
``$FLAMEDIFF_PYTHON``, then the usual places of ``formats/paths.py``). Stopped by :func:`stop`, on
add-on unregister and at Blender's exit (atexit).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import time

from . import EXTENSION_DIR
from .backend_client import BackendError
from ..backend.formats.paths import PythonChoice, find_backend_python, python_candidates, setup_command

CHECKOUT_FILE = "source_checkout.txt"  # written into the zip by build_addon.py
_PROCESS: dict = {}


def source_checkouts() -> tuple[str, ...]:
    """The checkout the zip was built from (``source_checkout.txt``); none for a zip without it."""
    try:
        with open(os.path.join(EXTENSION_DIR, CHECKOUT_FILE), encoding="utf-8") as handle:
            folder = handle.read().strip()
    except OSError:
        return ()
    return (folder,) if folder else ()


def candidates(preference: str) -> list[PythonChoice]:
    return python_candidates(preference.strip(), source_checkouts())


def install_command() -> str:
    """The one command that creates the default venv, from the zip's source checkout when known."""
    checkouts = [folder for folder in source_checkouts() if os.path.isfile(os.path.join(folder, "pyproject.toml"))]
    return setup_command(checkouts[0] if checkouts else "")


def resolve_python(preference: str) -> PythonChoice:
    """The backend Python to start, or a BackendError naming every place looked at and the command to run."""
    looked = candidates(preference)
    choice = find_backend_python(looked)
    if choice is None:
        places = "; ".join(c.path for c in looked)
        raise BackendError(f"no Python with the flamediff backend was found (looked at {places})",
                           f"create one with: {install_command()} (Copy Set-up Command, in the preferences or "
                           f"Render > flamediff, copies it), "
                           f"or set 'Backend Python' in the flamediff preferences")
    return choice


def check_python(choice: PythonChoice) -> None:
    """Raise a BackendError unless ``choice`` exists and has flamediff installed (a quick subprocess)."""
    path = os.path.expanduser(choice.path)
    if not os.path.isfile(path):
        raise BackendError(f"the backend Python '{path}' from {choice.origin} does not exist",
                           f"fix it, or clear it to search the usual places; a new venv: {install_command()}")
    try:
        completed = subprocess.run([path, "-c", "import importlib.util, sys; "
                                                "sys.exit(importlib.util.find_spec('flamediff.server') is None)"],
                                   capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"cannot run the backend Python '{path}' ({exc})",
                           "choose the python executable of the venv flamediff is installed in") from None
    if completed.returncode != 0:
        raise BackendError(f"flamediff is not installed in '{path}' (from {choice.origin})",
                           f"install it there ('{path}' -m pip install -e /path/to/flamediff), or create a new "
                           f"venv: {install_command()}")


def running() -> subprocess.Popen | None:
    process = _PROCESS.get("process")
    return process if process is not None and process.poll() is None else None


def start(python_preference: str, port: int, device: str, token_file: str) -> subprocess.Popen:
    """Start the backend unless the one we started is still running; returns the process."""
    process = running()
    if process is not None:
        return process
    choice = resolve_python(python_preference)
    check_python(choice)
    os.makedirs(os.path.dirname(os.path.abspath(token_file)), exist_ok=True)
    log_path = os.path.join(os.path.dirname(os.path.abspath(token_file)), "backend.log")
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its life
    command = [os.path.expanduser(choice.path), "-m", "flamediff", "serve", "--port", str(port), "--device", device,
               "--token-file", token_file]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _PROCESS.update(process=process, started=time.monotonic(), log=log_path, command=command, port=port, stopped=False,
                    python=choice)
    return process


def started_recently(seconds: float = 90.0) -> bool:
    return running() is not None and time.monotonic() - _PROCESS.get("started", 0.0) < seconds


def seconds_since_start() -> float:
    return time.monotonic() - _PROCESS.get("started", time.monotonic())


def started_port() -> int | None:
    """The port of the backend this Blender started, while it runs ("Start locally" may have
    moved it off a taken port)."""
    return _PROCESS.get("port") if running() is not None else None


def started_python() -> PythonChoice | None:
    """The python the running (or last) backend was started with."""
    return _PROCESS.get("python")


def exit_code() -> int | None:
    """The exit code of the backend we started when it has ended by itself, else None."""
    process = _PROCESS.get("process")
    return None if process is None or _PROCESS.get("stopped") else process.poll()


def last_log_line() -> str:
    """The log's last non-empty line: usually why the backend ended."""
    try:
        with open(log_path(), "rb") as handle:
            handle.seek(max(0, os.path.getsize(log_path()) - 4096))
            lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line), "")


def log_path() -> str:
    return _PROCESS.get("log", "")


def keep_running() -> None:
    """Leave the backend running when this Blender exits (``blender -b`` renders: the next chunk, or
    another Blender on this machine, finds it with its model loaded); :func:`stop` still stops it."""
    _PROCESS["keep"] = True


def _stop_at_exit() -> None:
    if not _PROCESS.get("keep"):
        stop()


def answers_on(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (a backend another Blender started)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop() -> bool:
    """Stop the backend we started (terminate, then kill); True if one was running."""
    process = running()
    if process is None:
        return False
    _PROCESS["stopped"] = True
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    return True


atexit.register(_stop_at_exit)
