"""Render from the INSTALLED add-on inside the ``bpy`` module (run by tests/test_addon_render.py).

``python tests/addon_render_driver.py ZIP WORKDIR ASSET_FOLDER PORT TOKEN_FILE REFERENCE DOWN_PORT`` with
``BLENDER_USER_RESOURCES`` set to a private folder. Writes ``results.json`` into WORKDIR.
"""

from __future__ import annotations

import os
import sys
import time

import bpy
import numpy as np
from bpy_reports import draw_problems, install_addon, reported, run_main
from mathutils import Vector

ZIP, WORK, ASSET, PORT, TOKEN_FILE, REFERENCE, DOWN_PORT = sys.argv[1:8]
MODULE = "bl_ext.user_default.flamediff"
RESULTS: dict = {"errors": []}
FIRST, LAST = 11, 13  # Blender frames rendered: not starting at 1, to prove the alignment


def call(op, **kwargs) -> tuple[list | None, str, float]:
    started = time.perf_counter()
    try:
        outcome = sorted(op(**kwargs))
        return outcome, "", time.perf_counter() - started
    except RuntimeError as exc:
        return None, str(exc), time.perf_counter() - started


def scene_state() -> dict:
    scene = bpy.context.scene
    editor = scene.sequence_editor
    return {"objects": sorted(o.name for o in bpy.data.objects),
            "strips": sorted(s.name for s in editor.strips) if editor else [],
            "images": sorted(i.name for i in bpy.data.images), "frame": scene.frame_current,
            "range": [scene.frame_start, scene.frame_end]}


def strip_info() -> dict:
    editor = bpy.context.scene.sequence_editor
    strips = list(editor.strips) if editor else []
    return {"count": len(strips), "names": [s.name for s in strips],
            **({"type": strips[0].type, "frame_start": strips[0].frame_start,
                "frame_final_start": strips[0].frame_final_start, "frame_final_end": strips[0].frame_final_end,
                "directory": bpy.path.abspath(strips[0].directory), "raw_directory": strips[0].directory,
                "elements": [e.filename for e in strips[0].elements], "channel": strips[0].channel,
                "blend_type": strips[0].blend_type}
               if strips else {})}


def props() -> dict:
    p = bpy.context.scene.flamediff_render
    return {name: getattr(p, name) for name in ("job_id", "status", "progress", "frames_done", "frames_total",
                                                "message", "error", "advice", "output_dir", "notes")}


