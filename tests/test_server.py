"""The job service over HTTP (FastAPI TestClient): auth, every error path, rendering, re-submit,
cancel, OOM retry, failures; and ``flamediff render`` in-process with a resumable rerun."""

from __future__ import annotations

import io
import json
import os
import stat
import time

import numpy as np
import pytest

from test_server_helpers import (TOKEN, animation_bytes, assert_error, counting_calls, frame_mtimes, huge_png_header,
                                 image_bytes, make_checkpoint, png_bytes, wait_for)

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = {"steps": 2, "guidance": 2.0, "seed": 3, "frames_per_batch": 2}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, head_asset) -> str:
    root = tmp_path_factory.mktemp("models")
    make_checkpoint(str(root / "tiny"), head_asset)
    make_checkpoint(str(root / "other-asset"), head_asset, field=False,
                    flame_asset={"name": "FLAME2023", "hash": "ab" * 32})
    return str(root)


@pytest.fixture(scope="module")
def inputs(head_asset) -> dict[str, bytes]:
    return {"reference": png_bytes(), "animation": animation_bytes(head_asset, num_frames=4)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir, head_folder):
    service = build_service(str(tmp_path_factory.mktemp("jobs")), models_dir, "cpu",
                            shipped_dir=str(tmp_path_factory.mktemp("no-shipped")),
                            allow_paths=[str(tmp_path_factory.getbasetemp())])
    with TestClient(create_app(service, TOKEN, max_body_bytes=8 * 1024 * 1024)) as client:
        client.service = service
        yield client


def submit(client, inputs, settings=None, reference=None, animation=None, filename="reference.png"):
    files = {"reference": (filename, reference if reference is not None else inputs["reference"], "image/png"),
             "animation": ("anim.npz", animation if animation is not None else inputs["animation"],
                           "application/octet-stream")}
    return client.post("/v1/jobs", files=files, data={"settings": json.dumps(settings or {})}, headers=AUTH)


def wait_status(client, job_id, statuses=("done", "failed", "cancelled"), timeout=60.0):
    return wait_for(lambda: (lambda view: view if view["status"] in statuses else None)(
        client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()), timeout, what=f"job {job_id} in {statuses}")


# -- auth and discovery ------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
@pytest.mark.parametrize("route", ["/v1/health", "/v1/models", "/v1/jobs/0123456789abcdef", "/docs", "/openapi.json"])
def test_every_route_needs_the_token(server, headers, route):
    response = server.get(route, headers=headers)
    assert response.status_code == 401
    assert "token" in response.json()["error"]


def test_token_is_checked_before_the_body_is_read(server, inputs):
    response = server.post("/v1/jobs", files={"reference": ("r.png", inputs["reference"])})
    assert response.status_code == 401


def test_checkpoint_file_names_agree_with_the_model():
    from flamediff.models import flamediff_model
    from flamediff.server import checkpoints

    assert (checkpoints.CONFIG_NAME, checkpoints.WEIGHTS_NAME) == (flamediff_model.CONFIG_NAME,
                                                                     flamediff_model.WEIGHTS_NAME)


def test_checkpoints_from_shipped_folder_models_folder_and_hub_cache(tmp_path, models_dir, head_asset):
    import shutil

    from flamediff.server.checkpoints import CheckpointRegistry
    from flamediff.server.inputs import InputError

    shipped = tmp_path / "shipped"
    shutil.copytree(os.path.join(models_dir, "tiny"), shipped / "demo")
    (shipped / "not-a-checkpoint").mkdir()
    snapshot = tmp_path / "hub" / "models--someone--flamediff-tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(os.path.join(models_dir, "tiny"), snapshot)
    (tmp_path / "hub" / "models--someone--flamediff-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--flamediff-tiny" / "refs" / "main").write_text("a" * 40)
    registry = CheckpointRegistry(models_dir, str(shipped), hub_cache_dir=str(tmp_path / "hub"))
    listed = {info.name: info.source for info in registry.list()}
    assert listed == {"demo": "shipped", "tiny": "folder", "other-asset": "folder", "someone/flamediff-tiny": "hub"}
    assert registry.resolve(None, head_asset.content_hash).name == "demo"  # the shipped demo is the default
    assert registry.resolve("someone/flamediff-tiny").path == str(snapshot)
    assert registry.resolve(str(shipped / "demo")).source == "shipped"
    with pytest.raises(InputError, match="not a flamediff checkpoint"):
        registry.resolve(str(shipped / "not-a-checkpoint"))
    empty = CheckpointRegistry(str(tmp_path / "none"), str(tmp_path / "none"), hub_cache_dir=str(tmp_path / "none"))
    with pytest.raises(InputError, match="no checkpoint is available"):
        empty.resolve(None, head_asset.content_hash)


