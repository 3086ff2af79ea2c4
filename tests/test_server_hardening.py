"""Hostile and malformed input (issue 15): one test per numbered finding. Every answer is a 4xx
``{error, advice}`` (the TestClient re-raises any server exception, so a 500 fails loudly), and
what a request costs is bounded before the work starts."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from test_server_helpers import TOKEN, animation_bytes, assert_error, make_checkpoint, png_bytes, wait_for

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from flamediff.formats.animation import (AnimationFormatError, AnimationTooLarge, ReadLimits,  # noqa: E402
                                       read_npz)
from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.inputs import InputError, InputLimits, parse_settings  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = {"steps": 2, "frames_per_batch": 2}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("hardening")
    folders = {name: str(base / name) for name in ("models", "jobs", "allowed", "outside", "no-shipped")}
    for name, folder in folders.items():
        if name != "jobs":  # the store creates it (0700)
            os.makedirs(folder, exist_ok=True)
    return folders


@pytest.fixture(scope="module")
def client(roots, head_asset, head_folder):
    make_checkpoint(os.path.join(roots["models"], "tiny"), head_asset)
    limits = InputLimits(max_frames_per_job=6, animation=ReadLimits(max_bytes=4 << 20, max_frames=8))
    service = build_service(roots["jobs"], roots["models"], "cpu", shipped_dir=roots["no-shipped"], limits=limits,
                            allow_paths=[roots["allowed"]])
    with TestClient(create_app(service, TOKEN)) as test_client:
        test_client.service = service
        yield test_client


@pytest.fixture(scope="module")
def inputs(head_asset) -> dict[str, bytes]:
    return {"reference": png_bytes(), "animation": animation_bytes(head_asset, num_frames=4)}


def submit(client, inputs, settings=None, animation=None, reference=None):
    files = {"reference": ("r.png", inputs["reference"] if reference is None else reference),
             "animation": ("a.npz", inputs["animation"] if animation is None else animation)}
    return client.post("/v1/jobs", files=files, data={"settings": json.dumps(settings or {})}, headers=AUTH)


def npz(members: dict[str, bytes]) -> bytes:
    """An ``.npz`` from raw ``.npy`` member bytes (headers may lie)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name[:-4]: archive.read(name) for name in archive.namelist()}


def with_header(head_asset, **changes) -> bytes:
    """The demo animation with its JSON header fields replaced (``header=`` replaces it all)."""
    members = members_of(animation_bytes(head_asset, 4))
    header = json.loads(np.load(io.BytesIO(members["header"])).tobytes())
    text = changes.pop("raw", None)
    header.update(changes)
    raw = np.frombuffer((text if text is not None else json.dumps(header)).encode(), np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, raw)
    members["header"] = buffer.getvalue()
    return npz(members)


# -- 1: zip bombs are refused from the member headers, before decompressing ----------------------

def zip_bomb(head_asset, megabytes: int = 64) -> bytes:
    """The demo animation whose 'expression' holds ``megabytes`` MiB of zeros (about 1/1000 of that zipped)."""
    members = members_of(animation_bytes(head_asset, 4))
    columns = (megabytes << 20) // 8 // 4
    members["expression"] = npy_header((4, columns)) + bytes(4 * columns * 8)
    return npz(members)


