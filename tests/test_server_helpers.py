"""Shared helpers for the server and pipeline tests (a tiny checkpoint, inputs, polling, call
counts); no tests here."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time
import tracemalloc
import zlib
from typing import Any, Callable, Iterator

import numpy as np
import pytest

TOKEN = "test-token-0123456789"


def make_checkpoint(folder: str, asset, flame_asset: dict[str, str] | None = None, field: bool = True,
                    correspondence: bool = False) -> str:
    """Save a tiny model (seeded, so every test sees the same weights) into ``folder``; with
    ``correspondence``, its pose guider reads the reference correspondence too."""
    import torch

    from flamediff.models import FlameDiffConfig, FlameDiffModel

    torch.manual_seed(0)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", flame_asset=flame_asset or asset.identity()))
    if field:
        model.attach_gaussian_field(asset)
        with torch.no_grad():
            torch.nn.init.normal_(model.pose_guider.out.weight, std=0.1)
            model.gaussian_field.features.normal_()
    if correspondence:
        model.add_reference_correspondence()
    model.save_pretrained(folder)
    return folder


def image_bytes(format: str = "PNG", height: int = 40, width: int = 56, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def png_bytes(height: int = 40, width: int = 56, seed: int = 0) -> bytes:
    return image_bytes("PNG", height, width, seed)


def huge_png_header(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny file whose PNG header claims ``width x height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animation_bytes(asset, num_frames: int = 4, mutate: Callable[[dict[str, np.ndarray]], None] | None = None) -> bytes:
    """The demo animation as file bytes; ``mutate`` edits its arrays (to break it on purpose)."""
    from flamediff.demo import demo_animation
    from flamediff.formats.animation import save_animation

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "anim.npz")
        save_animation(path, demo_animation(asset, num_frames=num_frames, resolution=48))
        if mutate is None:
            with open(path, "rb") as handle:
                return handle.read()
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    mutate(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def answered_within(send: Callable[[], Any], seconds: float = 1.0, tries: int = 3) -> tuple[Any, float]:
    """``send()``'s answer and its wall time, the fastest of up to ``tries`` sends (stopping at the
    first within ``seconds``). The server is started and warmed up by the caller; on a shared
    2-core machine a neighbour's burst can stall one send, never all of them, so the fastest send
    is the request's own cost. Every answer must be the same."""
    answers, timings = [], []
    for _ in range(tries):
        started = time.perf_counter()
        answers.append(send())
        timings.append(time.perf_counter() - started)
        if timings[-1] <= seconds:
            break
    first = answers[0]
    assert all((a.status_code, a.text) == (first.status_code, first.text) for a in answers), [a.text for a in answers]
    return first, min(timings)


@contextlib.contextmanager
def peak_memory() -> Iterator[list[float]]:
    """The server's peak memory over the block, in MB above what it held at its start (appended to
    the yielded list as the block ends): the larger of tracemalloc's peak over every thread (Python
    and numpy buffers) and, on Linux, the process's resident high-water mark (``VmHWM``, reset
    through ``/proc/self/clear_refs``), which also sees what tracemalloc does not (torch's and
    other native allocations). The in-process server is the test process, so this is its cost."""
    resident = _reset_resident_peak()
    tracemalloc.start()
    result: list[float] = []
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield result
        traced = (tracemalloc.get_traced_memory()[1] - before) / 2 ** 20
    finally:
        tracemalloc.stop()
    result.append(max(traced, _status_mb("VmHWM:") - resident if resident is not None else 0.0))


def _reset_resident_peak() -> float | None:
    """The resident MB now, with the high-water mark reset to it; None where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return _status_mb("VmRSS:")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith(key))


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def frame_mtimes(folder: str) -> dict[str, int]:
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns
            for name in sorted(os.listdir(folder)) if name.startswith("frame_") and name.endswith(".png")}


@contextlib.contextmanager
def counting_calls(*modules) -> Iterator[list[int]]:
    """Counts each torch module's forward calls while the block runs (one entry per module)."""
    calls = [0] * len(modules)

    def hook(index: int) -> Callable[..., None]:
        return lambda *_: calls.__setitem__(index, calls[index] + 1)

    handles = [module.register_forward_hook(hook(index)) for index, module in enumerate(modules)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def test_pick_device_covers_cuda_apple_gpus_and_cpu(monkeypatch):
    """Both GPU kinds and their absence, whatever this machine has."""
    import torch

    from flamediff.errors import FlamediffError
    from flamediff.devices import pick_device

    for cuda, mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # noqa: B023 (called in this iteration)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)  # noqa: B023
        assert pick_device("auto") == expected
    assert pick_device("cpu") == "cpu"
    with pytest.raises(FlamediffError, match="no Apple GPU"):
        pick_device("mps")
    with pytest.raises(FlamediffError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(FlamediffError, match="must be one of"):
        pick_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("mps") == "mps"


def assert_error(response, status: int, *words: str) -> None:
    """A ``status`` answer in the protocol's error shape ``{error, advice}`` whose error names ``words``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "advice"} and body["advice"], body
    for word in words:
        assert word.lower() in body["error"].lower(), body