def test_health_and_models(server, head_asset):
    health = server.get("/v1/health", headers=AUTH).json()
    assert health["protocol_version"] == 1 and health["device"] == "cpu"
    assert health["flame_asset"] == {"name": head_asset.name, "hash": head_asset.content_hash}
    assert isinstance(health["queue_length"], int)
    models = {m["name"]: m for m in server.get("/v1/models", headers=AUTH).json()["models"]}
    assert models["tiny"]["source"] == "folder" and models["tiny"]["matches_flame_asset"]
    assert models["tiny"]["resolution"] == 32
    assert not models["other-asset"]["matches_flame_asset"]
    assert "/v1/jobs" in server.get("/openapi.json", headers=AUTH).json()["paths"]


# -- a job end to end, re-submit, frames -------------------------------------------------------

def test_render_then_identical_resubmit_renders_nothing(server, inputs):
    from PIL import Image

    response = submit(server, inputs, {**FAST, "checkpoint": "tiny"}, filename="../../escape.png")
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["created"] and len(job["id"]) == 16 and job["frames"] == [1, 2, 3, 4]
    view = wait_status(server, job["id"])
    assert view["status"] == "done", view
    assert view["progress"] == 1.0 and view["frames_done"] == 4 and view["settings"]["seed"] == 3
    folder = server.service.store.get(job["id"]).path
    assert sorted(os.listdir(os.path.join(folder, "inputs"))) == ["animation.npz", "reference.png"]
    assert not os.path.exists(os.path.join(os.path.dirname(folder), "escape.png"))
    for frame in (1, 4):
        for kind in ("frames", "control"):
            png = server.get(f"/v1/jobs/{job['id']}/{kind}/{frame}", headers=AUTH)
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(png.content))
            assert image.size == (48, 48) and image.mode == "RGBA"  # head framing: the camera's image size
    before = frame_mtimes(folder)
    assert len(before) == 4

    again = submit(server, inputs, {**FAST, "checkpoint": "tiny", "frames_per_batch": 1})
    assert again.status_code == 200 and again.json()["id"] == job["id"] and not again.json()["created"]
    assert again.json()["status"] == "done"
    time.sleep(0.3)
    assert frame_mtimes(folder) == before

    os.remove(os.path.join(folder, "frame_0002.png"))  # a lost frame: the same job renders only it
    submit(server, inputs, {**FAST, "checkpoint": "tiny"})
    assert wait_status(server, job["id"])["status"] == "done"
    after = frame_mtimes(folder)
    assert {k: v for k, v in after.items() if k != "frame_0002.png"} == \
        {k: v for k, v in before.items() if k != "frame_0002.png"}
    assert "frame_0002.png" in after

    listed = server.get("/v1/jobs", headers=AUTH).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_local_paths_and_frame_subset(server, inputs, tmp_path):
    (tmp_path / "ref.png").write_bytes(inputs["reference"])
    (tmp_path / "anim.npz").write_bytes(inputs["animation"])
    body = {"reference_path": str(tmp_path / "ref.png"), "animation_path": str(tmp_path / "anim.npz"),
            "settings": {**FAST, "frames": "2-3"}}
    response = server.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    view = wait_status(server, response.json()["id"])
    assert view["status"] == "done" and view["frames"] == [2, 3] and view["settings"]["checkpoint"] == "tiny"
    assert_error(server.get(f"/v1/jobs/{view['id']}/frames/1", headers=AUTH), 404, "not part")