def test_1_zip_bomb_is_refused_before_it_is_decompressed(client, inputs, head_asset):
    bomb = zip_bomb(head_asset)
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        assert_error(submit(client, inputs, FAST, animation=bomb), 413, "'expression' declares", "limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak >> 20} MiB while refusing a 64 MiB bomb"


def test_1_npz_members_are_checked_from_their_headers(tmp_path):
    limits = ReadLimits(max_bytes=1 << 20, max_frames=10, max_members=3)
    ok = {"a": npy_header((2, 3)) + np.arange(6, dtype="<f8").tobytes()}
    np.testing.assert_array_equal(read_npz(io.BytesIO(npz(ok)), limits)["a"], np.arange(6).reshape(2, 3))
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    np.testing.assert_array_equal(read_npz(io.BytesIO(npz({"f": fortran.getvalue()})))["f"], np.arange(6.0).reshape(2, 3))
    cases = [({"s": npy_header((2,), "<U4") + b"\0" * 32}, AnimationFormatError, "numeric"),
             ({"a": npy_header((11, 3))}, AnimationTooLarge, "11 frames"),
             ({"a": npy_header((10_000_000_000, 0))}, AnimationTooLarge, "frames"),
             ({"a": npy_header((4, 1 << 20))}, AnimationTooLarge, "bytes"),
             ({"a": npy_header((2, 3)) + b"\0" * 8}, AnimationFormatError, "truncated"),
             ({str(i): npy_header((1,)) + b"\0" * 8 for i in range(4)}, AnimationTooLarge, "arrays"),
             ({"a": npy_header((1, 2, 2, 2))}, AnimationFormatError, "rank")]
    for members, error, words in cases:
        with pytest.raises(error, match=words):
            read_npz(io.BytesIO(npz(members)), limits)
    with pytest.raises(AnimationFormatError, match="not a readable"):
        read_npz(io.BytesIO(b"\x93NUMPY not a zip"), limits)


# -- 2: frame ranges are counted, not expanded -----------------------------------------------------

def test_2_frame_range_amplification_is_refused_before_expanding():
    spec = ",".join(f"{i * 100001}-{i * 100001 + 100000}" for i in range(200))
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as caught:
            parse_settings({"frames": spec}, max_frames=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413 and "20000200 frames" in caught.value.error
    assert peak < 1 << 20
    assert parse_settings({"frames": "5-7,1,6-9,-2"}).frames == [-2, 1, 5, 6, 7, 8, 9]


# -- 3: malformed animation headers, settings and paths are 4xx, never 500 -----------------------

@pytest.mark.parametrize("case", ["header-list", "fps-text", "fps-null", "image-size-int", "image-size-text",
                                  "asset-text", "asset-hash-int", "extra-int", "npy-not-npz", "deep-header",
                                  "80-gb-array", "2e9-by-0"])
def test_3_malformed_animation_is_a_4xx(client, inputs, head_asset, case):
    deep = "[" * 100_000 + "]" * 100_000
    animation = {
        "header-list": lambda: with_header(head_asset, raw="[1, 2]"),
        "fps-text": lambda: with_header(head_asset, fps="abc"),
        "fps-null": lambda: with_header(head_asset, fps=None),
        "image-size-int": lambda: with_header(head_asset, image_size=5),
        "image-size-text": lambda: with_header(head_asset, image_size=["a", "b"]),
        "asset-text": lambda: with_header(head_asset, flame_asset="x"),
        "asset-hash-int": lambda: with_header(head_asset, flame_asset={"hash": 12345}),
        "extra-int": lambda: with_header(head_asset, extra=5),
        "npy-not-npz": lambda: npy_header((3,)) + bytes(24),
        "deep-header": lambda: with_header(head_asset, raw=deep),
        "80-gb-array": lambda: npz({**members_of(inputs["animation"]), "expression": npy_header((4, 2_500_000_000))}),
        "2e9-by-0": lambda: npz({**members_of(inputs["animation"]), "expression": npy_header((2_000_000_000, 0))}),
    }[case]()
    response = submit(client, inputs, FAST, animation=animation)
    assert response.status_code in (413, 422), response.text
    assert set(response.json()) == {"error", "advice"}


def test_3_deep_settings_and_special_files_are_a_4xx(client, inputs):
    deep = "[" * 100_000 + "]" * 100_000
    files = {"reference": ("r.png", inputs["reference"]), "animation": ("a.npz", inputs["animation"])}
    assert_error(client.post("/v1/jobs", headers=AUTH, data={"settings": deep}, files=files), 400, "nested")
    assert_error(client.post("/v1/jobs", headers={**AUTH, "content-type": "application/json"}, content=deep),
                 400, "nested")
    assert_error(client.post("/v1/jobs", headers=AUTH, json={"reference_path": "/proc/self/mem",
                                                             "animation_path": "/proc/self/mem"}), 403, "outside")
    assert_error(client.post("/v1/jobs", headers=AUTH, json={"reference_path": "/a\0b", "animation_path": "/x"}),
                 422, "file path")


# -- 4: local paths only under --allow-path; checkpoints only from known folders; no paths shown --

def test_4_local_paths_only_under_allowed_roots(client, inputs, roots, tmp_path):
    allowed, outside = roots["allowed"], roots["outside"]
    for folder in (allowed, outside):
        with open(os.path.join(folder, "ref.png"), "wb") as handle:
            handle.write(inputs["reference"])
        with open(os.path.join(folder, "anim.npz"), "wb") as handle:
            handle.write(inputs["animation"])
    link = os.path.join(allowed, "escape.png")
    if not os.path.lexists(link):
        os.symlink(os.path.join(outside, "ref.png"), link)

    def post(reference, animation):
        return client.post("/v1/jobs", headers=AUTH, json={"reference_path": reference, "animation_path": animation,
                                                            "settings": FAST})

    existing = post(os.path.join(outside, "ref.png"), os.path.join(outside, "anim.npz"))
    missing = post(os.path.join(outside, "nope.png"), os.path.join(outside, "anim.npz"))
    assert_error(existing, 403, "outside")
    assert existing.json() == missing.json()  # no oracle for what exists outside the roots
    assert post(link, os.path.join(allowed, "anim.npz")).json() == existing.json()  # symlinks are resolved
    assert post("/etc/passwd", "/etc/passwd").json() == existing.json()
    assert_error(post(os.path.join(allowed, "nope.png"), os.path.join(allowed, "anim.npz")), 422, "not found")
    accepted = post(os.path.join(allowed, "ref.png"), os.path.join(allowed, "anim.npz"))
    assert accepted.status_code == 201, accepted.text
    client.delete(f"/v1/jobs/{accepted.json()['id']}", headers=AUTH)

    no_roots = build_service(str(tmp_path / "jobs"), roots["models"], "cpu", shipped_dir=roots["no-shipped"])
    with TestClient(create_app(no_roots, TOKEN, start_worker=False)) as other:
        response = other.post("/v1/jobs", headers=AUTH, json={"reference_path": os.path.join(allowed, "ref.png"),
                                                              "animation_path": os.path.join(allowed, "anim.npz")})
        assert_error(response, 403, "outside")
        assert "--allow-path" in response.json()["advice"]


def test_4_checkpoints_only_from_the_models_folder_or_allowed_roots(client, inputs, roots):
    tiny = os.path.join(roots["models"], "tiny")
    elsewhere = os.path.join(roots["outside"], "ckpt")
    if not os.path.isdir(elsewhere):
        import shutil
        shutil.copytree(tiny, elsewhere)
    existing = submit(client, inputs, {**FAST, "checkpoint": elsewhere})
    missing = submit(client, inputs, {**FAST, "checkpoint": elsewhere + "-missing"})
    assert_error(existing, 422, "outside")
    assert existing.json() == missing.json()
    assert_error(submit(client, inputs, {**FAST, "checkpoint": "/"}), 422, "outside")
    by_folder = submit(client, inputs, {**FAST, "checkpoint": tiny, "frames": "1"})  # the models folder is allowed
    assert by_folder.status_code == 201, by_folder.text
    client.delete(f"/v1/jobs/{by_folder.json()['id']}", headers=AUTH)


def test_4_models_show_paths_only_to_local_clients(client):
    remote = client.get("/v1/models", headers=AUTH).json()["models"]  # TestClient's peer is 'testclient'
    assert remote and all("path" not in model for model in remote)
    local = TestClient(client.app, client=("127.0.0.1", 50000))  # no 'with': the app's lifespan already runs
    listed = local.get("/v1/models", headers=AUTH).json()["models"]
    assert all(os.path.isabs(model["path"]) for model in listed)


# -- 5: image size > 0, integer frame numbers ------------------------------------------------------

def test_5_image_size_and_frame_numbers(client, inputs, head_asset):
    assert_error(submit(client, inputs, FAST, animation=with_header(head_asset, image_size=[0, 0])), 422,
                 "image_size")
    members = members_of(inputs["animation"])
    for frames, ok in ((np.array([1.5, 2.5, 3.5, 4.5]), False), (np.array([1.0, 2.0, 3.0, 4.0]), True)):
        buffer = io.BytesIO()
        np.save(buffer, frames)
        response = submit(client, inputs, {**FAST, "frames": "1"}, animation=npz({**members, "frame": buffer.getvalue()}))
        if ok:
            assert response.status_code in (200, 201), response.text
            client.delete(f"/v1/jobs/{response.json()['id']}", headers=AUTH)
        else:
            assert_error(response, 422, "whole frame numbers")
    assert_error(submit(client, inputs, {**FAST, "frames": [1.0, 2.0]}), 422, "frame list")


# -- 6: frames per file and per job are capped -----------------------------------------------------

def test_6_frames_per_file_and_per_job(client, inputs, head_asset):
    assert_error(submit(client, inputs, FAST, animation=animation_bytes(head_asset, 9)), 413, "9 frames")
    seven = animation_bytes(head_asset, 7)
    assert_error(submit(client, inputs, FAST, animation=seven), 413, "7 frames", "6 per job")
    assert_error(submit(client, inputs, {**FAST, "frames": "1-7"}, animation=seven), 413, "7 frames")
    assert_error(submit(client, inputs, {**FAST, "frames": list(range(1, 8))}, animation=seven), 413, "7 frames")
    accepted = submit(client, inputs, {**FAST, "frames": "2-7", "seed": 1}, animation=seven)
    assert accepted.status_code == 201, accepted.text
    client.delete(f"/v1/jobs/{accepted.json()['id']}", headers=AUTH)


# -- 7: a cancel is on disk before it is acknowledged ---------------------------------------------

def test_7_cancel_survives_a_crash_right_after_it(roots, inputs, head_folder, tmp_path):
    from flamediff.server.service import check_request

    service = build_service(str(tmp_path / "jobs"), roots["models"], "cpu", shipped_dir=roots["no-shipped"])
    checked = check_request(inputs["reference"], inputs["animation"], FAST, service.registry, service.renderer)
    folder, manifest, _ = service.store.create_or_reuse(checked)
    folder.update(status="running", phase="rendering")
    service.worker.current = manifest["id"]  # as if the worker were rendering it
    assert service.cancel(manifest["id"])["cancel"] == "cancelling"
    # kill -9 now: the manifest still says 'running'; a restarted server must not resume it
    restarted = build_service(str(tmp_path / "jobs"), roots["models"], "cpu", shipped_dir=roots["no-shipped"])
    assert restarted.resume_unfinished() == []
    assert restarted.status(manifest["id"])["status"] == "cancelled"
    assert not restarted.worker.is_active(manifest["id"])
    view, created = restarted.submit(inputs["reference"], inputs["animation"], FAST)  # an explicit re-submit renders
    assert not created and view["status"] == "queued" and not restarted.store.get(manifest["id"]).cancel_requested()


# -- 8: a corrupt manifest fails its job; an identical re-submission starts clean -----------------

def test_8_corrupt_manifest(client, inputs):
    settings = {**FAST, "frames": "1", "seed": 8}
    job = submit(client, inputs, settings).json()
    view = wait_for(lambda: (lambda v: v if v["status"] == "done" else None)(
        client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()), 120, what="the job")
    folder = client.service.store.get(job["id"])
    with open(folder.manifest_path, "w") as handle:
        handle.write('{"id": "tru')
    status = client.get(f"/v1/jobs/{job['id']}", headers=AUTH)
    assert status.status_code == 200 and status.json()["status"] == "failed"
    assert "corrupt" in status.json()["error"] and "submit the same job again" in status.json()["advice"]
    assert client.delete(f"/v1/jobs/{job['id']}", headers=AUTH).json()["status"] == "failed"
    assert_error(client.get(f"/v1/jobs/{job['id']}/frames/1", headers=AUTH), 404, "not part")
    assert job["id"] in [j["id"] for j in client.get("/v1/jobs", headers=AUTH).json()["jobs"]]
    again = submit(client, inputs, settings)
    assert again.status_code == 201 and again.json()["id"] == job["id"], again.text
    view = wait_for(lambda: (lambda v: v if v["status"] == "done" else None)(
        client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()), 120, what="the job again")
    assert view["frames_done"] == 1


# -- 9: ids match in full; the per-id cache does not grow with queries ----------------------------

def test_9_job_ids_fullmatch_and_bounded_cache(client):
    import gc

    store = client.service.store
    with pytest.raises(InputError):
        store.folder("0123456789abcdef\n")
    assert_error(client.get("/v1/jobs/0123456789abcdef%0A", headers=AUTH), 404, "not a job id")
    for number in range(300):
        client.get(f"/v1/jobs/{number:016x}", headers=AUTH)
    gc.collect()
    assert len(store._folders) < 20  # noqa: SLF001


# -- 10: private folders and files ------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="POSIX modes; on Windows the profile's ACLs keep jobs private")
def test_10_job_folders_0700_and_files_0600(client, inputs, roots):
    job = submit(client, inputs, {**FAST, "frames": "1", "seed": 10}).json()
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["status"] == "done", 120, what="job")
    folder = client.service.store.get(job["id"]).path
    modes = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            modes[os.path.relpath(os.path.join(base, name), folder)] = stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and stat.S_IMODE(os.stat(roots["jobs"]).st_mode) == 0o700
    assert {modes[name] for name in ("inputs", "control")} == {0o700}
    assert {mode for name, mode in modes.items() if name not in ("inputs", "control")} == {0o600}, modes
    assert {"manifest.json", "frame_0001.png", "inputs/reference.png", "inputs/animation.npz"} <= set(modes)


def test_10_portable_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    """The render lock (filelock: flock here, msvcrt on Windows) refuses a second holder and is
    free again once its holder is killed."""
    from flamediff.server.files import LockBusy, exclusive_lock, write_atomic

    path = str(tmp_path / ".render.lock")
    with exclusive_lock(path):
        with pytest.raises(LockBusy):
            with exclusive_lock(path):
                pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from flamediff.server.files import exclusive_lock\n"
                               f"with exclusive_lock({path!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy):
            with exclusive_lock(path):
                pass
    finally:
        holder.kill()
        holder.wait(10)
    with exclusive_lock(path):
        pass
    write_atomic(str(tmp_path / "f"), b"x")
    if os.name == "posix":
        assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


# -- 12: OpenAPI bodies and errors, 405 Allow, Host check ------------------------------------------

def test_12_openapi_describes_bodies_and_errors(client):
    document = client.get("/openapi.json", headers=AUTH).json()
    post = document["paths"]["/v1/jobs"]["post"]
    assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"reference", "animation", "settings"} <= set(post["requestBody"]["content"]["multipart/form-data"]
                                                         ["schema"]["properties"])
    assert {"400", "401", "403", "409", "413", "415", "422"} <= set(post["responses"])
    assert "JobSettings" in document["components"]["schemas"]
    assert document["components"]["schemas"]["JobSettings"]["additionalProperties"] is False
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert {"400", "401"} <= set(operation["responses"]), (method, path)


