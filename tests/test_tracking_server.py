"""Tracking through the server (issue 17): ``POST /v1/tracks`` runs ``flamediff track`` on an
uploaded photo or video in a child process; status, animation, cancel, one task at a time, and
one-line {error, advice} answers for bad uploads."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="the tracking extra (pip install 'flamediff[tracking]')")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from test_server_helpers import TOKEN  # noqa: E402

from flamediff.formats.animation import load_animation  # noqa: E402
from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path, head_folder):
    service = build_service(str(tmp_path / "jobs"), str(tmp_path / "models"), "cpu",
                            shipped_dir=str(tmp_path / "no-shipped"))
    with TestClient(create_app(service, TOKEN, start_worker=False), headers=AUTH) as test_client:
        yield test_client


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _wait(client: TestClient, task_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = client.get(f"/v1/tracks/{task_id}").json()
        if view["status"] != "running" or time.monotonic() > deadline:
            return view
        time.sleep(0.5)


def test_photo_is_tracked_into_an_animation_file(client, tmp_path):
    import skimage.data
    answer = client.post("/v1/tracks", files={"media": ("face.png", _png(skimage.data.astronaut()))},
                         data={"first_frame": "1001"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["kind"] == "image" and answer.json()["frames"] == 1
    view = _wait(client, answer.json()["id"])
    assert view["status"] == "done", view
    assert client.get(f"/v1/tracks/{view['id']}/animation").status_code == 200
    path = tmp_path / "tracked.npz"
    path.write_bytes(client.get(f"/v1/tracks/{view['id']}/animation").content)
    clip = load_animation(str(path))
    assert clip.has_camera and list(clip.frame) == [1001] and clip.image_size == (512, 512)


def test_faceless_photo_fails_with_the_trackers_message(client):
    answer = client.post("/v1/tracks", files={"media": ("wall.png", _png(np.full((128, 128, 3), 120, np.uint8)))})
    view = _wait(client, answer.json()["id"])
    assert view["status"] == "failed" and "MediaPipe found no face" in view["error"], view
    assert os.sep + "tracks" + os.sep not in view["error"] and "/tmp" not in view["error"], view  # no server paths


def test_one_task_at_a_time_and_cancel(client):
    photo = _png(np.full((64, 64, 3), 90, np.uint8))
    first = client.post("/v1/tracks", files={"media": ("a.png", photo)}).json()
    busy = client.post("/v1/tracks", files={"media": ("b.png", photo)})
    assert busy.status_code == 409 and "cancel" in busy.json()["advice"]
    assert client.delete(f"/v1/tracks/{first['id']}").json()["status"] == "cancelled"
    assert client.get(f"/v1/tracks/{first['id']}/animation").status_code == 404
    assert client.post("/v1/tracks", files={"media": ("b.png", photo)}).status_code == 201


def test_bad_uploads_get_error_and_advice(client):
    cases = [(client.post("/v1/tracks", files={"media": ("x.mp4", b"not a video at all")}), 415, "photo"),
             (client.post("/v1/tracks", files={"other": ("o.txt", b"x")}), 400, "media"),
             (client.post("/v1/tracks", data={"first_frame": "1"}), 415, "multipart"),
             (client.post("/v1/tracks", files={"media": ("x.png", b"x")}, data={"first_frame": "one"}), 422, "first_frame"),
             (client.get("/v1/tracks/0123456789abcdef"), 404, "POST /v1/tracks"),
             (client.get("/v1/tracks/..%2F..%2Fetc"), 404, "")]
    for answer, status, words in cases:
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert set(body) == {"error", "advice"} and words in body["error"] + body["advice"], body
