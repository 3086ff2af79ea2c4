"""The trackers flamediff reads: how each tool's dict is recognised and mapped onto FLAME's fields.

Layouts were learnt from each tool's writer code; docs/TRACKERS.md tabulates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..animation import MAX_EXPRESSION, MAX_SHAPE, POSE_FIELDS
from ..rotations import matrix_to_axis_angle, rotation_6d_to_matrix
from .limits import TrackerFormatError

#: tool id -> (name, FLAME version its files imply, layout, what is imported, what is dropped)
TOOLS: dict[str, tuple[str, str | None, str, str, str]] = {
    "vhap": ("VHAP tracker", "FLAME 2023", "tracked_flame_params_<epoch>.npz",
             "rotation, translation, neck, jaw, eyes_pose, shape, expr; timestep_id as frame numbers; "
             "focal_length + image_size as the monocular camera",
             "static_offset, dynamic_offset, tex, tex_extra, lights"),
    "vhap-export": ("VHAP export (GaussianAvatars / NeRSemble layout)", "FLAME 2023",
                    "transforms.json + flame_param/00000.npz ...",
                    "as VHAP, one file per timestep; the camera of one view from transforms.json",
                    "static_offset, dynamic_offset, the other views, images and masks"),
    "gaussian-avatars": ("GaussianAvatars", "FLAME 2023", "flame_param.npz (beside point_cloud.ply)",
                         "rotation, translation, neck, jaw, eyes_pose, shape, expr",
                         "static_offset, dynamic_offset"),
    "smirk": ("SMIRK", "FLAME 2020", "the encoder's output dict (.npz / .pkl / .pth, one or per frame)",
              "pose_params, jaw_params, expression_params, shape_params, eye/neck_pose_params; cam as camera",
              "eyelid_params"),
    "deca": ("DECA / SPECTRE codedict", "FLAME 2020", "codedict (.npz / .pkl / .pth)",
             "shape, exp, pose (global + jaw); cam as camera", "tex, light, detail, images"),
    "emoca": ("EMOCA codedict", "FLAME 2020", "codedict (.npz / .pkl / .pth)",
              "shapecode, expcode, posecode (global + jaw); cam as camera", "texcode, lightcode, detailcode"),
    "emoca-codes": ("EMOCA --save_codes", "FLAME 2020", "<frame>/shape.npy, exp.npy, pose.npy ...",
                    "shape, exp, pose (global + jaw)", "tex, detail (no camera is saved)"),
    "metrical-tracker": ("metrical-tracker / FlashAvatar", "FLAME 2020", "checkpoint/00000.frame ... (torch)",
                         "flame exp, shape, jaw (6D), eyes (6D); the opencv camera (K, R, t, img_size)",
                         "tex, sh, eyelids, the pytorch3d camera (same camera)"),
    "insta": ("INSTA", "FLAME 2020", "flame/exp/00000.txt ...", "expression only (the files hold nothing else)",
              "-"),
    "emote": ("EMOTE", "FLAME 2020", "flame_<name>.pkl", "shape, expression, jaw_pose, global_pose (25 fps)", "-"),
    "smplx": ("smplx FLAME layer keywords", None, "betas, expression, global_orient, neck_pose, jaw_pose, "
              "leye_pose, reye_pose, transl", "all", "-"),
    "flame": ("FLAME native (TF_FLAME, chumpy model)", None, "pose [15], betas [400] (300 shape + 100 expression), "
              "trans", "all", "-"),
}
SUPPORTED = ", ".join(dict.fromkeys(name for name, *_ in TOOLS.values()))


def shape_text(value: Any) -> str:
    return str(list(np.shape(value))) if isinstance(value, np.ndarray) else type(value).__name__


class Mapper:
    """Takes arrays out of a tool's dict with width and NaN checks, noting what went where."""

    def __init__(self, arrays: dict[str, Any], frames: int) -> None:
        self.arrays, self.frames = arrays, frames
        self.values: dict[str, np.ndarray] = {}
        self.mapped: list[str] = []
        self.used: set[str] = set()

    def get(self, key: str, widths: tuple[int, ...], static: bool = False) -> np.ndarray | None:
        """``key`` as ``[T, width]`` (a single vector is repeated when ``static``); None if absent."""
        if key not in self.arrays:
            return None
        value = self.arrays[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise TrackerFormatError(f"'{key}' must be numeric, got {shape_text(value)}")
        value = value.astype(np.float64)
        if value.ndim == 3 and value.shape[1] == 1:
            value = value[:, 0]  # [T, 1, N] from stacked [1, N] rows
        if value.ndim == 1 and (static or self.frames == 1):
            value = np.repeat(value[None], self.frames, axis=0)
        if value.ndim != 2 or value.shape[1] not in widths:
            expected = " or ".join(f"[T, {w}]" for w in widths)
            raise TrackerFormatError(f"'{key}' must be {expected}, got {list(value.shape)}")
        if value.shape[0] != self.frames:
            raise TrackerFormatError(f"'{key}' has {value.shape[0]} frames but the file has {self.frames}: every "
                                     "per-frame array needs the same number of rows")
        if not np.isfinite(value).all():
            row, col = np.argwhere(~np.isfinite(value))[0]
            raise TrackerFormatError(f"'{key}' holds NaN or Inf (frame {row}, index {col}): the tracker failed on that "
                                     "frame; re-track it or cut it out")
        self.used.add(key)
        return value

    def put(self, key: str, target: str, value: np.ndarray | None, how: str = "") -> None:
        if value is not None:
            self.values[target] = value
            self.mapped.append(f"{key} {list(value.shape)} -> {target}{how}")


def _split(m: Mapper, key: str, targets: tuple[str, ...]) -> None:
    """A packed ``[T, 3 k]`` axis-angle array (DECA's pose, VHAP's eyes) into ``k`` joints."""
    value = m.get(key, (3 * len(targets),))
    if value is not None:
        for i, target in enumerate(targets):
            m.values[target] = value[:, 3 * i: 3 * i + 3]
        m.mapped.append(f"{key} {list(value.shape)} -> {' + '.join(targets)}")


def _map_vhap(m: Mapper) -> None:
    """VHAP / GaussianAvatars: axis-angle joints named after FLAME's, eyes packed left then right."""
    m.put("rotation", "global_pose", m.get("rotation", (3,)))
    m.put("neck_pose", "neck_pose", m.get("neck_pose", (3,)))
    m.put("jaw_pose", "jaw_pose", m.get("jaw_pose", (3,)))
    _split(m, "eyes_pose", ("left_eye_pose", "right_eye_pose"))
    m.put("translation", "translation", m.get("translation", (3,)))
    m.put("shape", "shape", m.get("shape", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expr", "expression", m.get("expr", tuple(range(1, MAX_EXPRESSION + 1))))


def _map_smirk(m: Mapper) -> None:
    m.put("pose_params", "global_pose", m.get("pose_params", (3,)))
    m.put("jaw_params", "jaw_pose", m.get("jaw_params", (3,)))
    m.put("neck_pose_params", "neck_pose", m.get("neck_pose_params", (3,)))
    _split(m, "eye_pose_params", ("left_eye_pose", "right_eye_pose"))
    m.put("shape_params", "shape", m.get("shape_params", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expression_params", "expression", m.get("expression_params", tuple(range(1, MAX_EXPRESSION + 1))))


def _map_deca(m: Mapper, names: dict[str, str]) -> None:
    """DECA / EMOCA / SPECTRE: ``pose`` is [global, jaw] axis-angle; ``names`` maps shape/exp/pose keys."""
    _split(m, names["pose"], ("global_pose", "jaw_pose"))
    m.put(names["shape"], "shape", m.get(names["shape"], tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put(names["exp"], "expression", m.get(names["exp"], tuple(range(1, MAX_EXPRESSION + 1))))


def _map_metrical(m: Mapper) -> None:
    """metrical-tracker ``.frame``: jaw and eyes as pytorch3d 6D; the head pose lives in the camera."""
    m.put("flame.exp", "expression", m.get("flame.exp", tuple(range(1, MAX_EXPRESSION + 1))))
    m.put("flame.shape", "shape", m.get("flame.shape", tuple(range(1, MAX_SHAPE + 1)), static=True))
    jaw = m.get("flame.jaw", (6,))
    if jaw is not None:
        m.values["jaw_pose"] = matrix_to_axis_angle(rotation_6d_to_matrix(jaw, "flame.jaw"), "flame.jaw")
        m.mapped.append(f"flame.jaw {list(jaw.shape)} -> jaw_pose (6D -> axis-angle)")
    eyes = m.get("flame.eyes", (12,))
    if eyes is not None:
        for target, part in (("left_eye_pose", eyes[:, :6]), ("right_eye_pose", eyes[:, 6:])):
            m.values[target] = matrix_to_axis_angle(rotation_6d_to_matrix(part, "flame.eyes"), "flame.eyes")
        m.mapped.append(f"flame.eyes {list(eyes.shape)} -> left_eye_pose + right_eye_pose (6D -> axis-angle)")


def _map_smplx(m: Mapper) -> None:
    for key, target in (("global_orient", "global_pose"), ("neck_pose", "neck_pose"), ("jaw_pose", "jaw_pose"),
                        ("leye_pose", "left_eye_pose"), ("reye_pose", "right_eye_pose"), ("transl", "translation")):
        m.put(key, target, m.get(key, (3,)))
    m.put("betas", "shape", m.get("betas", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expression", "expression", m.get("expression", tuple(range(1, MAX_EXPRESSION + 1))))


def _map_flame_native(m: Mapper) -> None:
    """FLAME's own layout: ``pose`` [15] = 5 joints, ``betas`` [400] = 300 shape + 100 expression."""
    _split(m, "pose", POSE_FIELDS)
    betas = m.get("betas", tuple(range(1, MAX_SHAPE + MAX_EXPRESSION + 1)), static=True)
    if betas is not None:
        m.values["shape"] = betas[:, :MAX_SHAPE]
        if betas.shape[1] > MAX_SHAPE:
            m.values["expression"] = betas[:, MAX_SHAPE:]
        m.mapped.append(f"betas {list(betas.shape)} -> shape" + (" + expression" if betas.shape[1] > MAX_SHAPE else ""))
    for key in ("trans", "transl", "translation"):
        m.put(key, "translation", m.get(key, (3,)))
    if "expression" in m.arrays and "expression" not in m.values:
        m.put("expression", "expression", m.get("expression", tuple(range(1, MAX_EXPRESSION + 1))))
    if "shape" in m.arrays and "shape" not in m.values:   # TF_FLAME's fits: shape [T, 300] beside pose
        m.put("shape", "shape", m.get("shape", tuple(range(1, MAX_SHAPE + 1)), static=True))


def _map_emote(m: Mapper) -> None:
    m.put("global_pose", "global_pose", m.get("global_pose", (3,)))
    m.put("jaw_pose", "jaw_pose", m.get("jaw_pose", (3,)))
    m.put("shape", "shape", m.get("shape", tuple(range(1, MAX_SHAPE + 1)), static=True))
    m.put("expression", "expression", m.get("expression", tuple(range(1, MAX_EXPRESSION + 1))))


@dataclass(frozen=True)
class Tool:
    """How to recognise one tool's dict and map it."""

    id: str
    recognise: Callable[[set[str], dict[str, Any]], bool]
    mapper: Callable[[Mapper], None]
    frame_keys: tuple[str, ...]
    dropped_why: dict[str, str] = field(default_factory=dict)
    camera: str | None = None  # "weak", "metrical", "vhap"
    fps: float | None = None


_OFFSETS = "per-vertex offsets: no rig equivalent"
_STATIC = "per-vertex identity offsets: not in the animation file; the add-on adds them as an optional shape key"
_DECA_DROPPED = {"tex": "albedo", "texcode": "albedo", "light": "lighting", "lightcode": "lighting",
                 "detail": "displacement detail", "detailcode": "displacement detail", "images": "input crops"}
TRACKERS: tuple[Tool, ...] = (
    Tool("metrical-tracker", lambda k, a: "flame.exp" in k, _map_metrical, ("flame.exp", "flame.jaw"),
          {"flame.tex": "albedo", "flame.sh": "lighting", "flame.eyelids": "metrical-tracker's eyelid blendshapes "
           "(not FLAME)", "camera.R": "pytorch3d copy of the opencv camera", "camera.t": "pytorch3d copy of the opencv "
           "camera", "camera.fl": "pytorch3d copy of the opencv camera", "camera.pp": "pytorch3d copy of the opencv "
           "camera", "global_step": "optimiser state", "mesh": "mesh"}, camera="metrical"),
    Tool("vhap", lambda k, a: {"rotation", "eyes_pose", "expr"} <= k
          and bool(k & {"timestep_id", "n_processed_frames"}),
          _map_vhap, ("expr", "rotation"),
          {"static_offset": _STATIC, "dynamic_offset": _OFFSETS, "tex": "albedo", "tex_extra": "albedo",
           "lights": "lighting", "n_processed_frames": "tracker state",
           "image_size": "tracker state (without focal_length: a calibrated capture's cameras are in its dataset)"},
          camera="vhap"),
    Tool("gaussian-avatars", lambda k, a: {"rotation", "eyes_pose", "expr"} <= k, _map_vhap, ("expr", "rotation"),
          {"static_offset": _STATIC, "dynamic_offset": _OFFSETS}),
    Tool("smirk", lambda k, a: bool(k & {"expression_params", "jaw_params", "eyelid_params", "pose_params"}),
          _map_smirk, ("expression_params", "jaw_params", "pose_params"),
          {"eyelid_params": "SMIRK's eyelid blendshapes (not FLAME)"}, camera="weak"),
    Tool("emoca", lambda k, a: bool(k & {"expcode", "posecode", "shapecode"}),
          lambda m: _map_deca(m, {"shape": "shapecode", "exp": "expcode", "pose": "posecode"}),
          ("expcode", "posecode"), _DECA_DROPPED, camera="weak"),
    Tool("emote", lambda k, a: {"expression", "jaw_pose", "global_pose"} <= k and k <= {"expression", "jaw_pose",
          "global_pose", "shape"}, _map_emote, ("expression", "jaw_pose"), fps=25.0),
    Tool("flame", lambda k, a: "pose" in k and np.shape(a["pose"])[-1:] == (15,), _map_flame_native, ("pose",)),
    Tool("deca", lambda k, a: "pose" in k and "exp" in k, lambda m: _map_deca(m, {"shape": "shape", "exp": "exp",
          "pose": "pose"}), ("exp", "pose"), _DECA_DROPPED, camera="weak"),
    Tool("smplx", lambda k, a: bool(k & {"global_orient", "leye_pose", "reye_pose"}) or {"betas", "expression"} <= k,
          _map_smplx, ("expression", "global_orient", "jaw_pose")),
    Tool("flame", lambda k, a: "betas" in k and np.shape(a["betas"])[-1:] == (MAX_SHAPE + MAX_EXPRESSION,),
          _map_flame_native, ("betas",)),
)
