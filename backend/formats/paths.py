"""Where flamediff keeps its files and where the add-on looks for the backend's Python.

Shared by the backend and the Blender add-on (stdlib only), so both agree on the cache folder (and
with it the server's default token file) and the per-OS venv locations of docs/ADDON.md are code, not
prose. Every function takes the environment, the platform and the home folder as arguments
(defaulting to this process's), so each OS's branch is testable on any OS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PYTHON_ENV = "FLAMEDIFF_PYTHON"
CACHE_ENV = "FLAMEDIFF_CACHE"


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _home(home: str | None) -> str:
    return home if home is not None else os.path.expanduser("~")


def _join(windows: bool, *parts: str) -> str:
    """Join with the target OS's separator (a Windows path built on Linux stays a Windows path)."""
    import ntpath
    import posixpath

    return (ntpath if windows else posixpath).join(*parts)


def cache_dir(environ: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """flamediff's cache folder: ``$FLAMEDIFF_CACHE``, else ``$XDG_CACHE_HOME/flamediff``, else
    ``~/.cache/flamediff`` (models, jobs, the procedural head, the server's token)."""
    environ = _env(environ)
    explicit = environ.get(CACHE_ENV)
    if explicit:
        return os.path.expanduser(explicit)
    root = environ.get("XDG_CACHE_HOME") or os.path.join(_home(home), ".cache")
    return os.path.join(root, "flamediff")


def default_token_file(environ: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """The token file ``flamediff serve`` writes when it is given no ``--token-file``."""
    return os.path.join(cache_dir(environ, home), "server", "token")


def default_venv(platform: str = os.name, environ: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """Where the one-line set-up of docs/ADDON.md creates the backend's venv on this OS.

    Windows: ``%LOCALAPPDATA%\\flamediff\\venv``; Linux and macOS: ``$XDG_DATA_HOME/flamediff/venv``,
    else ``~/.local/share/flamediff/venv``. ``platform`` is ``os.name`` ("nt" or "posix").
    """
    environ, home = _env(environ), _home(home)
    if platform == "nt":
        root = environ.get("LOCALAPPDATA") or _join(True, home, "AppData", "Local")
        return _join(True, root, "flamediff", "venv")
    root = environ.get("XDG_DATA_HOME") or _join(False, home, ".local", "share")
    return _join(False, root, "flamediff", "venv")


def venv_python(venv: str, platform: str = os.name) -> str:
    """The python executable inside a venv (``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere)."""
    return _join(True, venv, "Scripts", "python.exe") if platform == "nt" else _join(False, venv, "bin", "python")


@dataclass(frozen=True)
class PythonChoice:
    """A backend Python and why it was chosen (``origin`` is said to the user); ``explicit``: the user
    named it (preference or environment), so it is never silently skipped."""

    path: str
    origin: str
    explicit: bool = False


def python_candidates(preference: str = "", checkouts: tuple[str, ...] = (), platform: str = os.name,
                      environ: Mapping[str, str] | None = None, home: str | None = None,
                      which: Callable[[str], str | None] = shutil.which) -> list[PythonChoice]:
    """Every place the add-on looks for the backend's Python, in order.

    The "Backend Python" preference, ``$FLAMEDIFF_PYTHON``, ``.venv`` in each source checkout (the
    one the add-on zip was built from, as ``make`` creates it), the default venv of this OS, the
    venv a ``flamediff`` command on the PATH belongs to, and conda environments named ``flamediff``.
    """
    environ, home, windows = _env(environ), _home(home), platform == "nt"
    found = []
    if preference:
        found.append(PythonChoice(preference, "the 'Backend Python' preference", explicit=True))
    if environ.get(PYTHON_ENV):
        found.append(PythonChoice(environ[PYTHON_ENV], f"${PYTHON_ENV}", explicit=True))
    for checkout in checkouts:
        found.append(PythonChoice(venv_python(_join(windows, checkout, ".venv"), platform),
                                  f"the .venv of the source checkout {checkout}"))
    found.append(PythonChoice(venv_python(default_venv(platform, environ, home), platform), "the default venv"))
    command = which("flamediff")
    if command:
        found.append(PythonChoice(_join(windows, os.path.dirname(command), "python.exe" if windows else "python"),
                                  f"the venv of '{command}' on the PATH"))
    for conda in ("miniconda3", "anaconda3", "miniforge3"):
        env = _join(windows, home, conda, "envs", "flamediff")
        found.append(PythonChoice(_join(windows, env, "python.exe") if windows else _join(False, env, "bin", "python"),
                                  f"the conda environment {env}"))
    return found


def find_backend_python(candidates: list[PythonChoice],
                        exists: Callable[[str], bool] = os.path.isfile) -> PythonChoice | None:
    """The first candidate that exists; an explicit choice (preference, ``$FLAMEDIFF_PYTHON``) that
    does not exist is returned anyway, so the user hears about their typo instead of a fallback."""
    for choice in candidates:
        if choice.explicit or exists(os.path.expanduser(choice.path)):
            return choice
    return None


def setup_command(checkout: str = "", platform: str = os.name, environ: Mapping[str, str] | None = None,
                  home: str | None = None) -> str:
    """The one command that creates the default venv with flamediff in it (Python 3.11 needed)."""
    venv = default_venv(platform, environ, home)
    if platform == "nt":
        source = checkout or "C:\\path\\to\\flamediff"
        return f'py -3.11 -m venv "{venv}" && "{venv_python(venv, platform)}" -m pip install -e "{source}"'
    source = checkout or "/path/to/flamediff"
    return f'python3.11 -m venv "{venv}" && "{venv_python(venv, platform)}" -m pip install -e "{source}"'