def test_12_method_not_allowed_carries_allow(client):
    response = client.put("/v1/health", headers=AUTH)
    assert_error(response, 405)
    assert response.headers["allow"] == "GET"


def test_12_host_header_is_checked_on_loopback(roots):
    from flamediff.server.security import loopback_hosts

    service = build_service(roots["jobs"], roots["models"], "cpu", shipped_dir=roots["no-shipped"])
    app = create_app(service, TOKEN, start_worker=False, allowed_hosts=loopback_hosts("127.0.0.1"))
    for base, status in (("http://127.0.0.1:8765", 200), ("http://localhost", 200), ("http://[::1]:8765", 200),
                         ("http://evil.example:8765", 400), ("http://127.0.0.1.evil.example", 400)):
        with TestClient(app, base_url=base) as test_client:
            assert test_client.get("/v1/health", headers=AUTH).status_code == status, base
    with TestClient(app, base_url="http://evil.example") as test_client:
        assert_error(test_client.get("/v1/health"), 400, "host")  # before the token


def test_12_serve_wires_allow_paths_limits_and_host_check(tmp_path, monkeypatch, head_folder):
    import argparse

    import uvicorn

    import flamediff.server.app as app_module
    from flamediff.server.cli import register_cli
    from flamediff.server.inputs import TrackingLimits
    from flamediff.server.security import GuardMiddleware

    apps, configs, made = [], [], []
    real_create_app = app_module.create_app

    def create_app(service, token, **options):  # what serve passes, kept
        made.append((service, options))
        return real_create_app(service, token, **options)

    monkeypatch.setattr(app_module, "create_app", create_app)

    def run(server, sockets=None):  # serve builds the server; the test only looks at it
        configs.append(server.config)
        apps.append(server.config.app)
        for sock in sockets or ():
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    common = ["serve", "--device", "cpu", "--render-in", "thread", "--jobs-dir", str(tmp_path / "jobs"),
              "--models-dir", str(tmp_path / "models"), "--token-file", str(tmp_path / "token"), "--port", "0",
              "--header-timeout", "3", "--max-connections", "7", "--body-timeout", "4", "--max-folder-frames", "6",
              "--max-track-frames", "8", "--max-track-seconds", "9", "--track-time-budget", "10",
              "--keep-tracks-hours", "11"]
    for extra in (["--allow-path", str(tmp_path), "--allow-path", "/srv", "--max-frames-per-job", "5"],
                  ["--host", "0.0.0.0", "--allow-remote"]):
        args = parser.parse_args(common + extra)
        assert args.func(args) == 0
    local, remote = (next(m for m in app.user_middleware if m.cls is GuardMiddleware).kwargs for app in apps)
    assert "localhost" in local["allowed_hosts"] and remote["allowed_hosts"] is None
    assert configs[0].http.limits.header_timeout == 3 and configs[0].http.limits.max_connections == 7
    service, options = made[0]
    assert options["body_timeout"] == 4 and service.limits.max_folder_frames == 6
    assert options["tracking"] == TrackingLimits(max_frames=8, max_seconds_of_video=9, time_budget_s=10, keep_hours=11)


