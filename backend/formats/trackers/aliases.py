"""Hand-stacked arrays with flamediff's field names or other tools' common key names -> a clip.

The tolerant reader behind :func:`.read_tracker` for a ``.npz`` that no registered tool wrote
(flamediff's own file format is read strictly by :mod:`..animation`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..animation import MAX_EXPRESSION, MAX_SHAPE, POSE_FIELDS, AnimationClip, AnimationFormatError, frame_numbers

#: Key names used by trackers and other tools, mapped to ours (first match wins).
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "shape": ("shape", "shape_params", "shapecode", "betas", "shape_coeffs"),
    "expression": ("expression", "expressions", "exp", "expcode", "expression_params", "expr", "exp_params"),
    "global_pose": ("global_pose", "global_orient", "root_pose", "pose_params", "rotation", "rot"),
    "neck_pose": ("neck_pose", "neck"),
    "jaw_pose": ("jaw_pose", "jaw_params", "jaw"),
    "left_eye_pose": ("left_eye_pose", "leye_pose"),
    "right_eye_pose": ("right_eye_pose", "reye_pose"),
    "translation": ("translation", "transl", "trans"),
    "frame": ("frame", "frames", "frame_ids"),
}
#: DECA/EMOCA pack global pose and jaw in one [T, 6] array.
PACKED_POSE_KEYS = ("pose", "posecode", "pose_code")
#: Some trackers pack both eyes in one [T, 6] array (left then right).
PACKED_EYE_KEYS = ("eye_pose", "eyes_pose")


def _find(arrays: Mapping[str, np.ndarray], name: str, mapped: list[str]) -> np.ndarray | None:
    for key in KEY_ALIASES[name]:
        if key in arrays:
            if key != name:
                mapped.append(f"{key}->{name}")
            return np.asarray(arrays[key], dtype=np.float64)
    return None


def _as_frames(value: np.ndarray, frames: int, name: str) -> np.ndarray:
    """Accept ``[T, N]`` or a single ``[N]`` vector for the whole clip."""
    if value.ndim == 1:
        if value.shape[0] > MAX_SHAPE:
            raise AnimationFormatError(f"'{name}' as one vector for the clip has {value.shape[0]} values; "
                                       f"FLAME has at most {MAX_SHAPE}")
        value = np.repeat(value[None, :], frames, axis=0)
    if value.ndim != 2:
        raise AnimationFormatError(f"'{name}' must be [T, N] or [N], got shape {value.shape}")
    return value


def _frame_count(arrays: Mapping[str, np.ndarray]) -> int:
    for name in ("expression", "global_pose", "jaw_pose", "translation"):
        for key in KEY_ALIASES[name]:
            if key in arrays and np.ndim(arrays[key]) == 2:
                return int(np.shape(arrays[key])[0])
    for key in PACKED_POSE_KEYS:
        if key in arrays and np.ndim(arrays[key]) == 2:
            return int(np.shape(arrays[key])[0])
    raise AnimationFormatError("found no per-frame array (expression, pose or translation) in the file; "
                               f"known keys: {sorted(k for v in KEY_ALIASES.values() for k in v)}")


def clip_from_aliases(arrays: Mapping[str, np.ndarray]) -> tuple[AnimationClip, str]:
    """A clip from hand-stacked arrays named as flamediff names them or as :data:`KEY_ALIASES`
    lists, and a note of what was mapped, padded and ignored."""
    frames = _frame_count(arrays)
    mapped: list[str] = []
    found = {name: _find(arrays, name, mapped) for name in ("shape", "expression", *POSE_FIELDS, "translation")}
    values: dict[str, Any] = {name: None if value is None else _as_frames(value, frames, name)
                              for name, value in found.items()}
    for key in PACKED_POSE_KEYS:
        if key in arrays and values["global_pose"] is None:
            packed = _as_frames(np.asarray(arrays[key], np.float64), frames, key)
            if packed.shape[1] != 6:
                raise AnimationFormatError(f"'{key}' must be [T, 6] (global pose then jaw), got {packed.shape}")
            values["global_pose"], values["jaw_pose"] = packed[:, :3], packed[:, 3:]
            mapped.append(f"{key}->global_pose+jaw_pose")
    for key in PACKED_EYE_KEYS:
        if key in arrays and values["left_eye_pose"] is None:
            packed = _as_frames(np.asarray(arrays[key], np.float64), frames, key)
            values["left_eye_pose"], values["right_eye_pose"] = packed[:, :3], packed[:, 3:]
            mapped.append(f"{key}->left_eye_pose+right_eye_pose")
    if values["expression"] is None and values["global_pose"] is None and values["jaw_pose"] is None:
        raise AnimationFormatError("the file has neither expression nor pose arrays")
    zeros = {"shape": 0, "expression": 0}
    for name, value in values.items():
        if value is None:
            values[name] = np.zeros((frames, zeros.get(name, 3)))
    frame = _find(arrays, "frame", mapped)
    frame = np.arange(frames) if frame is None else frame_numbers(frame.reshape(-1))
    fps_values = np.asarray(arrays.get("fps", [25.0])).reshape(-1)
    if fps_values.size != 1:
        raise AnimationFormatError(f"'fps' must be one number, got {fps_values.size} values")
    fps = float(fps_values[0])
    notes = [f"read a tracker file: mapped {', '.join(mapped)}" if mapped else "read a tracker file"]
    short = [f"{name} ({values[name].shape[1]} of {limit})" for name, limit in
             (("shape", MAX_SHAPE), ("expression", MAX_EXPRESSION)) if values[name].shape[1] < limit]
    if short:
        notes.append("zero-padded " + ", ".join(short))
    ignored = sorted(set(arrays) - {k for v in KEY_ALIASES.values() for k in v}
                     - set(PACKED_POSE_KEYS) - set(PACKED_EYE_KEYS) - {"fps"})
    if ignored:
        notes.append(f"ignored {ignored}")
    return AnimationClip(frame=frame, fps=fps, **values), "; ".join(notes)
