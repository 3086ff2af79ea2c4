"""Face-tracker output -> :class:`AnimationClip`, for the add-on, ``flamediff convert`` and ``render``.

Public FLAME trackers each write their own layout (key names, packed or 6D rotations, one file
per frame, cameras in side files). This package recognises a tool from what its files hold, maps
what FLAME can represent and reports, by name, what it mapped and what it dropped. It is numpy +
stdlib only because it also runs inside Blender: torch-pickled files (``.pth``, ``.frame``) and
``.pkl`` files are read by a restricted unpickler (:mod:`.unpickler`) that builds tensors from the
archive's raw storages itself and refuses every global that is not a tensor, array, dict, list or
number, so nothing in a file is ever executed.

- :mod:`.limits`: the read budget, the errors and the one check of an upload's file names;
- :mod:`.unpickler` and :mod:`.files`: one file -> a flat dict of arrays;
- :mod:`.tools`: the registry of tools, how each is recognised and mapped;
- :mod:`.mapping`: a recognised dict -> clip fields, cameras and the report;
- :mod:`.aliases`: hand-stacked arrays with flamediff's names or common aliases;
- :mod:`.folders`: per-frame folders and multi-file layouts, :func:`read_tracker`;
- :mod:`.timing`: file frames onto scene frames;
- :mod:`.inputs`: any animation input as a clip with its report, the default camera.

Layouts (learnt from each tool's writer code) are summarised in :data:`TOOLS` and docs/TRACKERS.md.
"""

from .files import read_file_arrays
from .folders import read_tracker, transforms_views
from .inputs import (
    DEFAULT_CAMERA,
    OWN_FILE,
    flame_version_note,
    load_any,
    read_animation_input,
    with_default_camera,
)
from .limits import (
    MAX_FILE_BYTES,
    MAX_MEMBER_NAME,
    TRACKER_LIMITS,
    ReadBudget,
    TrackerFormatError,
    TrackerTooLarge,
    member_parts,
    member_path,
    read_budget,
)
from .mapping import (
    WEAK_PERSPECTIVE_DISTANCE,
    WEAK_PERSPECTIVE_IMAGE,
    TrackerImport,
    TrackerReport,
    frame_number,
)
from .timing import fps_in_file, resample, retime
from .tools import SUPPORTED, TOOLS
from .unpickler import MAX_PICKLE_OPS, MAX_PICKLE_VALUES

__all__ = ["DEFAULT_CAMERA", "MAX_FILE_BYTES", "MAX_MEMBER_NAME", "MAX_PICKLE_OPS", "MAX_PICKLE_VALUES", "OWN_FILE",
           "SUPPORTED", "TOOLS", "TRACKER_LIMITS", "WEAK_PERSPECTIVE_DISTANCE", "WEAK_PERSPECTIVE_IMAGE", "ReadBudget",
           "TrackerFormatError", "TrackerImport", "TrackerReport", "TrackerTooLarge", "flame_version_note",
           "fps_in_file", "frame_number", "load_any", "member_parts", "member_path", "read_animation_input",
           "read_budget", "read_file_arrays", "read_tracker", "resample", "retime", "transforms_views",
           "with_default_camera"]
