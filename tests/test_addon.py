"""The Blender add-on, built and installed as users get it, judged against the backend's FLAME.

One subprocess (tests/addon_driver.py) installs the BUILT zip into the ``bpy`` module in a private
user folder and runs every scenario; these tests compare what it wrote with
``flamediff.flame.model.FlameModel`` (float64) and with the animation format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from flamediff.formats.animation import load_animation, make_clip, save_animation
from flamediff.formats.conventions import project_points

pytest.importorskip("bpy")  # bpy wheels exist for Python 3.11 only (pyproject's test extra)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYED = np.arange(1, 20, 2)  # keys on odd frames; even frames are interpolated by Blender


def random_clip(identity: dict, rng: np.random.Generator):
    """Shape, expression, every joint rotation and translation, keyed on ``KEYED`` frames."""
    count = len(KEYED)
    clip = make_clip(
        count, num_shape=100, num_expression=50, flame_asset=identity,
        shape=rng.normal(0, 0.8, (count, 100)), expression=rng.normal(0, 0.8, (count, 50)),
        global_pose=rng.normal(0, 0.25, (count, 3)), neck_pose=rng.normal(0, 0.25, (count, 3)),
        jaw_pose=np.c_[rng.uniform(0, 0.35, count), rng.normal(0, 0.05, (count, 2))],
        left_eye_pose=rng.normal(0, 0.2, (count, 3)), right_eye_pose=rng.normal(0, 0.2, (count, 3)),
        translation=rng.normal(0, 0.03, (count, 3)))
    clip.frame = KEYED.copy()
    return clip


def write_inputs(work: str, identity: dict) -> None:
    rng = np.random.default_rng(7)
    save_animation(os.path.join(work, "clip_in.npz"), random_clip(identity, rng))
    frames = 5
    np.savez(os.path.join(work, "tracker.npz"), shapecode=rng.normal(0, 1, 100),
             expcode=rng.normal(0, 1, (frames, 50)), posecode=rng.normal(0, 0.1, (frames, 6)))
    good = random_clip(identity, rng)
    arrays = {"frame": good.frame, "shape": good.shape, "expression": good.expression,
              "translation": good.translation, **{n: getattr(good, n) for n in
                                                 ("global_pose", "neck_pose", "jaw_pose", "left_eye_pose",
                                                  "right_eye_pose")}}
    header = json.dumps({"format": "flamediff.animation", "version": 1, "fps": 25.0, "flame_asset": identity})
    raw_header = np.frombuffer(header.encode(), np.uint8)

    def bad(name: str, **changes) -> None:
        values = {**arrays, "header": raw_header, **changes}
        np.savez(os.path.join(work, f"bad_{name}.npz"), **{k: v for k, v in values.items() if v is not None})

    nan = good.expression.copy()
    nan[3, 4] = np.nan
    bad("nan", expression=nan)
    bad("rank", jaw_pose=good.jaw_pose[:, :, None])
    bad("missing_key", translation=None)
    bad("frames", neck_pose=good.neck_pose[:-1])
    other = json.dumps({"format": "flamediff.animation", "version": 1, "fps": 25.0,
                        "flame_asset": {"name": "FLAME2023", "hash": "f" * 64}})
    bad("other_asset", header=np.frombuffer(other.encode(), np.uint8))
    too_many = np.zeros((len(KEYED), 200))
    too_many[:, 150] = 1.0
    bad("too_many_coefficients", shape=too_many)
    with open(os.path.join(work, "bad_not_npz.npz"), "w") as handle:
        handle.write("not an npz")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, head_folder: str, head_asset) -> dict:
    sys.path.insert(0, ROOT)
    from build_addon import build

    work = str(tmp_path_factory.mktemp("addon"))
    zip_path = build(os.path.join(work, "dist"))
    write_inputs(work, dict(head_asset.identity()))
    env = dict(os.environ, BLENDER_USER_RESOURCES=os.path.join(work, "blender_user"))
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "addon_driver.py"), zip_path, work,
                                head_folder], env=env, capture_output=True, text=True, timeout=600)
    results_file = os.path.join(work, "results.json")
    assert os.path.exists(results_file), completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(results_file, encoding="utf-8") as handle:
        results = json.load(handle)
    assert not results["errors"], results["errors"][0] + completed.stderr[-3000:]
    return {"work": work, "zip": zip_path, "results": results}


@pytest.fixture(scope="module")
def flame(head_asset):
    torch = pytest.importorskip("torch")
    from flamediff.flame.model import FlameModel

    model = FlameModel(head_asset, torch.float64)
    return lambda clip: model.forward_clip(clip).vertices.numpy()


def load(run: dict, name: str):
    return load_animation(os.path.join(run["work"], name))


def test_zip_is_an_extension_without_torch_or_assets(run):
    names = zipfile.ZipFile(run["zip"]).namelist()
    assert "flamediff/blender_manifest.toml" in names
    assert {"flamediff/backend/formats/animation.py", "flamediff/operators/__init__.py",
            "flamediff/ui_panels/panels.py"} <= set(names)
    assert not [n for n in names if n.endswith((".pyc", ".npz", ".pkl", ".npy", ".blend")) or "torch" in n]
    assert run["results"]["install"] == ["FINISHED"] and run["results"]["module_loaded"]
    assert not run["results"]["torch_loaded"]


def test_rig_matches_flame_forward_on_every_frame(run, flame):
    """CENTRAL: keyed and interpolated frames; Blender's mesh (Z-up -> Y-up) vs FLAME <= 1e-5 m."""
    exported = load(run, "export_fast.npz")
    live = np.load(os.path.join(run["work"], "verts_live.npy"))
    assert exported.num_frames == live.shape[0] == 19
    error = np.linalg.norm(live - flame(exported), axis=-1).max()
    assert error <= 1e-5, error


