"""Match a photo and track a video from the INSTALLED add-on inside the ``bpy`` module (run by
tests/test_addon_track.py against a real ``python -m flamediff serve``).

``python tests/addon_track_driver.py ZIP WORKDIR ASSET_FOLDER PORT TOKEN_FILE PHOTO VIDEO DOWN_PORT`` with
``BLENDER_USER_RESOURCES`` set to a private folder. Writes ``results.json`` into WORKDIR: the operators'
outcomes and the rig's head vertices projected through the scene camera (pixels) on chosen frames.
"""

from __future__ import annotations

import os
import sys

import bpy
from bpy_extras.object_utils import world_to_camera_view
from bpy_reports import draw_problems, install_addon, reported, run_main

ZIP, WORK, ASSET, PORT, TOKEN_FILE, PHOTO, VIDEO, DOWN_PORT = sys.argv[1:9]
MODULE = "bl_ext.user_default.flamediff"
RESULTS: dict = {"errors": []}
START = 11   # the scene's start frame: the video is keyed from here
PHOTO_FRAME = 5


def rig() -> bpy.types.Object:
    return bpy.data.objects["FLAME"]


def track_props() -> dict:
    p = bpy.context.scene.flamediff_track
    return {name: getattr(p, name) for name in ("task_id", "status", "progress", "message", "error", "advice",
                                                "report")}


def scene_state() -> dict:
    """What the tracking operators may change: objects, camera, resolution, reference, the rig's keys."""
    scene = bpy.context.scene
    head = rig()["flamediff_head"]
    keys = head.data.shape_keys
    return {"objects": sorted(o.name for o in bpy.data.objects), "camera": scene.camera.name if scene.camera else None,
            "resolution": [scene.render.resolution_x, scene.render.resolution_y],
            "reference": scene.flamediff_render.reference_image,
            "shape_keys": [round(b.value, 6) for b in keys.key_blocks],
            "keys": sum(len(fc.keyframe_points) for owner in (rig(), keys)
                        for fc in sys.modules[MODULE].blender_addon.animation_io.fcurves_of(owner))}


def projected_head(frame: int) -> list[list[float]]:
    """The rig's head vertices (FLAME order) in the scene camera's pixels at ``frame``."""
    scene = bpy.context.scene
    scene.frame_set(frame)
    graph = bpy.context.evaluated_depsgraph_get()
    head = rig()["flamediff_head"].evaluated_get(graph)
    mesh = head.to_mesh()
    try:
        width, height = scene.render.resolution_x, scene.render.resolution_y
        points = []
        for vertex in mesh.vertices:
            x, y, _ = world_to_camera_view(scene, scene.camera.evaluated_get(graph), head.matrix_world @ vertex.co)
            points.append([x * width, (1.0 - y) * height])
    finally:
        head.to_mesh_clear()
    return points


def keyed_frames() -> list[float]:
    """The frames the head's rotation is keyed on."""
    curves = [fc for fc in sys.modules[MODULE].blender_addon.animation_io.fcurves_of(rig())
              if fc.data_path == 'pose.bones["root"].rotation_quaternion' and fc.array_index == 0]
    return [point.co[0] for point in curves[0].keyframe_points] if curves else []


def main() -> None:
    RESULTS["install"], prefs = install_addon(ZIP, MODULE, ASSET, TOKEN_FILE)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    scene.frame_start, scene.frame_end = START, START + 20
    bpy.ops.flamediff.add_rig(name="FLAME", num_shape=20, num_expression=10)  # fewer than the fit has
    RESULTS["counts_before"] = [rig()["flamediff_num_shape"], rig()["flamediff_num_expression"]]

    # backend down: a clear error at once, nothing in the scene changes
    prefs.backend_url = f"http://127.0.0.1:{DOWN_PORT}"
    before = scene_state()
    RESULTS["down_match"] = reported(bpy.ops.flamediff.match_photo, filepath=PHOTO, wait=True)
    RESULTS["down_track"] = reported(bpy.ops.flamediff.track_video, filepath=VIDEO)
    RESULTS["down_props"] = track_props()
    RESULTS["down_unchanged"] = scene_state() == before
    prefs.backend_url = f"http://127.0.0.1:{PORT}"
    RESULTS["missing_file"] = reported(bpy.ops.flamediff.match_photo, filepath=os.path.join(WORK, "nope.png"), wait=True)

    # match the rig to the photo at frame PHOTO_FRAME
    scene.frame_set(PHOTO_FRAME)
    RESULTS["match"] = reported(bpy.ops.flamediff.match_photo, filepath=PHOTO, wait=True, timeout=240)
    RESULTS["match_props"] = track_props()
    RESULTS["match_state"] = scene_state()
    RESULTS["match_counts"] = [rig()["flamediff_num_shape"], rig()["flamediff_num_expression"]]
    RESULTS["match_keys"] = keyed_frames()
    RESULTS["match_pixels"] = projected_head(PHOTO_FRAME)
    RESULTS["match_pixels_later"] = projected_head(PHOTO_FRAME + 30)   # one key: the pose holds

    # non-blocking start, a second start refused by poll, then cancel (no event loop: the timer never fires)
    before = scene_state()
    RESULTS["async"] = reported(bpy.ops.flamediff.track_video, filepath=VIDEO)
    RESULTS["async_props"] = track_props()
    RESULTS["busy"] = reported(bpy.ops.flamediff.match_photo, filepath=PHOTO, wait=True)
    RESULTS["cancel"] = reported(bpy.ops.flamediff.track_cancel)
    RESULTS["cancel_props"] = track_props()
    RESULTS["cancel_unchanged"] = scene_state() == before

    # track the video into the rig from the scene's start frame
    RESULTS["track"] = reported(bpy.ops.flamediff.track_video, filepath=VIDEO, wait=True, timeout=300)
    RESULTS["track_props"] = track_props()
    RESULTS["track_keys"] = keyed_frames()
    RESULTS["track_camera"] = scene.camera.name
    RESULTS["track_pixels"] = {str(frame): projected_head(frame) for frame in (START, START + 7)}
    # a small rig kept as it is (the fit's other coefficients dropped), the expression keyed too
    bpy.ops.flamediff.add_rig(name="Small", num_shape=10, num_expression=5)
    small = bpy.context.active_object
    RESULTS["small"] = reported(bpy.ops.flamediff.match_photo, rig="Small", filepath=PHOTO, expression=True,
                                rebuild_rig=False, wait=True, timeout=240)
    RESULTS["small_props"] = track_props()
    RESULTS["small_counts"] = [small["flamediff_num_shape"], small["flamediff_num_expression"]]
    expression_keys = [fc for fc in sys.modules[MODULE].blender_addon.animation_io.fcurves_of(small["flamediff_head"].data.shape_keys)
                       if "Expression" in fc.data_path]
    RESULTS["small_expression_keys"] = sorted({point.co[0] for fc in expression_keys for point in fc.keyframe_points})
    RESULTS["small_expression_curves"] = len(expression_keys)
    RESULTS["draw_problems"] = draw_problems(bpy.context, bpy.types.FLAMEDIFF_PT_animation.draw,
                                             bpy.types.FLAMEDIFF_MT_rig.draw)


if __name__ == "__main__":
    run_main(main, RESULTS, WORK)
