"""Validation of what a client sends: the reference image, the animation file, the settings.

Every problem becomes an :class:`InputError` carrying an HTTP status, a message that names the
problem, and advice, so the server answers 4xx and keeps serving, and the CLI prints the same
words. Nothing here touches torch or HTTP.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from flamediff.errors import FlamediffError
from flamediff.formats.animation import (FRAME_RANGE, AnimationClip, AnimationFormatError, AnimationTooLarge,
                                       ReadLimits, load_animation, save_animation)
from flamediff.formats.images import DecodedImage, ImageFormatError, decode_image
from flamediff.formats.protocol import JOB_SETTINGS, REFERENCE_FORMATS, setting

#: Deepest JSON accepted in a request (settings need 3 levels).
MAX_JSON_DEPTH = 16


class InputError(FlamediffError):
    """A request the service refuses; ``status`` is the HTTP code, ``advice`` the fix."""

    def __init__(self, error: str, advice: str, status: int = 422) -> None:
        super().__init__(f"{error}. {advice}" if advice else error)
        self.error, self.advice, self.status = error, advice, status


@dataclass(frozen=True)
class InputLimits:
    """What one request may cost the server; the defaults are documented in PROTOCOL.md and
    each is an option of ``flamediff serve``."""

    max_frames_per_job: int = 10_000
    animation: ReadLimits = ReadLimits(max_bytes=256 * 1024 * 1024, max_frames=100_000)
    #: Frames (one file or folder each) a zipped per-frame tracker folder may hold, counted from
    #: its member list: every one is read before the server answers.
    max_folder_frames: int = 10_000


@dataclass(frozen=True)
class TrackingLimits:
    """What one tracking task may cost; the defaults are documented in PROTOCOL.md and each but
    ``stop_grace_s`` is an option of ``flamediff serve``."""

    max_frames: int = 3000          # video frames (2 min at 25 fps)
    max_seconds_of_video: float = 300.0
    time_budget_s: float = 3600.0   # wall-clock seconds a task may take new frames for
    keep_hours: float = 24.0        # finished and failed tasks are deleted after this
    stop_grace_s: float = 120.0     # past the budget, for fitting the frames done; then it is killed


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON from a client, nested at most :data:`MAX_JSON_DEPTH` deep; malformed is a 400."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    except ValueError as exc:
        raise InputError(f"{what} is not valid JSON ({exc})", "send a JSON object", 400) from None
    else:
        depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", "send a flat JSON object", 400)
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (a recursive walk is what a deep value attacks)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


_FRAME_PART = re.compile(r"(-?\d{1,10})(?:-(-?\d{1,10}))?")


def frame_ranges(spec: str | list[int]) -> list[tuple[int, int]]:
    """``"1-4,7"`` or ``[1, 2, 7]`` -> sorted, merged inclusive ranges, never expanded (a short
    string can name billions of frames)."""
    if isinstance(spec, str):
        ranges = []
        for part in spec.replace(" ", "").split(","):
            match = _FRAME_PART.fullmatch(part)
            if match is None:
                raise ValueError(part)
            start = int(match[1])
            end = int(match[2]) if match[2] is not None else start
            if end < start:
                raise ValueError(part)
            ranges.append((start, end))
    elif isinstance(spec, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in spec):
        ranges = [(n, n) for n in spec]
    else:
        raise ValueError(spec)
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if start < FRAME_RANGE[0] or end > FRAME_RANGE[1]:
            raise ValueError(start)
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def parse_frames(spec: Any, max_frames: int = InputLimits.max_frames_per_job) -> list[int] | None:
    """``None``/``""``/``[]`` -> every frame; ``"1-4,7"`` or ``[1, 2, 3]`` -> sorted frame numbers,
    refused (413) before expansion when they are more than ``max_frames``."""
    if spec is None or spec == "" or spec == []:
        return None
    if isinstance(spec, list) and len(spec) > max_frames:
        raise InputError(f"frames names {len(spec)} frames, more than {max_frames} per job",
                         "render the clip in parts", 413)
    try:
        ranges = frame_ranges(spec)
    except ValueError:
        raise InputError(f"frames {str(spec)[:60]!r} is not a frame list", "write e.g. \"1-24\" or \"1,5,9-12\" "
                         "(Blender frame numbers)", 422) from None
    count = sum(end - start + 1 for start, end in ranges)
    if count > max_frames:
        raise InputError(f"frames names {count} frames, more than {max_frames} per job", "render the clip in parts",
                         413)
    return [frame for start, end in ranges for frame in range(start, end + 1)]


_FRAMES_SCHEMA = {"anyOf": [{"type": "string", "examples": ["1-24", "1,5,9-12"]},
                            {"type": "array", "items": {"type": "integer"}}, {"type": "null"}]}


def _protocol_field(name: str, **extra: Any) -> Any:
    """A pydantic field with the default, bounds and description of the protocol's setting ``name``
    (:data:`flamediff.formats.protocol.JOB_SETTINGS`, which the add-on's properties use too)."""
    entry = setting(name)
    bounds: dict[str, Any]
    if entry.kind in ("text", "floats"):
        bounds = {"min_length": entry.minimum, "max_length": entry.maximum}
    else:
        bounds = {"ge": entry.minimum, "le": entry.maximum}
    return Field(entry.default, description=entry.description,
                 **{key: value for key, value in bounds.items() if value is not None}, **extra)


class JobSettings(BaseModel):
    """What a job renders with: the protocol's job settings. Those marked ``hashed`` change the
    pixels and go into the request hash (``frames_per_batch`` only trades memory for speed).
    ``null`` means the default."""

    model_config = ConfigDict(strict=True, extra="forbid")

    checkpoint: str | None = _protocol_field("checkpoint")
    steps: int = _protocol_field("steps")
    guidance: float = _protocol_field("guidance", allow_inf_nan=False)
    seed: int = _protocol_field("seed")
    frames: Annotated[list[int] | None, WithJsonSchema(_FRAMES_SCHEMA)] = _protocol_field("frames")
    shape_from: Literal["animation", "reference"] = _protocol_field("shape_from")
    reference_shape: list[Annotated[float, Field(allow_inf_nan=False)]] | None = _protocol_field("reference_shape")
    resolution: int | None = _protocol_field("resolution")
    framing: Literal["head", "camera"] = _protocol_field("framing")
    matte: Literal["head", "head_neck", "tile"] = _protocol_field("matte")
    preview: bool = _protocol_field("preview")
    frames_per_batch: int = _protocol_field("frames_per_batch")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items()
                    if value is not None and not (value == "" and key in ("checkpoint", "shape_from", "frames"))}
        return data

    @field_validator("frames", mode="before")
    @classmethod
    def _frames(cls, value: Any, info: ValidationInfo) -> list[int] | None:
        limit = (info.context or {}).get("max_frames", InputLimits.max_frames_per_job)
        try:
            return parse_frames(value, limit)
        except InputError as exc:
            kind = "too_many_frames" if exc.status == 413 else "frame_list"
            raise PydanticCustomError(kind, exc.error) from None

    @field_validator("reference_shape", mode="before")
    @classmethod
    def _floats(cls, value: Any) -> Any:
        """JSON integers are numbers too; strict mode would refuse ``[0, 1.5]``."""
        if isinstance(value, list):
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def hashed(self) -> dict[str, Any]:
        """The settings that change the pixels (the protocol's ``hashed`` ones)."""
        data = {name: value for name, value in self.to_dict().items() if setting(name).hashed}
        if not data["preview"]:
            data.pop("preview")  # full renders keep the ids they had before previews existed
        if data["matte"] == "tile" or data["framing"] != "head":
            data.pop("matte")    # square tiles keep the ids they had before mattes existed; camera framing has none
        return data

    @classmethod
    def from_manifest(cls, stored: Any) -> "JobSettings":
        """The settings a job folder's manifest stored (:meth:`to_dict`), as this type again.
        Manifests of older versions read too: a setting added since takes the value those
        versions rendered with (its ``legacy`` value: ``framing`` 'camera'), else its default.
        Raises ``ValueError`` naming the setting when they no longer validate."""
        if not isinstance(stored, dict):
            raise ValueError("the stored settings are not a JSON object")
        legacy = {entry.name: entry.legacy for entry in JOB_SETTINGS if entry.legacy is not None}
        stored = {**{name: value for name, value in legacy.items() if name not in stored}, **stored}
        try:
            return cls.model_validate(stored, context={"max_frames": len(stored.get("frames") or ())})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "settings"
            raise ValueError(f"stored setting {where!r}: {first['msg']}") from None


