"""A recognised tool's arrays -> clip fields, cameras and the report of what was mapped and dropped."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from ..animation import POSE_FIELDS, AnimationClip, AnimationFormatError
from ..rotations import RotationError, matrix_to_axis_angle
from .aliases import clip_from_aliases
from .limits import TrackerFormatError
from .tools import SUPPORTED, Mapper, Signature, Tool, recognise, shape_text

#: Distance of the pinhole camera that stands in for a weak-perspective (orthographic) camera: a
#: portrait distance (the default camera's), with the focal length that keeps the framing of the
#: face's plane exactly (a 10 m camera would need a 1,300 mm lens for the same framing).
WEAK_PERSPECTIVE_DISTANCE = 0.65
#: The crop DECA, EMOCA and SMIRK run on; their weak-perspective ``cam`` maps to it.
WEAK_PERSPECTIVE_IMAGE = 224


@dataclass
class TrackerReport:
    """What an import recognised, mapped and dropped: shown by the operator and ``convert``."""

    tool: str
    flame_version: str | None
    layout: str
    num_frames: int = 0
    mapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fps_in_file: bool = False
    camera: str | None = None

    def lines(self) -> list[str]:
        """The report as short lines for a terminal or Blender's info area."""
        version = f" ({self.flame_version})" if self.flame_version else ""
        out = [f"{self.tool}{version}: {self.layout}, {self.num_frames} frames",
               "mapped: " + ("; ".join(self.mapped) or "-"),
               "dropped: " + ("; ".join(self.dropped) or "nothing")]
        out.append(f"camera: {self.camera}" if self.camera else "camera: none in the file")
        out += self.notes
        return out


@dataclass
class TrackerImport:
    """A clip read through this layer and the report of how."""

    clip: AnimationClip
    report: TrackerReport
    #: ``[V, 3]`` per-vertex identity offsets (VHAP, GaussianAvatars) in FLAME space: no field of the
    #: animation file holds them; the add-on can add them to the rig as a shape key.
    static_offset: np.ndarray | None = None
    #: True when the input had no camera and :func:`read_animation_input` gave it the default one
    default_camera: bool = False


_FRAME_NUMBER = re.compile(r"\d+")


def frame_number(name: str) -> int | None:
    """The first run of digits of a file or folder name (``00012.frame`` -> 12, ``000003_000`` -> 3)."""
    match = _FRAME_NUMBER.search(os.path.splitext(os.path.basename(name))[0])
    return int(match.group()) if match else None


def _frame_count(arrays: dict[str, Any], keys: Iterable[str]) -> int:
    for key in keys:
        value = arrays.get(key)
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            return 1 if value.ndim == 1 else int(value.shape[0])
    raise TrackerFormatError(f"found none of the per-frame arrays {list(keys)}")


