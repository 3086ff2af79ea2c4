"""Drive the INSTALLED flamediff extension inside the ``bpy`` module (run by tests/test_addon.py).

``python tests/addon_driver.py ZIP WORKDIR ASSET_FOLDER`` with ``BLENDER_USER_RESOURCES`` set to
a private folder (it must be set before bpy is imported, hence a subprocess). It reads the
inputs the test wrote into WORKDIR, runs every scenario and writes ``results.json`` and arrays;
the pytest side (which has torch) judges them against the backend's FLAME forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from bpy_reports import reported
from mathutils import Vector

ZIP, WORK, ASSET = sys.argv[1:4]
MODULE = "bl_ext.user_default.flamediff"
RESULTS: dict = {"errors": []}
FRAMES = list(range(1, 20))
PROJECTED = np.random.default_rng(0).choice(5000, 400, replace=False)


def path(name: str) -> str:
    return os.path.join(WORK, name)


def run(main) -> None:
    """Run a driver's ``main`` and always write ``results.json``: a failure is recorded as a
    traceback in RESULTS["errors"] for the test to print, never lost with the process."""
    try:
        main()
    except Exception:  # noqa: BLE001 - the test prints it
        RESULTS["errors"].append(traceback.format_exc())
    with open(path("results.json"), "w", encoding="utf-8") as handle:
        json.dump(RESULTS, handle, indent=1, default=str)


def call(op, **kwargs) -> tuple[set | None, str]:
    """Run an operator; ``(result, error message)`` (bpy raises RuntimeError on ERROR reports)."""
    try:
        return op(**kwargs), ""
    except RuntimeError as exc:
        return None, str(exc)


def head_points(rig_name: str, space: str = "flame") -> np.ndarray:
    """Evaluated head vertices: world coordinates, or FLAME space via the Z-up -> Y-up conversion."""
    from bl_ext.user_default.flamediff.backend.formats.conventions import blender_to_flame_points

    head = bpy.data.objects[rig_name]["flamediff_head"]
    evaluated = head.evaluated_get(bpy.context.evaluated_depsgraph_get())
    co = np.empty(len(evaluated.data.vertices) * 3, np.float32)
    evaluated.data.vertices.foreach_get("co", co)
    world = co.reshape(-1, 3).astype(np.float64) @ np.array(head.matrix_world)[:3, :3].T + np.array(head.matrix_world)[:3, 3]
    return world if space == "world" else blender_to_flame_points(world)


def addon_fcurves(id_data):
    return sys.modules[MODULE].blender_addon.animation_io.fcurves_of(id_data)


def points_at(rig_name: str, frame: int) -> np.ndarray:
    bpy.context.scene.frame_set(frame)
    return head_points(rig_name, "world")


def evaluate(rig_name: str, frames: list[int]) -> np.ndarray:
    out = []
    for frame in frames:
        bpy.context.scene.frame_set(frame)
        out.append(head_points(rig_name))
    return np.stack(out)


def fingerprint() -> str:
    """Hash of everything an import could change: objects, actions, keys, key values, poses."""
    digest = hashlib.sha256()
    for obj in sorted(bpy.data.objects, key=lambda o: o.name):
        digest.update(obj.name.encode())
        ids = [obj] + ([obj.data.shape_keys] if obj.type == "MESH" and obj.data.shape_keys else [])
        for id_data in ids:
            if id_data.animation_data and id_data.animation_data.action:
                from bl_ext.user_default.flamediff.blender_addon.animation_io import fcurves_of
                for fc in fcurves_of(id_data):
                    co = np.empty(2 * len(fc.keyframe_points))
                    fc.keyframe_points.foreach_get("co", co)
                    digest.update(fc.data_path.encode() + co.tobytes())
        if obj.type == "MESH" and obj.data.shape_keys:
            digest.update(np.array([b.value for b in obj.data.shape_keys.key_blocks]).tobytes())
        if obj.type == "ARMATURE":
            for bone in obj.pose.bones:
                digest.update(np.array([*bone.rotation_quaternion, *bone.location]).tobytes())
    digest.update(str(len(bpy.data.actions)).encode())
    return digest.hexdigest()


def setup_camera() -> bpy.types.Object:
    scene = bpy.context.scene
    data = bpy.data.cameras.new("Cam")
    data.lens, data.sensor_fit, data.sensor_height = 30.0, "VERTICAL", 20.0
    data.shift_x, data.shift_y = 0.05, 0.04
    cam = bpy.data.objects.new("Cam", data)
    scene.collection.objects.link(cam)
    head = bpy.data.objects[RESULTS["rig"]]["flamediff_head"]
    centre = np.mean([tuple(head.matrix_world @ Vector(c)) for c in head.bound_box], axis=0)
    cam.location = tuple(centre + (0.12, -0.9, 0.02))
    cam.rotation_euler = (np.radians(86), 0.0, np.radians(9))
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 640, 480, 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = 1.0, 1.2
    return cam


def projections(cam: bpy.types.Object, rig_name: str, frames: list[int]) -> np.ndarray:
    """Blender's own ``world_to_camera_view`` of some vertices, in pixels (top-left corner origin)."""
    scene = bpy.context.scene
    width, height = scene.render.resolution_x, scene.render.resolution_y
    out = []
    for frame in frames:
        scene.frame_set(frame)
        world = head_points(rig_name, "world")[PROJECTED]
        ndc = np.array([tuple(world_to_camera_view(scene, cam, Vector(p))) for p in world])
        out.append(np.stack([ndc[:, 0] * width, (1.0 - ndc[:, 1]) * height], axis=1))
    return np.stack(out)


