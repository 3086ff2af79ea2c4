"""The add-on's tracking task (issue 17) as plain Python (no Blender): a scripted backend client and a
recording host stand in for ``/v1/tracks`` and the scene; the upload the real client sends is read
back by a loopback HTTP server."""

from __future__ import annotations

import http.server
import os
import sys
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from test_addon_render_job import REFUSED, FakeProcess, ScriptedClient

from extension_repo.flamediff.backend.formats.animation import make_clip
from extension_repo.flamediff.blender_addon import backend_job, track_job
from extension_repo.flamediff.blender_addon.backend_client import BackendClient, BackendError

TASK = "0123456789abcdef"


class ScriptedTracker(ScriptedClient):
    """Answers like ``BackendClient``'s tracking calls: ``track`` returns the queued views in turn."""

    uploaded: tuple[str, int] | None = None

    def submit_track(self, media: str, first_frame: int) -> dict:
        self.calls.append("submit")
        self.uploaded = (media, first_frame)
        return {"id": TASK, "kind": "video", "frames": 50, "status": "running"}

    def track(self, task_id: str) -> dict:
        return self.job(task_id)

    def fetch_track_animation(self, task_id: str, path: str) -> str:
        self.calls.append("fetch")
        with open(path, "wb") as handle:
            handle.write(b"the fit")
        return path

    def cancel_track(self, task_id: str) -> dict:
        return self.cancel(task_id)


class RigHost:
    """A scene with a rig: records the state shown and what was applied; ``refuse`` makes apply fail."""

    def __init__(self, refuse: str = "") -> None:
        self.key, self.exists, self.refuse = "Scene", True, refuse
        self.state: dict = {}
        self.applied: list[bytes] = []
        self.bar: str | None = "untouched"

    def alive(self) -> bool:
        return self.exists

    def show(self, **state) -> None:
        self.state.update(state)

    def status_bar(self, text: str | None) -> None:
        self.bar = text

    def apply(self, animation: str) -> str:
        if self.refuse:
            raise ValueError(self.refuse)
        with open(animation, "rb") as handle:
            self.applied.append(handle.read())
        return "Keyed FLAME on 50 frames (1..50)"


def running(stage: str, done: int, total: int) -> dict:
    return {"id": TASK, "status": "running", "stage": stage, "done": done, "total": total}


def follow(job: track_job.TrackJob) -> None:
    backend_job.start(job)
    while job.step():
        pass


def test_task_is_uploaded_followed_and_applied(tmp_path):
    client = ScriptedTracker([running("landmarks", 25, 50), running("fit", 0, 1), {"id": TASK, "status": "done"}])
    host = RigHost()
    job = track_job.TrackJob(host, client, str(tmp_path / "take.mp4"))
    backend_job.start(job)
    assert job.step() and client.uploaded == (str(tmp_path / "take.mp4"), 0)
    assert host.state["progress"] == 25 / 50 / 3 and "landmarks 25/50 - Esc cancels" in host.bar
    assert backend_job.active_job("Scene", "track") is job and backend_job.active_job("Scene") is None
    assert job.step() and host.state["progress"] == 1 / 3
    assert job.step() is False
    assert job.outcome == "done" and host.applied == [b"the fit"] and host.state["status"] == "done"
    assert host.state["message"] == "Keyed FLAME on 50 frames (1..50)" and host.bar is None
    assert not os.path.exists(job.animation)  # the fetched file is removed once applied
    assert backend_job.active_job("Scene", "track") is None


def test_failed_fit_and_refusing_rig_change_nothing(tmp_path):
    failed = ScriptedTracker([{"id": TASK, "status": "failed", "error": "MediaPipe found no face in the upload",
                               "advice": "use a photo where the face is clearly visible"}])
    host = RigHost()
    follow(job := track_job.TrackJob(host, failed, "face.png"))
    assert job.outcome == "failed" and host.applied == [] and "no face" in host.state["error"]
    assert host.state["message"] == "Tracking failed; the rig is unchanged" and "clearly" in host.state["advice"]
    refusing = RigHost(refuse="rig FLAME was built from FLAME asset 'other'")
    follow(job := track_job.TrackJob(refusing, ScriptedTracker([{"id": TASK, "status": "done"}]), "face.png"))
    assert job.outcome == "error" and "nothing changed: rig FLAME was built" in refusing.state["error"]


