"""The artist's rough edges in the INSTALLED add-on inside ``bpy`` (run by tests/test_addon_edges.py).

``python tests/addon_edges_driver.py ZIP WORKDIR ASSET_FOLDER`` with ``BLENDER_USER_RESOURCES`` and
``HOME`` set to private folders. WORKDIR holds ``shot.npz`` (a flamediff file of a 16-frame tracked
take with its camera), ``deca.npz`` (a weak-perspective tracker file) and ``frame.png``. No backend.
"""

from __future__ import annotations

import os
import sys

import bpy
from bpy_reports import install_addon, run_main

ZIP, WORK, ASSET = sys.argv[1:4]
MODULE = "bl_ext.user_default.flamediff"
RESULTS: dict = {"errors": []}


def path(name: str) -> str:
    return os.path.join(WORK, name)


def shot() -> dict:
    scene = bpy.context.scene
    camera = scene.camera
    return {"camera": camera.name if camera else None, "range": [scene.frame_start, scene.frame_end],
            "resolution": [scene.render.resolution_x, scene.render.resolution_y],
            "lens": camera.data.lens if camera else None, "sensor": camera.data.sensor_width if camera else None,
            "distance": (camera.matrix_world.translation - bpy.data.objects["FLAME"].matrix_world.translation).length
            if camera else None}


def main() -> None:
    RESULTS["install"], _prefs = install_addon(ZIP, MODULE, ASSET, path("token"))
    addon = sys.modules[MODULE]
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.render.fps, scene.render.fps_base = 25, 1.0   # the take's rate (flamediff track keeps a video's fps)
    bpy.ops.flamediff.add_rig(name="FLAME")
    rig = bpy.context.active_object

    # item 1: flamediff track's file brings its camera; the range follows the clip when asked
    RESULTS["own_file"] = sorted(bpy.ops.flamediff.import_animation(filepath=path("shot.npz"), rig=rig.name,
                                                                    use_camera=True, set_frame_range=True))
    RESULTS["own_file_shot"] = shot()
    RESULTS["own_file_report"] = scene.get("flamediff_import_report", "")
    # item 6: a DECA-family weak-perspective camera: a portrait camera, the scene's resolution kept
    RESULTS["deca"] = sorted(bpy.ops.flamediff.import_animation(filepath=path("deca.npz"), rig=rig.name))
    RESULTS["deca_shot"] = shot()
    RESULTS["deca_sized"] = sorted(bpy.ops.flamediff.import_animation(filepath=path("deca.npz"), rig=rig.name,
                                                                      use_image_size=True))
    RESULTS["deca_sized_shot"] = shot()
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080

    # item 10: a rig deleted while tracking: the host names the deletion
    host = addon.track_scene.TrackSceneHost(scene, rig, 1, photo=path("frame.png"))
    spare = bpy.data.objects.new("spare", None)
    bpy.context.collection.objects.link(spare)
    other = addon.track_scene.TrackSceneHost(scene, rig, 1)
    other.rig_name = "no such rig"
    try:
        other.apply(path("shot.npz"))
    except addon.track_job.RigGone as exc:
        RESULTS["rig_gone"] = str(exc)
    del host

    # item 9: a reference a script passes is the panel's afterwards
    render_scene = addon.render_scene
    try:
        render_scene.job_inputs(bpy.context, rig, 1, 2, lambda props, name: path("frame.png")
                                if name == "reference_image" else getattr(props, name))
    except render_scene.JobInputError as exc:
        RESULTS["job_inputs_error"] = str(exc)
    RESULTS["panel_reference"] = scene.flamediff_render.reference_image

    # item 9: a render of the unsaved file moves beside the .blend at its first save; latest survives
    unsaved = os.path.join(os.path.expanduser("~"), "flamediff_renders", "0123456789abcdef")
    os.makedirs(unsaved)
    with open(path("frame.png"), "rb") as handle:
        png = handle.read()
    for frame in (1, 2):
        with open(os.path.join(unsaved, f"frame_{frame:04d}.png"), "wb") as handle:
            handle.write(png)
    render_scene.update_strip(scene, unsaved, [1, 2])
    render_scene.show_latest(os.path.join(unsaved, "frame_0002.png"))
    project = path("project")
    os.makedirs(project)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(project, "shot.blend"))
    strip = scene.sequence_editor.strips["flamediff"]
    RESULTS["saved_strip_directory"] = strip.directory
    RESULTS["unsaved_left"] = os.path.exists(unsaved)
    bpy.ops.wm.save_mainfile()
    moved = path("moved")
    os.rename(project, moved)
    bpy.ops.wm.open_mainfile(filepath=os.path.join(moved, "shot.blend"), load_ui=False)
    strip = bpy.context.scene.sequence_editor.strips["flamediff"]
    RESULTS["moved_frame"] = os.path.join(bpy.path.abspath(strip.directory), strip.elements[0].filename)
    RESULTS["latest_after_reopen"] = "flamediff latest" in bpy.data.images


if __name__ == "__main__":
    run_main(main, RESULTS, WORK)
