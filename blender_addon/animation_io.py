"""Export a rig's keyframes (and a camera) to the animation format, and key a rig from a file.

Export has two paths that give the same numbers:
- fast: evaluate the F-curves of the exported channels directly (``FCurve.evaluate``), no
  ``frame_set``. Used when nothing but plain actions moves those channels: no NLA, no drivers
  or constraints on them, rig and camera objects without parents or constraints (their own
  keyed transforms and the keyed lens are rebuilt from F-curves too).
- full: ``frame_set`` per frame and read the evaluated scene, for everything else.
Import validates the whole file against the rig before it touches the scene, so a bad file
changes nothing.
"""

from __future__ import annotations

from dataclasses import replace

import bpy
import numpy as np
from mathutils import Euler, Matrix, Quaternion

from . import rig as rigmod
from ..backend.formats.animation import POSE_FIELDS, AnimationClip, AnimationFormatError
from ..backend.formats.conventions import (FLAME_TO_BLENDER, BlenderCameraIntrinsics, axis_angle_to_quaternion,
                                  blender_camera_to_opencv, opencv_to_blender_camera, quaternion_to_axis_angle,
                                  refit_intrinsics)
from ..backend.formats.flame_asset import JOINT_NAMES, FlameAsset

_TRANSFORM_PATHS = {"location", "rotation_euler", "rotation_quaternion", "rotation_axis_angle", "scale",
                    "delta_location", "delta_rotation_euler", "delta_rotation_quaternion", "delta_scale"}
_LENS_PATHS = ("lens", "sensor_width", "sensor_height", "shift_x", "shift_y")
_FLAME_TO_BLENDER_4 = np.eye(4)
_FLAME_TO_BLENDER_4[:3, :3] = FLAME_TO_BLENDER


class ExportError(ValueError):
    """An export the scene cannot serve (no rig, an orthographic camera); the message says why."""


class RigMismatchError(ExportError):
    """A file or export that does not belong to this rig's FLAME asset."""


# ----------------------------------------------------------------------------- F-curve access

def _fcurve_owner(id_data: bpy.types.ID):
    """What holds ``id_data``'s F-curves: its slot's channel bag (4.4+), its action (before), or None."""
    anim = id_data.animation_data
    if anim is None or anim.action is None:
        return None
    try:
        from bpy_extras.anim_utils import animdata_get_channelbag_for_assigned_slot
    except ImportError:  # Blender 4.2 / 4.3
        return anim.action
    return animdata_get_channelbag_for_assigned_slot(anim)


def fcurves_of(id_data: bpy.types.ID) -> list[bpy.types.FCurve]:
    """The F-curves of ``id_data``'s active action (slotted actions in 4.4+, legacy before)."""
    owner = _fcurve_owner(id_data)
    return list(owner.fcurves) if owner is not None else []


def _fcurve_map(id_data: bpy.types.ID) -> dict[tuple[str, int], bpy.types.FCurve]:
    return {(fc.data_path, fc.array_index): fc for fc in fcurves_of(id_data) if not fc.mute}


def _ensure_fcurve(id_data: bpy.types.ID, path: str, index: int, group: str) -> bpy.types.FCurve:
    anim = id_data.animation_data or id_data.animation_data_create()
    if anim.action is None:
        anim.action = bpy.data.actions.new(f"{id_data.name}Action")
    action = anim.action
    if hasattr(action, "fcurve_ensure_for_datablock"):
        return action.fcurve_ensure_for_datablock(id_data, path, index=index, group_name=group)
    return action.fcurves.find(path, index=index) or action.fcurves.new(path, index=index, action_group=group)


def _write_keys(fcurve: bpy.types.FCurve, frames: np.ndarray, values: np.ndarray) -> None:
    """Replace the keys of ``fcurve`` inside ``[frames.min(), frames.max()]`` by ``(frames, values)``."""
    points = fcurve.keyframe_points
    old = np.empty(2 * len(points))
    points.foreach_get("co", old)
    old = old.reshape(-1, 2)
    old = old[(old[:, 0] < frames.min() - 1e-4) | (old[:, 0] > frames.max() + 1e-4)]
    co = np.concatenate([old, np.stack([frames, values], axis=1)])
    co = co[np.argsort(co[:, 0], kind="stable")]
    points.clear()
    points.add(len(co))
    points.foreach_set("co", co.astype(np.float32).ravel())
    points.foreach_set("interpolation", np.full(len(co), 1, dtype=np.int32))  # LINEAR: trackers sample densely
    fcurve.update()


