"""The artist's rough edges in the INSTALLED add-on inside ``bpy`` (run by tests/test_addon_edges.py).

``python tests/addon_edges_driver.py ZIP WORKDIR ASSET_FOLDER PORT TOKEN_FILE`` with
``BLENDER_USER_RESOURCES`` and ``HOME`` set to private folders. WORKDIR holds ``shot.npz``
(``flamediff track``'s file of a 16-frame take), ``deca.npz`` (a weak-perspective tracker file),
``tf_flame_fit.pkl``, ``frame.png`` and ``phone.jpg`` (a 6000x4000 portrait stored sideways, EXIF
orientation 6). The backend at PORT (a tiny checkpoint, the tracking extra) serves the last part:
Match Photo, renders of the saved file, Cancel then Render again, mattes, a rig deleted while
matching.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings

import bpy
from bpy_extras.object_utils import world_to_camera_view
from bpy_reports import install_addon, reported, run_main
from mathutils import Vector

ZIP, WORK, ASSET, PORT, TOKEN_FILE = sys.argv[1:6]
MODULE = "bl_ext.user_default.flamediff"
RESULTS: dict = {"errors": []}
CANCEL_STEPS = 30   # denoising steps of the render cancelled: its batches of 4 frames outlast a 0.05 s poll


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
    RESULTS["install"], prefs = install_addon(ZIP, MODULE, ASSET, TOKEN_FILE)
    prefs.backend_url = f"http://127.0.0.1:{PORT}"
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
    # item 6: TF_FLAME's fit keeps its identity (shape [T, 300]) on a rig rebuilt for 300 coefficients
    bpy.ops.flamediff.add_rig(name="TF")
    RESULTS["tf_flame"] = reported(bpy.ops.flamediff.import_animation, filepath=path("tf_flame_fit.pkl"), rig="TF",
                                   rebuild_rig=True, use_camera=False)
    RESULTS["tf_flame_report"] = scene.get("flamediff_import_report", "")
    RESULTS["tf_flame_export"] = sorted(bpy.ops.flamediff.export_animation(
        filepath=path("tf_flame_keyed.npz"), rig="TF", frame_start=scene.frame_start, frame_end=scene.frame_start + 3,
        use_camera=False))
    remove_rig("TF")
    bpy.context.view_layer.objects.active = rig

    # item 10: a rig deleted while tracking: the host names the deletion
    host = addon.blender_addon.track_scene.TrackSceneHost(scene, rig, 1, photo=path("frame.png"))
    spare = bpy.data.objects.new("spare", None)
    bpy.context.collection.objects.link(spare)
    other = addon.blender_addon.track_scene.TrackSceneHost(scene, rig, 1)
    other.rig_name = "no such rig"
    try:
        other.apply(path("shot.npz"))
    except addon.blender_addon.track_job.RigGone as exc:
        RESULTS["rig_gone"] = str(exc)
    del host

    # item 9: a reference a script passes is the panel's afterwards
    render_scene = addon.blender_addon.render_scene
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
    earlier = os.path.join(project, "flamediff", "0123456789abcdef")   # the same job rendered beside it before
    os.makedirs(earlier)
    shutil.copy(path("white.png"), os.path.join(earlier, "frame_0001.png"))
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
    with open(RESULTS["moved_frame"], "rb") as handle:
        RESULTS["moved_frame_is_the_newer"] = handle.read() == png
    RESULTS["latest_after_reopen"] = "flamediff latest" in bpy.data.images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_backend()
    RESULTS["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    another_program_on_the_port()


def head_roll_degrees() -> float:
    """The rig's head roll in the scene camera's picture: 0 when its top is straight above its chin
    (the head mesh is in FLAME's own space, Y up: its rig object turns it Z-up)."""
    scene = bpy.context.scene
    head = bpy.data.objects["FLAME"]["flamediff_head"]
    rest = [v.co.y for v in head.data.vertices]
    top, chin = rest.index(max(rest)), rest.index(min(rest))
    graph = bpy.context.evaluated_depsgraph_get()
    mesh = head.evaluated_get(graph).to_mesh()
    try:
        ends = [world_to_camera_view(scene, scene.camera.evaluated_get(graph), head.matrix_world @ mesh.vertices[i].co)
                for i in (top, chin)]
    finally:
        head.evaluated_get(graph).to_mesh_clear()
    up = (ends[0] - ends[1]) * Vector((scene.render.resolution_x, scene.render.resolution_y, 0.0))
    return math.degrees(math.atan2(up.x, up.y))


def render(**arguments) -> tuple[list[str] | None, str, dict]:
    """A blocking one-frame render; (result, report text, the panel's state after it)."""
    outcome = reported(bpy.ops.flamediff.render, wait=True, frame_start=1, frame_end=1, timeout=300, **arguments)
    props = bpy.context.scene.flamediff_render
    return (*outcome, {name: getattr(props, name) for name in ("status", "message", "error", "notes", "output_dir",
                                                               "reference_image", "frames_done")})


def with_backend() -> None:
    """Match Photo with a sideways phone portrait, then Render with what it set; a script's
    reference; Cancel, then Render again at once (the saved file from above is open)."""
    scene = bpy.context.scene
    scene.flamediff_render.checkpoint = "tiny"
    scene.frame_set(1)
    # items 2 and 4: the photo is read upright and downsized, it becomes the reference, Render works
    RESULTS["match"] = reported(bpy.ops.flamediff.match_photo, rig="FLAME", filepath=path("phone.jpg"), wait=True,
                                timeout=300)
    RESULTS["match_report"] = scene.flamediff_track.report
    RESULTS["match_shot"] = {"reference": scene.flamediff_render.reference_image, "roll": head_roll_degrees(),
                             "resolution": [scene.render.resolution_x, scene.render.resolution_y]}
    RESULTS["render_after_match"] = render(steps=1)
    # item 4: the one decode-safety limit, the same for Render and Match Photo (the shot is kept)
    RESULTS["bomb_render"] = render(steps=1, reference_image=path("bomb.png"))
    RESULTS["bomb_match"] = reported(bpy.ops.flamediff.match_photo, rig="FLAME", filepath=path("bomb.png"), wait=True,
                                     timeout=120)
    RESULTS["bomb_kept"] = {"reference": scene.flamediff_render.reference_image,
                            "resolution": [scene.render.resolution_x, scene.render.resolution_y]}
    # item 9: the reference a script passes is the panel's, so the next Render has one
    scene.flamediff_render.reference_image = ""
    RESULTS["script_reference"] = render(steps=1, reference_image=path("frame.png"))
    RESULTS["next_render"] = render(steps=1, seed=3)
    # item 3: Cancel once the backend kept more frames than the add-on fetched (it denoises 4 frames
    # at a time), then Render the same job again at once (no event loop here: nothing else polls)
    long_render = {"steps": CANCEL_STEPS, "seed": 4, "frame_start": 1, "frame_end": 12}
    RESULTS["async"] = reported(bpy.ops.flamediff.render, **long_render)
    job = sys.modules[MODULE].blender_addon.backend_job.active_job(scene.name)
    while job.phase == "running" and job.view.get("status") != "running":   # the backend picked it up
        time.sleep(0.05)
        job.step()
    fits_during_render(scene)
    while job.phase == "running" and len(job.fetched) < 4:   # the add-on has the first 4 frames
        time.sleep(0.05)
        job.step()
    started = time.monotonic()
    while job.client.job(job.job_id).get("frames_done", 0) < 8 and time.monotonic() - started < 300:
        time.sleep(0.05)   # the backend writes 4 more, which the add-on has not fetched yet
    RESULTS["fetched_at_cancel"] = len(job.fetched)
    RESULTS["cancel"] = reported(bpy.ops.flamediff.render_cancel)
    RESULTS["cancel_phase"] = job.phase
    started = time.monotonic()
    RESULTS["again"] = reported(bpy.ops.flamediff.render, wait=True, timeout=600, **long_render)
    RESULTS["again_s"] = time.monotonic() - started
    RESULTS["cancelled"] = {"outcome": job.outcome, "message": job.message, "kept": job.view.get("frames_done"),
                            "status": job.view.get("status")}
    RESULTS["again_props"] = {name: getattr(scene.flamediff_render, name) for name in ("status", "message", "job_id",
                                                                                       "frames_done")}
    RESULTS["cancelled_job"] = job.job_id
    # item 9: a 16-bit grey PNG is scaled, not clipped: it renders the frame of its 8-bit copy, with a note
    for name in ("grey16.png", "grey8.png", "white.png"):
        outcome, text, props = render(steps=1, seed=5, reference_image=path(name))
        frame = os.path.join(bpy.path.abspath(props["output_dir"]), "frame_0001.png")
        RESULTS[f"reference_{name}"] = [outcome, text, props, frame]
    # item 7: the head's matte by default (above); the neck continued, or the square tile, when asked
    for matte in ("head_neck", "tile"):
        outcome, text, props = render(steps=1, seed=5, reference_image=path("grey8.png"), matte=matte)
        RESULTS[f"matte_{matte}"] = [outcome, text, props,
                                     os.path.join(bpy.path.abspath(props["output_dir"]), "frame_0001.png")]
    rig_deleted_while_matching(scene)


def remove_rig(name: str) -> None:
    """Delete the rig ``name`` with its head and joints, as deleting them in the viewport does."""
    rig = bpy.data.objects[name]
    helper = rig["flamediff_joints"]
    for obj in [rig, rig["flamediff_head"], helper, *helper.children]:
        bpy.data.objects.remove(obj)


def rig_deleted_while_matching(scene: bpy.types.Scene) -> None:
    """item 10: a rig deleted while Match Photo runs: the error and advice are about the deletion
    (not "rebuild the rig with enough coefficients"), and nothing else changes."""
    bpy.ops.flamediff.add_rig(name="Doomed")
    before = [scene.flamediff_render.reference_image, scene.camera.name, list(scene.camera.matrix_world[0])]
    started = time.monotonic()
    RESULTS["doomed_match"] = reported(bpy.ops.flamediff.match_photo, rig="Doomed", filepath=path("face.jpg"))
    job = sys.modules[MODULE].blender_addon.backend_job.active_job(scene.name, "track")
    remove_rig("Doomed")
    while job is not None and job.step():   # what the timer does while the backend tracks
        time.sleep(0.1)
    props = scene.flamediff_track
    RESULTS["doomed"] = {"status": props.status, "error": props.error, "advice": props.advice,
                         "seconds": time.monotonic() - started, "unchanged": before == [
                             scene.flamediff_render.reference_image, scene.camera.name,
                             list(scene.camera.matrix_world[0])]}
    bpy.context.view_layer.objects.active = bpy.data.objects["FLAME"]


def rig_state() -> list:
    """What a fit rewrites: the posed head at this frame, the scene camera and the resolution."""
    scene = bpy.context.scene
    head = bpy.data.objects["FLAME"]["flamediff_head"]
    graph = bpy.context.evaluated_depsgraph_get()
    mesh = head.evaluated_get(graph).to_mesh()
    try:
        points = [round(c, 6) for v in mesh.vertices for c in v.co]
    finally:
        head.evaluated_get(graph).to_mesh_clear()
    return [points, scene.camera.name, [list(row) for row in scene.camera.matrix_world],
            [scene.render.resolution_x, scene.render.resolution_y]]


def fits_during_render(scene: bpy.types.Scene) -> None:
    """item 6: while a render of the rig runs, Match Photo and Track Video are refused, in its scene
    (greyed out) and from another scene the rig is linked into; the rig, camera and resolution stay."""
    before = rig_state()
    RESULTS["fits_during_render"] = {
        name: reported(getattr(bpy.ops.flamediff, name), rig="FLAME", filepath=path(media), wait=True, timeout=120)
        for name, media in (("match_photo", "phone.jpg"), ("track_video", "take.mp4"))}
    other = bpy.data.scenes.new("Other")
    other.collection.objects.link(bpy.data.objects["FLAME"])
    with bpy.context.temp_override(scene=other):
        RESULTS["fit_from_other_scene"] = reported(bpy.ops.flamediff.match_photo, rig="FLAME",
                                                   filepath=path("phone.jpg"), wait=True, timeout=120)
    RESULTS["rig_kept_during_render"] = rig_state() == before


def another_program_on_the_port() -> None:
    """item 5: another program on the backend's port is named (not "HTTP 404 File not found") and
    "Start locally" starts the backend on a free port by itself; item 8, on that backend (it serves
    the shipped demo checkpoint, trained on procedural heads): the out-of-domain note only for a
    photo of a real person, and once."""
    scene, prefs = bpy.context.scene, bpy.context.preferences.addons[MODULE].preferences
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        taken = RESULTS["taken_port"] = probe.getsockname()[1]
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(taken), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", taken)) == 0:
                    break
            time.sleep(0.1)
        prefs.backend_url = f"http://127.0.0.1:{taken}"
        RESULTS["url_other_program"] = reported(bpy.ops.flamediff.test_connection)
        prefs.backend_mode, prefs.backend_python, prefs.backend_port = "LOCAL", sys.executable, taken
        prefs.pick_free_port, prefs.token_file = True, path("local_token")
        scene.flamediff_render.checkpoint = "demo"
        RESULTS["demo_shipped_reference"] = render(steps=1, seed=6, reference_image=path("shipped_reference.png"))
        RESULTS["local_port"] = sys.modules[MODULE].blender_addon.local_backend.started_port()
        RESULTS["demo_photo_reference"] = render(steps=1, seed=6, reference_image=path("face.jpg"))
    finally:
        other.kill()
        other.wait()
        reported(bpy.ops.flamediff.backend_stop)
        prefs.backend_mode = "URL"


def command_line_render() -> None:
    """``blender -b shot.blend -f 1`` (the saved file from above, item 8) with "Start locally" and a
    wrong backend Python: the engine ends the process, so each ERROR report (which Blender prints
    at once in a command-line render) is appended to ``cli_reports.txt`` as it is made."""
    install_addon(ZIP, MODULE, ASSET, TOKEN_FILE)
    bpy.ops.wm.open_mainfile(filepath=path(os.path.join("moved", "shot.blend")), load_ui=False)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.backend_mode, prefs.backend_python, prefs.token_file = "LOCAL", path("typo/python"), path("local_token")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        prefs.backend_port = probe.getsockname()[1]
    scene = bpy.context.scene
    scene.render.engine = "FLAMEDIFF"
    scene.render.use_sequencer = False   # the earlier renders' strip would be the picture
    engine = sys.modules[MODULE].blender_addon.render_engine.FlamediffRenderEngine
    original = engine._report_error   # bpy resolves RenderEngine.report itself: the engine's own caller is wrapped

    def report(self, text):
        with open(path("cli_reports.txt"), "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
        original(self, text)

    engine._report_error = report
    sys.argv = ["blender", "-b", bpy.data.filepath, "-f", "1"]
    bpy.ops.render.render()


if __name__ == "__main__":
    if sys.argv[6:] == ["command-line"]:
        command_line_render()
    else:
        run_main(main, RESULTS, WORK)
