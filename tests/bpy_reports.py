"""Run an operator inside the ``bpy`` module and keep what it reported (for the add-on drivers).

Background bpy prints INFO / WARNING reports to the process's stdout from C, not through Python,
so the file descriptor itself is redirected around the call; an ERROR report arrives as the
RuntimeError's text.
"""

from __future__ import annotations

import os
import sys
import tempfile


def reported(op, **kwargs) -> tuple[list[str] | None, str]:
    """``(sorted result, report text)``; result ``None`` when the operator failed (text: the error)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        try:
            result, error = sorted(op(**kwargs)), ""
        except RuntimeError as exc:
            result, error = None, str(exc)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        printed = capture.read().decode("utf-8", "replace").strip()
    return result, error or printed
