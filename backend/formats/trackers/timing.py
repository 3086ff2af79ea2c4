"""A clip's rows onto scene frames: one to one, or resampled (linear, slerp) when the rates differ."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..animation import POSE_FIELDS, AnimationClip
from ..conventions import axis_angle_to_quaternion, quaternion_to_axis_angle
from ..rotations import matrix_to_quaternion, quaternion_to_matrix


def fps_in_file(clip: AnimationClip) -> bool:
    """False for clips (or files converted) from trackers that carry no frame rate."""
    return bool(clip.extra.get("fps_in_file", True))


def _slerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise spherical interpolation of unit quaternions (shortest way)."""
    b = np.where(np.sum(a * b, -1, keepdims=True) < 0, -b, b)
    cos = np.clip(np.sum(a * b, -1, keepdims=True), -1.0, 1.0)
    angle = np.arccos(cos)
    sin = np.sin(angle)
    near = sin < 1e-8
    wa = np.where(near, 1 - w, np.sin((1 - w) * angle) / np.where(near, 1, sin))
    wb = np.where(near, w, np.sin(w * angle) / np.where(near, 1, sin))
    q = wa * a + wb * b
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def resample(clip: AnimationClip, times: np.ndarray, frames: np.ndarray) -> AnimationClip:
    """``clip`` evaluated at scene ``frames`` from rows placed at (fractional) scene ``times``:
    linear for coefficients, translation and intrinsics, slerp for joint and camera rotations."""
    index = np.clip(np.searchsorted(times, frames, side="right") - 1, 0, len(times) - 2)
    span = times[index + 1] - times[index]
    w = np.clip((frames - times[index]) / span, 0.0, 1.0)[:, None]

    def linear(values: np.ndarray) -> np.ndarray:
        flat = values.reshape(len(values), -1)
        return ((1 - w) * flat[index] + w * flat[index + 1]).reshape((len(frames),) + values.shape[1:])

    def rotation(quaternions: np.ndarray) -> np.ndarray:
        return _slerp(quaternions[index], quaternions[index + 1], w)

    fields: dict[str, Any] = {name: linear(getattr(clip, name)) for name in ("shape", "expression", "translation")}
    for name in POSE_FIELDS:
        fields[name] = quaternion_to_axis_angle(rotation(axis_angle_to_quaternion(getattr(clip, name))))
    if clip.K is not None and clip.R is not None and clip.t is not None:  # has_camera, for the type checker
        fields.update(K=linear(clip.K), t=linear(clip.t),
                      R=quaternion_to_matrix(rotation(matrix_to_quaternion(clip.R))))
    return replace(clip, frame=np.asarray(frames, np.int64), **fields)


def retime(clip: AnimationClip, *, scene_fps: float, scene_start: int, source_fps: float = 0.0,
           frame_offset: int = 0) -> tuple[AnimationClip, str]:
    """The clip on scene frames and one sentence saying how the timing was decided.

    - no fps anywhere (tracker files): file frame k -> scene frame ``scene_start + k - first``;
    - a source rate (the user's ``source_fps``, the file's, the tool's): rows keep their times;
      when it differs from ``scene_fps`` the clip is resampled onto whole scene frames.
    flamediff's own files keep their Blender frame numbers (and so ignore ``scene_start``).
    """
    known = fps_in_file(clip)
    own = "source_tool" not in clip.extra and known
    rate = source_fps or (clip.fps if known else 0.0)
    origin = 0 if own else int(clip.frame[0])
    first = (0 if own else scene_start) + frame_offset
    ratio = scene_fps / rate if rate else 1.0
    times = first + (clip.frame - origin) * ratio
    if abs(ratio - 1.0) < 1e-9 or len(times) == 1:
        frames = np.round(times).astype(np.int64)
        if not rate:
            how = (f"no frame rate in the file: one file frame per scene frame from frame {int(frames[0])} "
                   "(set the source fps to resample)")
        else:
            how = f"{rate:g} fps, the scene's rate: one file frame per scene frame from frame {int(frames[0])}"
        return replace(clip, frame=frames, fps=float(scene_fps)), how
    frames = np.arange(int(np.ceil(times[0] - 1e-9)), int(np.floor(times[-1] + 1e-9)) + 1)
    out = replace(resample(clip, times.astype(np.float64), frames.astype(np.float64)), fps=float(scene_fps))
    how = (f"resampled {clip.num_frames} frames at {rate:g} fps onto {len(frames)} scene frames at {scene_fps:g} fps "
           f"({int(frames[0])}..{int(frames[-1])}; linear for coefficients, slerp for rotations)")
    return out, how
