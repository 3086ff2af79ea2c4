"""The add-on's render job state machine, driven as plain Python (no Blender): a scripted backend
client and a recording host stand in for the HTTP backend and the scene. The add-on is the one
installed from the built zip (tests/conftest.py), and it imports as Blender has it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from extension_repo.flamediff.backend.formats.protocol import JOB_SETTINGS, setting
from extension_repo.flamediff.blender_addon import backend_job, render_job
from extension_repo.flamediff.blender_addon.backend_client import BackendError

REFUSED = BackendError("the flamediff backend is not running at http://127.0.0.1:1 (connection refused)",
                       "start it with 'flamediff serve'")


class ScriptedClient:
    """Answers like ``BackendClient``: ``health`` raises the queued errors first, ``job`` returns the
    queued views in turn, a frame exists once ``rendered`` holds it."""

    url = "http://127.0.0.1:1"

    def __init__(self, views: list[dict] | None = None, health_errors: list[BackendError] | None = None) -> None:
        self.views, self.health_errors = list(views or []), list(health_errors or [])
        self.rendered: set[int] = set()
        self.calls: list[str] = []
        self.submitted: dict = {}

    def health(self) -> dict:
        self.calls.append("health")
        if self.health_errors:
            raise self.health_errors.pop(0)
        return {"protocol_version": 1}

    def submit(self, reference: str, animation: str, settings: dict) -> dict:
        self.calls.append("submit")
        self.submitted = settings
        return {"id": "0123456789abcdef", "status": "queued", "settings": settings,
                "notes": ["reference: only 40 px on its short side; use a larger photo"]}

    def job(self, job_id: str) -> dict:
        self.calls.append("job")
        view = self.views.pop(0) if len(self.views) > 1 else self.views[0]
        if isinstance(view, BackendError):
            raise view
        self.rendered |= set(view.get("rendered", ()))
        return view

    def fetch_frame(self, job_id: str, frame: int, path: str) -> str:
        if frame not in self.rendered:
            raise BackendError(f"frame {frame} is not rendered yet", "", 404)
        with open(path, "wb") as handle:
            handle.write(b"png")
        return path

    def cancel(self, job_id: str) -> dict:
        self.calls.append("cancel")
        return {"status": "cancelled"}


class RecordingHost:
    """A scene: records the state shown, the strips drawn and the status bar."""

    def __init__(self, folder: str, key: str = "Scene") -> None:
        self.key, self.folder, self.exists = key, folder, True
        self.state: dict = {}
        self.strips: list[tuple[str, list[int], str | None]] = []
        self.bar: str | None = "untouched"

    def alive(self) -> bool:
        return self.exists

    def show(self, **state) -> None:
        self.state.update(state)

    def output_folder(self, job_id: str) -> str:
        return os.path.join(self.folder, job_id)

    def display_path(self, path: str) -> str:
        return "//" + os.path.basename(path)

    def frames_landed(self, folder: str, frames: list[int], latest: str | None) -> None:
        self.strips.append((folder, list(frames), latest))

    def status_bar(self, text: str | None) -> None:
        self.bar = text


class FakeProcess:
    """The "Start locally" backend process: never answers, exits after ``lives`` checks."""

    def __init__(self, lives: int = 0, port_answers: bool = False) -> None:
        self.lives, self.starts, self.port_answers = lives, [], port_answers

    def running(self):
        self.lives -= 1
        return object() if self.lives >= 0 else None

    def start(self, python_preference: str, port: int, device: str, token_file: str):
        self.starts.append((python_preference, port, device, token_file))

    def exit_code(self) -> int | None:
        return 1

    def last_log_line(self) -> str:
        return "OSError: [Errno 98] Address already in use"

    def log_path(self) -> str:
        return "/tmp/serve.log"

    def answers_on(self, port: int) -> bool:
        return self.port_answers


def make_job(tmp_path, client, frames=(1, 2, 3), local=None,
             process=None) -> tuple[render_job.RenderJob, RecordingHost]:
    animation = tmp_path / "export.npz"
    animation.write_bytes(b"npz")
    host = RecordingHost(str(tmp_path / "renders"))
    job = render_job.RenderJob(host, client, str(tmp_path / "ref.png"), str(animation), {"steps": 2, "seed": 4},
                               list(frames), local, **({"process": process} if process else {}))
    backend_job.start(job)
    return job, host


def run(job: render_job.RenderJob, limit: int = 20) -> int:
    steps = 1
    while job.step():
        steps += 1
        assert steps < limit, "the job never ended"
    return steps


def test_a_job_submits_fetches_frames_as_they_land_and_ends_done(tmp_path) -> None:
    client = ScriptedClient([{"status": "running", "frames_done": 1, "progress": 0.3, "eta_s": 65, "rendered": [1]},
                             {"status": "done", "frames_done": 3, "progress": 1.0, "steps": 2, "rendered": [1, 2, 3]}])
    job, host = make_job(tmp_path, client)
    assert job.step() and host.state["status"] == "running" and host.state["frames_done"] == 1
    assert "frame 2 of 3 (30%, ETA 1:05)" in host.bar
    assert host.strips[-1][2].endswith("frame_0001.png")   # the newest frame shown, frame 2 not there yet
    assert not job.step()
    assert job.outcome == "done" and backend_job.active_job("Scene") is None
    folder = os.path.join(str(tmp_path / "renders"), "0123456789abcdef")
    assert sorted(os.listdir(folder)) == ["frame_0001.png", "frame_0002.png", "frame_0003.png", "settings.json"]
    assert host.state["message"] == "Rendered 3 frames into //0123456789abcdef" and host.bar is None
    record = json.loads(open(os.path.join(folder, "settings.json")).read())
    assert record["requested_settings"] == {"steps": 2, "seed": 4} and record["status"] == "done"
    assert not os.path.exists(job.animation)  # the exported temp file is removed
    assert client.calls[:2] == ["health", "submit"]
    assert job.notes == ["reference: only 40 px on its short side; use a larger photo"]   # the backend's warnings
    assert host.state["notes"] == job.notes[0]                                          # reach the Render panel


def test_frames_already_in_the_folder_are_not_fetched_again(tmp_path) -> None:
    folder = tmp_path / "renders" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "frame_0002.png").write_bytes(b"kept")
    client = ScriptedClient([{"status": "done", "frames_done": 3, "rendered": [1, 3]}])
    job, host = make_job(tmp_path, client)
    assert job.step() is False and job.outcome == "done"
    assert (folder / "frame_0002.png").read_bytes() == b"kept" and host.strips[0] == (str(folder), [1, 2, 3], None)


def test_a_backend_that_is_down_is_an_error_with_advice(tmp_path) -> None:
    job, host = make_job(tmp_path, ScriptedClient(health_errors=[REFUSED]))
    assert job.step() is False
    assert job.outcome == "error" and "connection refused" in job.error and "flamediff serve" in job.advice
    assert host.state["status"] == "error" and host.state["error"] == job.error


def test_start_locally_starts_the_backend_once_and_reports_its_exit(tmp_path) -> None:
    local = {"python": "/venv/bin/python", "port": 8765, "device": "cpu", "token_file": "/t/token"}
    process = FakeProcess(lives=0)
    job, host = make_job(tmp_path, ScriptedClient(health_errors=[REFUSED] * 3), local=local, process=process)
    assert job.step() and host.state["status"] == "starting"
    assert process.starts == [("/venv/bin/python", 8765, "cpu", "/t/token")]
    assert job.step() is False and job.outcome == "error" and len(process.starts) == 1
    assert "stopped while starting (exit code 1): OSError: [Errno 98] Address already in use" in job.error
    assert "port 8765" in job.advice and "/tmp/serve.log" in job.advice


def test_a_starting_local_backend_is_waited_for(tmp_path) -> None:
    local = {"python": "", "port": 1, "device": "cpu", "token_file": "t"}
    unauthorised = BackendError("the backend refused the access token (401)", "", 401)  # an old token file
    client = ScriptedClient([{"status": "done", "rendered": [1]}], health_errors=[REFUSED, unauthorised])
    job, _ = make_job(tmp_path, client, frames=(1,), local=local, process=FakeProcess(lives=5))
    assert run(job) == 3 and job.outcome == "done"


def test_slow_answers_while_rendering_are_retried_then_failure_is_reported(tmp_path) -> None:
    slow = BackendError("the flamediff backend at http://127.0.0.1:1 did not answer within 3 s", "try again")
    client = ScriptedClient([slow, {"status": "failed", "error": "GPU out of memory", "advice": "use fewer frames"}])
    job, host = make_job(tmp_path, client)
    assert job.step() is True and job.phase == "running"  # the slow poll is tolerated
    assert job.step() is False and job.outcome == "failed"
    assert (job.error, job.advice) == ("GPU out of memory", "use fewer frames")
    assert host.state["message"] == "Failed after 0 of 3 frames"


def test_cancel_keeps_the_frames_rendered_so_far(tmp_path) -> None:
    client = ScriptedClient([{"status": "running", "frames_done": 0, "progress": 0.1}])
    job, host = make_job(tmp_path, client)
    assert job.step()
    client.rendered = {1}
    job.cancel("the render did not finish within 5 s", "raise timeout=")
    assert client.calls[-1] == "cancel" and job.outcome == "cancelled"
    assert job.fetched == {1} and host.state["message"] == "Cancelled; 1 of 3 frames kept"
    assert job.error == "the render did not finish within 5 s" and backend_job.active_job("Scene") is None


def test_a_deleted_scene_stops_the_job_being_followed(tmp_path) -> None:
    client = ScriptedClient([{"status": "running", "frames_done": 0}])
    job, host = make_job(tmp_path, client)
    assert job.step()
    host.exists = False
    assert job.step() is False and backend_job.active_job("Scene") is None and client.calls.count("job") == 1


@pytest.mark.parametrize("blocked", [True, False])
def test_the_installed_add_on_imports_as_blender_has_it(blocked: bool, installed_addon: dict, tmp_path) -> None:
    """With bpy unavailable the plain-Python parts of the installed zip import; with it, operators/ and
    ui_panels/ resolve inside the package; nothing comes from the checkout."""
    addon = installed_addon["name"]
    code = ("import sys; sys.modules['bpy'] = None\n"
            f"import {addon}.blender_addon.render_job, {addon}.blender_addon.backend_client\n"
            f"import {addon}.backend.formats.protocol as p\n"
            "print(p.__file__)") if blocked else (
            f"import {addon}.operators as o, {addon}.ui_panels as u, {addon}.blender_addon.render_scene as s\n"
            "print(o.__file__, u.__file__, s.FlamediffRenderProps.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=installed_addon["path"]))
    assert out.returncode == 0, out.stderr[-2000:]
    package = installed_addon["package"]
    if blocked:
        assert out.stdout.strip() == os.path.join(package, "backend", "formats", "protocol.py")
    else:
        assert out.stdout.split()[:2] == [os.path.join(package, "operators", "__init__.py"),
                                          os.path.join(package, "ui_panels", "__init__.py")]


def test_the_render_panel_and_operator_offer_the_protocol_settings(installed_addon: dict, tmp_path) -> None:
    """Each job setting the Render panel and ``flamediff.render`` expose has the protocol's label,
    default, bounds and choices (the server's request model is checked against it in
    test_server_seams.py), and the operator sends every panel setting."""
    addon = installed_addon["name"]
    code = (f"import json, {addon}.blender_addon.render_scene as s, {addon}.operators.render_ops as r\n"
            f"import {addon}.blender_addon.render_inputs as i\n"
            "def props(cls, module):\n"
            "    return {name: eval(text, vars(module)).keywords for name, text in cls.__annotations__.items()}\n"
            "print(json.dumps({'panel': props(s.FlamediffRenderProps, s), 'rig': props(s.FlamediffRigSettings, s),\n"
            "                  'operator': props(r.FLAMEDIFF_OT_render, r), 'sent': i.PANEL_SETTINGS},\n"
            "                 default=sorted))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=installed_addon["path"]))
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout)

    names = {entry.name for entry in JOB_SETTINGS}
    offered = [(where, name, keywords) for where in ("panel", "rig", "operator")
               for name, keywords in found[where].items() if name in names and name != "reference_shape"]
    assert {name for _, name, _ in offered} >= {"steps", "guidance", "seed", "checkpoint", "preview", "shape_from"}
    for where, name, keywords in offered:
        entry = setting(name)
        default = "" if entry.default is None else entry.default  # Blender strings: "" means the backend's default
        assert (keywords["name"], keywords["default"]) == (entry.label, default), (where, name)
        if entry.kind in ("int", "float"):
            assert (keywords["min"], keywords["max"]) == (entry.minimum, entry.maximum), (where, name)
        if entry.kind == "choice":
            assert [tuple(item) for item in keywords["items"]] == list(entry.choices), (where, name)
    panel = {name for name in found["panel"] if name in names}
    assert panel - {"checkpoint"} == set(found["sent"])  # the checkpoint is sent only when one is named


def test_a_cancelled_render_is_followed_while_it_winds_down_and_counted_as_the_backend_counts(tmp_path) -> None:
    """Esc while the backend still finishes frames: the panel says Cancelling, the job is polled
    until the backend says cancelled, and the message counts the frames the backend kept (3), not
    the ones fetched before the cancel (1)."""
    client = ScriptedClient([{"status": "running", "frames_done": 1, "progress": 0.3, "rendered": [1]}])
    job, host = make_job(tmp_path, client)
    assert job.step()
    client.cancel = lambda job_id: {"status": "running", "cancel": "cancelling", "frames_done": 1}
    job.cancel()
    assert job.phase == "cancelling" and host.state["status"] == "cancelling"
    assert backend_job.active_job("Scene") is job
    client.views = [{"status": "running", "frames_done": 2, "rendered": [1, 2]},
                    {"status": "cancelled", "frames_done": 3, "rendered": [1, 2, 3]}]
    assert job.step()
    assert not job.step()
    assert job.outcome == "cancelled" and host.state["message"] == "Cancelled; 3 of 3 frames kept"
    assert job.fetched == {1, 2, 3} and backend_job.active_job("Scene") is None


def test_render_again_right_after_cancel_waits_for_the_cancelled_render_then_starts(tmp_path) -> None:
    """Cancel, then Render at once (the same job): the new render waits while the backend winds the
    cancelled one down, then submits and renders; it never ends as 'Cancelled; N of M frames kept'."""
    client = ScriptedClient([{"status": "running", "frames_done": 1, "progress": 0.3, "rendered": [1]}])
    old, host = make_job(tmp_path, client)
    assert old.step()
    client.cancel = lambda job_id: {"status": "running", "cancel": "cancelling", "frames_done": 1}
    old.cancel()
    again = tmp_path / "again.npz"
    again.write_bytes(b"npz")
    new = render_job.RenderJob(host, client, str(tmp_path / "ref.png"), str(again), {"steps": 2, "seed": 4},
                               [1, 2, 3])
    backend_job.start(new)
    assert backend_job.active_job("Scene") is new
    client.views = [{"status": "running", "frames_done": 2, "rendered": [1, 2]},
                    {"status": "cancelled", "frames_done": 2, "rendered": [1, 2]},
                    {"status": "queued", "frames_done": 2, "rendered": [1, 2]},
                    {"status": "done", "frames_done": 3, "rendered": [1, 2, 3]}]
    assert new.step() and new.phase == "connecting" and client.calls.count("submit") == 1
    assert host.state["status"] == "queued" and host.state["message"] == "Waiting for the cancelled render to stop"
    run(new)
    assert old.outcome == "cancelled" and old.message == "Cancelled; 2 of 3 frames kept"
    assert client.calls.count("submit") == 2 and new.outcome == "done" and not new.error
    assert host.state["message"].startswith("Rendered 3 frames") and backend_job.active_job("Scene") is None
