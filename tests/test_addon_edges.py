"""The artist's rough edges, reproduced in ``bpy`` from the built zip: a tracked folder's camera and
range, a weak-perspective camera, the scene's resolution kept, TF_FLAME's identity kept, a deleted rig
named, the script's reference kept by the panel, unsaved renders moving with the project,
``flamediff latest`` kept; against a real backend: a sideways phone photo matched upright and
rendered, no warning that is not actionable, Cancel then Render again at once (the kept count the
backend's), the head's matte (with the neck, or the tile), a rig deleted during Match Photo."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy")
pytest.importorskip("httpx")
pytest.importorskip("mediapipe", reason="the tracking extra (pip install 'flamediff[tracking]')")
skimage_data = pytest.importorskip("skimage.data")   # the astronaut: a photo of a real person, offline

from test_addon_render import run_driver
from test_photo_orientation import phone_portrait
from test_server_helpers import huge_png_header, make_checkpoint
from test_server_process import Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_take(work, asset) -> str:
    """``flamediff track FOLDER --out shot.npz`` on a 16-frame take (procedural renders)."""
    from flamediff.cli import main
    from flamediff.tracking.evaluate import procedural_clip

    folder = work / "take"
    folder.mkdir()
    for number, case in enumerate(procedural_clip(asset, identity=1, frames=16), start=1):
        Image.fromarray(case.image).save(folder / f"frame_{number:04d}.png")
    out = str(work / "shot.npz")
    assert main(["track", str(folder), "--out", out, "--fps", "25", "--steps", "20", "--no-overlay", "--quiet"]) == 0
    return out


def tf_flame_fit() -> dict:
    """TF_FLAME's fit of 4 frames: ``shape`` [T, 300] (the same identity on each), pose, expression."""
    shape = np.random.default_rng(0).normal(0.0, 0.5, 300).astype(np.float32)
    return {"pose": np.zeros((4, 15), np.float32), "shape": np.tile(shape, (4, 1)),
            "expression": np.zeros((4, 100), np.float32), "trans": np.zeros((4, 3), np.float32)}


@pytest.fixture(scope="module")
def results(tmp_path_factory, head_folder, head_asset) -> dict:
    sys.path.insert(0, ROOT)
    from build_addon import build

    from flamediff.tracking.evaluate import procedural_cases

    work = tmp_path_factory.mktemp("edges")
    tracked_take(work, head_asset)
    cam = np.tile([[8.0, 0.01, 0.02]], (4, 1)).astype(np.float32)   # DECA's [s, tx, ty]
    np.savez(work / "deca.npz", shape=np.zeros((4, 100), np.float32), exp=np.zeros((4, 50), np.float32),
             pose=np.zeros((4, 6), np.float32), cam=cam)
    with open(work / "tf_flame_fit.pkl", "wb") as handle:   # TF_FLAME's fitting output: an identity beside pose
        pickle.dump(tf_flame_fit(), handle, protocol=2)
    Image.new("RGB", (64, 64), (120, 90, 80)).save(work / "frame.png")
    (work / "bomb.png").write_bytes(huge_png_header())
    exif = Image.Exif()
    exif[0x0112] = 6   # a phone held upright stores the portrait sideways with this tag
    face = procedural_cases(head_asset, identity=0, yaws=[0.0])[0].image
    phone_portrait(face).transpose(Image.Transpose.ROTATE_90).save(work / "phone.jpg", quality=85, exif=exif.tobytes())
    ramp = np.tile(np.linspace(60, 180, 64).round().astype(np.uint16), (64, 1))
    Image.fromarray(ramp * 257).save(work / "grey16.png")   # 16-bit grey: Pillow's own convert clips it white
    Image.fromarray(ramp.astype(np.uint8)).save(work / "grey8.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(work / "white.png")
    shutil.copy(os.path.join(ROOT, "backend", "checkpoints", "demo", "reference.png"), work / "shipped_reference.png")
    Image.fromarray(skimage_data.astronaut()).crop((140, 20, 340, 220)).save(work / "face.jpg", quality=90)
    make_checkpoint(str(work / "models" / "tiny"), head_asset)
    zip_path = build(str(work / "dist"))
    os.makedirs(work / "home")
    server = Server(str(work), str(work / "models")).start()
    arguments = [zip_path, str(work), head_folder, str(server.port), server.token_file]
    try:
        out = run_driver("addon_edges_driver.py", str(work), arguments, 1500)
    finally:
        server.kill()
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(work / "blender_user"), HOME=str(work / "home"),
               OMP_NUM_THREADS="1")
    cli = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "addon_edges_driver.py"), *arguments,
                          "command-line"], env=env, capture_output=True, text=True, timeout=300, check=False)
    reports = work / "cli_reports.txt"
    out["cli"] = {"rc": cli.returncode, "stdout": cli.stdout, "stderr": cli.stderr,
                  "reports": reports.read_text().splitlines() if reports.exists() else []}
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


