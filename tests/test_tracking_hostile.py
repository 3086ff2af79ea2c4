"""The tracking route as strict as the render route, and its faults (issue 27): the image rule and
decode limit before anything is stored, video caps from the container and while decoding, a time
budget, children that die with the server, 0600 files inside the jobs folder, retention, and
errors without server paths. Refusals assert the answer, <= 1 s and the server's peak memory."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from hostile_inputs import animated_gif, declaring_a_million_frames, huge_gif_screen, image, matroska, video
from test_server_helpers import TOKEN, answered_within, huge_png_header, peak_memory, wait_for

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import flamediff.server.tracking as tracking_module  # noqa: E402
from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.inputs import TrackingLimits  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402
from flamediff.server.tracking import OUTCOME, TrackingTasks  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app_client(tmp_path, limits: TrackingLimits = TrackingLimits()) -> TestClient:
    service = build_service(str(tmp_path / "jobs"), str(tmp_path / "models"), "cpu", shipped_dir=str(tmp_path / "n"))
    return TestClient(create_app(service, TOKEN, start_worker=False, tracking=limits), headers=AUTH)


def bounded_post(client, media: bytes):
    """POST ``media``: answered within 1 s of wall time (the fastest of a few sends, see
    :func:`answered_within`), then again for the server's peak memory (:func:`peak_memory`)."""
    def send():
        return client.post("/v1/tracks", files={"media": ("upload", media)})

    response, seconds = answered_within(send, 1.0)
    with peak_memory() as memory:
        again = send()
    peak = memory[0]
    print(f"{response.status_code} in {seconds:.3f} s wall, peak {peak:.1f} MB above idle")
    assert seconds <= 1.0 and peak <= 300, (seconds, peak, response.text)
    assert (again.status_code, again.text) == (response.status_code, response.text)
    return response


def test_photos_follow_the_render_routes_image_rule_and_decode_limit(tmp_path):
    """PNG declaring 30000 x 30000, a 169-megapixel PNG header, a GIF (animated or not), a TIFF:
    413 / 415 before anything is stored or decoded, never 500 or 201."""
    with app_client(tmp_path) as client:
        cases = [(huge_png_header(30000, 30000), 413, "pixels"), (huge_png_header(13000, 13000), 413, "pixels"),
                 (animated_gif(), 415, "GIF"),
                 (image("GIF"), 415, "GIF"), (image("TIFF"), 415, "TIFF"), (image("BMP"), 415, "BMP"),
                 (huge_gif_screen(), 415, "GIF")]
        for media, status, word in cases:
            response = bounded_post(client, media)
            assert response.status_code == status and word in response.json()["error"], response.text
            assert response.json()["advice"]
        assert not os.path.isdir(tmp_path / "jobs" / "tracks") or not os.listdir(tmp_path / "jobs" / "tracks")


def test_videos_past_the_frame_or_duration_cap_are_refused_from_their_container(tmp_path):
    pytest.importorskip("av")
    clip = video(str(tmp_path / "clip.mp4"), 30)  # 30 frames, 1.2 s
    with app_client(tmp_path, TrackingLimits(max_frames=20)) as client:
        response = bounded_post(client, clip)
        assert response.status_code == 413 and "30 frames, more than the 20" in response.json()["error"], response.text
    with app_client(tmp_path, TrackingLimits(max_seconds_of_video=1.0)) as client:
        response = bounded_post(client, clip)
        assert response.status_code == 413 and "longer than the 1 s" in response.json()["error"], response.text
    assert os.listdir(tmp_path / "jobs" / "tracks") == []  # refused uploads leave nothing


def test_a_video_declaring_a_million_frames_or_hours_is_refused_from_its_header(tmp_path):
    """The 1,000,000-frame row at serve's default caps, from files small on disk: an AVI declaring
    1,000,000 frames and a Matroska file declaring 40,000 s (no frame count) are refused from the
    container's header before any frame is decoded or the upload is kept."""
    pytest.importorskip("av")
    claims = declaring_a_million_frames(str(tmp_path / "million.avi"))
    hours = matroska(str(tmp_path / "hours.mkv"), 5, 40_000.0)
    assert len(claims) < 10_000 and len(hours) < 10_000
    with app_client(tmp_path) as client:
        response = bounded_post(client, claims)
        assert response.status_code == 413 and "1000000 frames, more than the 3000" in response.json()["error"], response.text
        response = bounded_post(client, hours)
        assert response.status_code == 413 and "40000 s, longer than the 300 s" in response.json()["error"], response.text
    assert os.listdir(tmp_path / "jobs" / "tracks") == []


