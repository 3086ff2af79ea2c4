"""The flamediff animation file: per-frame FLAME parameters and cameras, versioned.

One ``.npz`` (no pickles) holding numeric arrays and a UTF-8 JSON ``header`` array:

================  ===========  ==========================================================
array             shape        meaning
================  ===========  ==========================================================
``header``        [bytes]      JSON: format, version, fps, flame_asset {name, hash},
                               coordinates, camera_convention, image_size [W, H]
``frame``         [T]          Blender frame number of each row (int)
``shape``         [T, S]       FLAME shape coefficients, S <= 300 (missing ones are zero)
``expression``    [T, E]       FLAME expression coefficients, E <= 100
``global_pose``   [T, 3]       axis-angle of the root joint (FLAME joint 0)
``neck_pose``     [T, 3]       axis-angle, joint 1
``jaw_pose``      [T, 3]       axis-angle, joint 2
``left_eye_pose`` [T, 3]       axis-angle, joint 3
``right_eye_pose`` [T, 3]      axis-angle, joint 4
``translation``   [T, 3]       metres, FLAME space (Y up)
``K``             [T, 3, 3]    optional: OpenCV intrinsics in pixels (see conventions.py)
``R``, ``t``      [T,3,3],[T,3] optional: world-to-camera, OpenCV, FLAME space
================  ===========  ==========================================================

Reading is strict about this format (NaN/Inf, frame-count or rank mismatches, unknown future
versions): every error names the field. Other tools' files, with their own key names, packed
poses and single shape vectors, are read by :mod:`.trackers`, which writes this format.

Files may come from strangers (the server reads uploads), so reading is bounded: each member's
shape and dtype are checked from its ``.npy`` header before a byte of data is decompressed, and
:class:`ReadLimits` caps the decompressed total and the frames, so a 1 MiB zip of zeros cannot
make the reader allocate gigabytes. The header is checked field by field without pydantic: this
package also ships inside the Blender add-on, whose Python has numpy but not pydantic.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from typing import IO, Any, Mapping, TypeGuard, cast

import numpy as np

FORMAT_NAME = "flamediff.animation"
FORMAT_VERSION = 1
MAX_SHAPE = 300
MAX_EXPRESSION = 100
COORDINATES = "flame: metres, Y up, face looks down +Z"
CAMERA_CONVENTION = "opencv world-to-camera, K in pixels, pixel centres at +0.5"
POSE_FIELDS = ("global_pose", "neck_pose", "jaw_pose", "left_eye_pose", "right_eye_pose")



class AnimationFormatError(ValueError):
    """A file or array that does not follow the animation format; the message names the field."""


class AnimationTooLarge(AnimationFormatError):
    """A file that declares more data or frames than :class:`ReadLimits` allows."""


@dataclass(frozen=True)
class ReadLimits:
    """What reading one animation file may cost. The defaults hold 100 000 frames of full FLAME
    parameters and cameras (about 370 MB as float64) for local files; the server passes its own."""

    max_bytes: int = 512 * 1024 * 1024   # decompressed, all members together
    max_frames: int = 100_000             # rows of any per-frame array
    max_members: int = 64
    max_header_bytes: int = 1024 * 1024   # the JSON header
    max_rank: int = 3                     # K and R are [T, 3, 3]; trackers' images [T, 3, H, W] need 4


DEFAULT_LIMITS = ReadLimits()
#: Longest string element :func:`read_npz` accepts with ``text`` (256 UTF-32 characters).
MAX_TEXT_BYTES = 1024
#: Frame numbers are Blender's: 32-bit signed.
FRAME_RANGE = (-(2**31), 2**31 - 1)


@dataclass
class AnimationClip:
    """Per-frame FLAME parameters (FLAME space) and optional OpenCV cameras of one clip."""

    frame: np.ndarray
    shape: np.ndarray
    expression: np.ndarray
    global_pose: np.ndarray
    neck_pose: np.ndarray
    jaw_pose: np.ndarray
    left_eye_pose: np.ndarray
    right_eye_pose: np.ndarray
    translation: np.ndarray
    fps: float = 25.0
    K: np.ndarray | None = None
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    flame_asset: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_clip(self)

    @property
    def num_frames(self) -> int:
        return int(self.frame.shape[0])

    @property
    def has_camera(self) -> bool:
        return self.K is not None

    def pose(self) -> np.ndarray:
        """All joint rotations as ``[T, 5, 3]`` axis-angle in FLAME joint order."""
        return np.stack([getattr(self, name) for name in POSE_FIELDS], axis=1)

    def padded(self, num_shape: int = MAX_SHAPE, num_expression: int = MAX_EXPRESSION) -> "AnimationClip":
        """A copy whose coefficient vectors are zero-padded (or checked) to the given lengths."""
        return replace(self, shape=_pad(self.shape, num_shape, "shape"),
                       expression=_pad(self.expression, num_expression, "expression"))

    def select_frames(self, frames: np.ndarray | list[int]) -> "AnimationClip":
        """A copy holding only the rows whose Blender frame number is in ``frames``."""
        wanted = np.asarray(frames)
        missing = sorted(set(wanted.tolist()) - set(self.frame.tolist()))
        if missing:
            raise AnimationFormatError(f"frames {missing[:5]} are not in the clip "
                                       f"(it holds {self.frame.min()}..{self.frame.max()})")
        rows = np.nonzero(np.isin(self.frame, wanted))[0]
        return self.take_rows(rows)

    def take_rows(self, rows: np.ndarray) -> "AnimationClip":
        arrays: dict[str, Any] = {name: getattr(self, name)[rows] for name in _PER_FRAME_FIELDS}
        cameras: dict[str, Any] = {name: None if getattr(self, name) is None else getattr(self, name)[rows]
                   for name in ("K", "R", "t")}
        return replace(self, **arrays, **cameras)


_PER_FRAME_FIELDS = ("frame", "shape", "expression", *POSE_FIELDS, "translation")


def _pad(values: np.ndarray, length: int, name: str) -> np.ndarray:
    if values.shape[1] > length:
        raise AnimationFormatError(f"'{name}' has {values.shape[1]} coefficients but the model takes "
                                   f"at most {length}")
    out = np.zeros((values.shape[0], length), dtype=values.dtype)
    out[:, : values.shape[1]] = values
    return out


def _check_array(name: str, value: np.ndarray, rank: int, last_dims: tuple[int, ...], frames: int) -> None:
    if value.ndim != rank:
        raise AnimationFormatError(f"'{name}' must have rank {rank} (frames first), got shape {value.shape}")
    if value.shape[0] != frames:
        raise AnimationFormatError(f"'{name}' has {value.shape[0]} frames but 'frame' has {frames}")
    if last_dims and value.shape[1:] != last_dims:
        raise AnimationFormatError(f"'{name}' must have shape [T, {', '.join(map(str, last_dims))}], "
                                   f"got {list(value.shape)}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = np.argwhere(~np.isfinite(value))[0]
        raise AnimationFormatError(f"'{name}' holds NaN or Inf (first at row {bad[0]}, index {tuple(bad[1:])})")


def validate_clip(clip: AnimationClip) -> None:
    """Raise :class:`AnimationFormatError` naming the first field that breaks the format."""
    if clip.frame.ndim != 1 or clip.frame.shape[0] == 0:
        raise AnimationFormatError(f"'frame' must be a non-empty [T] array, got shape {clip.frame.shape}")
    frames = clip.frame.shape[0]
    if clip.frame.dtype.kind not in "iu":
        raise AnimationFormatError(f"'frame' must hold integers, got dtype {clip.frame.dtype}")
    if clip.frame.min() < FRAME_RANGE[0] or clip.frame.max() > FRAME_RANGE[1]:
        raise AnimationFormatError(f"'frame' holds numbers outside {FRAME_RANGE[0]}..{FRAME_RANGE[1]}")
    if len(np.unique(clip.frame)) != frames:
        raise AnimationFormatError("'frame' holds repeated frame numbers")
    _check_array("shape", clip.shape, 2, (), frames)
    _check_array("expression", clip.expression, 2, (), frames)
    if clip.shape.shape[1] > MAX_SHAPE:
        raise AnimationFormatError(f"'shape' has {clip.shape.shape[1]} coefficients; FLAME has {MAX_SHAPE}")
    if clip.expression.shape[1] > MAX_EXPRESSION:
        raise AnimationFormatError(f"'expression' has {clip.expression.shape[1]} coefficients; "
                                   f"FLAME has {MAX_EXPRESSION}")
    for name in (*POSE_FIELDS, "translation"):
        _check_array(name, getattr(clip, name), 2, (3,), frames)
    cameras = [clip.K is not None, clip.R is not None, clip.t is not None]
    if any(cameras) and not all(cameras):
        raise AnimationFormatError("a camera needs all of 'K', 'R' and 't'")
    if clip.K is not None and clip.R is not None and clip.t is not None:
        _check_array("K", clip.K, 3, (3, 3), frames)
        _check_array("R", clip.R, 3, (3, 3), frames)
        _check_array("t", clip.t, 2, (3,), frames)
        if clip.image_size is None:
            raise AnimationFormatError("a camera needs 'image_size' [width, height] in the header")
    if clip.image_size is not None and not (len(clip.image_size) == 2 and min(clip.image_size) > 0):
        raise AnimationFormatError(f"'image_size' must be two positive integers [width, height], "
                                   f"got {list(clip.image_size)}")
    if not (np.isfinite(clip.fps) and clip.fps > 0):
        raise AnimationFormatError(f"'fps' must be a positive number, got {clip.fps!r}")


def header_of(clip: AnimationClip) -> dict[str, Any]:
    """The JSON header written with ``clip``."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fps": float(clip.fps),
        "num_frames": clip.num_frames,
        "flame_asset": dict(clip.flame_asset),
        "coordinates": COORDINATES,
        "camera_convention": CAMERA_CONVENTION,
        "image_size": list(clip.image_size) if clip.image_size else None,
        "extra": clip.extra,
    }


