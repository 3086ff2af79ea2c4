"""Render through the INSTALLED add-on's render engine inside the ``bpy`` module, one Blender
"process" per call, as ``blender -b shot.blend ...`` would (run by tests/test_addon_engine.py).

``python tests/addon_engine_driver.py MODE WORK ZIP ASSET PORT TOKEN_FILE [ARGS...]``:

- ``setup REFERENCE``: key a rig over frames 1..12, add a camera, choose the flamediff engine, save
  ``WORK/shot.blend``;
- ``animation START END FORMAT DEPTH FILEPATH``: open shot.blend, set the range (``-s``/``-e``), the
  output format and path, ``bpy.ops.render.render(animation=True)`` (``blender -b shot.blend -a``);
- ``still FRAME PATH``: F12 on FRAME, then the Render Result saved to PATH (and again without film
  transparency, and with 'camera' framing);
- ``listed FILEPATH``: ``blender -b shot.blend -o FILEPATH -f 3..4``, which renders each frame as a render
  of its own;
- ``down``: the backend is not there: the render operator fails (a script exits 1 with the error);
- ``down-cli``: the same as ``blender -b shot.blend -a`` sees it (Blender's argv), where the engine
  itself ends the process non-zero.

Writes ``WORK/<MODE>-<pid>.json`` (the path is printed last).
"""

from __future__ import annotations

import json
import os
import sys
import time

import bpy
import numpy as np
from bpy_reports import install_addon
from mathutils import Vector

MODE, WORK, ZIP, ASSET, PORT, TOKEN_FILE, *ARGS = sys.argv[1:]
MODULE = "bl_ext.user_default.flamediff"
BLEND = os.path.join(WORK, "shot.blend")
RESULTS: dict = {"mode": MODE}


def setup(reference: str) -> None:
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    scene.frame_start, scene.frame_end = 1, 12
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 240, 160, 50
    scene.render.engine = "FLAMEDIFF"
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"   # flamediff's colours saved unchanged
    scene.render.dither_intensity = 0.0
    scene.flamediff_render.reference_image = reference
    scene.flamediff_render.seed = 5
    bpy.ops.flamediff.add_rig(name="FLAME")
    rig = bpy.context.active_object
    jaw = rig.pose.bones["jaw"]
    jaw.rotation_mode = "QUATERNION"
    jaw.keyframe_insert("rotation_quaternion", frame=1)
    jaw.rotation_quaternion = (0.98, 0.2, 0.0, 0.0)
    jaw.keyframe_insert("rotation_quaternion", frame=12)
    head = rig["flamediff_head"]
    centre = np.mean([tuple(head.matrix_world @ Vector(c)) for c in head.bound_box], axis=0)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    cam.data.lens = 35.0
    scene.collection.objects.link(cam)
    cam.location = tuple(centre + (0.0, -0.7, 0.0))
    cam.rotation_euler = (np.radians(90), 0.0, 0.0)
    scene.camera = cam
    RESULTS["engine"] = scene.render.engine
    bpy.ops.wm.save_as_mainfile(filepath=BLEND)


def render(**kwargs) -> None:
    started = time.perf_counter()
    try:
        RESULTS["outcome"] = sorted(bpy.ops.render.render(**kwargs))
    except RuntimeError as exc:
        RESULTS["outcome"], RESULTS["error"] = None, str(exc)
    RESULTS["seconds"] = time.perf_counter() - started


def animation(start: str, end: str, file_format: str, depth: str, filepath: str) -> None:
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = int(start), int(end)
    settings = scene.render.image_settings
    settings.file_format = file_format
    settings.color_mode = "RGBA"
    settings.color_depth = depth
    scene.render.filepath = filepath
    render(animation=True)


def still(frame: str, path: str) -> None:
    scene = bpy.context.scene
    scene.frame_set(int(frame))
    render()
    image = bpy.data.images["Render Result"]
    scene.render.image_settings.file_format, scene.render.image_settings.color_mode = "PNG", "RGBA"
    image.save_render(path)
    RESULTS["saved"] = os.path.exists(path)
    scene.render.film_transparent = False   # the same frame over black (the job is reused: no render)
    render()
    image.save_render(path.replace(".png", "_opaque.png"))
    scene.flamediff_render.framing = "camera"   # model-size frames of the camera's aspect, scaled to the scene's
    render()
    image.save_render(path.replace(".png", "_camera.png"))


def main() -> None:
    RESULTS["install"], prefs = install_addon(ZIP, MODULE, ASSET, TOKEN_FILE)
    prefs.backend_url = f"http://127.0.0.1:{PORT}"
    if MODE == "setup":
        setup(*ARGS)
        return
    bpy.ops.wm.open_mainfile(filepath=BLEND, load_ui=False)
    if MODE == "animation":
        animation(*ARGS)
    elif MODE == "still":
        still(*ARGS)
    elif MODE == "listed":   # blender -b shot.blend -f 3..4: one render of its own per frame
        sys.argv = ["blender", "-b", BLEND, "-o", ARGS[0], "-f", "3..4"]
        bpy.context.scene.render.filepath = ARGS[0]
        scene = bpy.context.scene
        for frame in (3, 4):   # Blender runs its animation render over frame..frame for each
            scene.frame_start = scene.frame_end = frame
            render(animation=True)
    elif MODE in ("down", "down-cli"):
        if MODE == "down-cli":
            sys.argv = ["blender", "-b", BLEND, "-a"]   # what Blender's own sys.argv holds then
        bpy.context.scene.render.filepath = os.path.join(WORK, "down", "f_####")
        render(animation=True)
        if RESULTS["outcome"] is None:   # what a render script does with a failed render
            print(RESULTS["error"], file=sys.stderr)
            write()
            sys.exit(1)


def write() -> None:
    path = os.path.join(WORK, f"{MODE}-{os.getpid()}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(RESULTS, handle, indent=1, default=str)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
    write()
