"""What one tracker read may cost and which file names it may open.

Uploads come from strangers, so every reader of the package charges one :class:`ReadBudget`
(bytes and frames, checked against declared sizes before anything is allocated) and opens only
names that :func:`member_parts` accepts.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import Iterator

from ..animation import AnimationFormatError, ReadLimits

#: Largest file (or archive entry) read, so a hostile upload cannot exhaust memory.
MAX_FILE_BYTES = 2 << 30
#: What one tracker ``.npz`` may declare (checked from each member's header before decompressing):
#: DECA's codedict holds ``images`` [T, 3, 224, 224], VHAP's ``dynamic_offset`` [T, V, 3].
TRACKER_LIMITS = ReadLimits(max_bytes=MAX_FILE_BYTES, max_members=256, max_rank=4)
#: Longest member name (and folder name) an upload's file may carry, as most file systems allow.
MAX_MEMBER_NAME = 255


class TrackerFormatError(AnimationFormatError):
    """A tracker file or folder that cannot be imported; the message names the problem and the fix."""


class TrackerTooLarge(TrackerFormatError):
    """A tracker file or folder past a read limit (bytes, frames, objects)."""


class ReadBudget:
    """Bytes a read may still allocate, charged with each array's declared size before it is
    built (npz headers, torch storages and strides, pickled arrays), and the frames it may hold."""

    def __init__(self, limits: ReadLimits) -> None:
        self.limits, self.left = limits, limits.max_bytes

    def frames(self, count: int, what: str) -> None:
        """Refuse ``count`` frames past the limit, before any of them is read."""
        if count > self.limits.max_frames:
            raise TrackerTooLarge(f"{what} holds {count} frames, more than the limit of {self.limits.max_frames}: "
                                  "send a shorter clip")

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise TrackerTooLarge(f"{what} would take {nbytes} bytes once read, past the limit of "
                                  f"{self.limits.max_bytes} bytes for one tracker upload; send a shorter clip or only "
                                  "its parameter files")
        self.left -= nbytes


_BUDGET: contextvars.ContextVar[ReadBudget | None] = contextvars.ContextVar("tracker_read_budget", default=None)


def current_budget() -> ReadBudget:
    """The budget of the read under way (the unpickler's globals are plain functions, so the
    budget travels in a context variable rather than through every call)."""
    return _BUDGET.get() or ReadBudget(TRACKER_LIMITS)


@contextlib.contextmanager
def read_budget(limits: ReadLimits) -> Iterator[ReadBudget]:
    """One budget for everything read inside the block (a whole folder shares it)."""
    if _BUDGET.get() is not None:  # a nested read_tracker (a folder's newest file) keeps the outer budget
        yield current_budget()
        return
    budget = ReadBudget(limits)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


_OUTSIDE = ("a file name in the upload points outside it (an absolute path, a drive or '..'): an upload may only "
            "name its own files, by paths relative to its folder")


def member_parts(name: str) -> tuple[str, ...]:
    """The parts of a file name inside an upload or a tracker folder (relative, normalised,
    inside it), or an error; the one check every reader of an upload's names uses. The message
    never depends on what the name points at, so a refusal tells nothing about the disk."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise TrackerFormatError("a file name in the upload is empty or not text: name files relative to the "
                                 "upload's folder")
    unix = name.replace("\\", "/")
    parts = [part for part in unix.split("/") if part not in ("", ".")]
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix) or ".." in parts or not parts:
        raise TrackerFormatError(_OUTSIDE)
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_MEMBER_NAME for part in parts):
        raise TrackerFormatError(f"a file name in the upload is longer than {MAX_MEMBER_NAME} bytes (the most a file "
                                 "system allows); shorten the names")
    return tuple(parts)


def member_path(root: str, name: str) -> str:
    """``root`` joined with the checked ``name`` (see :func:`member_parts`), never outside ``root``
    even through a link."""
    path = os.path.join(root, *member_parts(name))
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        raise TrackerFormatError(_OUTSIDE)
    return path
