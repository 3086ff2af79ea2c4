"""Tracking over HTTP: a photo or a video uploaded to ``POST /v1/tracks`` is fitted by
``flamediff track`` in a child process (a crash or a cancel never touches the server; it dies
with the server, see :mod:`flamediff.server.tracking_child`), one task at a time; the client polls
``GET /v1/tracks/{id}`` and fetches the animation file.

Each task lives in its own private folder inside the server's jobs folder (``<jobs>/tracks/<id>``,
never listed as a job): the upload, the command's progress file, animation, report and error
output, all 0600. The upload passes the render route's image rule first (PNG, JPEG or WebP,
within the one decode limit of :mod:`flamediff.formats.images`), or is a video whose frame count
and duration are read from its container and capped. The child stops itself at the caps the
container could not tell (``flamediff track --max-frames``) and at the task's time budget
(``--time-budget``): it fits the frames done, which the task keeps (``kept`` frames, fetchable)
while failing saying why; a child still running ``stop_grace_s`` past the budget is killed,
keeping nothing. Finished and failed tasks are deleted after the retention time (``serve
--keep-tracks-hours``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from flamediff.formats.images import (MAX_DECODE_PIXELS, ImageFormatError, ImageHeader, check_decodable,
                                      read_image_header)
from flamediff.formats.protocol import REFERENCE_FORMATS
from flamediff.server.files import PRIVATE_FILE, make_private_dir, write_atomic
from flamediff.server.inputs import InputError, TrackingLimits, image_input_error

TASK_ID = re.compile(r"[0-9a-f]{16}")  # always fullmatch: "$" would let a trailing newline through
UPLOAD_FORM = {"multipart/form-data": {"schema": {"type": "object", "required": ["media"], "properties": {
    "media": {"type": "string", "format": "binary", "description": "a photo (PNG, JPEG, WebP) or a video (MP4, MOV, ...)"},
    "first_frame": {"type": "integer", "description": "frame number of the first frame (default 1)"}}}}}
LIMIT_ADVICE = "track a shorter clip (serve's --max-track-frames and --track-time-budget set the limits)"
MEDIA_ADVICE = "upload a photo (PNG, JPEG, WebP) or a video (MP4, MOV, MKV, WebM)"
#: Files that end a task: its outcome is on disk, so a restarted server still knows it.
OUTCOME = "outcome.json"


class TrackingTasks:
    """The tracking tasks of one server: their folders and the running child process."""

    def __init__(self, root: str, flame_asset: str | None = None, limits: TrackingLimits = TrackingLimits()) -> None:
        self.root = os.path.abspath(root)  # created with the first task
        self.flame_asset, self.limits = flame_asset, limits
        self._running: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._interrupted()
        self.clean_up()

    def _folder(self, task_id: str) -> str:
        folder = os.path.join(self.root, task_id)
        if not TASK_ID.fullmatch(task_id) or not os.path.isfile(os.path.join(folder, "task.json")):
            raise InputError(f"no tracking task {task_id[:40]!r}", "submit one with POST /v1/tracks", 404)
        return folder

    def _interrupted(self) -> None:
        """Tasks a previous server left without an outcome were stopped with it (their child died
        with it): they fail, saying so."""
        for task_id in self._task_ids():
            folder = os.path.join(self.root, task_id)
            started = os.path.exists(os.path.join(folder, "task.json"))
            if started and not os.path.exists(os.path.join(folder, OUTCOME)) and not _finished(folder):
                _record(folder, "failed", "the server stopped while this task ran (it was restarted or it crashed)",
                        "submit the photo or video again")

    def _task_ids(self) -> list[str]:
        try:
            return [name for name in os.listdir(self.root) if TASK_ID.fullmatch(name)]
        except OSError:
            return []

    def clean_up(self) -> None:
        """Delete tasks that ended more than ``keep_hours`` ago, and folders of submissions that
        never became a task (refused uploads)."""
        cutoff = time.time() - self.limits.keep_hours * 3600
        for task_id in self._task_ids():
            process = self._running.get(task_id)
            if process is not None and process.poll() is None:
                continue
            folder = os.path.join(self.root, task_id)
            stamps = [os.path.join(folder, name) for name in (OUTCOME, "task.json")]
            stamp = next((path for path in stamps if os.path.exists(path)), None)
            try:
                ended = os.path.getmtime(stamp) if stamp else 0.0
            except OSError:
                continue
            if ended < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                self._running.pop(task_id, None)

    def submit(self, media: bytes, first_frame: int) -> dict[str, Any]:
        """Check the upload is an accepted photo or a video within the caps, store it (0600) and
        start ``flamediff track`` on it."""
        from flamediff.tracking.landmarks import TrackingError
        from flamediff.tracking.media import open_footage

        photo = _photo_header(media)
        with self._lock:
            if any(process.poll() is None for process in self._running.values()):
                raise InputError("a tracking task is running", "wait for it or cancel it (DELETE /v1/tracks/{id})", 409)
            self.clean_up()
            task_id = secrets.token_hex(8)
            folder = make_private_dir(os.path.join(make_private_dir(self.root), task_id))
            media_path = os.path.join(folder, "media")
            try:
                write_atomic(media_path, media)
                footage = open_footage(media_path, count_frames=False)
            except TrackingError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise InputError(_unreadable(str(exc), folder), MEDIA_ADVICE, 415) from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            if photo is None:
                self._check_video(footage, folder)
            command = [sys.executable, "-m", "flamediff.server.tracking_child", str(os.getpid()), media_path,
                       "--out", os.path.join(folder, "anim.npz"), "--first-frame", str(first_frame), "--quiet",
                       "--progress-file", os.path.join(folder, "progress.json"),
                       "--max-frames", str(self.limits.max_frames), "--time-budget", str(self.limits.time_budget_s)]
            if self.flame_asset:
                command += ["--flame-asset", self.flame_asset]
            write_atomic(os.path.join(folder, "task.json"), json.dumps(
                {"kind": footage.kind, "frames": footage.count, "first_frame": first_frame,
                 "started": time.time()}).encode())
            errors = os.open(os.path.join(folder, "stderr.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(errors, "wb") as handle:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)
            self._running[task_id] = process
            threading.Thread(target=self._supervise, args=(task_id, folder, process), daemon=True,
                             name=f"tracking-{task_id}").start()
        return self.status(task_id)

    def _check_video(self, footage: Any, folder: str) -> None:
        """Refuse (413) a video whose container declares more frames or seconds than the caps (its
        length from the frame count, else the declared duration), or frames past the decode limit."""
        seconds = footage.count / footage.fps if footage.count and footage.fps else footage.seconds
        width, height = footage.size
        problem = None
        if footage.count > self.limits.max_frames:
            problem = f"the video holds {footage.count} frames, more than the {self.limits.max_frames} a task may track"
        elif seconds > self.limits.max_seconds_of_video:
            problem = (f"the video lasts {seconds:.0f} s, longer than the {self.limits.max_seconds_of_video:g} s a task "
                       "may track")
        elif width * height > MAX_DECODE_PIXELS:
            problem = f"the video's frames are {width}x{height} pixels, more than {MAX_DECODE_PIXELS} per frame"
        if problem:
            shutil.rmtree(folder, ignore_errors=True)
            raise InputError(problem, "cut the clip shorter or smaller (serve's --max-track-frames and "
                             "--max-track-seconds set the limits)", 413)

    def _supervise(self, task_id: str, folder: str, process: subprocess.Popen) -> None:
        """Kill the child once it runs ``stop_grace_s`` past its time budget (it stops itself at the
        budget, see :func:`flamediff.tracking.track.StopRule`); record every task's outcome on disk."""
        limit = self.limits.time_budget_s + self.limits.stop_grace_s
        started = time.monotonic()
        while process.poll() is None:
            if time.monotonic() - started > limit:
                _record(folder, "failed", f"the task ran longer than its time budget of {self.limits.time_budget_s:g} s "
                        f"and did not stop within {self.limits.stop_grace_s:g} s of it: nothing was kept", LIMIT_ADVICE)
                process.kill()
                process.wait()
                return
            time.sleep(0.5)
        if os.path.exists(os.path.join(folder, OUTCOME)):  # cancelled meanwhile
            return
        report = _read_json(os.path.join(folder, "anim_track.json"))
        stopped, kept = report.get("stopped"), report.get("frames")
        if isinstance(stopped, str) and isinstance(kept, int) and os.path.isfile(os.path.join(folder, "anim.npz")):
            _record(folder, "failed", f"{stopped}: the task stopped; its first {kept} frame(s) are tracked and kept",
                    f"fetch them with GET /v1/tracks/{task_id}/animation, or {LIMIT_ADVICE}", kept=kept)
        elif process.returncode == 0 and _finished(folder):
            _record(folder, "done")
        else:
            _record(folder, "failed", _scrub(_track_error(os.path.join(folder, "stderr.txt"), process.returncode),
                                             folder),
                    "see the error; a photo or video where the face is clearly visible usually works")

    def status(self, task_id: str) -> dict[str, Any]:
        """``status`` (running, done, failed, cancelled), stage, frames done / total, error and advice."""
        folder = self._folder(task_id)
        with open(os.path.join(folder, "task.json"), encoding="utf-8") as handle:
            task = json.load(handle)
        view: dict[str, Any] = {"id": task_id, **{k: task[k] for k in ("kind", "frames", "first_frame") if k in task},
                                "stage": "starting", "done": 0, "total": 0}
        view.update({k: v for k, v in _progress(folder).items() if k in ("stage", "done", "total")})
        outcome = _read_json(os.path.join(folder, OUTCOME))
        if outcome:
            view.update({k: outcome[k] for k in ("status", "error", "advice", "kept") if k in outcome})
        else:
            view["status"] = "running"
        return view

    def animation_path(self, task_id: str) -> str:
        """The animation of a task that is done, or of one stopped by a cap (its ``kept`` frames)."""
        view = self.status(task_id)
        if view["status"] != "done" and not view.get("kept"):
            raise InputError("the tracking task has not finished", "poll GET /v1/tracks/{id} until status is done", 404)
        return os.path.join(self._folder(task_id), "anim.npz")

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Stop a running task; a task that has ended is deleted (its upload and results)."""
        folder = self._folder(task_id)
        process = self._running.get(task_id)
        if process is not None and process.poll() is None:
            _record(folder, "cancelled", None, "submit it again to track it")
            process.kill()
            process.wait()
            return self.status(task_id)
        view = self.status(task_id)
        if view["status"] != "running":
            shutil.rmtree(folder, ignore_errors=True)
            self._running.pop(task_id, None)
            view["deleted"] = True
        return view

    def stop(self) -> None:
        """Kill running children (the server is shutting down); they fail saying so."""
        for task_id, process in list(self._running.items()):
            if process.poll() is None:
                _record(os.path.join(self.root, task_id), "failed", "the server stopped while this task ran",
                        "submit the photo or video again")
                process.kill()
                process.wait()


def _photo_header(media: bytes) -> ImageHeader | None:
    """The header of an uploaded photo under the render route's rule (PNG, JPEG, WebP within the
    decode limit: else 415 or 413, before decoding), or None for anything else (a video)."""
    if media[:6] in (b"GIF87a", b"GIF89a"):
        raise InputError("the upload is a GIF, not a PNG, JPEG or WebP photo or a video", MEDIA_ADVICE, 415)
    try:
        header = read_image_header(media, "the upload")
    except ImageFormatError as exc:
        if exc.kind == "format":
            return None
        raise image_input_error(exc) from None
    if header.format not in REFERENCE_FORMATS:
        raise InputError(f"the upload is a {header.format} image, not a PNG, JPEG or WebP photo", MEDIA_ADVICE, 415)
    try:
        check_decodable(header, "the upload")
    except ImageFormatError as exc:
        raise image_input_error(exc) from None
    return header


def _finished(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "anim_track.json"))


def _record(folder: str, status: str, error: str | None = None, advice: str | None = None, **facts: Any) -> None:
    try:
        write_atomic(os.path.join(folder, OUTCOME), json.dumps({"status": status, "error": error,
                                                                 "advice": advice, **facts}).encode())
    except OSError:
        pass  # a deleted task folder: nothing left to report


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _progress(folder: str) -> dict[str, Any]:
    """The child's progress file: ``stage`` (text), ``done`` and ``total`` (frames), typed as such."""
    progress = _read_json(os.path.join(folder, "progress.json"))
    kinds = {"stage": str, "done": int, "total": int}
    return {k: v for k, v in progress.items() if k in kinds and isinstance(v, kinds[k]) and not isinstance(v, bool)}


