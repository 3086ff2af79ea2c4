"""Footage -> landmarks -> FLAME fit -> animation clip, overlay and report (what ``flamediff track`` runs)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import torch

from flamediff.flame.model import FlameModel
from flamediff.formats.animation import AnimationClip
from flamediff.formats.flame_asset import FlameAsset
from flamediff.tracking.fit import FitResult, FitSettings, LandmarkFitter
from flamediff.tracking.landmarks import LandmarkDetector, TrackingError
from flamediff.tracking.media import Footage, FrameWriter, draw_overlay, open_footage

Progress = Callable[[str, int, int], None]  # (stage, done, total)
NO_FACE_ADVICE = ("use footage where one face is visible, turned less than about 60 degrees from the camera and at "
                  "least about 100 pixels tall")


@dataclass
class StopRule:
    """When tracking stops early and keeps the frames done: a frame past ``max_frames``, or a
    frame after the first once ``seconds`` have passed since the rule was made (a server's caps
    for videos whose length is unknown, and its time budget). ``reason`` says which stopped it."""

    max_frames: int | None = None
    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)
    reason: str | None = None

    def stops_before(self, done: int) -> bool:
        """Whether to stop with ``done`` frames detected and another one decoded."""
        if self.max_frames is not None and done >= self.max_frames:
            self.reason = f"the video holds more than {self.max_frames} frames"
        elif self.seconds is not None and done and time.monotonic() - self.started > self.seconds:
            self.reason = f"tracking ran past its time budget of {self.seconds:g} s"
        return self.reason is not None


@dataclass
class Tracked:
    """A tracking run: the fit, its clip, MediaPipe's points per frame and the seconds per stage;
    ``stopped``: why a :class:`StopRule` ended it early (its footage is then the frames done)."""

    footage: Footage
    fit: FitResult
    clip: AnimationClip
    landmarks: list[np.ndarray | None]
    seconds: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None

    @property
    def missing_frames(self) -> list[int]:
        return [int(frame) for frame, points in zip(self.clip.frame, self.landmarks) if points is None]


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def photo_fit(path: str, asset: FlameAsset) -> FitResult:
    """The FLAME fit of the face in a photo: its shape (what ``shape_from=reference`` drives the
    rig with when no shape file is given) and its pose and camera (what a model with the
    correspondence control reads of its reference)."""
    footage = open_footage(path)
    if footage.kind != "image":
        raise TrackingError(f"{path} is a {footage.kind}, not a photo; give the reference photo")
    return track_footage(footage, asset).fit


def photo_shape(path: str, asset: FlameAsset) -> np.ndarray:
    """The FLAME shape coefficients of the face in a photo (:func:`photo_fit`)."""
    return photo_fit(path, asset).shape


def track_photo(photo: bytes, extension: str, asset: FlameAsset) -> FitResult:
    """:func:`photo_fit` of a photo's bytes (e.g. a job's reference), through a temporary file
    that the messages never name."""
    with tempfile.TemporaryDirectory(prefix="flamediff-reference-") as folder:
        path = os.path.join(folder, f"reference.{extension}")
        with open(path, "wb") as handle:
            handle.write(photo)
        try:
            return photo_fit(path, asset)
        except TrackingError as exc:
            raise TrackingError(str(exc).replace(path, "the reference")) from None


def track_reference_pose(photo: bytes, extension: str, asset: FlameAsset) -> tuple[AnimationClip | None, str]:
    """The reference photo's FLAME parameters and camera (one frame), which a checkpoint with the
    reference correspondence reads; ``(None, note)`` when they cannot be tracked (no face found,
    or MediaPipe not installed): the render then goes without that control, and the note says so."""
    try:
        fit = track_photo(photo, extension, asset)
    except TrackingError as exc:
        return None, (f"reference: its pose could not be tracked ({exc}), so the frames take the reference's "
                      "colours without the surface correspondence")
    return fit.clip(asset, fps=1.0), ""


def detect_footage(footage: Footage, progress: Progress | None = None,
                   stop: StopRule | None = None) -> list[np.ndarray | None]:
    """MediaPipe's landmarks of every frame (frame-to-frame tracking for videos), or of the frames
    before ``stop`` ends it."""
    landmarks: list[np.ndarray | None] = []
    with closing(LandmarkDetector(video=footage.kind == "video")) as detector:
        for frame in footage.frames():
            if stop is not None and stop.stops_before(len(landmarks)):
                break
            landmarks.append(detector.detect(frame))
            _report(progress, "landmarks", len(landmarks), footage.count)
    if not any(points is not None for points in landmarks):
        raise TrackingError(f"MediaPipe found no face in {footage.path} ({len(landmarks)} frame(s)); {NO_FACE_ADVICE}")
    return landmarks


def track_footage(footage: Footage, asset: FlameAsset, settings: FitSettings | None = None,
                  progress: Progress | None = None, first_frame: int = 1, stop: StopRule | None = None) -> Tracked:
    """Detect, then fit one shape for the whole footage (or the frames before ``stop`` ends it)
    and per-frame everything else."""
    start = time.perf_counter()
    landmarks = detect_footage(footage, progress, stop)
    if stop is not None and (stop.reason or not footage.count):  # stopped, or a video of unknown length
        footage = dataclasses.replace(footage, count=len(landmarks))
    detected = time.perf_counter()
    _report(progress, "fit", 0, 1)
    fit = LandmarkFitter(asset, settings).fit(landmarks, footage.size)
    _report(progress, "fit", 1, 1)
    clip = fit.clip(asset, footage.fps, first_frame)
    return Tracked(footage=footage, fit=fit, clip=clip, landmarks=landmarks,
                   seconds={"landmarks": detected - start, "fit": time.perf_counter() - detected},
                   stopped=stop.reason if stop is not None else None)


def _fitted_vertices(model: FlameModel, fit: FitResult, chunk: int = 32) -> Iterator[np.ndarray]:
    """The fitted mesh of each frame ``[V, 3]`` (FLAME space), computed ``chunk`` frames at a time."""
    def tensor(value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32)
    for start in range(0, len(fit.expression), chunk):
        rows = slice(start, start + chunk)
        with torch.no_grad():
            posed = model(shape=tensor(fit.shape), expression=tensor(fit.expression[rows]), pose=tensor(fit.pose[rows]),
                          translation=tensor(fit.translation[rows]))
        yield from posed.vertices.double().numpy()


def write_overlay(tracked: Tracked, asset: FlameAsset, path: str, progress: Progress | None = None) -> None:
    """The fitted mesh drawn over every frame: a PNG for a photo, an MP4 for a clip."""
    start = time.perf_counter()
    fit = tracked.fit
    writer = FrameWriter(path, tracked.footage.fps, tracked.footage.size, single=tracked.footage.kind == "image")
    try:
        frames = zip(tracked.footage.frames(), _fitted_vertices(FlameModel(asset), fit), tracked.landmarks)
        for index, (frame, vertices, detected) in enumerate(frames):
            camera = vertices @ fit.R.T + fit.t
            pixels = camera @ fit.K.T
            caption = "no face found" if detected is None else f"landmark error {fit.error_px[index]:.1f} px"
            writer.write(draw_overlay(frame, pixels[:, :2] / pixels[:, 2:3], asset.faces, camera,
                                      None if detected is None else detected[fit.mediapipe_index],
                                      fit.landmark_pixels[index], caption))
            _report(progress, "overlay", index + 1, tracked.footage.count)
    finally:
        writer.close()
    tracked.seconds["overlay"] = time.perf_counter() - start


def write_report(tracked: Tracked, path: str) -> None:
    """JSON beside the animation: per-frame landmark error (pixels; null where no face was found)."""
    error = tracked.fit.error_px
    found = ~np.isnan(error)
    report = {
        "input": tracked.footage.path, "kind": tracked.footage.kind, "frames": tracked.footage.count,
        "fps": tracked.footage.fps, "image_size": list(tracked.footage.size), "embedding": tracked.fit.embedding_kind,
        "notes": list(tracked.footage.notes), "mean_landmark_error_px": float(error[found].mean()), "frames_without_face": tracked.missing_frames,
        "seconds": {name: round(value, 3) for name, value in tracked.seconds.items()},
        "focal_px": float(tracked.fit.K[0, 0]), **({"stopped": tracked.stopped} if tracked.stopped else {}),
        "per_frame": [{"frame": int(frame), "landmark_error_px": None if np.isnan(value) else round(float(value), 3)}
                      for frame, value in zip(tracked.clip.frame, error)],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
