"""Tracking over HTTP (issue 17): a photo or a video uploaded to ``POST /v1/tracks`` is fitted by
``flamediff track`` in a child process (a crash or a cancel never touches the server), one task
at a time; the client polls ``GET /v1/tracks/{id}`` and fetches the animation file.

Each task lives in its own private folder beside the jobs folder (``<jobs>/../tracks/<id>``):
the upload, the command's progress file, animation, report and error output.
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
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from flamediff.server.files import make_private_dir
from flamediff.server.inputs import InputError
from flamediff.tracking.landmarks import TrackingError
from flamediff.tracking.media import open_footage

TASK_ID = re.compile(r"[0-9a-f]{16}")  # always fullmatch: "$" would let a trailing newline through
UPLOAD_FORM = {"multipart/form-data": {"schema": {"type": "object", "required": ["media"], "properties": {
    "media": {"type": "string", "format": "binary", "description": "a photo (PNG, JPEG, WebP) or a video (MP4, MOV, ...)"},
    "first_frame": {"type": "integer", "description": "frame number of the first frame (default 1)"}}}}}


class TrackingTasks:
    """The tracking tasks of one server: their folders and the running child process."""

    def __init__(self, root: str, flame_asset: str | None = None) -> None:
        self.root = os.path.abspath(root)  # created with the first task
        self.flame_asset = flame_asset
        self._running: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _folder(self, task_id: str) -> str:
        folder = os.path.join(self.root, task_id)
        if not TASK_ID.fullmatch(task_id) or not os.path.isdir(folder):
            raise InputError(f"no tracking task {task_id[:40]!r}", "submit one with POST /v1/tracks", 404)
        return folder

    def submit(self, media: bytes, first_frame: int) -> dict[str, Any]:
        """Store the upload, check it is a photo or a video, start ``flamediff track`` on it."""
        with self._lock:
            if any(process.poll() is None for process in self._running.values()):
                raise InputError("a tracking task is running", "wait for it or cancel it (DELETE /v1/tracks/{id})", 409)
            task_id = secrets.token_hex(8)
            folder = make_private_dir(os.path.join(make_private_dir(self.root), task_id))
            media_path = os.path.join(folder, "media")
            with open(media_path, "wb") as handle:
                handle.write(media)
            try:
                footage = open_footage(media_path)
            except TrackingError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise InputError(str(exc).split(";")[0].replace(media_path, "the upload"),
                                 "upload a photo (PNG, JPEG, WebP) or a video (MP4, MOV, MKV, WebM)", 415) from None
            command = [sys.executable, "-m", "flamediff", "track", media_path, "--out", os.path.join(folder, "anim.npz"),
                       "--first-frame", str(first_frame), "--quiet", "--progress-file", os.path.join(folder, "progress.json")]
            if self.flame_asset:
                command += ["--flame-asset", self.flame_asset]
            with open(os.path.join(folder, "stderr.txt"), "wb") as errors:
                self._running[task_id] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
            with open(os.path.join(folder, "task.json"), "w", encoding="utf-8") as handle:
                json.dump({"kind": footage.kind, "frames": footage.count, "first_frame": first_frame}, handle)
        return self.status(task_id)

    def status(self, task_id: str) -> dict[str, Any]:
        """``status`` (running, done, failed, cancelled), stage, frames done / total, error and advice."""
        folder = self._folder(task_id)
        with open(os.path.join(folder, "task.json"), encoding="utf-8") as handle:
            view: dict[str, Any] = {"id": task_id, **json.load(handle), "stage": "starting", "done": 0, "total": 0}
        try:
            with open(os.path.join(folder, "progress.json"), encoding="utf-8") as handle:
                view.update(json.load(handle))
        except (OSError, ValueError):
            pass
        process = self._running.get(task_id)
        code = process.poll() if process is not None else None
        if os.path.isfile(os.path.join(folder, "cancelled")):
            view["status"] = "cancelled"
        elif os.path.isfile(os.path.join(folder, "anim_track.json")) and (process is None or code == 0):
            view["status"] = "done"
        elif process is not None and code is None:
            view["status"] = "running"
        else:
            view.update(status="failed", error=_last_line(os.path.join(folder, "stderr.txt")),
                        advice="see the error; a photo or video where the face is clearly visible usually works")
        return view

    def animation_path(self, task_id: str) -> str:
        if self.status(task_id)["status"] != "done":
            raise InputError("the tracking task has not finished", "poll GET /v1/tracks/{id} until status is done", 404)
        return os.path.join(self._folder(task_id), "anim.npz")

    def cancel(self, task_id: str) -> dict[str, Any]:
        folder = self._folder(task_id)
        process = self._running.get(task_id)
        if process is not None and process.poll() is None:
            open(os.path.join(folder, "cancelled"), "w").close()
            process.kill()
            process.wait()
        return self.status(task_id)


def _last_line(path: str) -> str:
    """The command's one-line error (its last stderr line without the ``flamediff track: error:`` prefix)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        lines = []
    last = lines[-1] if lines else "the tracker stopped without a message"
    return last.split("error: ", 1)[-1][:500]


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