def test_preview_is_another_job_with_half_size_frames(server, inputs):
    from PIL import Image

    from flamediff.server.inputs import JobSettings

    assert "preview" not in JobSettings().hashed()  # full renders keep their ids from before previews

    settings = {**FAST, "frames": "1-2", "seed": 31, "steps": 0, "framing": "camera"}  # frames at model size
    full = submit(server, inputs, settings).json()
    preview = submit(server, inputs, {**settings, "preview": True}).json()
    assert preview["id"] != full["id"] and preview["settings"]["preview"] and not full["settings"]["preview"]
    views = {name: wait_status(server, job["id"]) for name, job in (("full", full), ("preview", preview))}
    assert views["preview"]["status"] == views["full"]["status"] == "done"
    assert views["preview"]["resolution"] == 16 and views["full"]["resolution"] == 32
    assert views["preview"]["steps"] == 4 and views["full"]["steps"] == 25  # tiny's default, capped for a preview
    assert views["preview"]["precision"] == views["full"]["precision"] == "fp32"  # auto on the CPU
    for frame in (1, 2):
        png = server.get(f"/v1/jobs/{preview['id']}/frames/{frame}", headers=AUTH)
        assert Image.open(io.BytesIO(png.content)).size == (16, 16)


def test_precision_reaches_the_render_process(tmp_path, models_dir, inputs, head_folder):
    """serve's --precision travels to the render child process and into the job view."""
    from flamediff.errors import FlamediffError
    from flamediff.server.renderers import InProcessRenderer

    with pytest.raises(FlamediffError, match="--precision must be one of"):
        InProcessRenderer("cpu", precision="fp16")
    service = build_service(str(tmp_path / "jobs"), models_dir, "cpu", render_in="process", precision="bf16",
                            shipped_dir=str(tmp_path / "no-shipped"))
    with TestClient(create_app(service, TOKEN)) as client:
        job = submit(client, inputs, {**FAST, "frames": "1", "preview": True}).json()
        view = wait_status(client, job["id"], timeout=120)
        client.post("/v1/release", headers=AUTH)
    assert view["status"] == "done" and view["precision"] == "bf16" and view["resolution"] == 16, view


# -- bad input: 4xx naming the problem, and the server keeps serving ---------------------------

def _nan(arrays):
    arrays["expression"][1, 0] = np.nan


def _other_asset(arrays):
    header = json.loads(bytes(arrays["header"]).decode())
    header["flame_asset"] = {"name": "FLAME2020", "hash": "cd" * 32}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def _no_camera(arrays):
    for key in ("K", "R", "t"):
        arrays.pop(key)


@pytest.mark.parametrize("case", ["garbage-animation", "nan", "wrong-asset-animation", "no-camera",
                                  "unreadable-image", "truncated-image", "tiff-image", "bmp-image", "huge-image",
                                  "empty-image", "unknown-checkpoint",
                                  "checkpoint-for-other-asset", "frames-not-in-clip", "bad-frames", "unknown-setting",
                                  "bad-steps", "nan-guidance", "bad-json", "resolution", "shape-from-reference",
                                  "bad-preview"])