def test_12_protocol_md_lists_every_serve_option_and_limit():
    """PROTOCOL.md's usage block names every ``serve`` option with its default, and every option
    that is a number is a row of its Limits table."""
    import argparse

    from flamediff.server.cli import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    serve = parser.parse_args(["serve"])
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]._actions  # noqa: SLF001
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "backend", "server", "PROTOCOL.md")) as handle:
        text = handle.read()
    usage = text[text.index("flamediff serve ["):text.index("```", text.index("flamediff serve ["))]
    limits = text[text.index("### Limits"):text.index("## Routes")]
    numbers = []
    for action in actions:
        option = next((o for o in action.option_strings if o.startswith("--")), None)
        if option in (None, "--help"):
            continue
        assert f"[{option}" in usage, option
        default = getattr(serve, action.dest)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and option != "--port":
            assert f"[{option} {default:g}]" in usage, (option, default)
            assert f"`{option}`" in limits, option
            numbers.append(option)
    assert {"--max-animation-mb", "--header-timeout", "--keep-tracks-hours"} <= set(numbers), numbers


# -- 13: the CLI prints one line, never a traceback ------------------------------------------------

def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from flamediff.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("content", [b"dataset: [unclosed", b"\xff\xfe\x00binary", b"dataset: {a: 1}\noutput_dir: x\n",
                                     b"dataset: x\noutput_dir: [1]\n"])