def test_a_rig_deleted_during_match_photo_gets_advice_about_the_deletion(results):
    assert results["doomed_match"][0] == ["FINISHED"], results["doomed_match"][1]
    doomed = results["doomed"]
    assert doomed["status"] == "error" and doomed["unchanged"], doomed
    assert doomed["error"] == "the fit is back but the rig Doomed was deleted while tracking, nothing changed", doomed
    assert "add a rig" in doomed["advice"] and "coefficients" not in doomed["advice"], doomed   # not "rebuild"
    print(f"Match Photo with the rig deleted: {doomed['seconds']:.1f} s")


def test_tf_flames_identity_is_keyed_not_dropped(results):
    from flamediff.formats.animation import load_animation

    assert results["tf_flame"][0] == ["FINISHED"], results["tf_flame"][1]
    report = results["tf_flame_report"]
    assert "shape [4, 300] -> shape" in report and "dropped: nothing" in report, report   # not "not a FLAME parameter"
    assert "rebuilt rig TF with 300 shape" in report, report
    assert results["tf_flame_export"] == ["FINISHED"]
    keyed = load_animation(os.path.join(results["work"], "tf_flame_keyed.npz"))
    np.testing.assert_allclose(keyed.shape, tf_flame_fit()["shape"], atol=1e-5)   # all 300, every frame


def test_the_panel_keeps_the_reference_a_script_passed(results):
    assert results["panel_reference"] == os.path.join(results["work"], "frame.png")


def test_unsaved_renders_move_with_the_project_and_latest_survives_a_reopen(results):
    assert results["saved_strip_directory"] == "//flamediff/0123456789abcdef/" and not results["unsaved_left"]
    assert results["moved_frame"] == os.path.join(results["work"], "moved", "flamediff", "0123456789abcdef",
                                                  "frame_0001.png")
    assert os.path.isfile(results["moved_frame"]) and results["latest_after_reopen"]
    assert results["moved_frame_is_the_newer"]   # the job's earlier frames beside the .blend are replaced


def test_render_finds_the_tracked_camera(results):
    assert "job_inputs_error" not in results, results.get("job_inputs_error")   # not "the scene has no camera"


def test_a_sideways_phone_photo_is_matched_upright_and_renders(results):
    assert results["match"][0] == ["FINISHED"], results["match"][1]
    shot = results["match_shot"]
    assert shot["reference"] == os.path.join(results["work"], "phone.jpg")
    assert abs(shot["roll"]) < 10.0, shot   # the stored pixels read as they are: an 82-84 degree roll
    assert shot["resolution"] == [1365, 2048]   # the photo as read: upright, its long side 2048 px
    outcome, text, props = results["render_after_match"]
    assert outcome == ["FINISHED"] and props["status"] == "done" and props["frames_done"] == 1, text
    notes = props["notes"].splitlines()
    assert "reference: turned upright by its EXIF orientation (6)" in notes
    assert any(note.startswith("reference: 4000x6000 downsized to 1365x2048") for note in notes), notes
    for note in notes:   # each message once: in the panel and in what the render printed
        assert notes.count(note) == 1 and text.count(note) == 1, (note, text)


def test_render_and_match_photo_refuse_a_decompression_bomb_alike_and_keep_the_shot(results):
    said = "claims 60000x60000 pixels, more than the 80 MP that can be decoded safely"
    outcome, text, props = results["bomb_render"]
    assert outcome is None and said in text and props["status"] == "error", text
    outcome, text = results["bomb_match"]
    assert outcome is None and said in text, text
    assert results["bomb_kept"] == {"reference": os.path.join(results["work"], "phone.jpg"),
                                    "resolution": results["match_shot"]["resolution"]}


def test_a_reference_passed_by_script_is_the_next_renders(results):
    outcome, text, props = results["script_reference"]
    assert outcome == ["FINISHED"], text
    assert props["reference_image"] == os.path.join(results["work"], "frame.png")
    outcome, text, props = results["next_render"]
    assert outcome == ["FINISHED"] and props["status"] == "done", text   # not "no reference image"


def test_renders_of_a_saved_file_print_no_runtime_warning(results):
    assert results["next_render"][2]["output_dir"].startswith("//flamediff/")
    assert not [line for line in results["warnings"] if line.startswith("RuntimeWarning")], results["warnings"]


def test_render_again_right_after_cancel_waits_for_the_backend_and_renders(results):
    assert results["async"][0] == ["FINISHED"] and results["cancel"][0] == ["FINISHED"]
    assert results["cancel_phase"] == "cancelling"   # the backend still finishes its denoising step
    outcome, text = results["again"]
    assert outcome == ["FINISHED"], text   # not "Error: Cancelled; 8 of 12 frames kept"
    again = results["again_props"]
    assert again["status"] == "done" and again["job_id"] == results["cancelled_job"], again
    assert again["frames_done"] == 12 and again["message"].startswith("Rendered 12 frames"), again
    print(f"Render again after Cancel: {results['again_s']:.1f} s")


