"""The backend <-> add-on protocol in one place: its version, the job settings with their defaults
and bounds, where the token lives, which addresses count as this machine, how frames are named.

Stdlib only: it ships in the add-on zip at the same path, ``backend/formats/``, so Blender's properties and operator
arguments, the server's request model (:class:`flamediff.server.inputs.JobSettings`) and the
worker read the same numbers. ``backend/server/PROTOCOL.md`` describes the HTTP routes.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from .paths import cache_dir, default_token_file

__all__ = ["DEFAULT_PORT", "DEFAULT_URL", "FRAMINGS", "JOB_SETTINGS", "MATTES", "PROTOCOL_VERSION", "REFERENCE_FORMATS", "SHAPE_SOURCES", "Setting",
           "cache_dir", "default_token_file", "frame_file", "is_loopback_host", "is_loopback_url", "setting"]

#: Bumped when a route or a field of the HTTP protocol changes meaning; client and server compare it.
PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
#: A rendered frame's file name, by Blender frame number (job folders, the add-on's output folder).
FRAME_FILE = "frame_{:04d}.png"
#: The reference image formats a render job takes (the header names of formats.images); the
#: server refuses others (415) and the add-on checks a reference against the same list.
REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP")

Value = bool | int | float | str | None


def frame_file(frame: int) -> str:
    """``frame_0007.png`` for Blender frame 7."""
    return FRAME_FILE.format(int(frame))


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address (``[::1]`` brackets allowed) is this machine: ``localhost``
    or a loopback address. Other names are not resolved: DNS may point them anywhere."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether a backend URL points at this machine (see :func:`is_loopback_host`)."""
    return is_loopback_host(urllib.parse.urlsplit(url).hostname or "")


@dataclass(frozen=True)
class Setting:
    """One job setting: what the server accepts and the add-on offers.

    ``kind``: ``int``, ``float``, ``bool``, ``text``, ``choice`` (one of ``choices``: value, label,
    description, as Blender enums take them), ``frames`` (a frame spec: ``"1-24"``, ``"1,5,9-12"``
    or a list of Blender frame numbers) or ``floats`` (a list of at most ``maximum`` numbers).
    ``hashed``: the setting changes the pixels, so it is part of a job's identity. ``legacy``: what
    a job stored by a version without this setting rendered with, when that is not ``default``.
    """

    name: str
    kind: str
    label: str
    description: str
    default: Value = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str, str], ...] = ()
    hashed: bool = True
    legacy: Value = None

    @property
    def values(self) -> tuple[str, ...]:
        """The allowed values of a ``choice``."""
        return tuple(value for value, _, _ in self.choices)


FRAMINGS = (("head", "Head", "Each frame renders the square around the head, framed as the model was trained, placed "
                             "into a transparent frame of the scene's resolution (composites over other work)"),
            ("camera", "Whole camera", "The camera's whole view fitted into the model's square: frames of the "
                                       "camera's aspect at the model's resolution, no transparency"))

MATTES = (("head", "Head", "Head framing: the frame's alpha is the head's matte (the FLAME silhouette, feathered), "
                           "so Alpha Over composites a head"),
          ("head_neck", "Head and neck", "As Head, with the neck continued down to the edge of the rendered square "
                                         "(the neck and shoulders the model draws)"),
          ("tile", "Square tile", "Head framing: the whole rendered square is opaque, the model's own backdrop "
                                  "included (as before mattes existed)"))

SHAPE_SOURCES = (("animation", "Animation", "The rig's own shape keys: the frames show the rig's identity"),
                 ("reference", "Reference", "The reference person's FLAME shape (Reference shape file): the rig's "
                                            "motion on the reference identity (cross-identity)"))

#: Every setting of a job, in the order the server's schema lists them. ``None`` defaults mean
#: "the checkpoint's own" (or "every frame" for ``frames``).
JOB_SETTINGS: tuple[Setting, ...] = (
    Setting("checkpoint", "text", "Checkpoint", "a name from GET /v1/models (or a checkpoint folder under the "
            "models folder or an allowed root); empty = the default", None, maximum=4096),
    Setting("steps", "int", "Steps", "denoising steps; 0 = the checkpoint's default", 0, 0, 1000),
    Setting("guidance", "float", "Guidance", "classifier-free guidance scale; 0 = the checkpoint's default_guidance",
            0.0, 0.0, 50.0),
    Setting("seed", "int", "Seed", "seed; each frame's noise is seeded by (seed, frame)", 0, 0, 2**31 - 1),
    Setting("frames", "frames", "Frames", "Blender frame numbers, e.g. \"1-24\", \"1,5,9-12\" or a list; "
            "empty = every frame"),
    Setting("shape_from", "choice", "Identity shape", "identity shape source: the animation's, or the reference "
            "person's (reference_shape)", "animation", choices=SHAPE_SOURCES),
    Setting("reference_shape", "floats", "Reference shape", "FLAME shape coefficients (for shape_from "
            "'reference')", None, 1, 300),
    Setting("resolution", "int", "Resolution", "must equal the checkpoint's; empty = its own", None, 8, 4096),
    Setting("framing", "choice", "Framing", "what the model renders: the square around the head placed in a "
            "transparent frame of the camera's image size ('head'), or the camera's whole view at the model's "
            "resolution ('camera')", "head", choices=FRAMINGS, legacy="camera"),
    Setting("matte", "choice", "Matte", "the alpha of head-framed frames: the head's silhouette ('head'), with "
            "the neck ('head_neck'), or the whole square ('tile'); camera framing has none", "head", choices=MATTES,
            legacy="tile"),
    Setting("preview", "bool", "Preview", "a quick look: half resolution, at most 4 steps, first frame first",
            False),
    Setting("frames_per_batch", "int", "Frames per batch", "frames denoised together (halves on GPU OOM)", 4, 1,
            256, hashed=False),
)
_BY_NAME = {entry.name: entry for entry in JOB_SETTINGS}


def setting(name: str) -> Setting:
    """The job setting called ``name`` (KeyError for an unknown one)."""
    return _BY_NAME[name]
