"""Drive tracker imports through the INSTALLED add-on in the ``bpy`` module (run by tests/test_trackers.py).

``python tests/tracker_addon_driver.py ZIP WORKDIR ASSET_FOLDER`` with ``BLENDER_USER_RESOURCES`` set;
WORKDIR holds the fixtures the test wrote. Writes ``results.json`` and exports for the test to judge.
"""

from __future__ import annotations

import os
import sys

import bpy
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from addon_driver import MODULE, RESULTS, ZIP, ASSET, call, fingerprint, path, run  # noqa: E402


def attempt(name: str, **kwargs) -> dict:
    """Import; record the outcome, the message and whether the scene stayed as it was."""
    before = fingerprint()
    outcome, message = call(bpy.ops.flamediff.import_animation, **kwargs)
    return {"result": sorted(outcome) if outcome else None, "message": message,
            "unchanged": fingerprint() == before, "report": bpy.context.scene.get("flamediff_import_report", "")}


def main() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    RESULTS["install"] = sorted(bpy.ops.extensions.package_install_files(filepath=ZIP, repo="user_default",
                                                                         enable_on_install=True))
    RESULTS["torch_loaded"] = "torch" in sys.modules
    bpy.context.preferences.addons[MODULE].preferences.asset_folder = ASSET
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.0
    scene.frame_start, scene.frame_end = 101, 140
    bpy.ops.flamediff.add_rig(name="FLAME")
    rig = bpy.context.active_object
    RESULTS["counts_before"] = [rig["flamediff_num_shape"], rig["flamediff_num_expression"]]

    export = path("vhap_export")
    RESULTS["script_without_rebuild"] = attempt("vhap", filepath=export, rig=rig.name)
    for name in sorted(os.listdir(path("bad"))):
        RESULTS[f"bad_{name}"] = attempt(name, filepath=path(os.path.join("bad", name)), rig=rig.name,
                                         rebuild_rig=True)
    RESULTS["vhap"] = attempt("vhap", filepath=export, rig=rig.name, rebuild_rig=True, use_image_size=True)
    rig = bpy.data.objects["FLAME"]
    RESULTS["counts_after"] = [rig["flamediff_num_shape"], rig["flamediff_num_expression"]]
    RESULTS["scene_camera"] = scene.camera.name if scene.camera else None
    RESULTS["resolution"] = [scene.render.resolution_x, scene.render.resolution_y]
    RESULTS["export_vhap"] = call(bpy.ops.flamediff.export_animation, filepath=path("export_vhap.npz"),
                                  rig=rig.name, frame_start=101, frame_end=104)[1]

    RESULTS["gaussian_avatars"] = attempt("ga", filepath=path(os.path.join("gaussian_avatars", "flame_param.npz")),
                                          rig=rig.name)
    keys = rig["flamediff_head"].data.shape_keys
    key = np.array([tuple(v.co) for v in keys.key_blocks["StaticOffset"].data])
    np.save(path("static_offset_key.npy"), key - np.array([tuple(v.co) for v in keys.reference_key.data]))

    RESULTS["metrical"] = attempt("metrical", filepath=path(os.path.join("metrical", "checkpoint", "00002.frame")),
                                  rig=rig.name, source_fps=15.0, use_camera=False)
    RESULTS["export_metrical"] = call(bpy.ops.flamediff.export_animation, filepath=path("export_metrical.npz"),
                                      rig=rig.name, frame_start=101, frame_end=107, use_camera=False)[1]


if __name__ == "__main__":
    run(main)