def parse_settings(data: Any, max_frames: int = InputLimits.max_frames_per_job) -> JobSettings:
    """Check a settings mapping (JSON or form fields) against :class:`JobSettings`; the first
    problem becomes an :class:`InputError` naming the setting."""
    if data is not None and not isinstance(data, dict):
        raise InputError("settings must be a JSON object", "e.g. {\"steps\": 20, \"seed\": 1}", 422)
    try:
        return JobSettings.model_validate(data or {}, context={"max_frames": max_frames})
    except ValidationError as exc:
        errors = exc.errors()
    unknown = [str(error["loc"][0]) for error in errors if error["type"] == "extra_forbidden"]
    if unknown:
        raise InputError(f"unknown settings {sorted(unknown)[:10]}", f"known settings: {list(JobSettings.model_fields)}",
                         422) from None
    first = errors[0]
    if first["type"] == "too_many_frames":
        raise InputError(first["msg"], "render the clip in parts (several jobs)", 413) from None
    if first["type"] == "frame_list":
        name, error = "frames", first["msg"]
    else:
        name = str(first["loc"][0]) if first["loc"] else "settings"
        error = f"setting {name!r}: {first['msg']}, got {str(first.get('input'))[:60]!r}"
    info = JobSettings.model_fields.get(name)
    advice = f"{name}: {info.description}" if info is not None and info.description else "see GET /docs"
    raise InputError(error, advice, 422) from None


