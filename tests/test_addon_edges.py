"""The artist's rough edges, reproduced in ``bpy`` from the built zip: a tracked file's camera and
range, a weak-perspective camera, the scene's resolution kept, a deleted rig named, the script's
reference kept by the panel, unsaved renders moving with the project, ``flamediff latest`` kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory, head_folder) -> dict:
    sys.path.insert(0, ROOT)
    from build_addon import build

    from flamediff.formats.animation import make_clip, save_animation
    from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv

    work = tmp_path_factory.mktemp("edges")
    R, t = look_at_opencv([0.0, 0.0, 0.65], [0.0, -0.005, 0.0])
    K = intrinsics_from_fov(26.0, 512, 512)
    camera = tuple(np.repeat(m[None], 16, 0) for m in (K, R, t))
    save_animation(str(work / "shot.npz"), make_clip(16, first_frame=1, camera=camera, image_size=(512, 512)))
    cam = np.tile([[8.0, 0.01, 0.02]], (4, 1)).astype(np.float32)   # DECA's [s, tx, ty]
    np.savez(work / "deca.npz", shape=np.zeros((4, 100), np.float32), exp=np.zeros((4, 50), np.float32),
             pose=np.zeros((4, 6), np.float32), cam=cam)
    Image.new("RGB", (64, 64), (120, 90, 80)).save(work / "frame.png")
    zip_path = build(str(work / "dist"))
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(work / "blender_user"), HOME=str(work / "home"),
               OMP_NUM_THREADS="1")
    os.makedirs(work / "home")
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "addon_edges_driver.py"), zip_path,
                                str(work), head_folder], env=env, capture_output=True, text=True, timeout=600)
    assert (work / "results.json").exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    out = json.loads((work / "results.json").read_text())
    assert not out["errors"], out["errors"][0] + completed.stderr[-2000:]
    out["work"] = str(work)
    return out


def test_a_tracked_file_brings_its_camera_and_the_clips_range(results):
    assert results["own_file"] == ["FINISHED"]
    shot = results["own_file_shot"]
    assert shot["camera"] == "FLAME camera" and shot["range"] == [1, 16]
    assert shot["resolution"] == [1920, 1080]                    # the scene keeps its resolution
    assert "scene range set to the clip: 1..16" in results["own_file_report"]


def test_a_weak_perspective_camera_becomes_a_portrait_camera_and_the_resolution_stays(results):
    assert results["deca"] == ["FINISHED"]
    shot = results["deca_shot"]
    assert shot["resolution"] == [1920, 1080] and 0.5 < shot["distance"] < 1.0
    assert 20.0 < shot["lens"] * 36.0 / shot["sensor"] < 300.0   # a portrait lens, not 1,300 mm
    assert results["deca_sized"] == ["FINISHED"] and results["deca_sized_shot"]["resolution"] == [224, 224]


def test_a_rig_deleted_while_tracking_is_named(results):
    assert results["rig_gone"] == "the rig no such rig was deleted while tracking"


def test_the_panel_keeps_the_reference_a_script_passed(results):
    assert results["panel_reference"] == os.path.join(results["work"], "frame.png")


def test_unsaved_renders_move_with_the_project_and_latest_survives_a_reopen(results):
    assert results["saved_strip_directory"] == "//flamediff/0123456789abcdef/" and not results["unsaved_left"]
    assert results["moved_frame"] == os.path.join(results["work"], "moved", "flamediff", "0123456789abcdef",
                                                  "frame_0001.png")
    assert os.path.isfile(results["moved_frame"]) and results["latest_after_reopen"]
