"""Validation of what a client sends: the reference image, the animation file, the settings.

Every problem becomes an :class:`InputError` carrying an HTTP status, a message that names the
problem, and advice, so the server answers 4xx and keeps serving, and the CLI prints the same
words. Nothing here touches torch or HTTP.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backend.errors import FlamediffError
from backend.formats.animation import AnimationClip, AnimationFormatError, load_animation

#: Largest reference image accepted, checked from the header before any pixel is decoded
#: (a 20 kB PNG can claim 50 000 x 50 000 pixels and eat gigabytes when decoded).
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE = 8192
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
SHAPE_FROM = ("animation", "reference")


class InputError(FlamediffError):
    """A request the service refuses; ``status`` is the HTTP code, ``advice`` the fix."""

    def __init__(self, error: str, advice: str, status: int = 422) -> None:
        super().__init__(f"{error}. {advice}" if advice else error)
        self.error, self.advice, self.status = error, advice, status


@dataclass
class JobSettings:
    """What a job renders with. Everything but ``frames_per_batch`` changes pixels, so
    everything but it goes into the request hash (batching only trades memory for speed)."""

    checkpoint: str | None = None
    steps: int = 0                             # 0 = the checkpoint's default (config.default_steps)
    guidance: float = 2.0
    seed: int = 0
    frames: list[int] | None = None            # Blender frame numbers; None = every frame of the clip
    shape_from: str = "animation"
    reference_shape: list[float] | None = None  # needed when shape_from == "reference"
    resolution: int | None = None              # must equal the checkpoint's; None = the checkpoint's
    preview: bool = False                      # half resolution, at most 4 steps, first frame first
    frames_per_batch: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hashed(self) -> dict[str, Any]:
        data = self.to_dict()
        data.pop("frames_per_batch")
        if not data["preview"]:
            data.pop("preview")  # full renders keep the ids they had before previews existed
        return data


def read_reference_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, str]:
    """Decode ``data`` to ``[H, W, 3]`` uint8, checking its size from the header first.

    Returns the array and the file extension of its format.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("the reference image is empty", "send a PNG or JPEG portrait", 400)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"the reference image is unreadable ({exc.__class__.__name__})",
                         "send a PNG, JPEG or WebP file", 422) from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"the reference image claims too many pixels ({exc})", "send an image of at most "
                         f"{max_pixels} pixels ({MAX_IMAGE_SIDE} px per side)", 413) from None
    width, height = image.size
    if image.format not in IMAGE_FORMATS:
        raise InputError(f"the reference image format {image.format} is not accepted",
                         "send a PNG, JPEG or WebP file", 415)
    if width * height > max_pixels or max(width, height) > MAX_IMAGE_SIDE or min(width, height) < 1:
        raise InputError(f"the reference image is {width}x{height} pixels, more than the limit of "
                         f"{max_pixels} pixels ({MAX_IMAGE_SIDE} px per side)",
                         "scale it down: the model crops a centre square and resizes it anyway", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            array = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
    except Exception as exc:  # truncated or corrupt pixel data: Pillow raises many types
        raise InputError(f"the reference image could not be decoded ({exc.__class__.__name__}: {exc})",
                         "the file is truncated or corrupt; export it again", 422) from None
    return array, IMAGE_FORMATS[image.format]


def read_animation(data: bytes) -> tuple[AnimationClip, list[str]]:
    """Parse an animation file's bytes; returns the clip and the format warnings it raised."""
    if not data:
        raise InputError("the animation file is empty", "export it again from Blender (flamediff > Export)", 400)
    with tempfile.TemporaryDirectory(prefix="flamediff-anim-") as folder:
        path = os.path.join(folder, "animation.npz")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                clip = load_animation(path)
        except AnimationFormatError as exc:
            message = str(exc).replace("animation.npz: ", "").replace(path, "the upload")
            raise InputError(f"malformed animation file: {message}",
                             "export it again from Blender, or fix the named field", 422) from None
    if not clip.has_camera:
        raise InputError("the animation has no camera (K, R, t)",
                         "export it from Blender with a camera (use_camera=True)", 422)
    return clip, [str(w.message) for w in caught]


def parse_frames(spec: Any) -> list[int] | None:
    """``None``/``""`` -> every frame; ``"1-4,7"`` or ``[1, 2, 3]`` -> sorted frame numbers."""
    if spec is None or spec == "" or spec == []:
        return None
    numbers: set[int] = set()
    try:
        if isinstance(spec, str):
            for part in spec.replace(" ", "").split(","):
                head, sep, tail = part.partition("-") if not part.startswith("-") else ("", "", part)
                if sep:
                    start, end = int(head), int(tail)
                    if end < start or end - start > 100_000:
                        raise ValueError(part)
                    numbers.update(range(start, end + 1))
                else:
                    numbers.add(int(part))
        elif isinstance(spec, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in spec):
            numbers.update(spec)
        else:
            raise ValueError(spec)
    except ValueError:
        raise InputError(f"frames {spec!r} is not a frame list", "write e.g. \"1-24\" or \"1,5,9-12\" "
                         "(Blender frame numbers)", 422) from None
    return sorted(numbers)


def _number(data: dict[str, Any], name: str, kind: type, low: float, high: float, default: Any) -> Any:
    value = data.get(name, default)
    if value is None:
        return default
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        value = kind(value)
    except (TypeError, ValueError):
        raise InputError(f"setting {name!r} must be a{'n integer' if kind is int else ' number'}, got {value!r}",
                         f"use a value in [{low}, {high}]", 422) from None
    if not (math.isfinite(value) and low <= value <= high):
        raise InputError(f"setting {name!r} is {value!r}, outside [{low}, {high}]",
                         f"use a value in [{low}, {high}]", 422)
    return value


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InputError(f"setting {name!r} must be true or false, got {value!r}", f"send {name}: true or false", 422)
    return value


def parse_settings(data: dict[str, Any] | None) -> JobSettings:
    """Check a settings mapping (JSON or form fields) and fill in the defaults."""
    if data is not None and not isinstance(data, dict):
        raise InputError("settings must be a JSON object", "e.g. {\"steps\": 20, \"seed\": 1}", 422)
    data = dict(data or {})
    known = set(JobSettings.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown settings {unknown}", f"known settings: {sorted(known)}", 422)
    defaults = JobSettings()
    checkpoint = data.get("checkpoint") or None
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise InputError("setting 'checkpoint' must be a name or a folder", "see GET /v1/models", 422)
    shape_from = data.get("shape_from") or "animation"
    if shape_from not in SHAPE_FROM:
        raise InputError(f"shape_from must be one of {list(SHAPE_FROM)}, not {shape_from!r}",
                         "'animation' drives with the animation's shape, 'reference' with reference_shape", 422)
    reference_shape = data.get("reference_shape")
    if reference_shape is not None:
        try:
            values = np.asarray(reference_shape, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if values.ndim != 1 or not 1 <= len(values) <= 300 or not np.isfinite(values).all():
            raise InputError("reference_shape must be a list of 1..300 finite numbers",
                             "give the reference identity's FLAME shape coefficients", 422)
        reference_shape = [float(v) for v in values]
    if shape_from == "reference" and reference_shape is None:
        raise InputError("shape_from='reference' needs reference_shape",
                         "give the reference identity's FLAME shape coefficients, or use shape_from='animation'", 422)
    return JobSettings(
        checkpoint=checkpoint,
        steps=_number(data, "steps", int, 0, 1000, defaults.steps),
        guidance=_number(data, "guidance", float, 0.0, 50.0, defaults.guidance),
        seed=_number(data, "seed", int, 0, 2**31 - 1, defaults.seed),
        frames=parse_frames(data.get("frames")),
        shape_from=shape_from,
        reference_shape=reference_shape,
        resolution=_number(data, "resolution", int, 8, 4096, None),
        preview=_flag(data, "preview"),
        frames_per_batch=_number(data, "frames_per_batch", int, 1, 256, defaults.frames_per_batch),
    )


@dataclass
class CheckedInputs:
    """A request that passed every check, ready to become a job folder."""

    reference: bytes
    reference_ext: str
    animation: bytes
    settings: JobSettings
    frames: list[int]
    request_hash: str
    checkpoint: dict[str, Any]
    notes: list[str] = field(default_factory=list)
