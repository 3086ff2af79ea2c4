"""A rendered frame's recipe, written into the frame file itself (PNG text chunks, EXR header).

Stdlib only, shared by the backend (job frames, ``flamediff render --out``) and the add-on's
render engine (Blender's own output through ``RenderResult.stamp_data_add_field``), so a frame
found on disk months later names everything that made its pixels, under the same keys whoever
wrote it: read it back with :func:`read_recipe` and render the frame again.
"""

from __future__ import annotations

from typing import Any, Mapping

#: Every key starts with this (Blender shows them in the Image Editor's Metadata panel).
PREFIX = "flamediff."
#: The recipe's fields, in the order they are written; values are strings (text chunks).
FIELDS = ("version", "job", "frame", "checkpoint", "checkpoint_sha256", "seed", "steps", "guidance", "framing",
          "preview", "shape_from", "resolution", "reference_sha256", "animation_sha256")


def frame_recipe(job: Mapping[str, Any], frame: int) -> dict[str, str]:
    """The metadata of Blender frame ``frame`` of ``job`` (a job view or manifest once its model is
    loaded: the resolved steps, guidance and checkpoint hash are set then)."""
    settings = job.get("settings") or {}
    checkpoint = job.get("checkpoint") or {}
    values = {"version": job.get("flamediff_version"), "job": job.get("id"), "frame": int(frame),
              "checkpoint": checkpoint.get("name") or settings.get("checkpoint"),
              "checkpoint_sha256": job.get("checkpoint_sha256"), "seed": settings.get("seed"),
              "steps": job.get("steps"), "guidance": job.get("guidance"), "framing": settings.get("framing"),
              "preview": settings.get("preview"), "shape_from": settings.get("shape_from"),
              "resolution": job.get("resolution"), "reference_sha256": job.get("reference_sha256"),
              "animation_sha256": job.get("animation_sha256")}
    return {PREFIX + name: _text(values[name]) for name in FIELDS if values[name] is not None}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_recipe(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The recipe fields of a file's metadata (e.g. Pillow's ``Image.info``), keys without the prefix."""
    return {key[len(PREFIX):]: str(value) for key, value in metadata.items()
            if isinstance(key, str) and key.startswith(PREFIX) and key[len(PREFIX):] in FIELDS}