# ----------------------------------------------------------------------------- channels of a rig

def _bone_path(bone: str, prop: str) -> str:
    return f'pose.bones["{bone}"].{prop}'


def _rotation_property(pose_bone: bpy.types.PoseBone) -> tuple[str, int]:
    mode = pose_bone.rotation_mode
    if mode == "QUATERNION":
        return "rotation_quaternion", 4
    if mode == "AXIS_ANGLE":
        return "rotation_axis_angle", 4
    return "rotation_euler", 3


def _to_quaternion(values: np.ndarray, mode: str) -> np.ndarray:
    """``[T, 3 or 4]`` channel values of one rotation mode to ``[T, 4]`` quaternions (w, x, y, z)."""
    if mode == "QUATERNION":
        return values
    if mode == "AXIS_ANGLE":
        return np.array([tuple(Quaternion(v[1:], v[0])) for v in values])
    return np.array([tuple(Euler(v, mode).to_quaternion()) for v in values])


def _anim_blockers(id_data: bpy.types.ID, paths: set[str]) -> list[str]:
    """Why ``paths`` of ``id_data`` cannot be read from its action alone (empty list: they can)."""
    anim = id_data.animation_data
    if anim is None:
        return []
    reasons = []
    if len(anim.nla_tracks) or anim.use_tweak_mode:
        reasons.append(f"{id_data.name} uses the NLA")
    if anim.action is not None and (anim.action_influence != 1.0 or anim.action_blend_type != "REPLACE"):
        reasons.append(f"{id_data.name}'s action is blended")
    driven = sorted({d.data_path for d in anim.drivers} & paths)
    if driven:
        reasons.append(f"{id_data.name} has drivers on {driven[:3]}")
    return reasons


def _object_blockers(obj: bpy.types.Object) -> list[str]:
    """Why ``obj``'s matrix cannot be rebuilt from its own transform F-curves."""
    reasons = []
    if obj.parent is not None:
        reasons.append(f"{obj.name} has a parent")
    if len(obj.constraints):
        reasons.append(f"{obj.name} has constraints")
    if tuple(obj.delta_location) != (0, 0, 0) or tuple(obj.delta_scale) != (1, 1, 1) or \
            tuple(obj.delta_rotation_euler) != (0, 0, 0) or tuple(obj.delta_rotation_quaternion) != (1, 0, 0, 0):
        reasons.append(f"{obj.name} has delta transforms")
    return reasons + _anim_blockers(obj, _TRANSFORM_PATHS)


def fast_path_blockers(scene: bpy.types.Scene, rig: bpy.types.Object,
                       camera: bpy.types.Object | None) -> list[str]:
    """Reasons the export must evaluate the full scene per frame (empty: the fast path is exact)."""
    head_key = rigmod.rig_head(rig).data.shape_keys
    shape, expression = rigmod.coefficient_blocks(rig)
    key_paths = {f'key_blocks["{b.name}"].value' for b in shape + expression}
    reasons = _anim_blockers(head_key, key_paths)
    reasons += [f"shape key {b.name} is muted" for b in shape + expression if b.mute][:1]
    bone_paths = {_bone_path(b, p) for b in (*JOINT_NAMES, rigmod.TRANSL_BONE)
                  for p in ("rotation_quaternion", "rotation_euler", "rotation_axis_angle", "location")}
    bone_paths -= {_bone_path(b, "location") for b in JOINT_NAMES}  # our own Delta drivers
    reasons += _anim_blockers(rig, bone_paths)
    reasons += [f"bone {b} has constraints" for b in (*JOINT_NAMES, rigmod.TRANSL_BONE)
                if len(rig.pose.bones[b].constraints)]
    reasons += _object_blockers(rig)
    if camera is not None:
        reasons += _object_blockers(camera)
        animated = {fc.data_path for fc in fcurves_of(camera.data)} - set(_LENS_PATHS)
        reasons += _anim_blockers(camera.data, set(_LENS_PATHS))
        if animated:
            reasons.append(f"camera {camera.name} animates {sorted(animated)[:3]}")
    if scene.animation_data is not None:
        reasons.append("the scene itself is animated")
    return reasons