def test_rig_survives_reload_with_python_blocked(run, flame):
    assert run["results"]["reload_python_blocked"]
    assert run["results"]["drivers"] == 36 + 150 + 30 and run["results"]["drivers_need_python"] == 0
    reloaded = np.load(os.path.join(run["work"], "verts_reload.npy"))
    error = np.linalg.norm(reloaded - flame(load(run, "export_fast.npz")), axis=-1).max()
    assert error <= 1e-5, error


def test_export_reproduces_the_keys(run):
    source, exported = load(run, "clip_in.npz"), load(run, "export_fast.npz")
    assert exported.flame_asset == source.flame_asset and exported.fps == 25.0
    keyed = exported.select_frames(source.frame)
    for name in ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "left_eye_pose",
                 "right_eye_pose", "translation"):
        np.testing.assert_allclose(getattr(keyed, name), getattr(source, name), atol=1e-6, err_msg=name)


def test_fast_export_equals_full_evaluation(run):
    assert run["results"]["path_static_camera"] == "fast"
    assert run["results"]["path_animated_camera"] == "fast"
    assert run["results"]["key_interpolations"] == ["LINEAR"]
    fast, full = load(run, "export_fast.npz"), load(run, "export_full.npz")
    for name in ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "left_eye_pose",
                 "right_eye_pose", "translation", "K", "R", "t"):
        np.testing.assert_allclose(getattr(fast, name), getattr(full, name), atol=2e-6, err_msg=name)


