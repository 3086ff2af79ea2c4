"""Faults of the job store (issue 27, second table): a full disk during a render and at start,
manifests of valid JSON but wrong types, a folder whose manifest names another job. A full
disk is a real 1 MiB tmpfs where the suite may mount one (as root: CI and this project's
machines), and is also simulated everywhere by making the store's one write call
(``write_atomic``) raise ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from test_server_helpers import TOKEN, animation_bytes, make_checkpoint, png_bytes, wait_for

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import flamediff.server.jobs as jobs  # noqa: E402
from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = {"steps": 2, "frames_per_batch": 1}


@pytest.fixture
def folders(tmp_path, head_asset):
    make_checkpoint(str(tmp_path / "models" / "tiny"), head_asset)
    return {"jobs": str(tmp_path / "jobs"), "models": str(tmp_path / "models"), "none": str(tmp_path / "none")}


def app_for(folders, start_worker: bool = True):
    service = build_service(folders["jobs"], folders["models"], "cpu", shipped_dir=folders["none"])
    return TestClient(create_app(service, TOKEN, start_worker=start_worker))


def submit(client, head_asset, frames: int = 2) -> dict:
    response = client.post("/v1/jobs", headers=AUTH, data={"settings": json.dumps(FAST)},
                           files={"reference": ("r.png", png_bytes()), "animation": ("a.npz",
                                                                                     animation_bytes(head_asset, frames))})
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs) for the jobs folder, unmounted afterwards."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI's machine runs the suite as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield str(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_disk(folder: str, leave: int = 0) -> None:
    """Write a filler file into ``folder`` until at most ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free - leave
    with open(os.path.join(folder, "filler"), "ab") as handle:
        try:
            while free > 0:
                handle.write(b"\0" * min(free, 1 << 16))
                handle.flush()
                free -= 1 << 16
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    assert shutil.disk_usage(folder).free <= max(leave, 0) + 4096


def disk_fills(monkeypatch, after: str = "") -> None:
    """Every store write raises ENOSPC once one whose file name contains ``after`` was tried."""
    real, full = jobs.write_atomic, [after == ""]

    def write_atomic(path, data, sync=False):
        full[0] = full[0] or after in os.path.basename(path)
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, sync)

    monkeypatch.setattr(jobs, "write_atomic", write_atomic)


def test_a_disk_that_fills_during_a_render_fails_the_job_visibly(folders, head_asset, monkeypatch):
    disk_fills(monkeypatch, after="frame_")
    with app_for(folders) as client:
        job = submit(client, head_asset)
        view = wait_for(lambda: (lambda v: v if v["status"] == "failed" else None)(
            client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()), 120, 0.1, "the job to fail")
        assert "disk is full" in view["error"] and "free disk space" in view["advice"], view
        assert client.get("/v1/health", headers=AUTH).json()["queue_length"] == 0
        assert client.get("/v1/jobs", headers=AUTH).json()["jobs"][0]["status"] == "failed"


def test_a_real_disk_that_fills_during_a_render_fails_the_job_visibly(folders, head_asset, small_disk):
    """The jobs folder on a 1 MiB tmpfs with room left for the job's status and a frame or two of
    its eight: the job fails saying the disk is full, the server goes on answering, and a
    submission while the disk is full is a 507 with that advice."""
    folders = {**folders, "jobs": os.path.join(small_disk, "jobs")}
    with app_for(folders, start_worker=False) as client:
        job = submit(client, head_asset, frames=8)
    fill_disk(small_disk, leave=24 << 10)
    with app_for(folders) as client:
        view = wait_for(lambda: (lambda v: v if v["status"] != "queued" and v["status"] != "running" else None)(
            client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()), 120, 0.1, "the job to end")
        assert view["status"] == "failed" and "disk is full" in view["error"], view
        assert "free disk space" in view["advice"] and 1 <= view["frames_done"] < 8, view
        assert client.get(f"/v1/jobs/{job['id']}/frames/1", headers=AUTH).status_code == 200
        leftovers = [name for name in os.listdir(os.path.join(folders["jobs"], job["id"])) if ".tmp-" in name]
        assert not leftovers, leftovers  # a write that failed leaves no partial file holding the space
        assert client.get("/v1/health", headers=AUTH).json()["queue_length"] == 0
        assert client.get("/v1/jobs", headers=AUTH).json()["jobs"][0]["status"] == "failed"
        fill_disk(small_disk)
        again = client.post("/v1/jobs", headers=AUTH, files={"reference": ("r.png", png_bytes(seed=1)),
                                                             "animation": ("a.npz", animation_bytes(head_asset, 2))})
        assert again.status_code == 507 and "free disk space" in again.json()["advice"], again.text


