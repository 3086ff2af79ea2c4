"""The trackers flamediff reads: how each tool's dict is recognised and mapped onto FLAME's fields.

Layouts were learnt from each tool's writer code; docs/TRACKERS.md tabulates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..animation import MAX_EXPRESSION, MAX_SHAPE, POSE_FIELDS
from ..rotations import matrix_to_axis_angle, rotation_6d_to_matrix
from .limits import TrackerFormatError


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
class Signature:
    """One kind of dict a tool writes: how it is told from its keys (and shapes), which arrays
    count its frames and how it maps. Signatures are tried in ``rank`` order across all tools
    because the tools' keys overlap: DECA's ``pose`` + ``exp`` is FLAME's own layout when ``pose``
    is 15 wide, VHAP's keys are GaussianAvatars' plus a timestep."""

    rank: int
    matches: Callable[[set[str], dict[str, Any]], bool]
    #: the per-frame arrays that count the frames (the first one present)
    frame_keys: tuple[str, ...]
    mapper: Callable[[Mapper], None]


@dataclass(frozen=True)
class Tool:
    """One tracker: its name and FLAME version in reports, its layout as docs/TRACKERS.md
    tabulates it, and how its dicts are recognised and mapped."""

    id: str
    name: str
    #: the FLAME version its files imply (None: the files name no tool, so no version)
    flame_version: str | None
    layout: str
    imported: str
    dropped: str
    #: none: the tool is told from its folder's layout; its files map as the tool their keys match
    signatures: tuple[Signature, ...] = ()
    #: array key (or its first dotted part) -> why it is dropped, for the report
    dropped_why: Mapping[str, str] = field(default_factory=dict)
    camera: str | None = None  # "weak", "metrical", "vhap": which camera the mapping reads
    #: the rate the tool animates at, when it has one (EMOTE)
    fps: float | None = None


_OFFSETS = "per-vertex offsets: no rig equivalent"
_STATIC = "per-vertex identity offsets: not in the animation file; the add-on adds them as an optional shape key"
_DECA_DROPPED = {"tex": "albedo", "texcode": "albedo", "light": "lighting", "lightcode": "lighting",
                 "detail": "displacement detail", "detailcode": "displacement detail", "images": "input crops"}
_PYTORCH3D = "pytorch3d copy of the opencv camera"
_VHAP_KEYS = {"rotation", "eyes_pose", "expr"}
_EMOTE_KEYS = {"expression", "jaw_pose", "global_pose"}
Keys = set[str]


def _is_vhap(k: Keys, a: dict[str, Any]) -> bool:
    return _VHAP_KEYS <= k and bool(k & {"timestep_id", "n_processed_frames"})


def _is_smirk(k: Keys, a: dict[str, Any]) -> bool:
    return bool(k & {"expression_params", "jaw_params", "eyelid_params", "pose_params"})


def _is_emote(k: Keys, a: dict[str, Any]) -> bool:
    return _EMOTE_KEYS <= k and k <= _EMOTE_KEYS | {"shape"}


def _is_smplx(k: Keys, a: dict[str, Any]) -> bool:
    return bool(k & {"global_orient", "leye_pose", "reye_pose"}) or {"betas", "expression"} <= k


def _is_flame_pose(k: Keys, a: dict[str, Any]) -> bool:
    return "pose" in k and np.shape(a["pose"])[-1:] == (15,)


def _is_flame_betas(k: Keys, a: dict[str, Any]) -> bool:
    return "betas" in k and np.shape(a["betas"])[-1:] == (MAX_SHAPE + MAX_EXPRESSION,)


def _map_deca_keys(m: Mapper) -> None:
    _map_deca(m, {"shape": "shape", "exp": "exp", "pose": "pose"})


def _map_emoca_keys(m: Mapper) -> None:
    _map_deca(m, {"shape": "shapecode", "exp": "expcode", "pose": "posecode"})


#: Every tool flamediff reads, in the order reports and docs/TRACKERS.md list them; a signature's
#: rank is its place in recognition (0 first).
TOOLS: tuple[Tool, ...] = (
    Tool("vhap", "VHAP tracker", "FLAME 2023", "tracked_flame_params_<epoch>.npz",
         "rotation, translation, neck, jaw, eyes_pose, shape, expr; timestep_id as frame numbers; "
         "focal_length + image_size as the monocular camera",
         "static_offset, dynamic_offset, tex, tex_extra, lights",
         signatures=(Signature(1, _is_vhap, ("expr", "rotation"), _map_vhap),),
         dropped_why={"static_offset": _STATIC, "dynamic_offset": _OFFSETS, "tex": "albedo", "tex_extra": "albedo",
                      "lights": "lighting", "n_processed_frames": "tracker state",
                      "image_size": "tracker state (without focal_length: a calibrated capture's cameras are in "
                                    "its dataset)"},
         camera="vhap"),
    Tool("vhap-export", "VHAP export (GaussianAvatars / NeRSemble layout)", "FLAME 2023",
         "transforms.json + flame_param/00000.npz ...",
         "as VHAP, one file per timestep; the camera of one view from transforms.json",
         "static_offset, dynamic_offset, the other views, images and masks"),
    Tool("gaussian-avatars", "GaussianAvatars", "FLAME 2023", "flame_param.npz (beside point_cloud.ply)",
         "rotation, translation, neck, jaw, eyes_pose, shape, expr", "static_offset, dynamic_offset",
         signatures=(Signature(2, lambda k, a: _VHAP_KEYS <= k, ("expr", "rotation"), _map_vhap),),
         dropped_why={"static_offset": _STATIC, "dynamic_offset": _OFFSETS}),
    Tool("smirk", "SMIRK", "FLAME 2020", "the encoder's output dict (.npz / .pkl / .pth, one or per frame)",
         "pose_params, jaw_params, expression_params, shape_params, eye/neck_pose_params; cam as camera",
         "eyelid_params",
         signatures=(Signature(3, _is_smirk, ("expression_params", "jaw_params", "pose_params"), _map_smirk),),
         dropped_why={"eyelid_params": "SMIRK's eyelid blendshapes (not FLAME)"}, camera="weak"),
    Tool("deca", "DECA / SPECTRE codedict", "FLAME 2020", "codedict (.npz / .pkl / .pth)",
         "shape, exp, pose (global + jaw); cam as camera", "tex, light, detail, images",
         signatures=(Signature(7, lambda k, a: "pose" in k and "exp" in k, ("exp", "pose"), _map_deca_keys),),
         dropped_why=_DECA_DROPPED, camera="weak"),
    Tool("emoca", "EMOCA codedict", "FLAME 2020", "codedict (.npz / .pkl / .pth)",
         "shapecode, expcode, posecode (global + jaw); cam as camera", "texcode, lightcode, detailcode",
         signatures=(Signature(4, lambda k, a: bool(k & {"expcode", "posecode", "shapecode"}),
                               ("expcode", "posecode"), _map_emoca_keys),),
         dropped_why=_DECA_DROPPED, camera="weak"),
    Tool("emoca-codes", "EMOCA --save_codes", "FLAME 2020", "<frame>/shape.npy, exp.npy, pose.npy ...",
         "shape, exp, pose (global + jaw)", "tex, detail (no camera is saved)"),
    Tool("metrical-tracker", "metrical-tracker / FlashAvatar", "FLAME 2020", "checkpoint/00000.frame ... (torch)",
         "flame exp, shape, jaw (6D), eyes (6D); the opencv camera (K, R, t, img_size)",
         "tex, sh, eyelids, the pytorch3d camera (same camera)",
         signatures=(Signature(0, lambda k, a: "flame.exp" in k, ("flame.exp", "flame.jaw"), _map_metrical),),
         dropped_why={"flame.tex": "albedo", "flame.sh": "lighting",
                      "flame.eyelids": "metrical-tracker's eyelid blendshapes (not FLAME)",
                      "camera.R": _PYTORCH3D, "camera.t": _PYTORCH3D, "camera.fl": _PYTORCH3D, "camera.pp": _PYTORCH3D,
                      "global_step": "optimiser state", "mesh": "mesh"},
         camera="metrical"),
    Tool("insta", "INSTA", "FLAME 2020", "flame/exp/00000.txt ...", "expression only (the files hold nothing else)",
         "-"),
    Tool("emote", "EMOTE", "FLAME 2020", "flame_<name>.pkl", "shape, expression, jaw_pose, global_pose (25 fps)", "-",
         signatures=(Signature(5, _is_emote, ("expression", "jaw_pose"), _map_emote),), fps=25.0),
    Tool("smplx", "smplx FLAME layer keywords", None, "betas, expression, global_orient, neck_pose, jaw_pose, "
         "leye_pose, reye_pose, transl", "all", "-",
         signatures=(Signature(8, _is_smplx, ("expression", "global_orient", "jaw_pose"), _map_smplx),)),
    Tool("flame", "FLAME native (TF_FLAME, chumpy model)", None,
         "pose [15], betas [400] (300 shape + 100 expression), trans", "all", "-",
         signatures=(Signature(6, _is_flame_pose, ("pose",), _map_flame_native),
                     Signature(9, _is_flame_betas, ("betas",), _map_flame_native))),
)
SUPPORTED = ", ".join(dict.fromkeys(tool.name for tool in TOOLS))
_BY_ID = {tool.id: tool for tool in TOOLS}
_BY_RANK = sorted(((signature, tool) for tool in TOOLS for signature in tool.signatures), key=lambda p: p[0].rank)


def tool_by_id(tool_id: str) -> Tool:
    """The registered tool ``tool_id`` (a folder layout names it)."""
    return _BY_ID[tool_id]


def recognise(arrays: dict[str, Any]) -> tuple[Tool, Signature] | None:
    """The tool whose signature ``arrays`` matches first in rank order, and that signature."""
    keys = set(arrays)
    for signature, tool in _BY_RANK:
        if signature.matches(keys, arrays):
            return tool, signature
    return None
