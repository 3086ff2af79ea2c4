"""A port taken by another program (``python -m http.server``) is named as such, with the process,
by ``flamediff serve`` (before it writes a token), by the add-on's client (not "HTTP 404 File not
found") and by ``flamediff doctor``; "Start locally" moves to a free port by itself."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from extension_repo.flamediff.blender_addon import backend_job, render_job
from extension_repo.flamediff.blender_addon.backend_client import FOREIGN, BackendClient, BackendError
from flamediff.formats.ports import free_port, port_holder, port_is_free


@pytest.fixture(scope="module")
def other_program():
    """``python -m http.server PORT`` on loopback: the port's holder, not a flamediff backend."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while port_is_free(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.kill()
        process.wait()


def test_the_holder_of_a_busy_port_is_found(other_program):
    port, pid = other_program
    assert not port_is_free(port) and port_is_free(free_port())
    holder = port_holder(port)
    if sys.platform.startswith("linux"):
        assert holder is not None and holder.startswith(f"pid {pid}: ") and "http.server" in holder, holder


def test_serve_refuses_a_busy_port_by_name_before_writing_a_token(other_program, tmp_path):
    from flamediff.cli import build_parser
    from flamediff.errors import FlamediffError

    port, pid = other_program
    token = tmp_path / "token"
    args = build_parser().parse_args(["serve", "--port", str(port), "--token-file", str(token), "--device", "cpu"])
    with pytest.raises(FlamediffError, match=f"port {port} is used by another program") as refused:
        args.func(args)
    assert "--port " in str(refused.value) and not token.exists()
    if sys.platform.startswith("linux"):
        assert f"pid {pid}" in str(refused.value)


def test_the_addon_names_another_program_on_the_port_not_an_http_404(other_program, tmp_path):
    port, pid = other_program
    token = tmp_path / "token"
    token.write_text("t" * 32)
    client = BackendClient(f"http://127.0.0.1:{port}", str(token))
    with pytest.raises(BackendError) as caught:
        client.health()
    error = caught.value
    assert error.status == FOREIGN and "is not a flamediff backend (it answered HTTP 404" in error.message
    assert f"port {port} is used by another program" in error.message and "another port" in error.advice
    if sys.platform.startswith("linux"):
        assert f"pid {pid}" in error.message


def test_start_locally_moves_to_a_free_port_when_another_program_has_it(other_program, tmp_path):
    port, _ = other_program
    token = tmp_path / "token"
    token.write_text("t" * 32)
    class Process:
        def __init__(self):
            self.starts = []

        def running(self):
            return None if not self.starts else object()

        def start(self, python, chosen, device, token_file):
            self.starts.append(chosen)

        def exit_code(self):
            return None

        def last_log_line(self):
            return ""

        def log_path(self):
            return "log"

    class Host:
        key, state = "Scene", {}

        def alive(self):
            return True

        def show(self, **state):
            self.state.update(state)

        def status_bar(self, text):
            pass

        def display_path(self, path):
            return path

    animation = tmp_path / "a.npz"
    animation.write_bytes(b"npz")
    local = {"python": sys.executable, "port": port, "device": "cpu", "token_file": str(token), "pick_free_port": True}
    client = BackendClient(f"http://127.0.0.1:{port}", str(token), timeout=3.0)
    process = Process()
    job = render_job.RenderJob(Host(), client, "ref.png", str(animation), {}, [1], local, process=process)
    backend_job.start(job)
    starts = process.starts
    try:
        assert job.step()
        assert len(starts) == 1 and starts[0] != port and client.url == f"http://127.0.0.1:{starts[0]}"
        assert f"Starting the local backend on port {starts[0]} (port {port} is used by another program" in \
            Host.state["message"]
    finally:
        backend_job.forget_all()
    off = render_job.RenderJob(Host(), BackendClient(f"http://127.0.0.1:{port}", str(token)), "ref.png",
                               str(animation), {}, [1], {**local, "pick_free_port": False}, process=Process())
    backend_job.start(off)
    assert off.step() is False and off.outcome == "error" and "is not a flamediff backend" in off.error
