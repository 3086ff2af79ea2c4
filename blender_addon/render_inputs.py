"""What a render job is built from, as plain Python: which inputs are refused and why, the settings
it sends, the Render panel's state when it starts or is refused, and the job itself.

The Blender side only reads the scene: :func:`~.render_scene.job_inputs` (the Render panel, the
rig's identity settings, the exported animation) for the render operator and the render engine,
and the operator's arguments. This module never imports bpy; tests/test_render_inputs.py drives it
without Blender.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import numpy as np

from .backend_client import BackendClient
from .backend_job import local_settings
from .render_job import RenderHost, RenderJob
from ..backend.formats.images import ImageFormatError, check_image_file
from ..backend.formats.protocol import REFERENCE_FORMATS

#: Job settings the Render panel holds (the operator's argument, when given, wins).
PANEL_SETTINGS = ("steps", "guidance", "seed", "preview", "framing", "matte")


class JobInputError(ValueError):
    """Inputs a job cannot start from: ``message`` names the problem, ``advice`` the fix."""

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.message, self.advice = message, advice


class RenderInputs(NamedTuple):
    """What a render job sends: the reference image, the exported animation (a temporary file,
    the job's to remove), the job settings and the Blender frames rendered."""

    reference: str
    animation: str
    settings: dict
    frames: list[int]


def check_reference(reference: str) -> None:
    """Refuse a missing reference image, or one the backend would refuse (its own rule), before
    anything is exported; ``reference`` is absolute."""
    if not reference or not os.path.isfile(reference):
        raise JobInputError(f"no reference image at '{reference}'" if reference else "no reference image",
                            "choose a portrait (PNG/JPEG) in the Render panel")
    try:
        check_image_file(reference, "the reference image", REFERENCE_FORMATS)
    except (ImageFormatError, OSError) as exc:
        raise JobInputError(str(exc), "choose a PNG, JPEG or WebP portrait in the Render panel") from None


def read_reference_shape(path: str, absolute: str) -> list[float]:
    """The coefficients of the ``.npy`` file at ``absolute`` (``path`` as the user gave it, for
    messages); the backend checks their count and values. Raises ValueError."""
    try:
        values = np.load(absolute, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the reference shape file '{path}' ({exc})") from None
    if not isinstance(values, np.ndarray):
        raise ValueError(f"the reference shape file '{path}' is not a .npy array")
    return values.astype(np.float64).reshape(-1).tolist()


def identity_settings(shape_from: str, reference_shape: str, absolute: Callable[[str], str]) -> dict:
    """``shape_from`` (and ``reference_shape``) for the backend from the rig's identity settings;
    ``absolute`` resolves a ``//`` path. Raises ValueError."""
    if shape_from == "animation":
        return {"shape_from": shape_from}
    path = reference_shape.strip()
    if not path:   # the backend fits the reference photo's shape (its tracking extra)
        return {"shape_from": shape_from}
    return {"shape_from": shape_from, "reference_shape": read_reference_shape(path, absolute(path))}


def job_settings(value: Callable[[str], Any], identity: dict) -> dict:
    """The settings sent: the panel's (``value(name)`` reads one; an operator's argument wins
    there), the identity settings, and the checkpoint when one is named."""
    settings = {name: value(name) for name in PANEL_SETTINGS} | identity
    checkpoint = value("checkpoint").strip()
    if checkpoint:
        settings["checkpoint"] = checkpoint
    return settings


def refused_state(message: str, advice: str = "") -> dict[str, str]:
    """The Render panel's state when a render is refused before it starts."""
    return {"error": message, "advice": advice, "status": "error", "message": "Render not started"}


def starting_state(frames: list[int]) -> dict[str, Any]:
    """The Render panel's state when a render of ``frames`` starts (the last job's text cleared)."""
    return {"error": "", "advice": "", "notes": "", "status": "connecting", "message": "Connecting...",
            "progress": 0.0, "frames_done": 0, "frames_total": len(frames)}


def render_job(host: RenderHost, client: BackendClient, inputs: RenderInputs, backend: dict) -> RenderJob:
    """The job of ``inputs`` shown in ``host``; ``backend``: the preferences' backend settings (with
    "Start locally" the job starts the backend when it does not answer)."""
    return RenderJob(host, client, inputs.reference, inputs.animation, inputs.settings, inputs.frames,
                     local_settings(backend))