def test_13_train_config_errors_are_one_line(tmp_path, capsys, content):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    code, err = _cli(["train", "--config", str(config)], capsys)
    assert code == 2 and err.startswith("flamediff train: error:") and "\n" not in err, err


def test_13_render_errors_are_one_line(tmp_path, capsys, inputs, head_asset, head_folder):
    (tmp_path / "ref.png").write_bytes(inputs["reference"])
    (tmp_path / "bad.npz").write_bytes(with_header(head_asset, fps="abc"))
    (tmp_path / "anim.npz").write_bytes(inputs["animation"])
    (tmp_path / "shape.txt").write_text("not numbers")
    base = ["render", "--reference", str(tmp_path / "ref.png"), "--device", "cpu",
            "--models-dir", str(tmp_path / "no-models"), "--steps", "1"]
    for extra, words in ((["--animation", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o1")], "fps"),
                         (["--animation", str(tmp_path / "anim.npz"), "--out", str(tmp_path / "o2"), "--shape-from",
                           "reference", "--reference-shape", str(tmp_path / "missing.npy")], "reference-shape"),
                         (["--animation", str(tmp_path / "anim.npz"), "--out", str(tmp_path / "o3"), "--shape-from",
                           "reference", "--reference-shape", str(tmp_path / "shape.txt")], "reference-shape")):
        code, err = _cli(base + extra, capsys)
        assert code == 2 and err.startswith("flamediff render: error:") and "\n" not in err, err
        assert words in err, err


def test_13_render_out_under_a_file_is_one_line(tmp_path, capsys, inputs, head_asset, head_folder):
    from flamediff.server.jobs import JobFolder

    (tmp_path / "ref.png").write_bytes(inputs["reference"])
    (tmp_path / "anim.npz").write_bytes(inputs["animation"])
    (tmp_path / "file").write_text("x")
    make_checkpoint(str(tmp_path / "models" / "tiny"), head_asset)
    code, err = _cli(["render", "--reference", str(tmp_path / "ref.png"), "--animation", str(tmp_path / "anim.npz"),
                      "--out", str(tmp_path / "file" / "x"), "--device", "cpu", "--models-dir",
                      str(tmp_path / "models"), "--steps", "1"], capsys)
    assert code == 2 and err.startswith("flamediff render: error: cannot use") and "\n" not in err, err
    assert not JobFolder(str(tmp_path / "file" / "x")).exists()


def test_tracker_uploads_are_converted_and_bounded(client, inputs, tmp_path):
    """Issue 13 through the server: a tracker's file (here a DECA codedict npz) is read by the
    shared import layer, stored as a flamediff animation, and its notes say what happened; a
    malicious pickle never runs; a zip declaring too much is refused before decompressing."""
    import pickle

    rng = np.random.default_rng(0)
    code = {"shape": rng.normal(0, 0.2, (4, 100)), "exp": rng.normal(0, 0.2, (4, 50)),
            "pose": rng.normal(0, 0.1, (4, 6)), "cam": np.c_[np.full(4, 9.0), np.zeros((4, 2))],
            "light": np.zeros((4, 9, 3)), "tex": np.zeros((4, 50))}
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.astype(np.float32) for k, v in code.items()})
    response = submit(client, inputs, FAST, animation=buffer.getvalue())
    assert response.status_code == 201, response.text
    notes = " ".join(response.json()["notes"])
    assert "DECA" in notes and "dropped" in notes and "light" in notes
    client.delete(f"/v1/jobs/{response.json()['id']}", headers=AUTH)

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    assert_error(submit(client, inputs, FAST, animation=pickle.dumps({"exp": Exploit()})), 422, "tracker")
    assert not marker.exists()

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("exp.npy", b"\0" * (8 << 20))        # 8 MiB of zeros, over this server's 4 MiB
    assert_error(submit(client, inputs, FAST, animation=bomb.getvalue()), 413, "unpacks to more than")


