"""The backend started by the add-on ("Start locally"): one subprocess, stopped with Blender.

``<python> -m backend serve --port P --device D --token-file F`` runs non-blocking; its output
goes to a log file next to the token file. Stopped by :func:`stop`, on add-on unregister and at
Blender's exit (atexit).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import time

_PROCESS: dict = {}


def running() -> subprocess.Popen | None:
    process = _PROCESS.get("process")
    return process if process is not None and process.poll() is None else None


def start(python: str, port: int, device: str, token_file: str, cwd: str = "") -> subprocess.Popen:
    """Start the backend unless the one we started is still running; returns the process."""
    process = running()
    if process is not None:
        return process
    python = os.path.expanduser(python)
    if not python or not os.path.isfile(python):
        from .backend_client import BackendError

        raise BackendError(f"the backend Python '{python}' does not exist",
                           "set 'Backend Python' in the flamediff preferences to the python of the venv "
                           "flamediff is installed in (e.g. /path/to/flamediff/.venv/bin/python)")
    os.makedirs(os.path.dirname(os.path.abspath(token_file)), exist_ok=True)
    log_path = os.path.join(os.path.dirname(os.path.abspath(token_file)), "backend.log")
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its life
    command = [python, "-m", "backend", "serve", "--port", str(port), "--device", device, "--token-file", token_file]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or None,
                               stdin=subprocess.DEVNULL)
    _PROCESS.update(process=process, started=time.monotonic(), log=log_path, command=command, port=port)
    return process


def started_recently(seconds: float = 90.0) -> bool:
    return running() is not None and time.monotonic() - _PROCESS.get("started", 0.0) < seconds


def log_path() -> str:
    return _PROCESS.get("log", "")


def stop() -> bool:
    """Stop the backend we started (terminate, then kill); True if one was running."""
    process = running()
    if process is None:
        return False
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    return True


atexit.register(stop)