class FakeLayout:
    """Stands in for a UILayout: records problems instead of drawing (no UI in background bpy)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self

    def prop(self, data, name: str, **kwargs):
        if name not in data.bl_rna.properties:
            self.problems.append(f"{data!r} has no property {name}")
        return self

    def operator(self, idname: str, **kwargs):
        module, name = idname.split(".")
        if not hasattr(getattr(bpy.ops, module), name) or name not in dir(getattr(bpy.ops, module)):
            self.problems.append(f"no operator {idname}")
        return self

    def template_list(self, list_type, list_id, data, propname, active_data, active_propname, **kwargs):
        if not hasattr(bpy.types, list_type):
            self.problems.append(f"no UIList {list_type}")
        self.prop(data, propname)
        self.prop(active_data, active_propname)
        return self


def check_ui(rig) -> dict:
    """Draw every panel with and without a rig selected, and run the list filter."""
    problems: list[str] = []
    names = ("FLAMEDIFF_PT_rig", "FLAMEDIFF_PT_animation", "FLAMEDIFF_PT_camera")
    for active in (rig, None):
        bpy.context.view_layer.objects.active = active
        for name in names:
            panel = getattr(bpy.types, name)
            if not hasattr(panel, "poll") or panel.poll(bpy.context):
                panel.draw(type("P", (), {"layout": FakeLayout(problems)})(), bpy.context)
    bpy.context.view_layer.objects.active = rig
    key = rig["flamediff_head"].data.shape_keys
    shown = {}
    for kind, text in (("Expression", ""), ("Shape", "shape01")):
        bpy.context.scene.flamediff_coefficient_kind = kind
        fake = type("L", (), {"filter_name": text, "bitflag_filter_item": 1 << 30})()
        flags, _ = bpy.types.FLAMEDIFF_UL_coefficients.filter_items(fake, bpy.context, key, "key_blocks")
        shown[kind] = sum(1 for f in flags if f)
    return {"problems": problems, "shown": shown,
            "animation_panel_without_rig": bpy.types.FLAMEDIFF_PT_animation.poll(
                type("C", (), {"active_object": None})())}


class RecordingLayout(FakeLayout):
    """A FakeLayout that also records the labels drawn and the operators (with their settings) placed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.labels: list[str] = []
        self.operators: list[dict] = []

    def label(self, text: str = "", **kwargs):
        self.labels.append(text)
        return self

    def operator(self, idname: str, **kwargs):
        super().operator(idname, **kwargs)
        record = {"idname": idname}
        self.operators.append(record)
        return type("OperatorProperties", (), {"__setattr__": lambda _, k, v: record.__setitem__(k, v)})()

    def menu(self, idname: str, **kwargs):
        getattr(bpy.types, idname).draw(type("M", (), {"layout": self})(), bpy.context)
        return self


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_conventions_without_rig() -> dict:
    """Before any rig exists: the default backend mode, greyed-out operators say why."""
    addon = sys.modules[MODULE]
    prefs = bpy.context.preferences.addons[MODULE].preferences
    results = {"default_backend_mode": prefs.backend_mode, "poll_messages": {}}
    for name, kwargs in (("export_animation", {"filepath": path("never.npz")}), ("render", {}),
                         ("reset_coefficients", {}), ("render_cancel", {}), ("backend_stop", {})):
        results["poll_messages"][name] = call(getattr(bpy.ops.flamediff, name), **kwargs)[1]
    prefs.backend_mode = "URL"
    results["poll_messages"]["backend_start_url_mode"] = call(bpy.ops.flamediff.backend_start)[1]
    prefs.backend_mode = "LOCAL"
    bpy.ops.mesh.primitive_cube_add()
    bpy.ops.object.mode_set(mode="EDIT")
    results["poll_messages"]["add_rig_edit_mode"] = call(bpy.ops.flamediff.add_rig)[1]
    bpy.ops.object.mode_set(mode="OBJECT")
    bpy.data.objects.remove(bpy.context.active_object)

    # "Start locally" out of the box: the zip's source checkout's .venv is found; the backend is not started
    prefs.backend_port = free_port()
    results["python_found"] = reported(bpy.ops.flamediff.test_connection)
    results["checkouts"] = list(addon.blender_addon.local_backend.source_checkouts())
    # nothing anywhere (a zip built elsewhere, a fresh home, no flamediff on the PATH): the command to run
    checkout_file = os.path.join(addon.blender_addon.EXTENSION_DIR, addon.blender_addon.local_backend.CHECKOUT_FILE)
    with open(checkout_file, encoding="utf-8") as handle:
        recorded = handle.read()
    saved = {key: os.environ.get(key) for key in ("HOME", "PATH", "FLAMEDIFF_PYTHON", "XDG_DATA_HOME")}
    with open(checkout_file, "w", encoding="utf-8") as handle:
        handle.write(path("elsewhere"))
    os.environ.update(HOME=path("fresh_home"), PATH="/nonexistent")
    for key in ("FLAMEDIFF_PYTHON", "XDG_DATA_HOME"):
        os.environ.pop(key, None)
    try:
        results["python_missing"] = reported(bpy.ops.flamediff.test_connection)
        layout = RecordingLayout([])
        addon.blender_addon.preferences.draw_python_choice(layout, bpy.context, "")
        results["python_missing_labels"] = layout.labels
        results["python_missing_operators"] = [op["idname"] for op in layout.operators]
        results["copied_command"] = reported(bpy.ops.flamediff.copy_setup_command)[1]  # no clipboard in bpy: its report
        os.environ["FLAMEDIFF_PYTHON"] = sys.executable
        results["python_from_env"] = reported(bpy.ops.flamediff.test_connection)
        prefs.backend_python = path("typo/python")
        results["python_typo"] = reported(bpy.ops.flamediff.test_connection)
        prefs.backend_python = ""
    finally:
        with open(checkout_file, "w", encoding="utf-8") as handle:
            handle.write(recorded)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    prefs.backend_mode = "URL"
    results["url_token_file"] = addon.blender_addon.preferences.backend_settings(bpy.context)["token_file"]
    prefs.backend_mode = "LOCAL"
    return results