def read_reference_image(data: bytes) -> DecodedImage:
    """The reference through the one image reader (:func:`flamediff.formats.images.decode_image`):
    upright, 8-bit RGB, large photos downsized with a note; refusals become :class:`InputError`."""
    try:
        return decode_image(data, "the reference image", accept=REFERENCE_FORMATS)
    except ImageFormatError as exc:
        raise image_input_error(exc) from None


#: HTTP status and advice for each kind of :class:`ImageFormatError`.
_IMAGE_REFUSALS = {"empty": (400, "send a PNG or JPEG portrait"),
                   "format": (415, "send a PNG, JPEG or WebP file"),
                   "too_large": (413, "scale it down: the model crops a centre square and resizes it anyway"),
                   "corrupt": (422, "the file is truncated or corrupt; export it again")}


def image_input_error(exc: ImageFormatError) -> InputError:
    """The :class:`InputError` of an image the reader refused."""
    status, advice = _IMAGE_REFUSALS[exc.kind]
    return InputError(str(exc), advice, status)


def read_animation(data: bytes, limits: InputLimits = InputLimits()) -> tuple[AnimationClip, list[str]]:
    """Parse an animation file's bytes within ``limits``; returns the clip and its format warnings."""
    if not data:
        raise InputError("the animation file is empty", "export it again from Blender (flamediff > Export)", 400)
    with tempfile.TemporaryDirectory(prefix="flamediff-anim-") as folder:
        path = os.path.join(folder, "animation.npz")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                clip = load_animation(path, limits.animation)
        except AnimationTooLarge as exc:
            raise InputError(f"animation file too large: {_without(path, exc)}",
                             "send a shorter clip (serve's --max-frames-per-file and --max-animation-mb set the "
                             "limits)", 413) from None
        except AnimationFormatError as exc:
            raise InputError(f"malformed animation file: {_without(path, exc)}",
                             "export it again from Blender, or fix the named field", 422) from None
        except MemoryError:
            raise InputError("the animation file does not fit in the server's memory", "send a shorter clip",
                             413) from None
    if not clip.has_camera:
        raise InputError("the animation has no camera (K, R, t)",
                         "export it from Blender with a camera (use_camera=True)", 422)
    return clip, [str(w.message) for w in caught]


