"""Local ports: whether one is free, a free one, and which program holds a busy one.

Shared by ``flamediff serve`` (refuses a taken port by name before it starts), ``flamediff
doctor`` and the add-on's "Start locally" (names the program, can move to a free port). Stdlib
only, so it runs inside Blender; the holder is found from ``/proc`` on Linux and with ``lsof``
elsewhere when it is installed (psutil would do it everywhere, but Blender does not ship it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_holder(port: int) -> str | None:
    """``"pid 123: python -m http.server 8765"`` for the process listening on ``port``, or None
    when it cannot be told (another user's process, no /proc and no lsof)."""
    pid = _linux_listener(port) if os.path.isdir("/proc/net") else _lsof_listener(port)
    if pid is None:
        return None
    return f"pid {pid}: {_command_line(pid)}" if _command_line(pid) else f"pid {pid}"


def busy_port_message(port: int) -> str:
    """``port 8765 is used by another program (pid 123: python -m http.server 8765)``."""
    holder = port_holder(port)
    return f"port {port} is used by another program" + (f" ({holder})" if holder else "")


def _linux_listener(port: int) -> int | None:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return int(pid)
        except OSError:
            continue
    return None


def _lsof_listener(port: int) -> int | None:
    lsof = shutil.which("lsof")
    if lsof is None:
        return None
    try:
        out = subprocess.run([lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fp"], capture_output=True, text=True,
                             timeout=5, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    pids = [int(line[1:]) for line in out.splitlines() if line.startswith("p") and line[1:].isdigit()]
    return pids[0] if pids else None


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            parts = handle.read().split(b"\0")
    except OSError:
        return ""
    words = [os.path.basename(parts[0].decode(errors="replace"))] + [p.decode(errors="replace") for p in parts[1:] if p]
    return " ".join(words)[:200]