def _zipped(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """A zip of ``files`` (name -> bytes) as a user's archiver writes a folder; ``links`` are symlinks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _flame_param_folder(frames: int = 4, widths: dict[str, int] | None = None) -> dict[str, bytes]:
    """VHAP's export flame_param/<timestep>.npz files (a leading 1 per array) and an image beside them."""
    rng = np.random.default_rng(3)
    files = {"capture/images/00000_00.png": png_bytes()}
    for ti in range(frames):
        width = (widths or {}).get(str(ti), 100)
        arrays = {"rotation": rng.normal(0, 0.1, (1, 3)), "translation": np.zeros((1, 3)),
                  "neck_pose": np.zeros((1, 3)), "jaw_pose": rng.normal(0, 0.1, (1, 3)), "eyes_pose": np.zeros((1, 6)),
                  "shape": rng.normal(0, 0.5, 300), "expr": rng.normal(0, 0.5, (1, width))}
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v.astype(np.float32) for k, v in arrays.items()})
        files[f"capture/flame_param/{ti:05d}.npz"] = buffer.getvalue()
    return files


def test_zipped_tracker_folders_are_read_within_caps(client, inputs):
    """Issue 13: a zipped per-frame tracker folder is read by the shared layer (images skipped);
    too many members, unsafe names, links and mismatched frames are 4xx with advice."""
    response = submit(client, inputs, FAST, animation=_zipped(_flame_param_folder()))
    assert response.status_code == 201, response.text
    notes = " ".join(response.json()["notes"])
    assert "VHAP export" in notes and "4 frames" in notes and "default portrait camera" in notes
    client.delete(f"/v1/jobs/{response.json()['id']}", headers=AUTH)
    emoca = {}  # gdl_apps/EMOCA/utils/io.py save_codes: <out>/<frame>_<detection>/shape.npy, exp.npy, pose.npy ...
    for frame in range(3):
        for name, width in (("shape", 100), ("exp", 50), ("pose", 6), ("tex", 50), ("detail", 128)):
            buffer = io.BytesIO()
            np.save(buffer, np.full(width, 0.01 * frame, np.float32))
            emoca[f"emoca_out/{frame:06d}_000/{name}.npy"] = buffer.getvalue()
    response = submit(client, inputs, FAST, animation=_zipped(emoca))
    assert response.status_code == 201, response.text
    assert "EMOCA --save_codes output (3 frames)" in " ".join(response.json()["notes"])
    client.delete(f"/v1/jobs/{response.json()['id']}", headers=AUTH)
    crowded = {f"capture/flame_param/{i:05d}.npz": b"" for i in range(8 * 8 + 17)}  # this server: 8 frames
    assert_error(submit(client, inputs, FAST, animation=_zipped(crowded)), 413, "81 files, more than 80")
    for name in ("../../evil.npz", "/tmp/evil.npz", "capture/../../evil.npz"):
        files = {**_flame_param_folder(2), name: b"x"}
        assert_error(submit(client, inputs, FAST, animation=_zipped(files)), 422, "points outside it")
    files = _flame_param_folder(2)
    files["capture/flame_param/00009.npz"] = b"/etc/passwd"
    assert_error(submit(client, inputs, FAST, animation=_zipped(files, links=("capture/flame_param/00009.npz",))),
                 422, "link")
    mismatched = _zipped(_flame_param_folder(3, widths={"1": 50}))
    assert_error(submit(client, inputs, FAST, animation=mismatched), 422, "tracker folder", "00001.npz", "'expr'")
    assert_error(submit(client, inputs, FAST, animation=_zipped({"capture/notes.md": b"hi"})), 422,
                 "no tracker files")