def test_bad_input_is_a_4xx_naming_the_problem(server, inputs, head_asset, case):
    animation, reference, settings = None, None, dict(FAST)
    expected: tuple = ()
    if case == "garbage-animation":
        animation, expected = b"this is not an npz", (422, "malformed animation")
    elif case == "nan":
        animation, expected = animation_bytes(head_asset, 4, _nan), (422, "NaN")
    elif case == "wrong-asset-animation":
        animation, expected = animation_bytes(head_asset, 4, _other_asset), (409, "FLAME2020")
    elif case == "no-camera":
        animation, expected = animation_bytes(head_asset, 4, _no_camera), (422, "camera")
    elif case == "unreadable-image":
        reference, expected = b"GIF89a-not-really", (415, "not a PNG, JPEG or WebP")
    elif case == "truncated-image":
        reference, expected = inputs["reference"][:200], (422, "could not be decoded")
    elif case in ("tiff-image", "bmp-image"):  # item 11: exactly the protocol's formats
        reference, expected = image_bytes(case.split("-")[0].upper()), (415, "not a PNG, JPEG or WebP")
    elif case == "huge-image":
        reference, expected = huge_png_header(), (413, "more than the 80 MP that can be decoded safely")
    elif case == "empty-image":
        reference, expected = b"", (400, "empty")
    elif case == "unknown-checkpoint":
        settings["checkpoint"], expected = "nope", (422, "unknown checkpoint 'nope'")
    elif case == "checkpoint-for-other-asset":
        settings["checkpoint"], expected = "other-asset", (409, "FLAME2023")
    elif case == "frames-not-in-clip":
        settings["frames"], expected = "3-9", (422, "not in the animation")
    elif case == "bad-frames":
        settings["frames"], expected = "one-two", (422, "not a frame list")
    elif case == "unknown-setting":
        settings["stepz"], expected = 3, (422, "unknown settings")
    elif case == "bad-steps":
        settings["steps"], expected = -1, (422, "steps")
    elif case == "nan-guidance":
        settings["guidance"], expected = "nan", (422, "guidance")
    elif case == "bad-json":
        response = server.post("/v1/jobs", headers=AUTH, data={"settings": "{not json"},
                               files={"reference": ("r.png", inputs["reference"]), "animation": ("a", inputs["animation"])})
        assert_error(response, 400, "not valid JSON")
        return
    elif case == "resolution":
        settings["resolution"], expected = 512, (422, "32 px")
    elif case == "shape-from-reference":
        settings["shape_from"], expected = "reference", (422, "fits the reference photo")  # noise: no face
    elif case == "bad-preview":
        settings["preview"], expected = "yes", (422, "preview")
    assert_error(submit(server, inputs, settings, reference=reference, animation=animation), *expected)
    assert server.get("/v1/health", headers=AUTH).status_code == 200


def test_request_shape_errors(server, inputs):
    assert_error(server.post("/v1/jobs", headers=AUTH, content=b"x"), 415, "content type")
    assert_error(server.post("/v1/jobs", headers=AUTH, files={"reference": ("r.png", inputs["reference"])}),
                 400, "'animation'")
    assert_error(server.post("/v1/jobs", headers=AUTH, json={"reference_path": "ref.png", "animation_path": "/x"}),
                 422, "relative")
    assert_error(server.post("/v1/jobs", headers=AUTH, json={"reference_path": "/x", "settings": [1]}),
                 422, "settings must be")
    assert_error(server.post("/v1/jobs", headers=AUTH, json={"reference_path": "/x", "extra": 1}), 422, "unknown")
    assert_error(server.post("/v1/jobs", headers=AUTH, json=[1]), 400, "object")
    assert_error(server.post("/v1/jobs", headers=AUTH, files={"reference": ("r.png", inputs["reference"]),
                                                             "animation": ("a", inputs["animation"]),
                                                             "settings": ("s.json", b"{}")}), 400, "files")
    assert_error(server.post("/v1/jobs", headers=AUTH, json={"reference_path": "/nonexistent/ref.png",
                                                             "animation_path": "/x"}), 403, "outside")
    big = b"\0" * (9 * 1024 * 1024)
    assert_error(submit(server, inputs, FAST, reference=big), 413, "larger than")
    for job_id in ("..%2F..%2Fetc", "0123456789abcdef", "ZZZZ"):
        assert server.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404
    assert_error(server.get("/v1/nothing", headers=AUTH), 404, "not found")


# -- cancel, release ---------------------------------------------------------------------------

def test_cancel_takes_effect_within_a_denoising_step(server, inputs):
    response = submit(server, inputs, {**FAST, "steps": 200, "frames_per_batch": 1, "seed": 99})
    job_id = response.json()["id"]
    queued = submit(server, inputs, {**FAST, "seed": 98}).json()["id"]
    wait_for(lambda: server.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["phase"] == "rendering", 60,
             what="rendering")
    assert server.delete(f"/v1/jobs/{queued}", headers=AUTH).json()["cancel"] == "cancelled"
    assert server.get(f"/v1/jobs/{queued}", headers=AUTH).json()["status"] == "cancelled"
    asked = time.monotonic()
    assert server.delete(f"/v1/jobs/{job_id}", headers=AUTH).json()["cancel"] == "cancelling"
    view = wait_status(server, job_id, timeout=20)
    assert view["status"] == "cancelled" and view["advice"]
    assert time.monotonic() - asked < 10
    assert server.get("/v1/health", headers=AUTH).json()["queue_length"] == 0