def _weak_perspective_camera(cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DECA's ``[s, tx, ty]`` (pixel = (s (x + t)) * S/2 + S/2, y flipped) as a pinhole camera far away
    on +Z looking at the face, so it projects the same to within the head's depth / distance."""
    if (cam[:, 0] <= 0).any():
        raise TrackerFormatError("'cam' has a non-positive scale: not a weak-perspective [s, tx, ty] camera")
    size, distance = WEAK_PERSPECTIVE_IMAGE, WEAK_PERSPECTIVE_DISTANCE
    frames = cam.shape[0]
    K = np.zeros((frames, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = cam[:, 0] * size / 2.0 * distance
    K[:, 0, 2] = K[:, 1, 2] = size / 2.0
    K[:, 2, 2] = 1.0
    R = np.repeat(np.diag([1.0, -1.0, -1.0])[None], frames, axis=0)
    t = np.stack([cam[:, 1], -cam[:, 2], np.full(frames, distance)], axis=1)
    return K, R, t


def _vhap_monocular_camera(arrays: dict[str, Any], frames: int) -> dict[str, Any]:
    """VHAP's uncalibrated (monocular) camera, as its tracker sets it: world-to-camera ``[I | (0, 0, -1)]``
    in OpenGL axes, focal length ``focal_length * max(h, w)`` px, principal point at the image centre;
    ``image_size`` is ``(h, w)``."""
    focal = np.asarray(arrays["focal_length"], np.float64).reshape(-1)
    size = np.asarray(arrays["image_size"]).reshape(-1)
    if focal.size != 1 or not np.isfinite(focal).all() or focal[0] <= 0 or size.size != 2 or (size <= 0).any():
        raise TrackerFormatError("'focal_length' must be one positive number and 'image_size' [h, w] positive "
                                 f"integers, got {focal.tolist()} and {size.tolist()}")
    height, width = (int(v) for v in size)
    f = float(focal[0]) * max(height, width)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    flip = np.diag([1.0, -1.0, -1.0])  # OpenGL camera axes -> OpenCV
    return {"K": np.repeat(K[None], frames, 0), "R": np.repeat(flip[None], frames, 0),
            "t": np.repeat((flip @ [0.0, 0.0, -1.0])[None], frames, 0), "image_size": (width, height)}


def map_tool(tool: Tool, signature: Signature, arrays: dict[str, Any], report: TrackerReport) -> dict[str, Any]:
    """Clip fields (and camera) from one dict that matched ``tool``'s ``signature``; fills the
    report's mapped/dropped."""
    try:
        return _map_tool_arrays(tool, signature, arrays, report)
    except RotationError as exc:  # a file's rotations are the tracker file's fault
        raise TrackerFormatError(str(exc)) from None


def _map_tool_arrays(tool: Tool, signature: Signature, arrays: dict[str, Any],
                     report: TrackerReport) -> dict[str, Any]:
    frames = _frame_count(arrays, signature.frame_keys)
    mapper = Mapper(arrays, frames)
    signature.mapper(mapper)
    fields: dict[str, Any] = dict(mapper.values)
    cam = mapper.get("cam", (3,)) if tool.camera == "weak" else None
    if cam is not None:
        K, R, t = _weak_perspective_camera(cam)
        fields.update(K=K, R=R, t=t, image_size=(WEAK_PERSPECTIVE_IMAGE, WEAK_PERSPECTIVE_IMAGE))
        mapper.mapped.append(f"cam {list(cam.shape)} -> camera")
        report.camera = (f"weak-perspective cam [s, tx, ty] on the {WEAK_PERSPECTIVE_IMAGE} px crop, as a pinhole "
                         f"camera {WEAK_PERSPECTIVE_DISTANCE:g} m away")
    if tool.camera == "vhap" and {"focal_length", "image_size"} <= set(arrays):
        fields.update(_vhap_monocular_camera(arrays, frames))
        mapper.used |= {"focal_length", "image_size"}
        width, height = fields["image_size"]
        mapper.mapped.append(f"focal_length x max(h, w) + image_size [{height}, {width}] -> camera")
        report.camera = (f"VHAP's monocular camera (1 m in front of the origin, principal point at the centre), "
                         f"{width} x {height} px")
    if tool.camera == "metrical" and {"opencv.K", "opencv.R", "opencv.t", "img_size"} <= set(arrays):
        K = np.asarray(arrays["opencv.K"], np.float64).reshape(frames, 3, 3)
        R = np.asarray(arrays["opencv.R"], np.float64).reshape(frames, 3, 3)
        t = np.asarray(arrays["opencv.t"], np.float64).reshape(frames, 3)
        size = np.asarray(arrays["img_size"]).reshape(frames, 2)
        if not (np.isfinite(K).all() and np.isfinite(R).all() and np.isfinite(t).all()):
            raise TrackerFormatError("the opencv camera holds NaN or Inf: re-track those frames")
        if (size != size[0]).any():
            raise TrackerFormatError("img_size changes between frames; one clip needs one image size")
        matrix_to_axis_angle(R, "opencv.R")  # refuses non-rotations
        height, width = (int(v) for v in size[0])
        fields.update(K=K, R=R, t=t, image_size=(width, height))
        mapper.used |= {"opencv.K", "opencv.R", "opencv.t", "img_size"}
        mapper.mapped.append(f"opencv K, R, t + img_size [{height}, {width}] -> camera")
        report.camera = f"metrical-tracker's OpenCV camera, {width} x {height} px (the head pose is in the camera)"
    for key in ("frame_id", "timestep_id"):
        if key in arrays:
            mapper.used.add(key)
            numbers = [frame_number(str(v)) for v in np.asarray(arrays[key]).reshape(-1)]
            if len(numbers) == frames and None not in numbers and len(set(numbers)) == frames:
                fields["frame"] = np.asarray(numbers, dtype=np.int64)
                mapper.mapped.append(f"{key} -> frame numbers")
    offset = arrays.get("static_offset")
    if isinstance(offset, np.ndarray) and offset.dtype.kind == "f" and offset.shape[-1:] == (3,) and offset.size:
        offset = offset.reshape(-1, *offset.shape[-2:])[0].astype(np.float64)  # one copy per frame file
        if np.isfinite(offset).all():
            fields["static_offset"] = offset
    report.mapped += mapper.mapped
    for key in sorted(set(arrays) - mapper.used):
        why = tool.dropped_why.get(key) or tool.dropped_why.get(key.split(".")[0]) or "not a FLAME parameter"
        report.dropped.append(f"{key} {shape_text(arrays[key])} ({why})")
    return fields


def _describe(arrays: dict[str, Any]) -> str:
    items = [f"{key} {shape_text(value)}" for key, value in list(arrays.items())[:12]]
    more = f" and {len(arrays) - 12} more" if len(arrays) > 12 else ""
    return ", ".join(items) + more


def _unrecognised(source: str, arrays: dict[str, Any]) -> TrackerFormatError:
    looks = ""
    if len(arrays) == 1:
        (key, value), = arrays.items()
        if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] % 3 == 0 and value.shape[1] >= 3000:
            looks = (f" It looks like per-vertex animation ({value.shape[0]} frames of {value.shape[1] // 3} vertices, "
                     "e.g. FaceFormer / VOCA output), which has no FLAME parameters to key;")
    return TrackerFormatError(f"{source} holds {_describe(arrays)}, which is no tracker layout flamediff knows.{looks} "
                              f"Supported: {SUPPORTED}, or a .npz with flamediff's key names (see docs/TRACKERS.md)")


def _clip_from_fields(fields: dict[str, Any], frames: int, fps: float, extra: dict[str, Any]) -> AnimationClip:
    values: dict[str, Any] = {name: fields.get(name, np.zeros((frames, 3))) for name in (*POSE_FIELDS, "translation")}
    return AnimationClip(frame=np.asarray(fields.get("frame", np.arange(frames)), np.int64),
                         shape=fields.get("shape", np.zeros((frames, 0))),
                         expression=fields.get("expression", np.zeros((frames, 0))),
                         fps=fps, image_size=fields.get("image_size"), extra=extra, K=fields.get("K"),
                         R=fields.get("R"), t=fields.get("t"), **values)


def _generic(source: str, arrays: dict[str, Any], layout: str) -> TrackerImport:
    """Hand-stacked arrays with flamediff's names or common aliases (:mod:`.aliases`)."""
    numeric = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
    try:
        clip, note = clip_from_aliases(numeric)
    except AnimationFormatError:
        raise _unrecognised(source, arrays) from None
    report = TrackerReport("hand-stacked arrays (flamediff names or aliases)", None, layout, clip.num_frames,
                           fps_in_file="fps" in arrays)
    report.notes.append(note)
    report.mapped.append("by name (see notes)")
    return TrackerImport(replace(clip, extra={**clip.extra, "fps_in_file": "fps" in arrays}), report)


def import_arrays(source: str, arrays: dict[str, Any], layout: str, fps: float | None) -> TrackerImport:
    """One file's (or a stacked folder's) arrays as a clip and report: a registered tool's, else
    hand-stacked arrays; ``source`` names them in errors."""
    recognised = recognise(arrays)
    if recognised is None:
        return _generic(source, arrays, layout)
    tool, signature = recognised
    report = TrackerReport(tool.name, tool.flame_version, layout)
    fields = map_tool(tool, signature, arrays, report)
    frames = _frame_count(arrays, signature.frame_keys)
    return finish(fields, frames, report, fps, tool.fps)


def finish(fields: dict[str, Any], frames: int, report: TrackerReport, fps: float | None,
           tool_fps: float | None) -> TrackerImport:
    """The clip of mapped ``fields`` at the user's ``fps``, else the tool's, else 25 as a placeholder
    recorded as no frame rate; the report says which."""
    rate = fps or tool_fps
    report.fps_in_file = tool_fps is not None
    report.num_frames = frames
    if tool_fps is not None:
        report.notes.append(f"{report.tool} animates at {tool_fps:g} fps")
    elif fps is None:
        report.notes.append("the files carry no frame rate: one file frame per scene frame unless you set "
                            "the source fps")
    extra = {"source_tool": report.tool, "fps_in_file": rate is not None,
             "flame_version": report.flame_version, "dropped": [d.split(" ")[0] for d in report.dropped]}
    clip = _clip_from_fields(fields, frames, float(rate or 25.0), extra)
    return TrackerImport(clip, report, fields.get("static_offset"))
