"""Rendering from Blender: the installed add-on drives a real ``python -m flamediff serve`` subprocess.

The server runs a tiny checkpoint on the CPU; tests/addon_render_driver.py (a bpy subprocess) installs
the built zip, points the preferences at the server, keys a rig and renders 3 frames with 2 steps.
The backend client's error mapping is also checked against a stdlib http.server on loopback.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_server_helpers import make_checkpoint, png_bytes

pytest.importorskip("bpy")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_server_process import Server, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = [11, 12, 13]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, head_asset, head_folder) -> dict:
    sys.path.insert(0, ROOT)
    from build_addon import build

    work = str(tmp_path_factory.mktemp("addon_render"))
    models_dir = os.path.join(work, "models")
    make_checkpoint(os.path.join(models_dir, "tiny"), head_asset)
    reference = os.path.join(work, "reference.png")
    with open(reference, "wb") as handle:
        handle.write(png_bytes())
    # "Start locally": the add-on starts its own backend, which finds the model in $FLAMEDIFF_CACHE/models
    local_cache = os.path.join(work, "local_cache")
    make_checkpoint(os.path.join(local_cache, "models", "tiny"), head_asset)
    zip_path = build(os.path.join(work, "dist"))
    server = Server(work, models_dir).start()
    try:
        started = time.perf_counter()
        results = run_driver("addon_render_driver.py", work, [zip_path, work, head_folder, str(server.port),
                                                              server.token_file, reference, str(free_port())],
                             1500, FLAMEDIFF_CACHE=local_cache, FLAMEDIFF_FLAME_ASSET=head_folder)
        wall = time.perf_counter() - started
    finally:
        server.kill()
    return {"work": work, "results": results, "wall_s": wall}


def run_driver(driver: str, work: str, args: list[str], timeout: float, **env: str) -> dict:
    """Run the bpy driver ``tests/<driver>`` with a private Blender user folder and home in ``work``
    (plus ``env``); its results.json, once it reported no error."""
    env = dict(os.environ, BLENDER_USER_RESOURCES=os.path.join(work, "blender_user"), HOME=os.path.join(work, "home"),
               OMP_NUM_THREADS="1", **env)
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "tests", driver), *args], check=False, env=env,
                               capture_output=True, text=True, timeout=timeout)
    results_file = os.path.join(work, "results.json")
    assert os.path.exists(results_file), completed.stdout[-3000:] + completed.stderr[-3000:]
    with open(results_file, encoding="utf-8") as handle:
        results = json.load(handle)
    assert not results["errors"], results["errors"][0] + completed.stderr[-3000:]
    return results


def test_blocking_render_lands_frames_strip_and_settings(run):
    results = run["results"]
    outcome, message, seconds = results["render"]
    assert outcome == ["FINISHED"], message
    props = results["render_props"]
    assert props["status"] == "done" and props["frames_done"] == props["frames_total"] == 3 and not props["error"]
    folder = props["output_dir"]
    assert folder.startswith(os.path.join(run["work"], "home", "flamediff_renders"))  # unsaved .blend: ~/flamediff_renders
    assert os.path.basename(folder) == props["job_id"]
    from PIL import Image

    for frame in FRAMES:   # the scene is 1920x1080: head framing, the head's matte as alpha, transparent elsewhere
        with Image.open(os.path.join(folder, f"frame_{frame:04d}.png")) as image:
            assert image.size == (1920, 1080) and image.mode == "RGBA"
            alpha = np.asarray(image)[..., 3]
        shown = np.argwhere(alpha > 0)
        (top, left), (bottom, right) = shown.min(0), shown.max(0) + 1
        assert 0 < right - left < 1920 and alpha[(top + bottom) // 2, (left + right) // 2] == 255
        assert (alpha[top:bottom, left:right] > 0).mean() < 0.95    # a head's outline, not a square tile
        assert ((alpha > 0) & (alpha < 255)).any()                  # feathered
    assert not [n for n in os.listdir(folder) if n.startswith("frame_") and int(n[6:10]) not in FRAMES]
    strip = results["strip"]
    assert strip["count"] == 1 and strip["type"] == "IMAGE" and strip["names"] == ["flamediff"]
    assert strip["blend_type"] == "ALPHA_OVER"
    assert "only 40 px on its short side" in props["notes"]   # the backend's reference warning reaches the panel
    assert strip["frame_final_start"] == FRAMES[0] and strip["frame_final_end"] == FRAMES[-1] + 1
    assert strip["elements"] == [f"frame_{f:04d}.png" for f in FRAMES]
    assert os.path.samefile(strip["directory"], folder)
    with open(os.path.join(folder, "settings.json"), encoding="utf-8") as handle:
        settings = json.load(handle)
    assert settings["seed"] == 7 and settings["settings"]["steps"] == 2 and settings["frames"] == FRAMES
    assert settings["job_id"] == props["job_id"] and settings["status"] == "done"
    assert results["latest_image"]
    print(f"blocking render of 3 frames x 2 steps: {seconds:.2f} s; whole bpy session {run['wall_s']:.1f} s")


def test_rerender_updates_the_same_strip(run):
    results = run["results"]
    assert results["rerender"][0] == ["FINISHED"], results["rerender"][1]
    first, second = results["render_props"], results["rerender_props"]
    assert second["job_id"] != first["job_id"]
    strip = results["strip_after_rerender"]
    assert strip["count"] == 1 and strip["channel"] == results["strip"]["channel"]
    assert os.path.samefile(strip["directory"], second["output_dir"])
    assert second["output_dir"] == os.path.join(run["work"], "chosen", second["job_id"])  # the preference's folder
    assert strip["frame_final_start"] == FRAMES[0] and len(strip["elements"]) == 3
    with open(os.path.join(second["output_dir"], "settings.json"), encoding="utf-8") as handle:
        assert json.load(handle)["seed"] == 8


def test_cross_identity_from_the_rig_setting_or_the_operator_argument(run):
    results = run["results"]
    for key in ("cross_rig", "cross_argument"):
        outcome, message, _ = results[key]
        assert outcome == ["FINISHED"], (key, message)
        with open(os.path.join(results[f"{key}_props"]["output_dir"], "settings.json"), encoding="utf-8") as handle:
            record = json.load(handle)
        received = record["settings"]  # the job as the server holds it
        assert received["shape_from"] == "reference", key
        assert received["reference_shape"] == pytest.approx(list(np.linspace(-1.0, 1.0, 10))), key
    assert record["steps"] == 2
    with open(os.path.join(results["cross_rig_props"]["output_dir"], "settings.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["settings"]["steps"] == 0 and record["steps"] == 25  # the tiny checkpoint's default_steps
    outcome, message, _ = results["cross_missing_file"]
    assert outcome is None and "no-such-shape.npy" in message and "Identity shape" in message


def test_preview_from_the_operator_argument_or_the_panel_renders_half_size_into_its_own_job(run):
    from PIL import Image

    results = run["results"]
    full = results["render_props"]  # the same seed and steps as the first preview, without preview
    for key, frames, steps in (("preview_argument", FRAMES, 2), ("preview_panel", FRAMES[:1], 4)):
        outcome, message, _ = results[key]
        assert outcome == ["FINISHED"], (key, message)
        props = results[f"{key}_props"]
        assert props["status"] == "done" and props["job_id"] != full["job_id"], key
        assert not os.path.samefile(props["output_dir"], full["output_dir"])
        for frame in frames:
            with Image.open(os.path.join(props["output_dir"], f"frame_{frame:04d}.png")) as image:
                assert image.size == (1920, 1080), key  # head-framed into the scene's frame (the server test
                # checks the half-size render itself, with framing "camera")
        with open(os.path.join(props["output_dir"], "settings.json"), encoding="utf-8") as handle:
            record = json.load(handle)
        assert record["settings"]["preview"] is True and record["steps"] == steps, key  # panel: 0 -> at most 4


def test_backend_down_is_reported_at_once_and_changes_nothing(run):
    results = run["results"]
    for key in ("down_wait", "down_async"):
        outcome, message, seconds = results[key]
        assert outcome is None, key
        assert "not running" in message and "flamediff serve" in message, message
        assert seconds < 5.0, (key, seconds)
    assert results["down_unchanged"]
    assert "not running" in results["down_props"]["error"] and "serve" in results["down_props"]["advice"]
    assert results["down_test_connection"][0] is None and "not running" in results["down_test_connection"][1]
    assert results["test_connection"][0] == ["FINISHED"], results["test_connection"][1]
    outcome, message, _ = results["no_reference"]
    assert outcome is None and "reference image" in message


def test_refused_job_shows_the_servers_error_and_advice(run):
    results = run["results"]
    outcome, message, seconds = results["bad_checkpoint"]
    props = results["bad_checkpoint_props"]
    assert outcome is None and "no-such-model" in message and seconds < 10.0, message
    assert "no-such-model" in props["error"] and props["advice"] and props["status"] == "error"
    assert results["bad_checkpoint_unchanged"]


def test_async_render_returns_at_once_and_cancels(run):
    results = run["results"]
    outcome, message, seconds = results["async"]
    assert outcome == ["FINISHED"] and seconds < 5.0, (message, seconds)
    assert results["async_props"]["job_id"] and results["async_props"]["status"] in ("queued", "running")
    assert results["busy"][0] is None and "already running" in results["busy"][1]
    assert results["cancel"][0] == ["FINISHED"]
    assert results["cancelling_props"]["status"] in ("cancelling", "cancelled")
    props, backend = results["cancel_props"], results["cancel_backend_view"]
    assert props["status"] == "cancelled" and backend["status"] == "cancelled"
    assert f"Cancelled; {backend['frames_done']} of " in props["message"]   # the backend's count of kept frames
    assert not results["panel_problems"]


def test_start_locally_launches_renders_and_stops_the_backend(run):
    results = run["results"]
    outcome, message, seconds = results["local_render"]
    assert outcome == ["FINISHED"], message
    assert results["local_props"]["status"] == "done" and results["local_props"]["frames_done"] == 3
    assert results["local_pid"] and results["local_stop"][0] == ["FINISHED"] and results["local_stopped"]
    with open(results["local_token_file"], encoding="utf-8") as handle:
        assert handle.read().strip()
    outcome, message = results["local_before_start"]
    assert outcome == ["FINISHED"] and "not started yet" in message and "(the 'Backend Python' preference)" in message
    outcome, message = results["local_start"]
    assert outcome == ["FINISHED"] and "Backend starting" in message, message
    outcome, message = results["local_just_started"]  # right after Start backend: never "not running"
    assert outcome == ["FINISHED"] and "not running" not in message and "choose 'Start locally'" not in message
    assert "is starting" in message or "Connected" in message, message
    outcome, message = results["local_connected"]
    assert outcome == ["FINISHED"] and f"started by this Blender (pid {results['local_pid']})" in message, message
    print(f"start locally + render 3 frames x 2 steps: {seconds:.1f} s")


# ----------------------------------------------------------------------------- backend_client unit tests

def load_client():
    """The installed add-on's client (tests/conftest.py; plain Python: no Blender needed)."""
    return importlib.import_module("extension_repo.flamediff.blender_addon.backend_client")


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: dict = {}

    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer good":
            return self._send(401, {"error": "missing or wrong token", "advice": "x"})
        status, body = self.answers.get(self.path, (404, {"error": "unknown route", "advice": "check it"}))
        if body == "slow":
            time.sleep(1.0)
            status, body = 200, {}
        return self._send(status, body)

    def _send(self, status, body):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (the timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_client_maps_errors_to_advice(tmp_path, fake_server):
    bc = load_client()
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("good\n")
    bad.write_text("bad")
    _Handler.answers = {"/v1/health": (200, {"protocol_version": 1, "device": "cpu"}),
                        "/v1/jobs/x": (422, {"error": "the animation has NaN", "advice": "re-export it"}),
                        "/v1/models": (200, "slow")}
    assert bc.BackendClient(fake_server, str(good)).health()["device"] == "cpu"
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient(fake_server, str(bad)).health()
    assert caught.value.status == 401 and "token file" in caught.value.advice
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient(fake_server, str(tmp_path / "missing")).health()
    assert "token file" in caught.value.message and "start the backend" in caught.value.advice
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient(fake_server, str(good)).job("x")
    assert caught.value.status == 422 and "NaN" in caught.value.message and caught.value.advice == "re-export it"
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient(fake_server, str(good), timeout=0.2).models()
    assert "did not answer" in caught.value.message
    _Handler.answers["/v1/health"] = (200, {"protocol_version": 2, "flamediff_version": "9.0"})
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient(fake_server, str(good)).health()
    assert "protocol version mismatch" in caught.value.message and "same flamediff version" in caught.value.advice
    started = time.perf_counter()
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient(f"http://127.0.0.1:{free_port()}", str(good)).health()
    assert "not running" in caught.value.message and "flamediff serve" in caught.value.advice
    assert time.perf_counter() - started < 2.0
    with pytest.raises(bc.BackendError) as caught:
        bc.BackendClient("http://192.0.2.1:8765", str(good), online_access=False).health()
    assert "online access" in caught.value.message
    assert bc.is_loopback_url("http://localhost:1") and bc.is_loopback_url("http://[::1]:1")


def test_saved_blend_renders_into_a_relative_folder_that_moves_with_it(run):
    results = run["results"]
    unsaved = results["local_props"]   # rendered while the file was unsaved, then Save As
    assert unsaved["output_dir"].startswith(os.path.join(run["work"], "chosen")) and not results["unsaved_render_left"]
    assert results["strip_after_save_as"]["raw_directory"].rstrip("/") == f"//flamediff/{unsaved['job_id']}"
    moved = os.path.join(run["work"], "moved", "flamediff", unsaved["job_id"])
    assert os.path.isfile(os.path.join(moved, f"frame_{FRAMES[0]:04d}.png"))   # and moves with the project
    outcome, message, _ = results["saved_render"]
    assert outcome == ["FINISHED"], message
    job = results["saved_props"]["job_id"]
    assert results["saved_props"]["output_dir"] == f"//flamediff/{job}"
    assert results["saved_strip"]["raw_directory"].rstrip("/") == f"//flamediff/{job}"
    assert results["moved_frame"] == os.path.join(run["work"], "moved", "flamediff", job, f"frame_{FRAMES[0]:04d}.png")
    assert os.path.isfile(results["moved_frame"])
