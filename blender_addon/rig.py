"""Build a FLAME rig from a FLAME asset: exact LBS through Blender's own Armature modifier.

Layout (all of it evaluates without Python: drivers are single-variable AVERAGE or "simple
expressions", which Blender runs with script auto-execution off):

- The rig object is an armature whose local space IS FLAME space (Y up); the object is rotated
  +90 degrees about X so the head stands Z-up in Blender. Move the rig object freely: exports
  express cameras relative to it.
- Bone ``transl`` (at the origin) carries FLAME's translation as its keyed location. It is the
  simplest exact place: FLAME adds translation after skinning, which is what a parent bone does.
- Per FLAME joint j a two-bone chain, both with identity rest orientation at the rest joint J0_j:
  ``<joint>`` (keyed rotation, location driven to Delta_j) -> ``DEF-<joint>`` (location driven
  to -Delta_j, deforms the vertex group). Delta_j = J_j(shape, expression) - J0_j, so the
  skinning transform is T(J_j) R_j T(-J_j) composed down the chain: FLAME's LBS exactly.
- Delta_j comes from a hidden helper mesh ``<rig>_joints`` (identity transform, 5 vertices at
  J0) whose shape keys hold J0 + J_regressor @ direction_k and follow the head's keys through
  1-variable drivers; an empty per joint is vertex-parented to it and the bones read its location.
- Pose correctives ``Pose001..036`` are driven by the entries of R_j - I, written as simple
  expressions of the bone's quaternion (FLAME's pose feature order: joint, row, column).
"""

from __future__ import annotations

import math

import bpy
import numpy as np

from ..backend.formats.flame_asset import JOINT_NAMES, FlameAsset

RIG_VERSION = 1
TRANSL_BONE = "transl"
BONE_LENGTH = 0.02
SLIDER_RANGE = 10.0
#: Entries of R - I (row-major) as simple expressions of a quaternion (w, x, y, z).
ROTATION_MINUS_IDENTITY = ("-2*(y*y+z*z)", "2*(x*y-w*z)", "2*(x*z+w*y)",
                           "2*(x*y+w*z)", "-2*(x*x+z*z)", "2*(y*z-w*x)",
                           "2*(x*z-w*y)", "2*(y*z+w*x)", "-2*(x*x+y*y)")


def shape_key_name(kind: str, index: int) -> str:
    """``Shape001`` / ``Expression001`` / ``Pose001`` (1-based, like FLAME's papers and add-on)."""
    return f"{kind}{index + 1:03d}"


def deform_bone(joint: str) -> str:
    return f"DEF-{joint}"