def save_animation(path: str | os.PathLike, clip: AnimationClip) -> None:
    """Write ``clip`` atomically (temp name, then rename) so a crash never leaves half a file."""
    validate_clip(clip)
    arrays: dict[str, np.ndarray] = {
        "header": np.frombuffer(json.dumps(header_of(clip)).encode("utf-8"), dtype=np.uint8),
        "frame": clip.frame.astype(np.int64),
    }
    for name in _PER_FRAME_FIELDS[1:]:
        arrays[name] = getattr(clip, name).astype(np.float64)
    if clip.K is not None and clip.R is not None and clip.t is not None:
        arrays.update(K=clip.K.astype(np.float64), R=clip.R.astype(np.float64), t=clip.t.astype(np.float64))
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def load_animation(path: str | os.PathLike, limits: ReadLimits = DEFAULT_LIMITS) -> AnimationClip:
    """Read a flamediff animation file (a tracker's output: :func:`.trackers.load_any`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AnimationFormatError(f"animation file not found: {path}")
    arrays = read_npz(path, limits)
    try:
        return clip_from_arrays(arrays)
    except AnimationFormatError as exc:
        raise type(exc)(f"{os.path.basename(path)}: {exc}") from None


def read_npz(source: str | os.PathLike | IO[bytes], limits: ReadLimits = DEFAULT_LIMITS,
             text: bool = False) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (no pickles), read within ``limits``: every member's dtype, rank,
    frames and size are checked from its ``.npy`` header before its data is decompressed, and only
    the declared bytes are ever read. ``text`` also accepts fixed-width string arrays (trackers
    store frame ids as such; they are plain bytes, never pickles). Raises
    :class:`AnimationFormatError` (or :class:`AnimationTooLarge`) naming the member."""
    where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the file"
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
            if len(members) > limits.max_members:
                raise AnimationTooLarge(f"{where} holds {len(members)} arrays, more than {limits.max_members}")
            arrays: dict[str, np.ndarray] = {}
            budget = limits.max_bytes
            for info in members:
                if not info.filename.endswith(".npy"):
                    raise AnimationFormatError(f"{where}: member {info.filename!r} is not a .npy array")
                name = info.filename[: -len(".npy")]
                with archive.open(info) as stream:
                    arrays[name] = _read_member(stream, name, budget, limits, text)
                budget -= arrays[name].nbytes
    except AnimationFormatError:
        raise
    except MemoryError:
        raise AnimationTooLarge(f"{where} does not fit in memory; read a shorter clip") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise AnimationFormatError(f"{where} is not a readable .npz animation file ({exc})") from None
    return arrays