def test_down_backend_is_an_error_with_advice_and_no_upload(tmp_path):
    client = ScriptedTracker([running("fit", 0, 1)], health_errors=[REFUSED])
    host = RigHost()
    follow(job := track_job.TrackJob(host, client, "take.mp4"))
    assert job.outcome == "error" and client.calls == ["health"] and "connection refused" in host.state["error"]
    assert host.state["advice"] == "start it with 'flamediff serve'" and host.applied == []


def test_start_locally_starts_the_backend_then_uploads(tmp_path):
    client = ScriptedTracker([{"id": TASK, "status": "done"}], health_errors=[REFUSED])
    process = FakeProcess(lives=0)
    local = {"python": "", "port": 8765, "device": "cpu", "token_file": "/tmp/token"}
    job = track_job.TrackJob(RigHost(), client, "take.mp4", local, process)
    backend_job.start(job)
    assert job.step() and process.starts == [("", 8765, "cpu", "/tmp/token")] and "submit" not in client.calls
    follow(job)
    assert job.outcome == "done" and client.calls.count("submit") == 1


def test_cancel_deletes_the_task_and_a_slow_answer_is_tolerated(tmp_path):
    slow = BackendError("the flamediff backend at http://127.0.0.1:1 did not answer within 3 s", "try again")
    client = ScriptedTracker([slow, running("landmarks", 3, 50)])
    host = RigHost()
    job = track_job.TrackJob(host, client, "take.mp4")
    backend_job.start(job)
    assert job.step() is True and job.phase == "running"  # the slow answer: polled again next tick
    assert job.step() is True
    job.cancel()
    assert client.calls[-1] == "cancel" and job.outcome == "cancelled" and host.applied == []
    assert host.state["message"] == "Tracking cancelled; the rig is unchanged" and job.step() is False


def test_fit_lands_from_the_scene_start_resampled_to_the_scene_fps():
    clip = make_clip(5, fps=25.0, first_frame=0)   # what a task's file holds: frames 0..4
    clip.translation[:, 0] = np.arange(5.0)
    same, how = track_job.on_scene_frames(clip, 25.0, 1001)
    assert list(same.frame) == [1001, 1002, 1003, 1004, 1005] and "scene's rate" in how
    double, how = track_job.on_scene_frames(clip, 50.0, 11)
    assert list(double.frame) == list(range(11, 20)) and "resampled 5 frames at 25 fps" in how
    np.testing.assert_allclose(double.translation[:, 0], np.arange(9) / 2.0)
    photo, _ = track_job.on_scene_frames(make_clip(1, first_frame=0), 24.0, 37)
    assert list(photo.frame) == [37]


def test_stage_progress_spans_the_three_stages():
    assert track_job.stage_progress({"stage": "starting"}) == 0.0
    assert track_job.stage_progress({"stage": "fit", "done": 1, "total": 1}) == 2 / 3
    assert track_job.stage_progress({"stage": "overlay", "done": 50, "total": 50}) == 1.0


def test_client_uploads_the_media_as_multipart(tmp_path):
    received: dict = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received["path"], received["type"] = self.path, self.headers["Content-Type"]
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"id": "%s", "status": "running"}' % TASK.encode()
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token, media = tmp_path / "token", tmp_path / "take.mp4"
    token.write_text("secret")
    media.write_bytes(b"\x00video bytes")
    try:
        view = BackendClient(f"127.0.0.1:{server.server_port}", str(token)).submit_track(str(media), 1001)
    finally:
        server.shutdown()
    assert view["id"] == TASK and received["path"] == "/v1/tracks"
    assert received["type"].startswith("multipart/form-data")
    body = received["body"]
    assert b'name="media"; filename="take.mp4"' in body and b"\x00video bytes" in body
    assert b'name="first_frame"\r\n\r\n1001\r\n' in body
    with pytest.raises(BackendError, match="cannot read") as refused:
        BackendClient("127.0.0.1:1", str(token)).submit_track(str(tmp_path / "none.mp4"), 1)
    assert refused.value.advice == "choose an existing photo or video file"


def test_a_rig_deleted_while_tracking_gets_advice_about_the_deletion(tmp_path):
    """Not "rebuild the rig with enough coefficients": the rig is gone, and the advice says so."""
    class GoneHost(RigHost):
        def apply(self, animation: str) -> str:
            raise track_job.RigGone("the rig FLAME was deleted while tracking")

    host = GoneHost()
    follow(job := track_job.TrackJob(host, ScriptedTracker([{"id": TASK, "status": "done"}]), "face.png"))
    assert job.outcome == "error" and "the rig FLAME was deleted while tracking" in host.state["error"]
    assert "add a rig" in host.state["advice"] and "coefficients" not in host.state["advice"]