def test_import_export_round_trip(run, flame):
    first, second = load(run, "export_fast.npz"), load(run, "export_rig2.npz")
    for name in ("shape", "expression", "global_pose", "jaw_pose", "right_eye_pose", "translation"):
        np.testing.assert_allclose(second.__dict__[name], first.__dict__[name], atol=1e-6, err_msg=name)
    # the second rig stands elsewhere, turned: in its own (armature = FLAME) space the mesh is the same
    world = np.load(os.path.join(run["work"], "verts_rig2_world.npy"))
    matrix = np.load(os.path.join(run["work"], "rig2_matrix.npy"))
    local = (world - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T
    error = np.linalg.norm(local - flame(first)[::6], axis=-1).max()
    assert error <= 1e-5, error


def test_camera_is_exported_relative_to_a_moved_rig(run, flame):
    exported = load(run, "export_rig2.npz")
    pixels = np.load(os.path.join(run["work"], "pixels_rig2.npy"))
    index = np.load(os.path.join(run["work"], "projected_index.npy"))
    vertices = flame(exported)[:, index]
    error = max(np.abs(project_points(vertices[i], exported.K[i], exported.R[i], exported.t[i])[0]
                       - pixels[i]).max() for i in range(exported.num_frames))
    assert error <= 0.01, error


def test_constrained_bone_exports_what_blender_shows(run, flame):
    assert run["results"]["path_constrained"].startswith("full") and "constraints" in run["results"]["path_constrained"]
    exported, free = load(run, "export_constrained.npz"), load(run, "export_fast.npz")
    assert np.abs(exported.jaw_pose - free.jaw_pose).max() > 0.05  # the limit changed the jaw
    verts = np.load(os.path.join(run["work"], "verts_constrained.npy"))
    error = np.linalg.norm(verts - flame(exported), axis=-1).max()
    assert error <= 1e-5, error


def test_tracker_import_pads_and_offsets(run):
    outcome, message = run["results"]["import_tracker"]
    assert outcome == ["FINISHED"], message
    assert run["results"]["export_tracker"] == ""
    exported = load(run, "export_tracker.npz")
    tracker = np.load(os.path.join(run["work"], "tracker.npz"))
    np.testing.assert_array_equal(exported.frame, np.arange(101, 106))  # scene start 1 + offset 100
    np.testing.assert_allclose(exported.expression, tracker["expcode"], atol=1e-6)
    np.testing.assert_allclose(exported.shape, np.repeat(tracker["shapecode"][None], 5, 0), atol=1e-6)
    np.testing.assert_allclose(exported.jaw_pose, tracker["posecode"][:, 3:], atol=1e-6)


@pytest.mark.parametrize("name", ["export_anim_cam.npz", "export_anim_cam_full.npz"])
def test_projection_matches_world_to_camera_view(run, flame, name):
    """A keyed camera and lens (fast and full paths): exported K, R|t vs Blender's projection, <= 0.01 px."""
    exported = load(run, name)
    assert exported.image_size == (640, 480)
    pixels = np.load(os.path.join(run["work"], "pixels_anim_cam.npy"))
    index = np.load(os.path.join(run["work"], "projected_index.npy"))
    vertices = flame(exported)[:, index]
    error = max(np.abs(project_points(vertices[i], exported.K[i], exported.R[i], exported.t[i])[0]
                       - pixels[i]).max() for i in range(exported.num_frames))
    assert error <= 0.01, error
    assert np.ptp(exported.t, axis=0).max() > 0.01 and np.ptp(exported.K[:, 0, 0]) > 10  # camera and lens moved
    assert (pixels.min(axis=(0, 1)) > 0).all() and (pixels.max(axis=(0, 1)) < (640, 480)).all()  # head in view


@pytest.mark.parametrize("name, words", [
    ("bad_nan.npz", "NaN"), ("bad_rank.npz", "rank"), ("bad_missing_key.npz", "translation"),
    ("bad_frames.npz", "frames"), ("bad_other_asset.npz", "FLAME2023"),
    ("bad_too_many_coefficients.npz", "151"), ("bad_not_npz.npz", "not a readable"),
])
def test_bad_files_change_nothing(run, name, words):
    outcome = run["results"]["bad"][name]
    assert outcome["result"] is None and "Import failed" in outcome["message"], outcome
    assert words in outcome["message"], outcome["message"]
    assert outcome["unchanged"]


def test_export_refuses_empty_range_and_other_asset(run):
    bad = run["results"]["bad"]
    assert "empty" in bad["export_empty_range"]["message"] and not bad["export_empty_range"]["file"]
    assert bad["export_empty_range"]["unchanged"]
    assert "rebuild the rig" in bad["export_other_asset"]["message"] and not bad["export_other_asset"]["file"]


def test_several_rigs_and_coefficient_operators(run):
    results = run["results"]
    assert results["add_rig"] == results["add_rig2"] == ["FINISHED"]
    assert results["rig"] != results["rig2"]
    assert results["num_shape_keys"] == 100 + 50 + 36
    assert results["randomise_nonzero"] and results["reset_zero"]


def test_panels_draw_and_add_on_unregisters_cleanly(run):
    ui = run["results"]["ui"]
    assert ui["problems"] == []
    assert ui["shown"] == {"Expression": 50, "Shape": 10}  # filter "shape01": Shape010..Shape019
    assert ui["animation_panel_without_rig"] is False
    assert run["results"]["unregister"] == {"gone": True, "back": True}


def test_missing_asset_folder_is_explained(run):
    bad = run["results"]["bad_asset_folder"]
    assert bad["result"] is None and "not a folder" in bad["message"] and bad["unchanged"], bad


def test_empty_preference_generates_the_procedural_head(run, head_asset):
    assert run["results"]["generated_asset_in_user_folder"]
    assert run["results"]["generated_asset_identity"] == dict(head_asset.identity())


# ----------------------------------------------------------------------------- first run and Blender conventions

def test_start_locally_is_the_default_and_finds_the_checkouts_venv(run):
    conventions = run["results"]["conventions"]
    assert conventions["default_backend_mode"] == "LOCAL"
    assert conventions["checkouts"] == [ROOT]  # recorded in the zip by build_addon.py
    outcome, message = conventions["python_found"]
    assert outcome == ["FINISHED"], message
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    assert f"Backend Python {venv_python} (the .venv of the source checkout {ROOT})" in message, message
    assert "not started yet" in message and "Start backend" in message and "choose 'Start locally'" not in message


def test_no_backend_python_anywhere_says_which_command_to_run(run):
    conventions = run["results"]["conventions"]
    outcome, message = conventions["python_missing"]
    assert outcome is None and "no Python with the flamediff backend was found" in message, message
    fresh = os.path.join(run["work"], "fresh_home", ".local", "share", "flamediff", "venv")
    command = f'python3.11 -m venv "{fresh}" && "{fresh}/bin/python" -m pip install -e "/path/to/flamediff"'
    assert conventions["copied_command"].endswith(f"Copied: {command}"), conventions["copied_command"]
    assert command in message and os.path.join(fresh, "bin", "python") in message  # looked there, says so
    labels = " ".join(conventions["python_missing_labels"])
    assert "No backend Python found" in labels and "python3.11 -m venv" in labels
    assert conventions["python_missing_operators"] == ["flamediff.copy_setup_command"]
    outcome, message = conventions["python_from_env"]
    assert outcome == ["FINISHED"] and "($FLAMEDIFF_PYTHON)" in message and "flamediff installed" in message, message
    outcome, message = conventions["python_typo"]
    assert outcome is None and "typo/python" in message and "does not exist" in message, message


def test_url_mode_token_file_follows_the_backends_cache_rule(run):
    cache = os.environ["FLAMEDIFF_CACHE"]  # conftest's private cache, inherited by the bpy subprocess
    assert run["results"]["conventions"]["url_token_file"] == os.path.join(cache, "server", "token")


def test_greyed_out_operators_say_why(run):
    messages = run["results"]["conventions"]["poll_messages"]
    for name in ("export_animation", "render", "reset_coefficients"):
        assert "No flamediff rig in this scene" in messages[name] and "Add > FLAME Rig" in messages[name], name
    assert "No flamediff render is running" in messages["render_cancel"]
    assert "No backend started by this Blender" in messages["backend_stop"]
    assert "choose 'Start locally'" in messages["backend_start_url_mode"]
    assert "Object Mode" in messages["add_rig_edit_mode"]


def test_every_operator_is_in_a_blender_menu_with_undo_where_it_changes_the_scene(run):
    menus = run["results"]["menus"]
    assert menus["problems"] == []
    assert menus["in_menus"] == menus["operators"]  # F3 finds what is in a menu
    placed = menus["placed"]
    assert placed["VIEW3D_MT_add"] == [{"idname": "flamediff.add_rig"}]
    assert placed["TOPBAR_MT_file_import"] == [{"idname": "flamediff.import_animation"},
                                               {"idname": "flamediff.track_video"}, {"idname": "flamediff.match_photo"}]
    assert placed["TOPBAR_MT_file_export"] == [{"idname": "flamediff.export_animation"}]
    render = placed["TOPBAR_MT_render"]
    assert render[:3] == [{"idname": "flamediff.render"}, {"idname": "flamediff.render", "preview": True},
                          {"idname": "flamediff.render_cancel"}]
    options = menus["options"]
    for idname in ("flamediff.add_rig", "flamediff.import_animation", "flamediff.render",
                   "flamediff.reset_coefficients", "flamediff.randomize_coefficients", "flamediff.match_photo",
                   "flamediff.track_video"):
        assert options[idname] == ["REGISTER", "UNDO"], idname
    assert all("REGISTER" in value for value in options.values()), options
    for idname in ("flamediff.add_rig", "flamediff.render", "flamediff.render_cancel", "flamediff.export_animation",
                   "flamediff.backend_start", "flamediff.backend_stop", "flamediff.match_photo",
                   "flamediff.track_video", "flamediff.track_cancel"):
        assert menus["has_own_poll"][idname], idname


def test_panel_advice_wraps_at_words(run):
    lines = [line for line in run["results"]["menus"]["panel_labels"] if line]
    assert all(len(line) <= 60 for line in lines), lines  # no region in background bpy: 60 characters
    drawn = {word for line in lines for word in line.split()}
    words = [word for word in run["results"]["menus"]["advice"].split() if len(word) <= 60]
    assert words and all(word in drawn for word in words), sorted(set(words) - drawn)  # none cut mid-word
    assert any(line.startswith("Unsaved file: frames go to") for line in lines)