def main() -> None:
    RESULTS["install"], prefs = install_addon(ZIP, MODULE, ASSET, TOKEN_FILE)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    scene.frame_start, scene.frame_end = FIRST, LAST
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080   # an animator's 16:9 shot
    scene.flamediff_render.checkpoint = "tiny"  # the test's fast model, not the shipped 128 px demo

    bpy.ops.flamediff.add_rig(name="FLAME")
    rig = bpy.context.active_object
    jaw = rig.pose.bones["jaw"]
    jaw.rotation_mode = "QUATERNION"
    jaw.keyframe_insert("rotation_quaternion", frame=FIRST)
    jaw.rotation_quaternion = (0.98, 0.2, 0.0, 0.0)
    jaw.keyframe_insert("rotation_quaternion", frame=LAST)
    head = rig["flamediff_head"]
    centre = np.mean([tuple(head.matrix_world @ Vector(c)) for c in head.bound_box], axis=0)
    data = bpy.data.cameras.new("Cam")
    data.lens = 35.0   # the head's square (about 800 px) lies inside the 1920x1080 frame
    cam = bpy.data.objects.new("Cam", data)
    scene.collection.objects.link(cam)
    cam.location = tuple(centre + (0.0, -0.7, 0.0))
    cam.rotation_euler = (np.radians(90), 0.0, 0.0)
    scene.camera = cam

    # backend down: a clear error at once, nothing in the scene changes
    prefs.backend_url = f"http://127.0.0.1:{DOWN_PORT}"
    before = scene_state()
    RESULTS["down_wait"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2)
    RESULTS["down_async"] = call(bpy.ops.flamediff.render, reference_image=REFERENCE, steps=2)
    RESULTS["down_props"] = props()
    RESULTS["down_unchanged"] = scene_state() == before
    RESULTS["down_test_connection"] = call(bpy.ops.flamediff.test_connection)
    prefs.backend_url = f"http://127.0.0.1:{PORT}"
    RESULTS["test_connection"] = call(bpy.ops.flamediff.test_connection)
    RESULTS["no_reference"] = call(bpy.ops.flamediff.render, wait=True, reference_image=os.path.join(WORK, "nope.png"))

    # the backend refuses the job (4xx): its error and advice reach the operator and the panel
    before = scene_state()
    RESULTS["bad_checkpoint"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2,
                                     checkpoint="no-such-model")
    RESULTS["bad_checkpoint_props"] = props()
    RESULTS["bad_checkpoint_unchanged"] = scene_state() == before

    # the blocking render
    RESULTS["render"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2, seed=7,
                             timeout=120)
    RESULTS["render_props"] = props()
    RESULTS["strip"] = strip_info()
    RESULTS["latest_image"] = "flamediff latest" in bpy.data.images

    # a re-render (another seed, so another job) updates the same strip; into the chosen unsaved-file folder
    prefs.unsaved_output_dir = os.path.join(WORK, "chosen")
    RESULTS["rerender"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2, seed=8,
                               timeout=120)
    RESULTS["rerender_props"] = props()
    RESULTS["strip_after_rerender"] = strip_info()

    # cross-identity from the rig's setting, steps left at 0 (the checkpoint's default); then from the
    # operator's argument with the rig's setting back on "animation"
    shape_file = os.path.join(WORK, "reference_shape.npy")
    np.save(shape_file, np.linspace(-1.0, 1.0, 10))
    rig_settings = rig.flamediff_rig_settings
    rig_settings.shape_from, rig_settings.reference_shape = "reference", shape_file
    RESULTS["cross_rig"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, frame_start=FIRST,
                                frame_end=FIRST, timeout=120)
    RESULTS["cross_rig_props"] = props()
    rig_settings.shape_from = "animation"
    RESULTS["cross_argument"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2,
                                     shape_from="reference", frame_start=FIRST, frame_end=FIRST, timeout=120)
    RESULTS["cross_argument_props"] = props()
    rig_settings.shape_from = "reference"
    rig_settings.reference_shape = os.path.join(WORK, "no-such-shape.npy")
    RESULTS["cross_missing_file"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2)
    rig_settings.shape_from = "animation"

    # previews: the operator's argument, then the Render panel's property (half-size frames, own job)
    RESULTS["preview_argument"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2,
                                       seed=7, preview=True, timeout=120)
    RESULTS["preview_argument_props"] = props()
    scene.flamediff_render.preview = True
    RESULTS["preview_panel"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, frame_start=FIRST,
                                    frame_end=FIRST, timeout=120)
    RESULTS["preview_panel_props"] = props()
    scene.flamediff_render.preview = False

    # non-blocking start, then cancel (no event loop in the bpy module: the timer never fires)
    RESULTS["async"] = call(bpy.ops.flamediff.render, reference_image=REFERENCE, steps=200, seed=9)
    RESULTS["async_props"] = props()
    RESULTS["busy"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2)
    RESULTS["cancel"] = call(bpy.ops.flamediff.render_cancel)
    RESULTS["cancelling_props"] = props()
    job = sys.modules[MODULE].blender_addon.backend_job.active_job(scene.name)
    while job is not None and job.step():   # what the timer does while the backend winds the render down
        time.sleep(0.2)
    RESULTS["cancel_props"] = props()
    RESULTS["cancel_backend_view"] = job.view if job is not None else {}

    # "Start locally": the add-on starts python -m flamediff serve on the (so far unused) DOWN_PORT
    prefs.backend_mode = "LOCAL"
    prefs.backend_python, prefs.backend_port, prefs.backend_device = sys.executable, int(DOWN_PORT), "cpu"
    prefs.token_file = os.path.join(WORK, "local_token")
    RESULTS["local_token_file"] = prefs.token_file
    local = sys.modules[MODULE].blender_addon.local_backend
    RESULTS["local_before_start"] = reported(bpy.ops.flamediff.test_connection)
    RESULTS["local_start"] = reported(bpy.ops.flamediff.backend_start)
    RESULTS["local_just_started"] = reported(bpy.ops.flamediff.test_connection)
    RESULTS["local_render"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2,
                                   seed=7, timeout=120)
    RESULTS["local_props"] = props()
    RESULTS["local_connected"] = reported(bpy.ops.flamediff.test_connection)
    process = local.running()
    RESULTS["local_pid"] = process.pid if process else None

    # a saved .blend renders into //flamediff/<job> and the strip keeps working when the folder moves
    project = os.path.join(WORK, "project")
    os.makedirs(project)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(project, "shot.blend"))
    RESULTS["strip_after_save_as"] = strip_info()   # the unsaved file's last render moved beside it
    RESULTS["unsaved_render_left"] = os.path.exists(RESULTS["local_props"]["output_dir"])
    RESULTS["saved_render"] = call(bpy.ops.flamediff.render, wait=True, reference_image=REFERENCE, steps=2,
                                   seed=11, frame_start=FIRST, frame_end=FIRST, timeout=120)
    RESULTS["saved_props"] = props()
    RESULTS["saved_strip"] = strip_info()
    bpy.ops.wm.save_mainfile()

    RESULTS["local_stop"] = call(bpy.ops.flamediff.backend_stop)
    RESULTS["local_stopped"] = process is not None and process.poll() is not None

    # the Render panel draws with the properties and operators it names
    RESULTS["panel_problems"] = draw_problems(bpy.context, bpy.types.FLAMEDIFF_PT_render.draw)

    moved = os.path.join(WORK, "moved")
    os.rename(project, moved)
    bpy.ops.wm.open_mainfile(filepath=os.path.join(moved, "shot.blend"), load_ui=False)
    strip = bpy.context.scene.sequence_editor.strips["flamediff"]
    RESULTS["moved_frame"] = os.path.join(bpy.path.abspath(strip.directory), strip.elements[0].filename)


if __name__ == "__main__":
    run_main(main, RESULTS, WORK)