def declared_npz_bytes(source: str | os.PathLike, limits: ReadLimits = DEFAULT_LIMITS, text: bool = False) -> int:
    """The bytes an ``.npz``'s arrays declare in their headers (each checked as :func:`read_npz`
    does), read without decompressing any data: a folder of files is priced before it is read."""
    where = os.fspath(source)
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
            if len(members) > limits.max_members:
                raise AnimationTooLarge(f"{where} holds {len(members)} arrays, more than {limits.max_members}")
            total = 0
            for info in members:
                with archive.open(info) as stream:
                    total += _member_header(stream, info.filename[: -len(".npy")], limits.max_bytes, limits, text)[2]
            return total
    except AnimationFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise AnimationFormatError(f"{where} is not a readable .npz animation file ({exc})") from None


def _member_header(stream: IO[bytes], name: str, budget: int, limits: ReadLimits,
                   text: bool) -> tuple[tuple[int, ...], np.dtype, int, bool]:
    """A member's shape, dtype, declared bytes and order, checked against ``limits``."""
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise AnimationFormatError(f"'{name}' uses .npy format version {version}, expected 1.0 or 2.0")
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(stream)
    is_text = text and dtype.kind in "US" and dtype.itemsize <= MAX_TEXT_BYTES
    if not is_text and (dtype.kind not in "iuf" or dtype.hasobject or dtype.itemsize > 8):
        kind = "a numeric or string array" if text else "a numeric array"
        raise AnimationFormatError(f"'{name}' must be {kind}, got dtype {dtype}")
    if len(shape) > limits.max_rank:
        raise AnimationFormatError(f"'{name}' has rank {len(shape)}, more than {limits.max_rank}")
    rows = limits.max_header_bytes if name == "header" else limits.max_frames
    if shape and shape[0] > rows:
        raise AnimationTooLarge(f"'{name}' declares {shape[0]} {'bytes' if name == 'header' else 'frames'}, "
                                f"more than the limit of {rows}")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > budget:
        raise AnimationTooLarge(f"'{name}' declares {list(shape)} x {dtype} ({nbytes} bytes), past the limit of "
                                f"{limits.max_bytes} bytes decompressed per file")
    return shape, dtype, nbytes, fortran_order


