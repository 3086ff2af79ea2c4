"""One render from Blender: export, submit, poll, fetch frames, the VSE strip, settings.json.

:class:`RenderJob` is a small state machine advanced by :meth:`RenderJob.step` (a timer calls it
every ~0.5 s; ``flamediff.render(wait=True)`` calls it in a loop). Every HTTP call has a short
timeout, so a step never blocks Blender for long, even with the backend down or busy.
Progress and the last error live on ``scene.flamediff_render`` (the panel and status bar show it).
"""

from __future__ import annotations

import json
import os
import time

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import local_backend
from .backend_client import BackendClient, BackendError

STRIP_NAME = "flamediff"
POLL_INTERVAL = 0.5
START_TIMEOUT = 120.0

_ACTIVE: dict[str, RenderJob] = {}  # scene name -> the job it is rendering
SHAPE_FROM = (("animation", "Animation", "The rig's own shape keys: the frames show the rig's identity"),
              ("reference", "Reference", "The reference person's FLAME shape (Reference shape file): the rig's "
                                         "motion on the reference identity (cross-identity)"))


class FlamediffRenderProps(bpy.types.PropertyGroup):
    """``scene.flamediff_render``: the Render panel's inputs and the current job's state."""

    reference_image: StringProperty(name="Reference image", subtype="FILE_PATH", default="",
                                    description="Portrait (PNG/JPEG/WebP) whose appearance the frames take")
    steps: IntProperty(name="Steps", default=0, min=0, max=1000,
                       description="Denoising steps; 0 = the checkpoint's default (small models need fewer)")
    guidance: FloatProperty(name="Guidance", default=0.0, min=0.0, max=30.0,
                            description="Classifier-free guidance scale; 0 = the checkpoint's default")
    seed: IntProperty(name="Seed", default=0, min=0, description="Each frame's noise is seeded by (seed, frame)")
    checkpoint: StringProperty(name="Checkpoint", default="",
                               description="Model name from the backend (Test connection lists them); empty = "
                                           "the backend's default")
    preview: BoolProperty(name="Preview", default=False,
                          description="A quick look: half the model's resolution, at most 4 steps, the first frame "
                                      "first. Its own job and folder: the full render is not touched")
    # state (written by the add-on)
    job_id: StringProperty(name="Job", default="")
    status: StringProperty(name="Status", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    frames_done: IntProperty(default=0)
    frames_total: IntProperty(default=0)
    message: StringProperty(name="Progress", default="")
    error: StringProperty(name="Error", default="")
    advice: StringProperty(name="Advice", default="")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", default="")


class FlamediffRigSettings(bpy.types.PropertyGroup):
    """``rig.flamediff_rig_settings``: per rig, because each rig is one identity to drive."""

    shape_from: EnumProperty(name="Identity shape", items=SHAPE_FROM, default="animation",
                             description="Whose FLAME shape the render uses with this rig's motion")
    reference_shape: StringProperty(name="Reference shape", subtype="FILE_PATH", default="",
                                    description=".npy of the reference person's FLAME shape coefficients (e.g. "
                                                "DECA, EMOCA or SMIRK run on the reference image); used when "
                                                "Identity shape is Reference")


def read_reference_shape(path: str) -> list[float]:
    """The coefficients of a ``.npy`` file (the backend checks their count and values)."""
    try:
        values = np.load(bpy.path.abspath(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the reference shape file '{path}' ({exc})") from None
    if not isinstance(values, np.ndarray):
        raise ValueError(f"the reference shape file '{path}' is not a .npy array")
    return values.astype(np.float64).reshape(-1).tolist()


def active_job(scene: bpy.types.Scene) -> RenderJob | None:
    return _ACTIVE.get(scene.name)


def output_folder(job_id: str, unsaved_root: str) -> str:
    """``//flamediff/<job id>`` next to the .blend (absolute), or ``<unsaved_root>/<job id>`` while the
    file is unsaved (the preference "Renders of unsaved files", default ``~/flamediff_renders``)."""
    if bpy.data.filepath:
        return os.path.join(bpy.path.abspath("//flamediff"), job_id)
    return os.path.join(unsaved_root, job_id)


def blend_relative(path: str) -> str:
    """``path`` as ``//...`` when the .blend is saved, so moving the .blend with its folder keeps the
    strip working; absolute otherwise (unsaved, or on another Windows drive)."""
    if not bpy.data.filepath:
        return path
    try:
        return bpy.path.relpath(path)
    except ValueError:
        return path


def frame_path(folder: str, frame: int) -> str:
    return os.path.join(folder, f"frame_{frame:04d}.png")


def _format_eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f", ETA {seconds // 60}:{seconds % 60:02d}"


def set_status_bar(text: str | None) -> None:
    """Status bar text in every window (none in background mode); ``None`` clears it."""
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm else []):
        try:
            window.workspace.status_text_set(text)
        except (AttributeError, RuntimeError, TypeError):
            pass
        for area in (window.screen.areas if window.screen else []):
            if area.type in ("VIEW_3D", "SEQUENCE_EDITOR", "IMAGE_EDITOR", "STATUSBAR"):
                area.tag_redraw()


def update_strip(scene: bpy.types.Scene, folder: str, frames: list[int]) -> bpy.types.Strip:
    """ONE image-sequence strip named ``flamediff`` starting at the first Blender frame; a re-render
    replaces it on the same channel (the files may land later: Blender shows them as they do).
    The strip's folder is ``//``-relative when the .blend is saved."""
    folder = blend_relative(folder)
    editor = scene.sequence_editor or scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    channel = 1
    old = strips.get(STRIP_NAME)
    if old is not None:
        if (old.get("flamediff_folder") == folder and old.frame_start == frames[0]
                and len(old.elements) == len(frames)):
            try:
                old.invalidate_cache("RAW")  # frames that were missing when last drawn have landed
            except (RuntimeError, TypeError):
                pass
            return old
        channel = old.channel
        strips.remove(old)
    # FIT: frames are the model's size (128 px for the demo), scaled to the scene's frame, aspect kept
    strip = strips.new_image(STRIP_NAME, frame_path(folder, frames[0]), channel, frames[0], fit_method="FIT")
    for frame in frames[1:]:
        strip.elements.append(os.path.basename(frame_path(folder, frame)))
    strip["flamediff_folder"] = folder
    strip["flamediff_job"] = os.path.basename(folder)
    return strip


def show_latest(path: str) -> None:
    """The newest frame in one image datablock (``flamediff latest``), shown in any Image Editor."""
    image = bpy.data.images.get("flamediff latest")
    if image is None:
        image = bpy.data.images.load(path)
        image.name = "flamediff latest"
    else:
        image.filepath = path
        image.reload()
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm else []):
        for area in (window.screen.areas if window.screen else []):
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image


class RenderJob:
    """Submits one job and follows it until done / failed / cancelled."""

    def __init__(self, scene: bpy.types.Scene, client: BackendClient, reference: str, animation: str,
                 settings: dict, frames: list[int], local: dict | None = None, unsaved_root: str = "") -> None:
        self.scene_name, self.client, self.unsaved_root = scene.name, client, unsaved_root
        self.reference, self.animation, self.settings, self.frames = reference, animation, settings, frames
        self.local = local  # "Start locally": the preferences used to start the backend
        self.phase = "connecting"  # connecting -> running -> finished
        self.job_id, self.folder, self.fetched = "", "", set()
        self.view: dict = {}
        self.outcome = ""  # done | failed | cancelled | error
        self.started = self.last_ok = time.monotonic()
        self.start_attempted = False

    # ------------------------------------------------------------------ helpers
    @property
    def scene(self) -> bpy.types.Scene | None:
        return bpy.data.scenes.get(self.scene_name)

    @property
    def props(self):
        scene = self.scene
        return scene.flamediff_render if scene is not None else None

    def _set(self, **values) -> None:
        props = self.props
        if props is None:
            return
        for key, value in values.items():
            setattr(props, key, value)

    def _finish(self, outcome: str, error: str = "", advice: str = "") -> None:
        self.phase, self.outcome = "finished", outcome
        _ACTIVE.pop(self.scene_name, None)
        props = self.props
        if props is not None:
            done = len(self.fetched)
            texts = {"done": f"Rendered {done} frames into {blend_relative(self.folder)}",
                     "cancelled": f"Cancelled; {done} of {len(self.frames)} frames kept",
                     "failed": f"Failed after {done} of {len(self.frames)} frames",
                     "error": "Render stopped"}
            self._set(status=outcome, message=texts[outcome], error=error, advice=advice)
        self._cleanup()
        set_status_bar(None)

    def _cleanup(self) -> None:
        try:
            os.remove(self.animation)
        except OSError:
            pass

    # ------------------------------------------------------------------ the state machine
    def step(self) -> bool:
        """Advance once; True while the job still needs polling."""
        if self.phase == "finished":
            return False
        if self.scene is None:  # the scene was deleted: stop following the job
            self.phase = "finished"
            _ACTIVE.pop(self.scene_name, None)
            return False
        try:
            if self.phase == "connecting":
                self._connect()
            if self.phase == "running":
                self._poll()
        except BackendError as exc:
            if self.phase == "running" and exc.status is None and time.monotonic() - self.last_ok < 10.0:
                return True  # a slow answer while rendering: try again next tick
            self._finish("error", exc.message, exc.advice)
        return self.phase != "finished"

    def _connect(self) -> None:
        try:
            self.client.health()
        except BackendError as exc:
            if self.local is None or (exc.status is not None and exc.status != 401):
                raise
            # "Start locally": not running (refused / no token file yet) or still starting (old token)
            if local_backend.running() is None:
                if self.start_attempted:
                    raise BackendError(f"the local backend stopped while starting (exit code "
                                       f"{local_backend.exit_code()}): {local_backend.last_log_line() or 'no output'}",
                                       f"see its log {local_backend.log_path()} (is the port "
                                       f"{self.local['port']} taken by another program?)") from None
                local_backend.start(self.local["python"], self.local["port"], self.local["device"],
                                    self.local["token_file"])
                self.start_attempted = True
                self._set(status="starting", message="Starting the local backend...", error="", advice="")
                return
            if time.monotonic() - self.started > START_TIMEOUT:
                raise BackendError(f"the local backend did not answer within {START_TIMEOUT:g} s of its start",
                                   f"see its log {local_backend.log_path()}") from None
            return
        view = self.client.submit(self.reference, self.animation, self.settings)
        self.job_id = view["id"]
        self.folder = output_folder(self.job_id, self.unsaved_root)
        os.makedirs(self.folder, exist_ok=True)
        self.fetched = {f for f in self.frames if os.path.exists(frame_path(self.folder, f))}
        self.view, self.phase, self.last_ok = view, "running", time.monotonic()
        self._write_settings()
        self._set(job_id=self.job_id, output_dir=blend_relative(self.folder), status=view.get("status", "queued"),
                  frames_total=len(self.frames), frames_done=len(self.fetched), progress=0.0, error="", advice="",
                  message=f"Submitted job {self.job_id}")
        if self.fetched:
            update_strip(self.scene, self.folder, self.frames)

    def _write_settings(self) -> None:
        record = {"job_id": self.job_id, "backend": self.client.url, "frames": self.frames,
                  "requested_settings": self.settings, "settings": self.view.get("settings", {}),
                  "steps": self.view.get("steps"),  # the steps used (settings.steps 0: the checkpoint's)
                  "seed": self.view.get("settings", {}).get("seed", self.settings.get("seed")),
                  "checkpoint": self.view.get("checkpoint"), "reference_image": self.reference,
                  "status": self.view.get("status"), "error": self.view.get("error"),
                  "notes": self.view.get("notes"),
                  "rerender": "bpy.ops.flamediff.render(reference_image=..., steps=..., guidance=..., seed=...) "
                              "with the scene frame range set to the frames wanted"}
        tmp = os.path.join(self.folder, "settings.json.part")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, default=str)
        os.replace(tmp, os.path.join(self.folder, "settings.json"))

    def _fetch_new(self, all_: bool) -> None:
        landed = None
        for frame in self.frames:
            if frame in self.fetched:
                continue
            try:
                self.client.fetch_frame(self.job_id, frame, frame_path(self.folder, frame))
            except BackendError as exc:
                if exc.status == 404 and not all_:
                    break  # frames render in order: the rest are not there yet
                if exc.status == 404:
                    continue
                raise
            self.fetched.add(frame)
            landed = frame
        if landed is not None:
            update_strip(self.scene, self.folder, self.frames)
            try:
                show_latest(frame_path(self.folder, landed))
            except RuntimeError:
                pass

    def _poll(self) -> None:
        view = self.client.job(self.job_id)
        self.view, self.last_ok = view, time.monotonic()
        status = view.get("status", "")
        if view.get("frames_done", 0) > len(self.fetched) or status in ("done", "failed", "cancelled"):
            self._fetch_new(all_=status in ("done", "failed", "cancelled"))
        total = len(self.frames)
        current = min(len(self.fetched) + 1, total)
        text = (f"flamediff: frame {current} of {total} ({100 * view.get('progress', 0.0):.0f}%"
                f"{_format_eta(view.get('eta_s'))}) - Esc cancels")
        self._set(status=status, progress=float(view.get("progress", 0.0)), frames_done=len(self.fetched),
                  message=text if status in ("queued", "running") else status)
        if status in ("queued", "running"):
            set_status_bar(text)
            return
        self._write_settings()
        if status == "done":
            self._finish("done")
        elif status == "cancelled":
            self._finish("cancelled")
        else:
            self._finish("failed", view.get("error") or "the job failed",
                         view.get("advice") or "see the backend's log")

    def cancel(self) -> None:
        """DELETE the job (rendered frames are kept) and stop following it."""
        if self.phase == "running" and self.job_id:
            try:
                self.client.cancel(self.job_id)
                self._fetch_new(all_=True)
                self._write_settings()
            except BackendError as exc:
                self._finish("cancelled", f"cancelling on the backend failed: {exc.message}", exc.advice)
                return
        self._finish("cancelled")


def start(job: RenderJob) -> None:
    _ACTIVE[job.scene_name] = job


def _timer_for(job: RenderJob):
    def tick():
        return POLL_INTERVAL if job.step() else None
    return tick


def follow_in_background(job: RenderJob) -> None:
    """Poll with ``bpy.app.timers`` (every 0.5 s) until the job ends."""
    bpy.app.timers.register(_timer_for(job), first_interval=POLL_INTERVAL)


def cancel_all() -> None:
    for job in list(_ACTIVE.values()):
        job.cancel()


@bpy.app.handlers.persistent
def forget_on_load(*_args) -> None:
    """Opening another file stops following running jobs (they keep rendering on the backend; their
    frames stay in the backend's job folder), so no strip lands in the wrong file."""
    for job in list(_ACTIVE.values()):
        job.phase = "finished"
        job._cleanup()
    _ACTIVE.clear()
    set_status_bar(None)


def register_handlers() -> None:
    if forget_on_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(forget_on_load)


def unregister_handlers() -> None:
    if forget_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(forget_on_load)


classes = (FlamediffRenderProps, FlamediffRigSettings)