def test_resubmitting_right_after_cancel_waits_for_the_old_render_and_starts(server, inputs):
    """Cancel, then submit the same job while its render winds down: the answer is 'queued', no poll
    ever says 'cancelled', and the job renders to the end with the frames it had kept."""
    settings = {**FAST, "steps": 30, "frames_per_batch": 1, "seed": 77}
    job_id = submit(server, inputs, settings).json()["id"]
    wait_for(lambda: server.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["phase"] == "rendering", 60,
             what="rendering")
    assert server.delete(f"/v1/jobs/{job_id}", headers=AUTH).json()["cancel"] == "cancelling"
    again = submit(server, inputs, settings)
    assert again.status_code in (200, 201) and again.json()["id"] == job_id
    assert again.json()["status"] == "queued", again.json()
    seen = []

    def final():
        view = server.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        seen.append(view["status"])
        return view if view["status"] in ("done", "failed", "cancelled") else None

    view = wait_for(final, 120, what="the resubmitted job to end")
    assert view["status"] == "done" and view["frames_done"] == 4, view
    assert "cancelled" not in seen, seen


def test_release_frees_the_model(server, inputs):
    submit(server, inputs, {**FAST, "checkpoint": "tiny"})  # identical to a finished job: nothing to load
    released = server.post("/v1/release", headers=AUTH).json()
    assert isinstance(released["released"], bool)
    assert server.get("/v1/health", headers=AUTH).json()["loaded_model"] is None


# -- worker: OOM retry, failures ---------------------------------------------------------------

class _OutOfMemoryRenderer:
    """Stands in for InProcessRenderer: a pipeline that runs out of memory above one frame per batch."""

    def __init__(self, real, fail_with=None):
        self.real, self.fail_with, self.calls = real, fail_with, []

    def pipeline(self, checkpoint):
        import types

        import torch

        real = self.real.pipeline(checkpoint)

        def stream(reference, clip, settings, **kwargs):
            self.calls.append(settings.frames_per_batch)
            if self.fail_with is not None:
                raise self.fail_with
            if settings.frames_per_batch > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real.stream(reference, clip, settings, **kwargs)
        return types.SimpleNamespace(stream=stream, resolved_steps=real.resolved_steps, resolution=real.resolution,
                                     dtype=real.dtype, frames_to_render=real.frames_to_render,
                                     resolved_guidance=real.resolved_guidance, model=real.model)


def test_out_of_memory_retries_with_smaller_batches(server, inputs):
    from flamediff.server.jobs import JobFolder
    from flamediff.server.service import check_request
    from flamediff.server.job_execution import render_job

    service = server.service
    checked = check_request(inputs["reference"], inputs["animation"], {**FAST, "frames_per_batch": 4, "seed": 5,
                                                                       "frames": "1-2"},
                            service.registry, service.renderer)
    folder, _, _ = service.store.create_or_reuse(checked)
    fake = _OutOfMemoryRenderer(service.renderer)
    assert render_job(folder, fake) == "done"
    manifest = folder.read()
    assert fake.calls == [2, 1] and manifest["oom_retries"] == 1 and manifest["frames_per_batch_used"] == 1
    assert any("out of memory" in note for note in manifest["notes"])
    assert manifest["frames_done"] == 2

    failing = JobFolder(folder.path)
    for name in os.listdir(failing.path):
        if name.startswith("frame_"):
            os.remove(os.path.join(failing.path, name))
    assert render_job(failing, _OutOfMemoryRenderer(service.renderer, fail_with=RuntimeError("boom"))) == "failed"
    manifest = failing.read()
    assert manifest["status"] == "failed" and "boom" in manifest["error"] and "missing" in manifest["advice"]


