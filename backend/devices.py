"""Where and in what precision torch runs: ``--device`` and ``--precision`` as ``flamediff serve``,
``flamediff render`` and the benchmarks take them, and how an out-of-memory error is recognised.

It sits beside ``errors.py``, below every layer, because the command line and the benchmarks
choose a device without the server. torch is imported inside the functions: the HTTP process of
``serve --device cpu`` never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flamediff.errors import FlamediffError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when an NVIDIA GPU is usable, else ``mps`` on an Apple GPU, else
    ``cpu``; ``cuda`` or ``mps`` without one is refused with advice."""
    if device == "cpu":
        return device  # no torch import: the HTTP process of 'serve --device cpu' never needs torch
    if device not in DEVICES:
        raise FlamediffError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    import torch

    mps = torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FlamediffError("--device cuda was asked for but torch sees no CUDA GPU; run 'flamediff doctor', "
                             "or use --device cpu")
    if device == "mps" and not mps:
        raise FlamediffError("--device mps was asked for but torch sees no Apple GPU (macOS 12.3+ on Apple silicon "
                             "or an AMD GPU, and a torch build with MPS); use --device cpu")
    return device


def precision_dtype(precision: str) -> torch.dtype | None:
    """``--precision`` -> the pipeline's ``dtype`` (None = its default: bf16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise FlamediffError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return None
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def precision_name(dtype: object) -> str:
    """A pipeline's ``dtype`` as ``--precision`` names it (what the job view reports)."""
    return {"torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the GPU running out of memory (torch raises it as two types)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def empty_cuda_cache() -> None:
    """Give cached CUDA memory back (after a model is dropped or a batch ran out of memory)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