def check_menus_and_panel_text() -> dict:
    """Every operator is in a Blender menu (so F3 finds it); long advice wraps at words."""
    addon = sys.modules[MODULE]
    problems: list[str] = []
    placed: dict[str, list[dict]] = {}
    for menu, draw in addon.ui_panels.menus.MENUS:
        layout = RecordingLayout(problems)
        draw(type("M", (), {"layout": layout})(), bpy.context)
        placed[menu] = layout.operators
        if draw not in getattr(bpy.types, menu)._dyn_ui_initialize():
            problems.append(f"{draw.__name__} is not appended to {menu}")
    ours = sorted(name for name in dir(bpy.ops.flamediff))
    in_menus = sorted({op["idname"].split(".")[1] for ops in placed.values() for op in ops})
    classes = addon.operators.classes
    props = bpy.context.scene.flamediff_render
    props.error = "the flamediff backend is not running at http://127.0.0.1:8765 (connection refused)"
    props.advice = ("start it with 'flamediff serve' (or 'python -m flamediff serve' in the backend's venv), or "
                    "choose 'Start locally' in the flamediff add-on preferences; its log is in "
                    "/home/someone/.config/blender/5.0/extensions/.user/user_default/flamediff/server/backend.log")
    advice = props.advice
    layout = RecordingLayout(problems)
    bpy.types.FLAMEDIFF_PT_render.draw(type("P", (), {"layout": layout})(), bpy.context)
    props.error = props.advice = ""
    return {"problems": problems, "operators": ours, "in_menus": in_menus,
            "placed": placed,
            "options": {c.bl_idname: sorted(c.bl_options) for c in classes},
            "has_own_poll": {c.bl_idname: "poll" in {n for k in c.__mro__[:-1] for n in vars(k)} for c in classes},
            "panel_labels": layout.labels, "advice": advice}


