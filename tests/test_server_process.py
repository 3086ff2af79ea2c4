"""The real server as a subprocess: health, submit, poll, fetch frames; then SIGKILL mid-job,
restart, and the job completes without re-rendering a finished frame."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from test_server_helpers import animation_bytes, frame_mtimes, make_checkpoint, png_bytes, wait_for

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve_command() -> list[str]:
    """``flamediff serve`` once wired into backend/cli.py, else the same command via backend.server."""
    from flamediff.cli import build_parser

    actions = [a for a in build_parser()._subparsers._group_actions if hasattr(a, "choices")]  # noqa: SLF001
    if any("serve" in (a.choices or {}) for a in actions):
        return [sys.executable, "-m", "flamediff", "serve"]
    return [sys.executable, "-m", "flamediff.server", "serve"]


def render_child(parent: int) -> int:
    """The pid of the server's render process (its child running backend.server.render_process)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        if ppid == parent and b"flamediff.server.render_process" in command:
            return int(name)
    raise AssertionError("no render process found")


def lock_is_free(folder: str) -> bool:
    """True when no process (e.g. an orphaned render process) holds the job's render lock."""
    from flamediff.server.jobs import JobBusy, JobFolder

    try:
        with JobFolder(folder).render_lock():
            return True
    except JobBusy:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, tmp, models_dir):
        self.port, self.tmp, self.models_dir = free_port(), tmp, models_dir
        self.token_file = os.path.join(tmp, "token")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Server":
        command = serve_command() + ["--port", str(self.port), "--device", "cpu", "--jobs-dir",
                                     os.path.join(self.tmp, "jobs"), "--models-dir", self.models_dir,
                                     "--token-file", self.token_file]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.log = open(os.path.join(self.tmp, "server.log"), "ab")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._healthy, 300, 0.2, "the server to answer /v1/health")  # a loaded 2-core box needs minutes
        except AssertionError:
            self.kill()  # never leave a server behind
            raise
        return self

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"server exited: {open(os.path.join(self.tmp, 'server.log')).read()[-3000:]}")
        try:
            return self.get("/v1/health").status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    @property
    def headers(self) -> dict[str, str]:
        with open(self.token_file) as handle:
            return {"Authorization": f"Bearer {handle.read().strip()}"}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=self.headers, timeout=10)

    def submit(self, reference: bytes, animation: bytes, settings: str) -> dict:
        response = httpx.post(f"http://127.0.0.1:{self.port}/v1/jobs", headers=self.headers, timeout=30,
                              files={"reference": ("ref.png", reference), "animation": ("a.npz", animation)},
                              data={"settings": settings})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def wait_done(self, job_id: str, timeout: float = 90) -> dict:
        return wait_for(lambda: (lambda v: v if v["status"] in ("done", "failed", "cancelled") else None)(
            self.get(f"/v1/jobs/{job_id}").json()), timeout, 0.2, f"job {job_id}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.mark.slow
def test_serve_end_to_end_and_resume_after_sigkill(tmp_path, head_asset, head_folder):
    models_dir = str(tmp_path / "models")
    make_checkpoint(os.path.join(models_dir, "tiny"), head_asset)
    reference, animation = png_bytes(), animation_bytes(head_asset, num_frames=4)
    server = Server(str(tmp_path), models_dir).start()
    try:
        assert os.stat(server.token_file).st_mode & 0o077 == 0
        assert httpx.get(f"http://127.0.0.1:{server.port}/v1/health", timeout=10).status_code == 401
        health = server.get("/v1/health").json()
        assert health["protocol_version"] == 1 and health["flame_asset"]["hash"] == head_asset.content_hash
        # the shipped demo checkpoint is listed first; this test renders with its fast tiny one
        assert [m["name"] for m in server.get("/v1/models").json()["models"]] == ["demo", "tiny"]

        job = server.submit(reference, animation, '{"steps": 2, "frames": "1-2", "frames_per_batch": 2, "checkpoint": "tiny"}')
        view = server.wait_done(job["id"])
        assert view["status"] == "done" and view["frames_done"] == 2, view
        for frame in (1, 2):
            png = server.get(f"/v1/jobs/{job['id']}/frames/{frame}")
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert server.get(f"/v1/jobs/{job['id']}/control/1").content.startswith(b"\x89PNG")

        slow = server.submit(reference, animation, '{"steps": 8, "frames_per_batch": 1, "seed": 11, "checkpoint": "tiny"}')
        folder = os.path.join(str(tmp_path), "jobs", slow["id"])

        # the render process dies (a CUDA abort, the OOM killer): the job fails, the server serves on
        wait_for(lambda: server.get(f"/v1/jobs/{slow['id']}").json()["phase"] == "rendering", 60, 0.05, "rendering")
        os.kill(render_child(server.process.pid), signal.SIGKILL)
        view = server.wait_done(slow["id"])
        assert view["status"] == "failed" and "render process died" in view["error"] and view["advice"], view
        assert server.get("/v1/health").json()["queue_length"] == 0
        again = server.submit(reference, animation, '{"steps": 8, "frames_per_batch": 1, "seed": 11, "checkpoint": "tiny"}')
        assert again["id"] == slow["id"] and again["status"] == "queued"
        wait_for(lambda: frame_mtimes(folder), 90, 0.02, "a first frame")
        server.kill()
        finished = frame_mtimes(folder)
        assert 1 <= len(finished) < 4, finished
        wait_for(lambda: lock_is_free(folder), 10, 0.05, "the render process to exit with the server")
    finally:
        server.kill()

    server = Server(str(tmp_path), models_dir).start()  # new port, new token
    try:
        view = server.wait_done(slow["id"])
        assert view["status"] == "done" and view["frames_done"] == 4, view
        after = frame_mtimes(folder)
        assert len(after) == 4
        assert {name: after[name] for name in finished} == finished  # never re-rendered
        again = server.submit(reference, animation, '{"steps": 8, "frames_per_batch": 2, "seed": 11, "checkpoint": "tiny"}')
        assert again["id"] == slow["id"] and not again["created"] and again["status"] == "done"
        assert frame_mtimes(folder) == after
        assert server.get("/v1/health").json()["loaded_model"] == "tiny"
        child = render_child(server.process.pid)
        released = httpx.post(f"http://127.0.0.1:{server.port}/v1/release", headers=server.headers, timeout=30)
        assert released.json()["released"] is True
        assert server.get("/v1/health").json()["loaded_model"] is None
        wait_for(lambda: not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2],
                 10, 0.05, "the render process to end on release")
    finally:
        server.kill()