def find_rig(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The flamediff rig that ``obj`` is or belongs to (the head mesh's parent), else None."""
    while obj is not None:
        if obj.type == "ARMATURE" and obj.get("flamediff_rig"):
            return obj
        obj = obj.parent
    return None


def rig_head(rig: bpy.types.Object) -> bpy.types.Object:
    """The skinned head mesh of ``rig``."""
    return rig["flamediff_head"]


def rig_identity(rig: bpy.types.Object) -> dict[str, str]:
    """The FLAME asset ``{name, hash}`` that built ``rig``."""
    return {"name": str(rig.get("flamediff_asset_name", "")), "hash": str(rig.get("flamediff_asset_hash", ""))}


def coefficient_counts(rig: bpy.types.Object) -> tuple[int, int]:
    return int(rig["flamediff_num_shape"]), int(rig["flamediff_num_expression"])


def new_driver(owner: bpy.types.bpy_struct, path: str, index: int = -1) -> bpy.types.Driver:
    """``driver_add`` without its two default keyframes, which would snap values near 0 and 1."""
    fcurve = owner.driver_add(path, index)
    while fcurve.keyframe_points:
        fcurve.keyframe_points.remove(fcurve.keyframe_points[0])
    return fcurve.driver


def _link(collection: bpy.types.Collection, obj: bpy.types.Object) -> bpy.types.Object:
    collection.objects.link(obj)
    return obj


def _build_armature(context: bpy.types.Context, name: str, joints: np.ndarray,
                    parents: np.ndarray, collection: bpy.types.Collection) -> bpy.types.Object:
    """Armature with ``transl`` and the two-bone chain per joint, identity rest orientations."""
    data = bpy.data.armatures.new(name)
    rig = _link(collection, bpy.data.objects.new(name, data))
    rig.rotation_euler = (math.pi / 2.0, 0.0, 0.0)
    previous = context.view_layer.objects.active
    if context.object is not None and context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    bones = data.edit_bones

    def add(bone_name: str, head: np.ndarray, parent: str | None, deform: bool) -> None:
        bone = bones.new(bone_name)
        bone.head = tuple(head)
        bone.tail = tuple(head + (0.0, BONE_LENGTH, 0.0))
        bone.roll = 0.0
        bone.use_deform = deform
        bone.parent = bones[parent] if parent else None

    add(TRANSL_BONE, np.zeros(3), None, False)
    for j, joint in enumerate(JOINT_NAMES):
        parent = TRANSL_BONE if parents[j] < 0 else deform_bone(JOINT_NAMES[parents[j]])
        add(joint, joints[j], parent, False)
        add(deform_bone(joint), joints[j], joint, True)
    bpy.ops.object.mode_set(mode="OBJECT")
    hidden = data.collections.new("Deform (driven)")
    for joint in JOINT_NAMES:
        hidden.assign(data.bones[deform_bone(joint)])
        pose = rig.pose.bones[joint]
        pose.rotation_mode = "QUATERNION"
        pose.lock_location = pose.lock_scale = (True, True, True)
        deform = rig.pose.bones[deform_bone(joint)]
        deform.lock_location = deform.lock_scale = deform.lock_rotation = (True, True, True)
        deform.lock_rotation_w = True
    hidden.is_visible = False
    transl = rig.pose.bones[TRANSL_BONE]
    transl.lock_rotation = transl.lock_scale = (True, True, True)
    transl.lock_rotation_w = True
    if previous is not None:
        context.view_layer.objects.active = previous
    return rig


def _add_keys(obj: bpy.types.Object, base: np.ndarray, names: list[str], offsets: np.ndarray) -> None:
    """Shape keys ``names[k]`` at ``base + offsets[k]`` with the slider range FLAME needs."""
    for name, offset in zip(names, offsets):
        block = obj.shape_key_add(name=name, from_mix=False)
        block.slider_min, block.slider_max = -SLIDER_RANGE, SLIDER_RANGE
        block.data.foreach_set("co", (base + offset).astype(np.float32).ravel())


def _build_head(name: str, asset: FlameAsset, rig: bpy.types.Object, num_shape: int, num_expression: int,
                collection: bpy.types.Collection) -> bpy.types.Object:
    """Mesh with UVs, vertex groups, shape/expression keys and driven pose correctives."""
    mesh = bpy.data.meshes.new(f"{name}_head")
    mesh.from_pydata(asset.v_template.tolist(), [], asset.faces.tolist())
    uv_layer = mesh.uv_layers.new(name="UVMap")
    uv_layer.data.foreach_set("uv", asset.uv[asset.faces_uv].astype(np.float32).ravel())
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), dtype=bool))
    mesh.update()
    head = _link(collection, bpy.data.objects.new(f"{name}_head", mesh))
    head.parent = rig
    head["flamediff_role"] = "head"
    for j, joint in enumerate(JOINT_NAMES):
        group = head.vertex_groups.new(name=deform_bone(joint))
        weights = asset.weights[:, j]
        for value in np.unique(weights[weights > 0]):
            group.add(np.nonzero(weights == value)[0].tolist(), float(value), "REPLACE")
    modifier = head.modifiers.new("Armature", "ARMATURE")
    modifier.object = rig
    modifier.use_vertex_groups, modifier.use_bone_envelopes = True, False
    head.shape_key_add(name="Basis", from_mix=False)
    base = asset.v_template
    _add_keys(head, base, [shape_key_name("Shape", k) for k in range(num_shape)],
              np.moveaxis(asset.shapedirs[:, :, :num_shape], 2, 0))
    _add_keys(head, base, [shape_key_name("Expression", k) for k in range(num_expression)],
              np.moveaxis(asset.exprdirs[:, :, :num_expression], 2, 0))
    pose_names = [shape_key_name("Pose", p) for p in range(asset.posedirs.shape[2])]
    _add_keys(head, base, pose_names, np.moveaxis(asset.posedirs, 2, 0))
    for p, pose_name in enumerate(pose_names):
        joint = JOINT_NAMES[1 + p // 9]
        driver = new_driver(head.data.shape_keys.key_blocks[pose_name], "value")
        driver.type = "SCRIPTED"
        for component in "wxyz":
            variable = driver.variables.new()
            variable.name, variable.type = component, "TRANSFORMS"
            target = variable.targets[0]
            target.id, target.bone_target = rig, joint
            target.transform_type = f"ROT_{component.upper()}"
            # LOCAL_SPACE is the local rotation AFTER constraints (what skins the mesh);
            # TRANSFORM_SPACE would be the keyed one, before constraints
            target.rotation_mode, target.transform_space = "QUATERNION", "LOCAL_SPACE"
        driver.expression = ROTATION_MINUS_IDENTITY[p % 9]
    return head


def _build_joint_helper(name: str, asset: FlameAsset, rig: bpy.types.Object, head: bpy.types.Object,
                        num_shape: int, num_expression: int, collection: bpy.types.Collection) -> bpy.types.Object:
    """Helper mesh whose vertices are the regressed joints, and the bones' location drivers."""
    joints, shape_basis, expr_basis = asset.joint_shape_basis()
    mesh = bpy.data.meshes.new(f"{name}_joints")
    mesh.from_pydata(joints.tolist(), [], [])
    helper = _link(collection, bpy.data.objects.new(f"{name}_joints", mesh))
    helper["flamediff_role"] = "joints"
    helper.hide_render = helper.hide_select = True
    helper.shape_key_add(name="Basis", from_mix=False)
    names = ([shape_key_name("Shape", k) for k in range(num_shape)]
             + [shape_key_name("Expression", k) for k in range(num_expression)])
    offsets = np.concatenate([np.moveaxis(shape_basis[:, :, :num_shape], 2, 0),
                              np.moveaxis(expr_basis[:, :, :num_expression], 2, 0)])
    _add_keys(helper, joints, names, offsets)
    head_key = head.data.shape_keys
    for key_name in names:
        driver = new_driver(helper.data.shape_keys.key_blocks[key_name], "value")
        driver.type = "AVERAGE"
        variable = driver.variables.new()
        variable.type = "SINGLE_PROP"
        variable.targets[0].id_type = "KEY"
        variable.targets[0].id = head_key
        variable.targets[0].data_path = f'key_blocks["{key_name}"].value'
    for j, joint in enumerate(JOINT_NAMES):
        empty = _link(collection, bpy.data.objects.new(f"{name}_J_{joint}", None))
        empty.parent, empty.parent_type, empty.parent_vertices = helper, "VERTEX", (j, 0, 0)
        empty.empty_display_size, empty.hide_render, empty.hide_select = 0.005, True, True
        empty["flamediff_role"] = "joint"
        for bone, sign in ((joint, ""), (deform_bone(joint), "-")):
            for axis in range(3):
                driver = new_driver(rig.pose.bones[bone], "location", axis)
                driver.type = "SCRIPTED"
                variable = driver.variables.new()
                variable.name, variable.type = "l", "TRANSFORMS"
                target = variable.targets[0]
                target.id, target.transform_type = empty, f"LOC_{'XYZ'[axis]}"
                target.transform_space = "WORLD_SPACE"
                driver.expression = f"{sign}(l - {float(joints[j, axis])!r})"
    return helper


def build_rig(context: bpy.types.Context, asset: FlameAsset, identity: dict[str, str], num_shape: int,
              num_expression: int, name: str = "FLAME") -> bpy.types.Object:
    """Build a rig in the active collection and return its armature object (selected, active)."""
    num_shape = max(1, min(num_shape, asset.num_shape))
    num_expression = max(1, min(num_expression, asset.num_expression))
    collection = context.collection or context.scene.collection
    joints = asset.J_regressor @ asset.v_template
    rig = _build_armature(context, name, joints, np.asarray(asset.parents), collection)
    name = rig.name  # Blender may have added a .001 suffix
    head = _build_head(name, asset, rig, num_shape, num_expression, collection)
    helper = _build_joint_helper(name, asset, rig, head, num_shape, num_expression, collection)
    rig["flamediff_rig"] = RIG_VERSION
    rig["flamediff_asset_name"] = identity["name"]
    rig["flamediff_asset_hash"] = identity["hash"]
    rig["flamediff_num_shape"] = num_shape
    rig["flamediff_num_expression"] = num_expression
    rig["flamediff_head"] = head
    rig["flamediff_joints"] = helper
    for obj in (helper, *[child for child in helper.children]):
        obj.hide_set(True)
    for obj in context.view_layer.objects:
        obj.select_set(False)
    rig.select_set(True)
    context.view_layer.objects.active = rig
    return rig


def coefficient_blocks(rig: bpy.types.Object) -> tuple[list, list]:
    """The head's shape and expression key blocks, in coefficient order."""
    blocks = rig_head(rig).data.shape_keys.key_blocks
    num_shape, num_expression = coefficient_counts(rig)
    return ([blocks[shape_key_name("Shape", k)] for k in range(num_shape)],
            [blocks[shape_key_name("Expression", k)] for k in range(num_expression)])


def set_coefficients(rig: bpy.types.Object, which: str, values: np.ndarray | None = None,
                     sigma: float = 0.0, seed: int = 0) -> None:
    """Reset (``values`` None, ``sigma`` 0) or randomise (normal, ``sigma``) shape/expression keys."""
    shape, expression = coefficient_blocks(rig)
    blocks = {"SHAPE": shape, "EXPRESSION": expression, "BOTH": shape + expression}[which]
    if values is None:
        values = np.random.default_rng(seed).normal(0.0, sigma, len(blocks)) if sigma else np.zeros(len(blocks))
    for block, value in zip(blocks, values):
        block.value = float(np.clip(value, -SLIDER_RANGE, SLIDER_RANGE))