@pytest.mark.parametrize("disk", ["real", "simulated"])
def test_restart_on_a_full_disk_starts_and_keeps_finished_frames_readable(folders, head_asset, disk, request):
    if disk == "real":
        folders = {**folders, "jobs": os.path.join(request.getfixturevalue("small_disk"), "jobs")}
    with app_for(folders, start_worker=False) as client:
        job = submit(client, head_asset)
    folder = os.path.join(folders["jobs"], job["id"])
    shutil.copy(os.path.join(folder, "inputs", "reference.png"), os.path.join(folder, "frame_0001.png"))
    if disk == "real":
        fill_disk(os.path.dirname(folders["jobs"]))
    else:
        disk_fills(request.getfixturevalue("monkeypatch"))
    with app_for(folders) as client:  # its lifespan resumes the unfinished job: writing the manifest fails
        view = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
        assert view["status"] == "failed" and "disk is full" in view["error"], view
        frame = client.get(f"/v1/jobs/{job['id']}/frames/1", headers=AUTH)
        assert frame.status_code == 200 and frame.content.startswith(b"\x89PNG")
        assert client.get("/v1/health", headers=AUTH).status_code == 200


@pytest.mark.parametrize("change", [{"frames": None}, {"frames": ["a"]}, {"frames_total": "x"}, {"checkpoint": "s"},
                                    {"frames": {"1": 1}}, {"status": 7}, {"created": "yesterday"},
                                    {"notes": "x"}, {"id": ["x"]}])
def test_a_manifest_of_wrong_types_reads_as_a_failed_job(folders, head_asset, change):
    with app_for(folders, start_worker=False) as client:
        job = submit(client, head_asset)
    path = os.path.join(folders["jobs"], job["id"], "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    with open(path, "w") as handle:
        json.dump({**manifest, **change}, handle)
    with app_for(folders) as client:  # starts (its lifespan reads every manifest)
        listed = client.get("/v1/jobs", headers=AUTH)
        assert listed.status_code == 200 and listed.json()["jobs"][0]["status"] == "failed", listed.text
        view = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
        assert view["status"] == "failed" and "wrong type" in view["error"] and view["advice"], view
        assert client.get(f"/v1/jobs/{job['id']}/frames/1", headers=AUTH).status_code == 404
    with app_for(folders, start_worker=False) as client:
        again = submit(client, head_asset)  # starts over in its folder
        assert again["id"] == job["id"] and again["status"] == "queued", again


def test_a_folder_whose_manifest_names_another_job_fails_with_advice(folders, head_asset):
    with app_for(folders, start_worker=False) as client:
        job = submit(client, head_asset)
    other = "0123456789abcdef"
    shutil.copytree(os.path.join(folders["jobs"], job["id"]), os.path.join(folders["jobs"], other))
    with app_for(folders) as client:
        view = client.get(f"/v1/jobs/{other}", headers=AUTH).json()
        assert view["status"] == "failed" and job["id"] in view["error"], view
        assert f"rename it back to {job['id']}" in view["advice"], view
        assert client.get("/v1/health", headers=AUTH).json()["queue_length"] <= 1  # only the real one resumes