def test_the_kept_frame_count_reported_after_cancel_is_the_backends(results):
    cancelled = results["cancelled"]
    assert cancelled["outcome"] == "cancelled" and cancelled["status"] == "cancelled", cancelled
    kept = cancelled["kept"]   # what the backend said when it stopped: 8, the 4 frames in progress dropped
    assert results["fetched_at_cancel"] == 4 and kept == 8, (results["fetched_at_cancel"], cancelled)
    assert cancelled["message"] == "Cancelled; 8 of 12 frames kept"   # not the add-on's own 4


def test_no_fit_rewrites_a_rig_while_a_render_of_it_runs(results):
    for name, (outcome, text) in results["fits_during_render"].items():
        assert outcome is None and "A flamediff render of this scene is running" in text, (name, text)
    outcome, text = results["fit_from_other_scene"]   # the rig linked into another scene is the same rig
    assert outcome is None and "A flamediff render of FLAME is running in the scene Scene" in text, text
    assert results["rig_kept_during_render"]


def test_a_16_bit_grey_reference_renders_as_its_8_bit_copy_with_a_note(results):
    frames = {}
    for name in ("grey16.png", "grey8.png", "white.png"):
        outcome, text, props, frame = results[f"reference_{name}"]
        assert outcome == ["FINISHED"] and props["status"] == "done", text
        frames[name] = np.asarray(Image.open(frame))
    assert "reference: 16-bit pixels scaled to 8 bits" in results["reference_grey16.png"][2]["notes"].splitlines()
    assert "16-bit" not in results["reference_grey8.png"][2]["notes"]
    assert np.array_equal(frames["grey16.png"], frames["grey8.png"])   # read as mean 120, not clipped near white
    assert not np.array_equal(frames["grey8.png"], frames["white.png"])   # the frame does follow the reference


def test_a_command_line_render_without_a_backend_python_says_why_once(results):
    cli = results["cli"]
    assert cli["rc"] == 1, cli["stderr"][-2000:]   # Blender alone would exit 0 after a failed render
    said = cli["reports"] + [line for line in cli["stderr"].splitlines() if "typo/python" in line]
    assert len(said) == 1 and "does not exist" in said[0] and "typo/python" not in cli["stdout"], said


def test_another_program_on_the_port_is_named_and_start_locally_moves_off_it(results):
    taken = results["taken_port"]
    outcome, text = results["url_other_program"]
    assert outcome is None and "is not a flamediff backend (it answered HTTP 404" in text, text
    assert f"port {taken} is used by another program" in text and "HTTP 404 File not found" not in text.split(":")[0]
    outcome, text, props = results["demo_shipped_reference"]
    assert outcome == ["FINISHED"] and props["status"] == "done", text
    assert results["local_port"] not in (None, taken)


def test_the_out_of_domain_note_comes_only_for_a_photo_of_a_person_and_once(results):
    note = "a photo of a real person is outside what it learned"
    outcome, text, props = results["demo_shipped_reference"]
    assert note not in props["notes"] and note not in text, props["notes"]   # the shipped procedural reference
    outcome, text, props = results["demo_photo_reference"]
    assert outcome == ["FINISHED"], text
    assert props["notes"].count(note) == 1 and text.count(note) == 1, (props["notes"], text)


def matte_frame(results, key: str) -> np.ndarray:
    outcome, text, props, frame = results[key]
    assert outcome == ["FINISHED"] and props["status"] == "done", text
    return np.asarray(Image.open(frame))


def test_frames_carry_the_heads_matte_and_the_neck_or_the_tile_when_asked(results):
    head, neck, tile = (matte_frame(results, key) for key in ("reference_grey8.png", "matte_head_neck", "matte_tile"))
    (top, left), (bottom, right) = np.argwhere(tile[..., 3] > 0).min(0), np.argwhere(tile[..., 3] > 0).max(0) + 1
    assert (tile[top:bottom, left:right, 3] == 255).all()   # the square tile (here cut by the frame's sides)
    inside = head[top:bottom, left:right, 3]
    assert (head[..., 3] > 0).sum() == (inside > 0).sum() and (inside > 0).mean() < 0.95   # a head, in the tile
    assert ((inside > 0) & (inside < 255)).any()                                           # feathered
    assert (neck[..., 3] > 0).sum() > (head[..., 3] > 0).sum() and (neck[bottom - 1, left:right, 3] > 0).any()
    opaque = head[..., 3] == 255   # the same picture under each matte
    assert np.array_equal(head[opaque, :3], tile[opaque, :3]) and np.array_equal(neck[opaque, :3], tile[opaque, :3])