def test_one_reference_pass_per_job_and_cancel_keeps_written_frames(server, inputs):
    """4 chunks of 1 frame in one pipeline call: the ReferenceNet runs once. A cancel once frame 1
    is written keeps it and the rerun renders only the rest. Steps 0 resolve to the checkpoint's."""
    from flamediff.server.service import check_request
    from flamediff.server.job_execution import render_job

    service = server.service
    checked = check_request(inputs["reference"], inputs["animation"],
                            {**FAST, "steps": 0, "frames_per_batch": 1, "seed": 21}, service.registry, service.renderer)
    folder, _, _ = service.store.create_or_reuse(checked)
    reference_unet = service.renderer.pipeline(checked.checkpoint).model.reference_unet
    with counting_calls(reference_unet) as calls:
        status = render_job(folder, service.renderer, should_cancel=lambda: os.path.exists(folder.frame_path(1)))
    assert status == "cancelled" and calls == [1]
    assert folder.done_frames() == [1] and folder.read()["frames_done"] == 1
    kept = frame_mtimes(folder.path)
    with counting_calls(reference_unet) as calls:
        assert render_job(folder, service.renderer) == "done"
    assert calls == [1] and folder.done_frames() == [1, 2, 3, 4]
    assert frame_mtimes(folder.path)["frame_0001.png"] == kept["frame_0001.png"]
    manifest = folder.read()
    assert manifest["settings"]["steps"] == 0 and manifest["steps"] == 25  # the tiny preset's default_steps
    assert server.get(f"/v1/jobs/{manifest['id']}", headers=AUTH).json()["steps"] == 25


# -- security helpers --------------------------------------------------------------------------

def test_token_file_mode_and_loopback(tmp_path):
    import argparse

    from flamediff.errors import FlamediffError
    from flamediff.formats.protocol import is_loopback_host
    from flamediff.server.cli import register_cli
    from flamediff.server.security import read_token_file, write_token_file

    path = str(tmp_path / "sub" / "token")
    token = write_token_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and read_token_file(path) == token and len(token) > 30
    assert write_token_file(path) != token  # a fresh token per start
    assert all(map(is_loopback_host, ("127.0.0.1", "::1", "localhost")))
    assert not any(map(is_loopback_host, ("0.0.0.0", "192.168.1.2", "example.com")))
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--token-file", str(tmp_path / "t2")])
    with pytest.raises(FlamediffError, match="--allow-remote"):
        args.func(args)
    assert not os.path.exists(tmp_path / "t2")


# -- flamediff render without a server ---------------------------------------------------------

def test_render_command_is_resumable(tmp_path, models_dir, inputs, head_folder, capsys):
    import argparse

    from flamediff.server.cli import register_cli

    (tmp_path / "ref.png").write_bytes(inputs["reference"])
    (tmp_path / "anim.npz").write_bytes(inputs["animation"])
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    argv = ["render", "--reference", str(tmp_path / "ref.png"), "--animation", str(tmp_path / "anim.npz"),
            "--out", str(out), "--checkpoint", os.path.join(models_dir, "tiny"), "--steps", "2",
            "--frames", "1-3", "--device", "cpu", "--models-dir", models_dir]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    first = frame_mtimes(str(out))
    assert list(first) == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    assert sorted(os.listdir(out / "control")) == list(first)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["settings"]["seed"] == 0
    assert "3 to render" in capsys.readouterr().out

    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "3 of 3 frames already rendered, 0 to render" in capsys.readouterr().out
    assert frame_mtimes(str(out)) == first

    # the same render with other frames extends the folder's job: only the new frame is rendered
    args = parser.parse_args(argv[:-6] + ["--frames", "2-4", "--device", "cpu", "--models-dir", models_dir])
    assert args.func(args) == 0
    assert "3 of 4 frames already rendered, 1 to render" in capsys.readouterr().out
    assert {name: mtime for name, mtime in frame_mtimes(str(out)).items() if name in first} == first
    alone = tmp_path / "alone"
    args = parser.parse_args(argv[:-6] + ["--out", str(alone), "--frames", "4", "--device", "cpu",
                                          "--models-dir", models_dir])
    assert args.func(args) == 0
    from PIL import Image

    with Image.open(alone / "frame_0004.png") as single, Image.open(out / "frame_0004.png") as extended:
        assert np.array_equal(np.asarray(single), np.asarray(extended))   # the same pixels; the recipes name
        assert single.info["flamediff.job"] != extended.info["flamediff.job"]   # each its own job

    from flamediff.server.inputs import InputError

    args = parser.parse_args(argv[:-4] + ["--seed", "1", "--device", "cpu"])
    with pytest.raises(InputError, match="different job"):
        args.func(args)