def test_a_video_of_undeclared_length_stops_at_the_default_cap_while_decoding(tmp_path, monkeypatch):
    """A Matroska file that declares neither frames nor length passes the header check; the
    tracker then decodes no more than serve's default cap (+1) before it stops, keeping those
    frames (MediaPipe replaced by a counter: the cap is what is tested)."""
    pytest.importorskip("av")
    from flamediff.tracking import track
    from flamediff.tracking.media import open_footage

    limits = TrackingLimits()
    path = str(tmp_path / "live.mkv")
    matroska(path, limits.max_frames + 100, None, side=16)
    footage = open_footage(path, count_frames=False)
    assert (footage.count, footage.seconds) == (0, 0.0)
    TrackingTasks(str(tmp_path / "tracks"), limits=limits)._check_video(footage, str(tmp_path / "unused"))  # passes
    decoded: list[int] = []

    class Counter:
        def __init__(self, video: bool) -> None:
            pass

        def detect(self, frame: np.ndarray) -> np.ndarray:
            return np.zeros((478, 2))

        def close(self) -> None:
            pass

    def counted(frames=footage.frames):
        for frame in frames():
            decoded.append(1)
            yield frame

    monkeypatch.setattr(track, "LandmarkDetector", Counter)
    monkeypatch.setattr(footage, "frames", counted)
    stop = track.StopRule(limits.max_frames, limits.time_budget_s)
    landmarks = track.detect_footage(footage, stop=stop)
    assert len(landmarks) == limits.max_frames == 3000 and len(decoded) == limits.max_frames + 1
    assert stop.reason == "the video holds more than 3000 frames"


class MeasuredPopen(subprocess.Popen):
    """A Popen that reaps its process with ``wait4``, keeping the process's peak resident memory
    (``ru_maxrss``, exact: the kernel's high-water mark, read at its death) in :attr:`peak_mb`."""

    peak_mb: float | None = None

    def poll(self):
        return self._reap(os.WNOHANG)

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._reap(os.WNOHANG) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def _reap(self, flags: int):
        with self._waitpid_lock:
            if self.returncode is None:
                pid, status, usage = os.wait4(self.pid, flags)
                if pid:
                    self.peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


#: A tracking child ready to work: its modules, the FLAME asset and MediaPipe's video model loaded.
IDLE_CHILD = """
import av, cv2
from flamediff.server import tracking_child
from flamediff.tracking import cli, media, track
from flamediff.assets import load_asset
from flamediff.tracking.landmarks import LandmarkDetector
load_asset(None)
LandmarkDetector(video=True).close()
"""


@pytest.fixture(scope="module")
def idle_child_mb(head_folder) -> float:
    pytest.importorskip("mediapipe")
    idle = MeasuredPopen([sys.executable, "-c", IDLE_CHILD], cwd=ROOT)
    assert idle.wait(300) == 0
    return idle.peak_mb


