"""Any animation input (flamediff's own file or a tracker's) as a clip with its report, and the
default camera for inputs without one: :func:`read_animation_input` is what ``flamediff convert``,
``flamediff render`` and the server's tracker uploads read through."""

from __future__ import annotations

import os
import zipfile
from dataclasses import replace
from typing import Any

import numpy as np

from ..animation import AnimationClip, ReadLimits, load_animation
from ..conventions import intrinsics_from_fov, look_at_opencv
from .folders import read_tracker
from .limits import TRACKER_LIMITS
from .mapping import TrackerImport, TrackerReport
from .timing import fps_in_file

#: ``flamediff render``'s camera for files without one (the demo's portrait framing).
DEFAULT_CAMERA: dict[str, Any] = {"eye": (0.0, 0.0, 0.65), "target": (0.0, -0.005, 0.0), "fov_y_degrees": 26.0,
                                  "size": 512}
OWN_FILE = "flamediff animation file"


def _is_own_file(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "header.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def read_animation_input(path: str | os.PathLike, *, fps: float | None = None, camera_index: int | None = None,
                         whole_sequence: bool = True, limits: ReadLimits | None = None,
                         default_camera: bool = True) -> TrackerImport:
    """Any animation input as a clip to render and its report (see :func:`load_any` for the
    arguments); with ``default_camera``, an input without a camera gets :data:`DEFAULT_CAMERA`,
    which the report's camera line says."""
    result = load_any(path, fps=fps, camera_index=camera_index, whole_sequence=whole_sequence, limits=limits)
    if not default_camera or result.clip.has_camera:
        return result
    camera = DEFAULT_CAMERA
    result.report.camera = (f"none in the file: added flamediff's default portrait camera (at {camera['eye']} m "
                            f"looking at the face, {camera['fov_y_degrees']:g} degrees vertical field of view, "
                            f"{camera['size']} px); give a camera with the add-on's export or a tracker that has one")
    return replace(result, clip=with_default_camera(result.clip), default_camera=True)


def load_any(path: str | os.PathLike, *, fps: float | None = None, camera_index: int | None = None,
             whole_sequence: bool = True, limits: ReadLimits | None = None) -> TrackerImport:
    """A flamediff animation file (read by :func:`load_animation`) or any tracker layout
    (:func:`read_tracker`); ``limits``: what the read may allocate (default: each reader's own)."""
    path = os.fspath(path)
    if os.path.isfile(path) and _is_own_file(path):
        clip = load_animation(path) if limits is None else load_animation(path, limits)
        if fps is not None:
            clip = replace(clip, fps=float(fps))
        source = clip.extra.get("source_tool")
        report = TrackerReport(OWN_FILE + (f" (converted from {source})" if source else ""),
                               clip.extra.get("flame_version"),
                               "one file", clip.num_frames, mapped=["all fields"], fps_in_file=fps_in_file(clip),
                               camera="K, R, t" if clip.has_camera else None)
        return TrackerImport(clip, report)
    return read_tracker(path, fps=fps, camera_index=camera_index, whole_sequence=whole_sequence,
                        limits=TRACKER_LIMITS if limits is None else limits)


def with_default_camera(clip: AnimationClip) -> AnimationClip:
    """``clip`` with :data:`DEFAULT_CAMERA` (a fixed portrait camera in front of the face) on every frame."""
    size = DEFAULT_CAMERA["size"]
    rotation, translation = look_at_opencv(DEFAULT_CAMERA["eye"], DEFAULT_CAMERA["target"])
    K = intrinsics_from_fov(DEFAULT_CAMERA["fov_y_degrees"], size, size)
    frames = clip.num_frames
    return replace(clip, K=np.repeat(K[None], frames, 0), R=np.repeat(rotation[None], frames, 0),
                   t=np.repeat(translation[None], frames, 0), image_size=(size, size))


def flame_version_note(report: TrackerReport, asset_name: str) -> str | None:
    """A warning when the tool implies another FLAME version than the rig's asset, else None."""
    if not report.flame_version:
        return None
    implied = report.flame_version.replace("FLAME ", "")
    if implied in asset_name or (implied == "2020" and asset_name == "generic_model"):
        return None
    version = report.flame_version
    return (f"{report.tool} tracks with {version}, but the FLAME asset is '{asset_name}': expressions and identity "
            f"look different on another model; use a {version} asset (the add-on's preferences, or --flame-asset)")
