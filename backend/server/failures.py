"""The words a failed job ends with: what went wrong and what to do, for the manifest that the
add-on and ``flamediff render`` show. Kept apart from job execution so every way a job can end
badly (an exception in the render, a disk that took no more writes) is phrased in one place."""

from __future__ import annotations

import errno
import shutil

from flamediff.devices import is_out_of_memory
from flamediff.errors import FlamediffError


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """A message naming the problem, and advice, for a job that failed."""
    keep = "frames already rendered are kept; submit the same job again to render only the missing ones"
    if is_out_of_memory(exc):
        return ("GPU out of memory even with 1 frame per batch",
                f"use a smaller checkpoint or resolution, free GPU memory (POST /v1/release, other programs); {keep}")
    if isinstance(exc, FlamediffError):
        return str(exc), keep
    return f"{type(exc).__name__}: {exc}", f"an unexpected error (the server log has the traceback); {keep}"


def unsaved_failure(path: str, cause: BaseException | None) -> tuple[str, str]:
    """Error and advice for a job whose status could not be written to ``path``'s disk."""
    keep = "frames already rendered are kept and can be fetched; submit the same job again to render the rest"
    full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    try:
        full = full or shutil.disk_usage(path).free < 1 << 20
    except OSError:
        pass
    if full:
        return "the server's disk is full: the job's frames and status could not be written", (
            f"free disk space on the server (its jobs folder); {keep}")
    detail = f" ({cause.strerror})" if isinstance(cause, OSError) and cause.strerror else ""
    return f"the job's files could not be written{detail}", f"see the server's log; {keep}"