def _scrub(text: str, folder: str) -> str:
    """``text`` without the server's paths: the upload is "the upload", the task folder gone."""
    return text.replace(os.path.join(folder, "media"), "the upload").replace(folder + os.sep, "").replace(
        folder, "the task folder")


def _unreadable(text: str, folder: str) -> str:
    """The media reader's refusal as one line for the client: no path, no errno, no hint (the
    advice says what to send)."""
    return re.sub(r"\[Errno -?\d+\] |: 'the upload'", "", _scrub(text.split(";")[0], folder))


def _track_error(path: str, code: int | None) -> str:
    """The command's one-line error (its ``flamediff track: error:`` line; MediaPipe's warnings
    are not the cause), else its exit status."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if "flamediff track: error:" in line]
    except OSError:
        lines = []
    if lines:
        return lines[-1].split("error: ", 1)[-1][:500]
    return f"the tracker stopped without a message (exit status {code})"


def tracking_router(tasks: TrackingTasks, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    """``/v1/tracks`` routes over ``tasks``; ``errors``: the documented error answers (the app's)."""
    router = APIRouter()

    @router.post("/v1/tracks", status_code=201, responses=errors, openapi_extra={"requestBody": {
        "required": True, "content": UPLOAD_FORM}})
    async def submit_tracking(request: Request) -> dict[str, Any]:
        """Fit the rig to an uploaded photo or video (``flamediff track`` in a child process)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InputError("tracking needs a multipart upload", "send the photo or video as the file field 'media'", 415)
        form = await request.form(max_files=1, max_fields=2)
        upload, first_frame = form.get("media"), form.get("first_frame") or "1"
        if upload is None or isinstance(upload, str):
            raise InputError("the upload has no file field 'media'", "send the photo or video as the file field 'media'", 400)
        if not isinstance(first_frame, str) or not re.fullmatch(r"-?\d{1,9}", first_frame):
            raise InputError("first_frame must be a whole number", "e.g. first_frame=1001 (the scene's start frame)", 422)
        media = await upload.read()
        if not media:
            raise InputError("the upload is empty", MEDIA_ADVICE, 400)
        return await run_in_threadpool(tasks.submit, media, int(first_frame))

    @router.get("/v1/tracks/{task_id}", responses=errors)
    async def tracking_status(task_id: str) -> dict[str, Any]:
        """Status, stage (landmarks, fit, overlay), frames done / total, error and advice."""
        return tasks.status(task_id)

    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    npz: dict[int | str, dict[str, Any]] = {200: {"content": binary, "description": "the animation .npz"}}

    @router.get("/v1/tracks/{task_id}/animation", response_class=FileResponse, responses={**npz, **errors})
    def tracked_animation(task_id: str) -> FileResponse:
        """The animation file (``.npz``, camera included) of a finished task."""
        return FileResponse(tasks.animation_path(task_id), media_type="application/octet-stream")

    @router.delete("/v1/tracks/{task_id}", responses=errors)
    def cancel_tracking(task_id: str) -> dict[str, Any]:
        """Stop a running task (its child process is killed)."""
        return tasks.cancel(task_id)

    return router