def _upload_suffix(data: bytes, max_bytes: int) -> tuple[str | None, "zipfile.ZipFile | None"]:
    """The file extension a tracker's upload had, told from its first bytes (uploads have no
    trustworthy name): torch zip, zipped tracker folder (.zip), other zip (npz), .npy, pickle, or
    None for a flamediff npz; and the opened zip, for a zipped folder (its member list is parsed once).
    A zip whose members declare more than ``max_bytes`` in all is refused before anything is
    decompressed (zipfile never reads past a member's declared size)."""
    if data.startswith(b"PK"):
        from flamediff.server.tracker_archive import is_folder_archive

        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError, ValueError):
            return None, None
        members = archive.infolist()
        names = [member.filename for member in members]
        if "header.npy" in names:
            return None, None                 # flamediff's own animation file
        if sum(member.file_size for member in members) > max_bytes:
            raise InputError(f"the animation archive unpacks to more than {max_bytes // 2 ** 20} MiB",
                             "send a shorter clip (serve's --max-animation-mb sets the limit)", 413)
        if is_folder_archive(names):
            return ".zip", archive
        return (".pth" if any(n.endswith("data.pkl") for n in names) else ".npz"), None
    if data.startswith(b"\x93NUMPY"):
        return ".npy", None
    if data[:1] == b"\x80":
        return ".pkl", None
    return None, None


def convert_tracker_upload(data: bytes, limits: ReadLimits = ReadLimits(),
                           max_folder_frames: int = InputLimits.max_folder_frames) -> tuple[bytes, list[str]] | None:
    """A tracker's file or zipped per-frame folder (SMIRK / DECA / EMOCA / metrical-tracker / VHAP /
    GaussianAvatars ... read by :mod:`flamediff.formats.trackers`, never executing pickled code)
    converted to a flamediff animation file, with notes on what was mapped, dropped and assumed;
    None when ``data`` is not one (a flamediff file goes to :func:`read_animation` as it is)."""
    from flamediff.formats.trackers import TrackerFormatError, TrackerTooLarge, read_animation_input
    from flamediff.server.tracker_archive import unpack_tracker_archive

    suffix, archive = _upload_suffix(data, limits.max_bytes)
    if suffix is None:
        return None
    with tempfile.TemporaryDirectory(prefix="flamediff-tracker-") as folder:
        path = os.path.join(folder, "upload" + suffix)
        if archive is not None:
            path = unpack_tracker_archive(archive, path, min(max_folder_frames, limits.max_frames))
        else:
            with open(path, "wb") as handle:
                handle.write(data)
        try:
            imported = read_animation_input(path, whole_sequence=False, limits=limits)
        except TrackerTooLarge as exc:
            raise InputError(f"tracker {'folder' if suffix == '.zip' else 'file'} too large: {_without(path, exc)}",
                             "send a shorter clip, or only the tracker's parameter files (serve's "
                             "--max-animation-mb and --max-frames-per-file set the limits)", 413) from None
        except TrackerFormatError as exc:  # an npz without flamediff's header is a tracker's: its reader says why
            raise InputError(f"unreadable tracker {'folder' if suffix == '.zip' else 'file'}: {_without(path, exc)}",
                             "send a flamediff animation (flamediff convert IN OUT.npz, or export from Blender)",
                             422) from None
        clip, report = imported.clip, imported.report
        if clip.num_frames > limits.max_frames:
            raise InputError(f"the tracker file holds {clip.num_frames} frames, more than {limits.max_frames}",
                             "send a shorter clip (serve's --max-frames-per-file sets the limit)", 413)
        notes = [f"read as {report.tool} output ({report.num_frames} frames)"]
        if report.dropped:
            notes.append(f"dropped: {', '.join(str(d) for d in report.dropped)[:500]}")
        if imported.default_camera:
            notes.append(f"camera: {report.camera}")
        out = os.path.join(folder, "converted.npz")
        save_animation(out, clip)
        with open(out, "rb") as handle:
            return handle.read(), notes


def _without(path: str, exc: Exception) -> str:
    """An error message without the server's temp paths (``path`` and the temp folder it is in)."""
    text = str(exc).replace(path, "the upload").replace("animation.npz: ", "")
    return text.replace(os.path.dirname(path) + os.sep, "").replace(tempfile.gettempdir(), "the upload")


@dataclass
class CheckedInputs:
    """A request that passed every check, ready to become a job folder."""

    reference: bytes
    reference_ext: str
    animation: bytes
    settings: JobSettings
    frames: list[int]
    request_hash: str
    render_hash: str          # request_hash without the frames (see jobs.render_hash)
    checkpoint: dict[str, Any]
    notes: list[str] = field(default_factory=list)