# ----------------------------------------------------------------------------- camera

def camera_intrinsics(scene: bpy.types.Scene, camera: bpy.types.Object) -> BlenderCameraIntrinsics:
    """The settings that decide ``camera``'s pixel intrinsics (perspective cameras only)."""
    data, render = camera.data, scene.render
    if data.type != "PERSP":
        raise ExportError(f"camera {camera.name} is {data.type.lower()}; only perspective cameras export")
    return BlenderCameraIntrinsics(
        lens_mm=data.lens, sensor_width_mm=data.sensor_width, sensor_height_mm=data.sensor_height,
        sensor_fit=data.sensor_fit, shift_x=data.shift_x, shift_y=data.shift_y,
        resolution_x=render.resolution_x, resolution_y=render.resolution_y,
        resolution_percentage=render.resolution_percentage,
        pixel_aspect_x=render.pixel_aspect_x, pixel_aspect_y=render.pixel_aspect_y)


def camera_extrinsics(rig_matrix: Matrix, camera_matrix: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``(R, t)`` in the rig's FLAME space, wherever the rig object stands."""
    relative = _FLAME_TO_BLENDER_4 @ np.linalg.inv(np.array(rig_matrix)) @ np.array(camera_matrix)
    return blender_camera_to_opencv(relative)


# ----------------------------------------------------------------------------- export

def _channel(fcurves: dict, path: str, index: int, static: float, frames: np.ndarray) -> np.ndarray:
    """One channel over ``frames``: its F-curve evaluated, else its static value."""
    fcurve = fcurves.get((path, index))
    if fcurve is None:
        return np.full(len(frames), float(static))
    return np.array([fcurve.evaluate(f) for f in frames])


def _rotation_quaternions(owner, fcurves: dict, prefix: str, frames: np.ndarray) -> np.ndarray:
    """``[T, 4]`` quaternions of an object's or pose bone's rotation channels, any rotation mode."""
    prop, size = _rotation_property(owner)
    static = list(getattr(owner, prop))
    raw = np.stack([_channel(fcurves, prefix + prop, i, static[i], frames) for i in range(size)], axis=1)
    return _to_quaternion(raw, owner.rotation_mode)


def _object_matrices(obj: bpy.types.Object, frames: np.ndarray, graph) -> list[Matrix]:
    """``obj.matrix_world`` per frame from its transform F-curves (no parent/constraints: checked)."""
    fcurves = {k: v for k, v in _fcurve_map(obj).items() if k[0] in _TRANSFORM_PATHS}
    if not fcurves:
        return [obj.evaluated_get(graph).matrix_world.copy()] * len(frames)
    location = np.stack([_channel(fcurves, "location", i, obj.location[i], frames) for i in range(3)], 1)
    scale = np.stack([_channel(fcurves, "scale", i, obj.scale[i], frames) for i in range(3)], 1)
    rotation = _rotation_quaternions(obj, fcurves, "", frames)
    return [Matrix.LocRotScale(loc, Quaternion(q).normalized(), size)
            for loc, q, size in zip(location, rotation, scale)]


def _cameras_fast(context: bpy.types.Context, rig: bpy.types.Object, camera: bpy.types.Object,
                  frames: np.ndarray) -> list:
    """Per-frame ``(intrinsics, (R, t))`` from F-curves of the camera, its lens and the rig object."""
    graph = context.evaluated_depsgraph_get()
    rig_matrices, camera_matrices = _object_matrices(rig, frames, graph), _object_matrices(camera, frames, graph)
    base = camera_intrinsics(context.scene, camera)
    lens_curves = _fcurve_map(camera.data)
    lens = {name: _channel(lens_curves, name, 0, getattr(camera.data, name), frames) for name in _LENS_PATHS}
    intrinsics = [replace(base, lens_mm=lens["lens"][i], sensor_width_mm=lens["sensor_width"][i],
                          sensor_height_mm=lens["sensor_height"][i], shift_x=lens["shift_x"][i],
                          shift_y=lens["shift_y"][i]) for i in range(len(frames))]
    return [(intr, camera_extrinsics(r, c)) for intr, r, c in zip(intrinsics, rig_matrices, camera_matrices)]


def _frames_fast(rig: bpy.types.Object, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Channel values straight from the F-curves (static values where a channel has none)."""
    head_key = rigmod.rig_head(rig).data.shape_keys
    key_curves, rig_curves = _fcurve_map(head_key), _fcurve_map(rig)
    values: dict[str, np.ndarray] = {}
    for name, blocks in zip(("shape", "expression"), rigmod.coefficient_blocks(rig)):
        # the RNA clamps a shape key's value to its slider range; F-curves do not
        columns = [np.clip(_channel(key_curves, f'key_blocks["{b.name}"].value', 0, b.value, frames),
                           b.slider_min, b.slider_max) for b in blocks]
        values[name] = np.stack(columns, axis=1)
    for field, joint in zip(POSE_FIELDS, JOINT_NAMES):
        quaternions = _rotation_quaternions(rig.pose.bones[joint], rig_curves, f'pose.bones["{joint}"].', frames)
        values[field] = quaternion_to_axis_angle(quaternions)
    transl = rig.pose.bones[rigmod.TRANSL_BONE]
    values["translation"] = np.stack([_channel(rig_curves, _bone_path(transl.name, "location"), i,
                                               transl.location[i], frames) for i in range(3)], axis=1)
    return values


def _frames_full(context: bpy.types.Context, rig: bpy.types.Object, frames: np.ndarray,
                 camera: bpy.types.Object | None) -> tuple[dict[str, np.ndarray], list]:
    """``frame_set`` per frame; rotations from evaluated pose matrices (constraints included)."""
    scene = context.scene
    shape_blocks, expression_blocks = rigmod.coefficient_blocks(rig)
    head_key = rigmod.rig_head(rig).data.shape_keys
    rows: dict[str, list] = {name: [] for name in ("shape", "expression", *POSE_FIELDS, "translation")}
    cameras = []
    current = scene.frame_current
    try:
        for frame in frames:
            scene.frame_set(int(frame))
            graph = context.evaluated_depsgraph_get()
            key_eval, rig_eval = head_key.evaluated_get(graph), rig.evaluated_get(graph)
            rows["shape"].append([key_eval.key_blocks[b.name].value for b in shape_blocks])
            rows["expression"].append([key_eval.key_blocks[b.name].value for b in expression_blocks])
            bones = rig_eval.pose.bones
            for field, joint in zip(POSE_FIELDS, JOINT_NAMES):
                parent = bones[joint].parent
                local = parent.matrix.to_3x3().inverted() @ bones[joint].matrix.to_3x3()
                rows[field].append(tuple(local.to_quaternion()))
            rows["translation"].append(tuple(bones[rigmod.TRANSL_BONE].matrix.translation))
            if camera is not None:
                cam_eval = camera.evaluated_get(graph)
                cameras.append((camera_intrinsics(scene, cam_eval),
                                camera_extrinsics(rig_eval.matrix_world, cam_eval.matrix_world)))
    finally:
        scene.frame_set(current)
    values = {name: np.array(rows[name], dtype=np.float64) for name in rows}
    for field in POSE_FIELDS:
        values[field] = quaternion_to_axis_angle(values[field])
    return values, cameras


def read_clip(context: bpy.types.Context, rig: bpy.types.Object, frame_start: int, frame_end: int,
              camera: bpy.types.Object | None, method: str = "AUTO") -> tuple[AnimationClip, str]:
    """The rig (and camera) over ``frame_start..frame_end`` as a clip; also which path was used.

    ``method``: ``AUTO`` (fast where exact), ``FAST`` (force; for benchmarks) or ``FULL``.
    """
    if frame_end < frame_start:
        raise AnimationFormatError(f"the frame range {frame_start}..{frame_end} is empty")
    scene = context.scene
    frames = np.arange(frame_start, frame_end + 1)
    blockers = fast_path_blockers(scene, rig, camera) if method == "AUTO" else []
    use_fast = method == "FAST" or (method == "AUTO" and not blockers)
    if use_fast:
        values = _frames_fast(rig, frames)
        cameras = _cameras_fast(context, rig, camera, frames) if camera is not None else []
    else:
        values, cameras = _frames_full(context, rig, frames, camera)
    camera_arrays: dict = {}
    if cameras:
        camera_arrays["K"] = np.stack([c[0].to_opencv()[0] for c in cameras])
        camera_arrays["R"] = np.stack([c[1][0] for c in cameras])
        camera_arrays["t"] = np.stack([c[1][1] for c in cameras])
        camera_arrays["image_size"] = cameras[0][0].image_size()
    clip = AnimationClip(frame=frames, fps=scene.render.fps / scene.render.fps_base,
                         flame_asset=rigmod.rig_identity(rig),
                         extra={"exporter": "flamediff blender add-on", "rig": rig.name},
                         **values, **camera_arrays)
    return clip, "fast" if use_fast else "full (" + ("; ".join(blockers) or "requested") + ")"


def check_rig_asset(rig: bpy.types.Object, identity: dict[str, str]) -> None:
    """Refuse a rig whose recorded FLAME asset is not ``identity`` (the asset in use)."""
    recorded = rigmod.rig_identity(rig)
    if recorded["hash"] != identity["hash"]:
        raise RigMismatchError(
            f"rig {rig.name} was built from FLAME asset '{recorded['name']}' ({recorded['hash'][:12]}), "
            f"but the add-on's asset is '{identity['name']}' ({identity['hash'][:12]}): point the "
            f"preferences at the rig's asset, or rebuild the rig")


# ----------------------------------------------------------------------------- import

def required_counts(clip: AnimationClip) -> tuple[int, int]:
    """Shape and expression coefficients a rig must expose to play ``clip`` (its last non-zero column)."""
    def last(values: np.ndarray) -> int:
        used = np.nonzero(np.abs(values).max(axis=0, initial=0.0) > 0)[0]
        return int(used[-1]) + 1 if len(used) else 0
    return last(clip.shape), last(clip.expression)


def fit_clip_to_rig(clip: AnimationClip, rig: bpy.types.Object,
                    counts: tuple[int, int] | None = None) -> AnimationClip:
    """Check ``clip`` against ``rig`` (asset, slider range, coefficient counts) and pad or cut its
    coefficients to ``counts`` (default: the rig's); changes nothing in the scene."""
    recorded, theirs = rigmod.rig_identity(rig), clip.flame_asset.get("hash")
    if theirs and theirs != recorded["hash"]:
        raise RigMismatchError(
            f"the file was made for FLAME asset '{clip.flame_asset.get('name', '?')}' ({theirs[:12]}) "
            f"but rig {rig.name} was built from '{recorded['name']}' ({recorded['hash'][:12]})")
    num_shape, num_expression = counts or rigmod.coefficient_counts(rig)
    needed = required_counts(clip)
    for name, count, need in (("shape", num_shape, needed[0]), ("expression", num_expression, needed[1])):
        if need > count:
            raise AnimationFormatError(
                f"the file uses {name} coefficient {need} but rig {rig.name} exposes {count}: import with "
                f"rebuild_rig=True (the import dialog's 'Rebuild rig with enough coefficients', on by default there) "
                f"to rebuild the rig with enough")
        if np.abs(getattr(clip, name)).max(initial=0.0) > rigmod.SLIDER_RANGE:
            raise AnimationFormatError(f"'{name}' holds values beyond +-{rigmod.SLIDER_RANGE:g}, the shape key range")
    clip = clip.padded(max(num_shape, clip.shape.shape[1]), max(num_expression, clip.expression.shape[1]))
    return replace(clip, shape=clip.shape[:, :num_shape], expression=clip.expression[:, :num_expression])


def coefficient_plan(context: bpy.types.Context, rig: bpy.types.Object, clip: AnimationClip,
                     rebuild: bool) -> tuple[tuple[int, int], tuple[FlameAsset, dict[str, str]] | None]:
    """The shape / expression counts ``clip`` is fitted to and, when ``rebuild`` is asked and the rig
    has too few, the ``(asset, identity)`` to rebuild it from (:func:`rebuild_rig`); checks the asset."""
    from . import assets

    counts, needed = rigmod.coefficient_counts(rig), required_counts(clip)
    if not rebuild or (needed[0] <= counts[0] and needed[1] <= counts[1]):
        return counts, None
    asset, identity = assets.current(context)
    check_rig_asset(rig, identity)
    return (min(max(needed[0], counts[0]), asset.num_shape),
            min(max(needed[1], counts[1]), asset.num_expression)), (asset, identity)


def rebuild_rig(context: bpy.types.Context, rig: bpy.types.Object, asset: FlameAsset, identity: dict[str, str],
                num_shape: int, num_expression: int) -> bpy.types.Object:
    """Replace ``rig`` by one with more coefficients, built from the same asset at the same place
    and name (its previous keys go with it: the import keys the new one); the caller has checked
    with :func:`check_rig_asset` that ``asset`` is the rig's."""
    name, matrix = rig.name, rig.matrix_world.copy()
    helper = rig["flamediff_joints"]
    old = [rig, rig["flamediff_head"], helper, *helper.children]
    rig.name = f"{name}.replaced"
    new = rigmod.build_rig(context, asset, identity, num_shape, num_expression, name)
    new.matrix_world = matrix
    for obj in old:
        data = obj.data
        bpy.data.objects.remove(obj)
        if data is not None and data.users == 0:
            {bpy.types.Mesh: bpy.data.meshes, bpy.types.Armature: bpy.data.armatures}[type(data)].remove(data)
    return new


STATIC_OFFSET_KEY = "StaticOffset"


def add_static_offset(rig: bpy.types.Object, offset: np.ndarray) -> str:
    """VHAP / GaussianAvatars' per-vertex identity offsets as the head's shape key ``StaticOffset``
    (value 1), and what was done; those trackers append teeth after FLAME's vertices, so the first
    rows are the head's. The backend renders from the animation file, which has no such field."""
    head = rigmod.rig_head(rig)
    count = len(head.data.vertices)
    if len(offset) < count:
        return f"static_offset has {len(offset)} vertices but the rig's head has {count}: not added"
    keys = head.data.shape_keys
    block = keys.key_blocks.get(STATIC_OFFSET_KEY) or head.shape_key_add(name=STATIC_OFFSET_KEY, from_mix=False)
    base = np.empty(count * 3, np.float32)
    keys.reference_key.data.foreach_get("co", base)
    block.data.foreach_set("co", (base.reshape(-1, 3) + offset[:count]).astype(np.float32).ravel())
    block.value = 1.0
    return (f"static_offset: shape key {STATIC_OFFSET_KEY} on {head.name} (value 1; Blender only, renders "
            "from the backend do not include it)")


def _continuous(quaternions: np.ndarray) -> np.ndarray:
    """Flip quaternion signs so consecutive keys never jump (interpolation takes the short way)."""
    flips = np.cumprod(np.where(np.sum(quaternions[1:] * quaternions[:-1], axis=1) < 0, -1.0, 1.0))
    out = quaternions.copy()
    out[1:] *= flips[:, None]
    return out


CHANNELS = ("shape", "expression", *POSE_FIELDS, "translation")


def apply_clip(rig: bpy.types.Object, clip: AnimationClip, channels: tuple[str, ...] = CHANNELS) -> np.ndarray:
    """Key ``rig``'s ``channels`` on the clip's frames (scene frames: see ``trackers.retime``) from a
    clip already checked by :func:`fit_clip_to_rig`; returns the key frames."""
    frames = clip.frame.astype(np.float64)
    head_key = rigmod.rig_head(rig).data.shape_keys
    for name, blocks in zip(("shape", "expression"), rigmod.coefficient_blocks(rig)):
        values = getattr(clip, name)
        for k, block in enumerate(blocks if name in channels else []):
            path = f'key_blocks["{block.name}"].value'
            _write_keys(_ensure_fcurve(head_key, path, 0, name.capitalize()), frames, values[:, k])
    for field, joint in zip(POSE_FIELDS, JOINT_NAMES):
        if field not in channels:
            continue
        quaternions = _continuous(axis_angle_to_quaternion(getattr(clip, field)))
        rig.pose.bones[joint].rotation_mode = "QUATERNION"
        for i in range(4):
            _write_keys(_ensure_fcurve(rig, _bone_path(joint, "rotation_quaternion"), i, joint),
                        frames, quaternions[:, i])
    for i in range(3 if "translation" in channels else 0):
        _write_keys(_ensure_fcurve(rig, _bone_path(rigmod.TRANSL_BONE, "location"), i, rigmod.TRANSL_BONE),
                    frames, clip.translation[:, i])
    return frames


def set_identity(rig: bpy.types.Object, shape: np.ndarray) -> None:
    """``shape`` as the rig's identity on every frame: the shape keys' values, their keys removed
    (one person has one shape)."""
    head_key = rigmod.rig_head(rig).data.shape_keys
    paths = {f'key_blocks["{block.name}"].value' for block in rigmod.coefficient_blocks(rig)[0]}
    owner = _fcurve_owner(head_key)
    for fcurve in [fc for fc in fcurves_of(head_key) if fc.data_path in paths]:
        owner.fcurves.remove(fcurve)
    rigmod.set_coefficients(rig, "SHAPE", shape)


def apply_camera(context: bpy.types.Context, rig: bpy.types.Object, clip: AnimationClip,
                 use_image_size: bool = False) -> bpy.types.Object:
    """The clip's OpenCV cameras (FLAME space of ``rig``) as the scene camera ``<rig> camera``, keyed
    per frame when they move. The scene keeps its resolution (the camera framing the file's whole
    image inside it, :func:`refit_intrinsics`) unless ``use_image_size``: then the render
    resolution becomes the file's image size."""
    scene = context.scene
    render = scene.render
    if use_image_size:
        width, height = clip.image_size
        intrinsics = np.asarray(clip.K, np.float64)
    else:
        scale = render.resolution_percentage / 100.0
        width, height = int(render.resolution_x * scale), int(render.resolution_y * scale)
        intrinsics = refit_intrinsics(clip.K, clip.image_size, (width, height))
    settings = [BlenderCameraIntrinsics.from_opencv(K, width, height) for K in intrinsics]
    to_world = np.array(rig.matrix_world) @ np.linalg.inv(_FLAME_TO_BLENDER_4)
    matrices = [to_world @ opencv_to_blender_camera(R, t) for R, t in zip(clip.R, clip.t)]
    name = f"{rig.name} camera"
    camera = bpy.data.objects.get(name)
    if camera is None or camera.type != "CAMERA":
        camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        scene.collection.objects.link(camera)
    camera.rotation_mode = "QUATERNION"
    parts = [Matrix([list(row) for row in m]).decompose() for m in matrices]  # a nested list reads as rows here
    location = np.array([tuple(p[0]) for p in parts])
    rotation = _continuous(np.array([tuple(p[1]) for p in parts]))
    lens = np.array([[c.lens_mm, c.shift_x, c.shift_y] for c in settings])
    first = settings[0]
    camera.data.sensor_fit, camera.data.sensor_width = first.sensor_fit, first.sensor_width_mm
    camera.data.sensor_height = first.sensor_height_mm
    camera.location, camera.rotation_quaternion = location[0], rotation[0]
    camera.data.lens, camera.data.shift_x, camera.data.shift_y = lens[0]
    frames = clip.frame.astype(np.float64)
    for values, owner, path in ((location, camera, "location"), (rotation, camera, "rotation_quaternion")):
        if np.ptp(values, axis=0).max() > 1e-9:
            for i in range(values.shape[1]):
                _write_keys(_ensure_fcurve(owner, path, i, "Camera"), frames, values[:, i])
    for i, path in enumerate(("lens", "shift_x", "shift_y")):
        if np.ptp(lens[:, i]) > 1e-9:
            _write_keys(_ensure_fcurve(camera.data, path, 0, "Lens"), frames, lens[:, i])
    if use_image_size:
        render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.pixel_aspect_x, render.pixel_aspect_y = first.pixel_aspect_x, first.pixel_aspect_y
    scene.camera = camera
    return camera
