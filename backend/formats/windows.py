"""Which frames a temporal render sees together: context windows anchored to frame numbers.

Stdlib only, shared by the pipeline (which denoises window by window) and the add-on's render
engine (which exports the neighbours a chunk's windows need): window ``k`` spans Blender frames
``[1 - overlap + k * (window - overlap), ... + window)``, whatever frame a render starts at, so
a chunk of a shot that exports its windows whole gets the pixels of one full-range render.
"""

from __future__ import annotations

from typing import Iterable

#: Frames a temporal model denoises together, and how many consecutive windows share.
CONTEXT_WINDOW = 16
CONTEXT_OVERLAP = 4


def window_indices(frame: int, window: int = CONTEXT_WINDOW, overlap: int = CONTEXT_OVERLAP) -> range:
    """Indices ``k`` of the windows holding Blender frame ``frame``."""
    stride = window - overlap
    offset = int(frame) - (1 - overlap)
    return range((offset - window) // stride + 1, offset // stride + 1)


def window_span(index: int, window: int = CONTEXT_WINDOW, overlap: int = CONTEXT_OVERLAP) -> range:
    """The Blender frames window ``index`` spans."""
    start = 1 - overlap + index * (window - overlap)
    return range(start, start + window)


def context_frames(wanted: Iterable[int], window: int = CONTEXT_WINDOW, overlap: int = CONTEXT_OVERLAP) -> list[int]:
    """Every frame of every window holding a ``wanted`` frame: what an animation must cover so
    that the wanted frames render as they do in any longer render of the same shot."""
    indices = {k for frame in wanted for k in window_indices(frame, window, overlap)}
    return sorted({f for k in indices for f in window_span(k, window, overlap)})


def frames_for_exact_subset(wanted: Iterable[int], job_frames: Iterable[int], window: int = CONTEXT_WINDOW,
                            overlap: int = CONTEXT_OVERLAP) -> list[int]:
    """The ``job_frames`` a temporal render of ``wanted`` must denoise so that those frames get the
    full job's pixels: every job frame of every window holding a wanted frame."""
    needed = set(context_frames(wanted, window, overlap))
    return sorted(int(f) for f in job_frames if int(f) in needed)