def _read_member(stream: IO[bytes], name: str, budget: int, limits: ReadLimits, text: bool = False) -> np.ndarray:
    """One ``.npy`` member, checked from its header, then exactly its declared bytes."""
    shape, dtype, nbytes, fortran_order = _member_header(stream, name, budget, limits, text)
    count = math.prod(shape)
    flat = np.empty(count, dtype)
    target, got = flat.view(np.uint8).data, 0
    while got < nbytes:
        read = cast(io.BufferedIOBase, stream).readinto(target[got:])  # zipfile streams are buffered
        if not read:
            raise AnimationFormatError(f"'{name}' is truncated: {got} of {nbytes} bytes")
        got += read
    return flat.reshape(shape, order="F" if fortran_order else "C")


def clip_from_arrays(arrays: Mapping[str, np.ndarray]) -> AnimationClip:
    """Build a clip from an animation file's arrays (a tracker's are read by :mod:`.trackers`)."""
    if "header" not in arrays:
        raise AnimationFormatError("no 'header' array: not a flamediff animation file; convert a tracker's output "
                                   "or hand-stacked arrays with `flamediff convert IN OUT.npz` (or the add-on's "
                                   "Import FLAME Animation)")
    return _clip_from_own_arrays(arrays)


def _read_header(raw: np.ndarray) -> dict[str, Any]:
    """The JSON header, every field checked (type and range), so no value breaks a reader later."""
    try:
        header = json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnimationFormatError(f"'header' is not UTF-8 JSON ({exc})") from None
    except RecursionError:
        raise AnimationFormatError("'header' is nested too deeply") from None
    if not isinstance(header, dict):
        raise AnimationFormatError(f"'header' must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT_NAME:
        raise AnimationFormatError(f"'header.format' is {_short(header.get('format'))}, expected {FORMAT_NAME!r}")
    version = header.get("version")
    if not _is_int(version) or version < 1:
        raise AnimationFormatError(f"'header.version' must be a positive integer, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise AnimationFormatError(f"'header.version' is {version}, newer than this flamediff reads "
                                   f"({FORMAT_VERSION}); update flamediff to read it")
    fps = header.get("fps", 25.0)
    if not (_is_number(fps) and math.isfinite(fps) and fps > 0):
        raise AnimationFormatError(f"'header.fps' must be a positive number, got {_short(fps)}")
    size = header.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_is_int(v) and 0 < v <= 65536 for v in size)):
        raise AnimationFormatError(f"'header.image_size' must be [width, height] in 1..65536 pixels, "
                                   f"got {_short(size)}")
    asset = header.get("flame_asset")
    if asset is not None and not (isinstance(asset, dict) and all(isinstance(v, str) for v in asset.values())):
        raise AnimationFormatError(f"'header.flame_asset' must be an object of strings {{name, hash}}, "
                                   f"got {_short(asset)}")
    if header.get("extra") is not None and not isinstance(header["extra"], dict):
        raise AnimationFormatError(f"'header.extra' must be an object, got {_short(header['extra'])}")
    return header


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _required(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in arrays:
        raise AnimationFormatError(f"missing array '{name}'")
    return np.asarray(arrays[name])


def _clip_from_own_arrays(arrays: Mapping[str, np.ndarray]) -> AnimationClip:
    header = _read_header(arrays["header"])
    fields = {name: _required(arrays, name) for name in _PER_FRAME_FIELDS}
    for name, value in fields.items():
        if value.dtype.kind not in "iuf":
            raise AnimationFormatError(f"'{name}' must be numeric, got dtype {value.dtype}")
    cameras: dict[str, Any] = {name: np.asarray(arrays[name], np.float64) if name in arrays else None
                               for name in ("K", "R", "t")}
    size = header.get("image_size")
    return AnimationClip(
        **{name: value.astype(np.float64) for name, value in fields.items() if name != "frame"},
        frame=frame_numbers(fields["frame"]),
        fps=float(header.get("fps", 25.0)),
        image_size=cast("tuple[int, int]", tuple(int(v) for v in size)) if size else None,  # checked by AnimationClip
        flame_asset=dict(header.get("flame_asset") or {}),
        extra=dict(header.get("extra") or {}),
        **cameras,
    )


def frame_numbers(values: np.ndarray) -> np.ndarray:
    """Frame numbers as int64; floats only when they are whole numbers (never truncated)."""
    if values.dtype.kind == "f":
        if not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise AnimationFormatError("'frame' must hold whole frame numbers, got fractions or NaN")
        if values.size and (values.min() < FRAME_RANGE[0] or values.max() > FRAME_RANGE[1]):
            raise AnimationFormatError(f"'frame' holds numbers outside {FRAME_RANGE[0]}..{FRAME_RANGE[1]}")
    return values.astype(np.int64)


def make_clip(num_frames: int, *, fps: float = 25.0, first_frame: int = 1, num_shape: int = 100,
              num_expression: int = 50, camera: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
              image_size: tuple[int, int] | None = None, flame_asset: dict[str, str] | None = None,
              **params: np.ndarray) -> AnimationClip:
    """A clip of ``num_frames`` rest-pose frames with the given per-frame ``params`` filled in;
    ``camera`` is ``(K, R, t)`` with a leading frame axis."""
    values: dict[str, Any] = {
        "shape": np.zeros((num_frames, num_shape)),
        "expression": np.zeros((num_frames, num_expression)),
        **{name: np.zeros((num_frames, 3)) for name in (*POSE_FIELDS, "translation")},
    }
    values.update({name: np.asarray(value, dtype=np.float64) for name, value in params.items()})
    K, R, t = camera if camera is not None else (None, None, None)
    return AnimationClip(frame=np.arange(first_frame, first_frame + num_frames), fps=fps, K=K, R=R, t=t,
                         image_size=image_size, flame_asset=dict(flame_asset or {}), **values)