def test_render_command_preview_and_precision(tmp_path, models_dir, inputs, head_folder):
    import argparse

    from PIL import Image

    from flamediff.server.cli import register_cli

    (tmp_path / "ref.png").write_bytes(inputs["reference"])
    (tmp_path / "anim.npz").write_bytes(inputs["animation"])
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    assert "--precision" in parser._subparsers._group_actions[0].choices["serve"].format_help()  # noqa: SLF001
    args = parser.parse_args(["render", "--reference", str(tmp_path / "ref.png"), "--animation",
                              str(tmp_path / "anim.npz"), "--out", str(tmp_path / "out"), "--checkpoint",
                              os.path.join(models_dir, "tiny"), "--frames", "1", "--device", "cpu",
                              "--models-dir", models_dir, "--preview", "--precision", "bf16", "--framing", "camera"])
    assert args.func(args) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["preview"] and manifest["precision"] == "bf16" and manifest["steps"] == 4
    with Image.open(tmp_path / "out" / "frame_0001.png") as image:
        assert image.size == (16, 16)


def test_reference_warnings_reach_the_job_and_the_models_list(server, inputs, models_dir):
    """A far-from-square or tiny reference is accepted with a note that says what to do; a
    checkpoint trained only on procedural heads says so in /v1/models and in every job's notes."""
    from flamediff.server.checkpoints import describe
    from flamediff.server.service import reference_notes

    response = submit(server, inputs, {"steps": 1, "frames": "1"}, reference=png_bytes(height=30, width=90))
    assert response.status_code in (200, 201), response.text
    notes = wait_status(server, response.json()["id"])["notes"]
    assert any("90x30 is far from square" in note and "crop the photo" in note for note in notes)
    assert any("only 30 px on its short side" in note for note in notes)
    square = submit(server, inputs, {"steps": 1, "frames": "1"}, reference=png_bytes(height=80, width=80))
    assert not [note for note in wait_status(server, square.json()["id"])["notes"] if note.startswith("reference:")]
    tiny = describe(os.path.join(models_dir, "tiny"), "tiny", "folder")
    assert tiny.training_domain == ""
    procedural = describe(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backend",
                                       "checkpoints", "demo"), "demo", "shipped")
    assert procedural.training_domain == "procedural"
    photo = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    assert any("only on flamediff's procedural heads" in note for note in reference_notes(photo, procedural))
    listed = {entry["name"]: entry for entry in server.get("/v1/models", headers=AUTH).json()["models"]}
    assert "domain_note" not in listed["tiny"]


def test_a_sideways_phone_photo_reference_renders_upright_and_downsized_with_notes(server, inputs):
    """A 6000x4000 phone photo stored sideways (EXIF orientation 6) is a reference like any other:
    read upright and downsized, said in the job's notes, never refused for its size."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 4000), (150, 110, 90)).save(buffer, format="JPEG", quality=60, exif=exif.tobytes())
    response = submit(server, inputs, {"steps": 1, "frames": "1"}, reference=buffer.getvalue(), filename="phone.jpg")
    assert response.status_code in (200, 201), response.text
    view = wait_status(server, response.json()["id"])
    assert view["status"] == "done", view
    assert "reference: turned upright by its EXIF orientation (6)" in view["notes"]
    assert "reference: 4000x6000 downsized to 1365x2048 (the longest side read is 2048 px)" in view["notes"]


def test_shape_from_reference_without_a_shape_fits_the_reference_photo(server, inputs):
    """A job asking for the reference person's shape without sending it gets the photo's shape
    fitted (the tracking extra) at submit time: the same request gives the same job."""
    pytest.importorskip("mediapipe", reason="the tracking extra")
    import flamediff

    with open(os.path.join(os.path.dirname(flamediff.__file__), "checkpoints", "demo", "reference.png"), "rb") as handle:
        photo = handle.read()
    settings = {**FAST, "frames": "1", "shape_from": "reference"}
    first = submit(server, inputs, settings, reference=photo)
    assert first.status_code == 201, first.text
    view = first.json()
    # the shipped reference's fitted shape reaches |beta| 0.035 (an unfitted one is all zero)
    assert len(view["settings"]["reference_shape"]) == 100 and max(map(abs, view["settings"]["reference_shape"])) > 0.02
    assert any("fitted to the reference photo" in note for note in view["notes"])
    assert submit(server, inputs, settings, reference=photo).json()["id"] == view["id"]
    assert wait_status(server, view["id"])["status"] == "done"