@pytest.fixture
def children(monkeypatch) -> list[MeasuredPopen]:
    """The tracking children the server starts, measured."""
    started: list[MeasuredPopen] = []

    class Child(MeasuredPopen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(tracking_module.subprocess, "Popen", Child)
    return started


def stopped_task(client, media: bytes, children: list[MeasuredPopen], idle_mb: float) -> dict:
    """Submit ``media`` (201 within 1 s), wait for the task to end; its view, after checking the
    child's peak memory is within 300 MB of an idle child's and the server's within 300 MB of
    what it held before."""
    with peak_memory() as server:
        task, seconds = answered_within(lambda: client.post("/v1/tracks", files={"media": ("upload", media)}), 1.0, 1)
        assert task.status_code == 201 and seconds <= 1.0, (seconds, task.text)
        view = wait_for(lambda: (lambda v: v if v["status"] != "running" else None)(
            client.get(f"/v1/tracks/{task.json()['id']}").json()), 240, 0.5, "the task to stop")
        wait_for(lambda: children[0].peak_mb, 10, 0.05, "the child to be reaped")
    print(f"201 in {seconds:.3f} s; child peak {children[0].peak_mb:.0f} MB, idle child {idle_mb:.0f} MB; "
          f"server peak {server[0]:.0f} MB above idle")
    assert children[0].peak_mb - idle_mb <= 300 and server[0] <= 300, (children[0].peak_mb, idle_mb, server)
    return view


def kept_frames(client, view: dict) -> list[int]:
    from flamediff.formats.animation import load_animation

    answer = client.get(f"/v1/tracks/{view['id']}/animation")
    assert answer.status_code == 200, answer.text
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kept.npz")
        with open(path, "wb") as handle:
            handle.write(answer.content)
        return [int(frame) for frame in load_animation(path).frame]


@pytest.mark.slow
def test_a_video_without_a_frame_count_is_capped_while_decoding_keeping_its_frames(tmp_path, children,
                                                                                   idle_child_mb):
    """The undeclared-length video row: the child stops at the cap, fits the frames done and the
    task fails saying so, its first frames kept and fetchable."""
    clip = matroska(str(tmp_path / "clip.mkv"), 8, None, side=512, face=True)
    with app_client(tmp_path, TrackingLimits(max_frames=5)) as client:
        view = stopped_task(client, clip, children, idle_child_mb)
        assert view["status"] == "failed" and "more than 5 frames" in view["error"], view
        assert view["kept"] == 5 and "GET /v1/tracks/" in view["advice"], view
        assert kept_frames(client, view) == [1, 2, 3, 4, 5]
        assert str(tmp_path) not in json.dumps(view)


@pytest.mark.slow
def test_a_task_past_its_time_budget_stops_keeping_the_frames_done(tmp_path, children, idle_child_mb):
    """A budget shorter than the child's start: it tracks its first frame (always), stops, and
    keeps that frame."""
    clip = matroska(str(tmp_path / "clip.mkv"), 4, None, side=512, face=True)
    with app_client(tmp_path, TrackingLimits(time_budget_s=0.001)) as client:
        view = stopped_task(client, clip, children, idle_child_mb)
        assert view["status"] == "failed" and "time budget of 0.001 s" in view["error"], view
        assert view["kept"] == 1 and kept_frames(client, view) == [1], view


def test_a_task_that_does_not_stop_within_its_grace_is_killed(tmp_path):
    pytest.importorskip("mediapipe")
    with app_client(tmp_path, TrackingLimits(time_budget_s=0.5, stop_grace_s=0.0)) as client:
        task = client.post("/v1/tracks", files={"media": ("upload", image("PNG"))})
        assert task.status_code == 201, task.text
        view = wait_for(lambda: (lambda v: v if v["status"] != "running" else None)(
            client.get(f"/v1/tracks/{task.json()['id']}").json()), 30, 0.2, "the task to stop")
        assert view["status"] == "failed" and "time budget of 0.5 s" in view["error"], view
        assert "nothing was kept" in view["error"] and "kept" not in view, view
        assert client.get(f"/v1/tracks/{view['id']}/animation").status_code == 404
        folder = tmp_path / "jobs" / "tracks" / task.json()["id"]
        for name in os.listdir(folder):  # 0600 like job files, inside the jobs folder
            assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert str(tmp_path) not in json.dumps(view)


SERVER = """
import sys, time
from flamediff.server.tracking import TrackingTasks
tasks = TrackingTasks(sys.argv[1])
view = tasks.submit(open(sys.argv[2], "rb").read(), 1)
print(view["id"], tasks._running[view["id"]].pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_tracking_children_die_with_the_server_and_restart_says_why(tmp_path, stop):
    pytest.importorskip("mediapipe")
    photo = tmp_path / "photo.png"
    photo.write_bytes(image("PNG"))
    root = str(tmp_path / "tracks")
    server = subprocess.Popen([sys.executable, "-c", SERVER, root, str(photo)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        task_id, child = server.stdout.readline().decode().split()
        os.kill(int(child), 0)  # the child runs
        server.send_signal(stop)
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
    wait_for(lambda: not _alive(int(child)), 5, 0.1, "the tracking child to die with its server")
    tasks = TrackingTasks(root)  # the restarted server
    view = tasks.status(task_id)
    assert view["status"] == "failed" and "the server stopped while this task ran" in view["error"], view
    assert tasks.cancel(task_id) == {**view, "deleted": True}  # DELETE removes an ended task
    assert not os.path.exists(os.path.join(root, task_id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead (reaped by init later)
        return handle.read().split(") ")[-1][0] != "Z"


def test_ended_tasks_and_refused_uploads_are_removed_after_the_retention_time(tmp_path):
    root = tmp_path / "tracks"
    old, recent, refused = (root / name for name in ("0" * 16, "1" * 16, "2" * 16))
    for folder in (old, recent, refused):
        folder.mkdir(parents=True)
        (folder / "media").write_bytes(b"x" * 1024)
    for folder in (old, recent):
        (folder / "task.json").write_text(json.dumps({"kind": "image", "frames": 1, "first_frame": 1}))
        (folder / OUTCOME).write_text(json.dumps({"status": "done"}))
    two_days = time.time() - 48 * 3600
    os.utime(old / OUTCOME, (two_days, two_days))
    TrackingTasks(str(root), limits=TrackingLimits(keep_hours=24))
    assert sorted(os.listdir(root)) == ["1" * 16]
