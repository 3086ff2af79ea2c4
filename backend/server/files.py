"""Private files, atomic writes and folder locks, the same on Linux, macOS and Windows.

Job folders hold users' portraits, so folders are created 0700 and files 0600: other local
users read nothing. On Windows the mode bits only mean read-only (0600 keeps files writable);
there the files are private through the ACLs of the user's profile, where the cache lives.
Locks use ``filelock`` (``flock`` on POSIX, ``msvcrt.locking`` on Windows): the operating system
drops them when the holder dies, even by SIGKILL, so a crash never blocks a later run.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import filelock

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: Windows opens files in text mode unless told otherwise; POSIX has no such flag.
_BINARY = getattr(os, "O_BINARY", 0)


class LockBusy(Exception):
    """Another process (or another lock object in this one) holds the lock."""


def make_private_dir(path: str) -> str:
    """Create ``path`` (and missing parents) with mode 0700; an existing folder is left as it is."""
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    return path


def write_atomic(path: str, data: bytes, sync: bool = False) -> None:
    """Write ``data`` to a hidden temp name (mode 0600) in the same folder, then rename it over
    ``path``: readers see the old file or the whole new one, never a part."""
    hidden = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    tmp = f"{hidden}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the part written would keep the space taken
            os.remove(tmp)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold the lock file ``path`` (created 0600) for the block, or raise :class:`LockBusy` at once."""
    lock = filelock.FileLock(path, timeout=0, mode=PRIVATE_FILE)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockBusy(path) from None
    try:
        yield
    finally:
        lock.release()