def check_unregister() -> dict:
    """Disable and re-enable: every class and scene property goes away and comes back."""
    import addon_utils

    names = ("FLAMEDIFF_PT_rig", "FLAMEDIFF_UL_coefficients", "FLAMEDIFF_OT_add_rig")
    folder = bpy.context.preferences.addons[MODULE].preferences.asset_folder
    addon_utils.disable(MODULE, default_set=True)
    gone = not any(hasattr(bpy.types, n) for n in names) and not hasattr(bpy.types.Scene, "flamediff_coefficient_kind")
    addon_utils.enable(MODULE, default_set=True)
    bpy.context.preferences.addons[MODULE].preferences.asset_folder = folder
    return {"gone": gone, "back": all(hasattr(bpy.types, n) for n in names)}


def main() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    started = time.perf_counter()
    result = bpy.ops.extensions.package_install_files(filepath=ZIP, repo="user_default", enable_on_install=True)
    RESULTS["install"] = sorted(result)
    RESULTS["install_s"] = time.perf_counter() - started
    RESULTS["module_loaded"] = MODULE in sys.modules
    RESULTS["torch_loaded"] = "torch" in sys.modules
    bpy.context.preferences.addons[MODULE].preferences.asset_folder = ASSET
    RESULTS["conventions"] = check_conventions_without_rig()
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    scene.frame_start, scene.frame_end = FRAMES[0], FRAMES[-1]

    started = time.perf_counter()
    RESULTS["add_rig"] = sorted(bpy.ops.flamediff.add_rig(name="FLAME"))
    RESULTS["add_rig_s"] = time.perf_counter() - started
    rig = bpy.context.active_object
    RESULTS["rig"] = rig.name
    RESULTS["rig_identity"] = {"name": rig["flamediff_asset_name"], "hash": rig["flamediff_asset_hash"]}
    RESULTS["num_shape_keys"] = len(rig["flamediff_head"].data.shape_keys.key_blocks) - 1

    RESULTS["import"] = call(bpy.ops.flamediff.import_animation, filepath=path("clip_in.npz"), rig=rig.name)[0]
    RESULTS["import"] = sorted(RESULTS["import"] or [])
    drivers = [fc.driver for id_data in (rig, rig["flamediff_head"].data.shape_keys, rig["flamediff_joints"].data.shape_keys)
               for fc in id_data.animation_data.drivers]
    RESULTS["drivers"] = len(drivers)
    RESULTS["drivers_need_python"] = sum(d.type == "SCRIPTED" and not d.is_simple_expression for d in drivers)
    RESULTS["key_interpolations"] = sorted({k.interpolation for fc in addon_fcurves(rig) for k in fc.keyframe_points})
    started = time.perf_counter()
    live = evaluate(rig.name, FRAMES)
    RESULTS["evaluate_ms_per_frame"] = 1000 * (time.perf_counter() - started) / len(FRAMES)
    np.save(path("verts_live.npy"), live)

    cam = setup_camera()
    for name, method in (("export_fast.npz", "AUTO"), ("export_full.npz", "FULL")):
        started = time.perf_counter()
        RESULTS[name] = sorted(bpy.ops.flamediff.export_animation(filepath=path(name), method=method,
                                                                  frame_start=FRAMES[0], frame_end=FRAMES[-1]))
        RESULTS[name + "_s"] = time.perf_counter() - started
    addon = sys.modules[MODULE]
    RESULTS["path_static_camera"] = addon.blender_addon.animation_io.read_clip(bpy.context, rig, 1, 2, cam)[1]
    cam.keyframe_insert("location", frame=FRAMES[0])
    cam.location = tuple(np.array(cam.location) + (-0.08, 0.1, -0.04))
    cam.keyframe_insert("location", frame=FRAMES[-1])
    cam.data.keyframe_insert("lens", frame=FRAMES[0])
    cam.data.lens = 34.0
    cam.data.keyframe_insert("lens", frame=FRAMES[-1])
    for name, method in (("export_anim_cam.npz", "AUTO"), ("export_anim_cam_full.npz", "FULL")):
        RESULTS[name] = sorted(bpy.ops.flamediff.export_animation(filepath=path(name), method=method))
    RESULTS["path_animated_camera"] = addon.blender_addon.animation_io.read_clip(bpy.context, rig, 1, 2, cam)[1]
    np.save(path("pixels_anim_cam.npy"), projections(cam, rig.name, FRAMES))
    np.save(path("projected_index.npy"), PROJECTED)

    # several rigs: a second one elsewhere, keyed from the first one's export (round trip)
    bpy.ops.object.select_all(action="DESELECT")
    RESULTS["add_rig2"] = sorted(bpy.ops.flamediff.add_rig(name="FLAME"))
    rig2 = bpy.context.active_object
    rig2.location, rig2.rotation_euler = (0.3, 0.2, 0.05), (np.radians(90), 0.0, np.radians(25))
    RESULTS["rig2"] = rig2.name
    RESULTS["import_rig2"] = sorted(bpy.ops.flamediff.import_animation(filepath=path("export_fast.npz"), use_camera=False))
    RESULTS["export_rig2"] = sorted(bpy.ops.flamediff.export_animation(filepath=path("export_rig2.npz")))
    np.save(path("verts_rig2_world.npy"), np.stack([points_at(rig2.name, f) for f in FRAMES[::6]]))
    np.save(path("rig2_matrix.npy"), np.array(rig2.matrix_world))
    np.save(path("pixels_rig2.npy"), projections(cam, rig2.name, FRAMES))

    # a constraint on a keyed bone: export falls back to full evaluation and reports what is seen
    limit = rig.pose.bones["jaw"].constraints.new("LIMIT_ROTATION")
    limit.use_limit_x, limit.min_x, limit.max_x, limit.owner_space = True, 0.0, 0.12, "LOCAL"
    RESULTS["path_constrained"] = sys.modules[MODULE].blender_addon.animation_io.read_clip(bpy.context, rig, 1, 2, None)[1]
    RESULTS["export_constrained"] = sorted(bpy.ops.flamediff.export_animation(
        filepath=path("export_constrained.npz"), rig=rig.name, use_camera=False))
    np.save(path("verts_constrained.npy"), evaluate(rig.name, FRAMES))
    rig.pose.bones["jaw"].constraints.remove(limit)

    # tracker (EMOCA-style) import into the second rig: no fps in the file, so frame k lands on
    # scene start (1) + offset (100) + k
    RESULTS["import_tracker"] = call(bpy.ops.flamediff.import_animation, filepath=path("tracker.npz"),
                                     frame_offset=100)
    RESULTS["import_tracker"] = (sorted(RESULTS["import_tracker"][0] or []), RESULTS["import_tracker"][1])
    RESULTS["export_tracker"] = call(bpy.ops.flamediff.export_animation, filepath=path("export_tracker.npz"),
                                     frame_start=101, frame_end=105, use_camera=False)[1]

    # bad files and bad requests: CANCELLED (RuntimeError in bpy) and nothing changes
    bad = {}
    for name in sorted(f for f in os.listdir(WORK) if f.startswith("bad_")):
        before = fingerprint()
        outcome, message = call(bpy.ops.flamediff.import_animation, filepath=path(name), rig=rig.name)
        bad[name] = {"result": sorted(outcome) if outcome else None, "message": message,
                     "unchanged": fingerprint() == before}
    before = fingerprint()
    outcome, message = call(bpy.ops.flamediff.export_animation, filepath=path("empty.npz"), rig=rig.name,
                            frame_start=5, frame_end=3)
    bad["export_empty_range"] = {"result": outcome, "message": message, "unchanged": fingerprint() == before,
                                 "file": os.path.exists(path("empty.npz"))}
    real_hash = rig["flamediff_asset_hash"]
    rig["flamediff_asset_hash"] = "0" * 64
    outcome, message = call(bpy.ops.flamediff.export_animation, filepath=path("other.npz"), rig=rig.name)
    bad["export_other_asset"] = {"result": outcome, "message": message, "unchanged": True,
                                 "file": os.path.exists(path("other.npz"))}
    rig["flamediff_asset_hash"] = real_hash
    RESULTS["bad"] = bad

    # empty preference: the procedural head is generated on demand into Blender's user data folder
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.asset_folder = ""
    started = time.perf_counter()
    generated = sys.modules[MODULE].blender_addon.assets.asset_folder(bpy.context)
    RESULTS["generated_asset_s"] = time.perf_counter() - started
    RESULTS["generated_asset_in_user_folder"] = generated.startswith(os.environ["BLENDER_USER_RESOURCES"])
    RESULTS["generated_asset_identity"] = sys.modules[MODULE].blender_addon.assets.load(generated)[1]
    prefs.asset_folder = os.path.join(WORK, "no-such-folder")
    before = fingerprint()
    outcome, message = call(bpy.ops.flamediff.add_rig)
    RESULTS["bad_asset_folder"] = {"result": outcome, "message": message, "unchanged": fingerprint() == before}
    prefs.asset_folder = ASSET

    # reset / randomise
    bpy.context.view_layer.objects.active = rig
    bpy.ops.flamediff.randomize_coefficients(which="EXPRESSION", sigma=1.0, seed=3)
    expressions = [b.value for b in rig["flamediff_head"].data.shape_keys.key_blocks if b.name.startswith("Expr")]
    bpy.ops.flamediff.reset_coefficients(which="EXPRESSION")
    RESULTS["randomise_nonzero"] = bool(np.abs(expressions).max() > 0)
    RESULTS["reset_zero"] = all(b.value == 0.0 for b in rig["flamediff_head"].data.shape_keys.key_blocks
                                if b.name.startswith("Expr"))

    RESULTS["ui"] = check_ui(rig)
    RESULTS["menus"] = check_menus_and_panel_text()
    RESULTS["unregister"] = check_unregister()

    # save, then reopen with Python in drivers blocked (Blender's default security setting)
    blend = path("rig.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False, use_scripts=False)
    np.save(path("verts_reload.npy"), evaluate(RESULTS["rig"], FRAMES))
    RESULTS["reload_python_blocked"] = not bpy.context.preferences.filepaths.use_scripts_auto_execute


if __name__ == "__main__":
    run(main)
