"""Per-frame folders and multi-file layouts (VHAP exports, EMOCA's --save_codes, INSTA,
metrical-tracker checkpoints) and :func:`read_tracker`, the reader of any tracker file or folder."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any, Callable

import numpy as np

from ..animation import ReadLimits
from .files import price_files, read_file_arrays
from .limits import TRACKER_LIMITS, TrackerFormatError, current_budget, member_path, read_budget
from .mapping import TrackerImport, TrackerReport, finish, frame_number, import_arrays, map_tool
from .tools import SUPPORTED, tool_by_id

_EXTENSIONS = (".npz", ".npy", ".pkl", ".pickle", ".pth", ".pt", ".frame", ".tar", ".txt")
_EMOCA_CODES = ("shape.npy", "exp.npy", "pose.npy", "tex.npy", "detail.npy")
#: EMOCA's video demo: ``<frame %06d>_<detection %03d>`` per detected face.
_EMOCA_DETECTION = re.compile(r"^(\d+)_(\d{3})$")


def _stack(per_file: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-frame dicts -> one dict with a leading frame axis; files must agree on keys and shapes."""
    first_name, first = per_file[0]
    out: dict[str, list[Any]] = {key: [] for key in first}
    for name, arrays in per_file:
        if set(arrays) != set(first):
            missing, extra = sorted(set(first) - set(arrays)), sorted(set(arrays) - set(first))
            raise TrackerFormatError(f"{name} does not hold the same arrays as {first_name} (missing {missing}, "
                                     f"extra {extra}): the folder mixes layouts or a file is damaged")
        for key, value in arrays.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                row = value if value.ndim >= 2 and value.shape[0] == 1 else value[None]
                reference = out[key][0] if out[key] else row
                if row.shape != reference.shape:
                    raise TrackerFormatError(
                        f"{name} has '{key}' of shape {list(value.shape)} but {first_name} has "
                        f"{list(np.asarray(first[key]).shape)}: a per-frame folder needs one frame of the same size "
                        "per file")
                out[key].append(row)
            else:
                out[key].append(value)
    return {key: np.concatenate(values) if isinstance(values[0], np.ndarray) else values
            for key, values in out.items()}


def _numbered(folder: str, entries: list[str]) -> list[tuple[int, str]]:
    """``(frame number, name)`` sorted by number, within the frame limit; refuses repeated
    numbers (several faces per frame)."""
    numbered = sorted((n, e) for e in entries if (n := frame_number(e)) is not None)
    current_budget().frames(len(numbered), os.path.basename(folder) or "the folder")
    repeated = sorted(n for n, count in Counter(n for n, _ in numbered).items() if count > 1)
    if repeated:
        names = [e for n, e in numbered if n == repeated[0]]
        raise TrackerFormatError(f"{folder} holds several files for frame {repeated[0]} ({names}): several faces "
                                 "per frame? keep one face's files in a folder of their own")
    return numbered


def _read_frames(folder: str, names: list[tuple[int, str]], read: Callable[[str], dict[str, Any]],
                 fps: float | None, layout: str) -> TrackerImport:
    price_files([os.path.join(folder, name) for _, name in names], f"the {len(names)} frames of the folder")
    per_file = [(name, read(os.path.join(folder, name))) for _, name in names]
    arrays = _stack(per_file)
    result = import_arrays(os.path.basename(folder.rstrip(os.sep)) or folder, arrays, layout, fps)
    if not any(m.endswith("-> frame numbers") for m in result.report.mapped):
        result.clip.frame = np.asarray([n for n, _ in names], np.int64)
        result.report.mapped.append("file names -> frame numbers")
    return result


def _emoca_face(folders: list[str], wanted: int | None = None) -> tuple[list[str], str | None]:
    """EMOCA's video demo names each detection ``<frame>_<detection index>`` (``000012_001``): the
    folders of face ``wanted`` (default the first), and a note naming the faces left out (None
    when there is one face)."""
    faces: dict[int, list[str]] = {}
    for name in folders:
        match = _EMOCA_DETECTION.match(name)
        faces.setdefault(int(match.group(2)) if match else 0, []).append(name)
    if len(faces) < 2:
        return folders, None
    chosen = wanted if wanted in faces else min(faces)
    others = "; ".join(f"face {face:03d} ({len(names)} frames, e.g. {sorted(names)[0]})"
                       for face, names in sorted(faces.items()) if face != chosen)
    return faces[chosen], (f"EMOCA saved several faces per frame: imported face {chosen:03d} ({len(faces[chosen])} "
                           f"frames), left out {others}; EMOCA numbers detections per frame, not per person: to "
                           "import another face, import one of its files (e.g. <frame>_001/exp.npy)")


def _read_emoca_codes(folder: str) -> dict[str, Any]:
    """One EMOCA ``--save_codes`` folder: ``shape.npy``, ``exp.npy``, ``pose.npy`` (+ tex, detail)."""
    out: dict[str, Any] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".npy"):
            out.update(read_file_arrays(os.path.join(folder, name)))
    return out


def transforms_views(path: str) -> dict[int, list[dict[str, Any]]]:
    """The frames of a VHAP export's ``transforms.json`` by ``camera_index``, each view ordered by timestep."""
    current_budget().charge(16 * os.path.getsize(path), "transforms.json")  # parsed JSON takes ~16 bytes a character
    try:
        with open(path, encoding="utf-8") as handle:
            frames = json.load(handle)["frames"]
        views: dict[int, list[dict[str, Any]]] = {}
        for row in frames:
            views.setdefault(int(row.get("camera_index", 0)), []).append(row)
        return {view: sorted(rows, key=lambda r: int(r["timestep_index"])) for view, rows in sorted(views.items())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrackerFormatError(f"{path} is not a readable transforms.json ({exc.__class__.__name__}: {exc}); "
                                 "export it again with VHAP") from None


def _transforms_camera(path: str, camera_index: int | None) -> tuple[list[dict[str, Any]], str]:
    """The frames of one view of a VHAP export's ``transforms.json``, ordered by timestep."""
    views = transforms_views(path)
    chosen = next(iter(views), 0) if camera_index is None or camera_index < 0 else camera_index
    if chosen not in views:
        raise TrackerFormatError(f"transforms.json has no camera_index {chosen}; it has {list(views)}")
    note = f"camera_index {chosen} of {list(views)}" + (" (the other views are dropped)" if len(views) > 1 else "")
    return views[chosen], note


def _opengl_c2w_to_opencv(matrix: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    c2w = np.asarray(matrix, np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise TrackerFormatError(f"{name}: transform_matrix must be a finite 4x4 matrix")
    w2c = np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0]))  # OpenGL camera axes -> OpenCV
    return w2c[:3, :3], w2c[:3, 3]


def _read_vhap_export(root: str, fps: float | None, camera_index: int | None) -> TrackerImport:
    """VHAP's NeRF-style export (GaussianAvatars' input, NeRSemble's published layout)."""
    rows, note = _transforms_camera(os.path.join(root, "transforms.json"), camera_index)
    current_budget().frames(len(rows), "transforms.json")
    per_file, K, R, t, sizes, numbers = [], [], [], [], set(), []
    for row in rows:
        name = row.get("flame_param_path")
        if not name:
            raise TrackerFormatError("transforms.json frames lack 'flame_param_path': export with VHAP's "
                                     "--mode param (or pass the flame_param folder)")
        path = member_path(root, name)
        if not os.path.isfile(path):
            raise TrackerFormatError(f"transforms.json names {name}, which is missing: the export is incomplete")
        per_file.append((name, path))
        rotation, translation = _opengl_c2w_to_opencv(row.get("transform_matrix"), name)
        try:  # VHAP renders with y up and flips rows, so its principal row from the top is h - cy
            K.append([[row["fl_x"], 0.0, row["cx"]], [0.0, row["fl_y"], row["h"] - row["cy"]], [0.0, 0.0, 1.0]])
            sizes.add((int(row["w"]), int(row["h"])))
        except (KeyError, TypeError, ValueError):
            raise TrackerFormatError(f"transforms.json frame {name} lacks fl_x, fl_y, cx, cy, w or h") from None
        R.append(rotation)
        t.append(translation)
        numbers.append(int(row["timestep_index"]))
    if not per_file:
        raise TrackerFormatError("transforms.json lists no frames")
    if len(sizes) != 1:
        raise TrackerFormatError(f"the chosen view changes image size between frames ({sorted(sizes)})")
    price_files([path for _, path in per_file], f"the {len(per_file)} frames transforms.json names")
    arrays = _stack([(name, read_file_arrays(path)) for name, path in per_file])
    tool, export = tool_by_id("gaussian-avatars"), tool_by_id("vhap-export")
    report = TrackerReport(export.name, export.flame_version,
                           f"transforms.json + {len(per_file)} per-frame files")
    fields = map_tool(tool, tool.signatures[0], arrays, report)
    fields.update(K=np.asarray(K, np.float64), R=np.stack(R), t=np.stack(t), image_size=sizes.pop(),
                  frame=np.asarray(numbers, np.int64))
    report.mapped.append("transforms.json transform_matrix (OpenGL camera-to-world), fl_x, fl_y, cx, h - cy -> camera")
    report.mapped.append("timestep_index -> frame numbers")
    report.camera = f"transforms.json, {note}"
    return finish(fields, len(per_file), report, fps, None)


def _folder_layout(folder: str) -> tuple[str, str]:
    """``(kind, folder)`` of what a folder holds; kinds: vhap-export, emoca-codes, files."""
    entries = os.listdir(folder)
    if "transforms.json" in entries:
        return "vhap-export", folder
    for child in ("flame_param", "checkpoint", os.path.join("flame", "exp")):
        if os.path.isdir(os.path.join(folder, child)):
            if child == "flame_param" and os.path.isfile(os.path.join(folder, "transforms.json")):
                return "vhap-export", folder
            return "files", os.path.join(folder, child)
    if any(os.path.isfile(os.path.join(folder, e, "exp.npy")) for e in entries):
        return "emoca-codes", folder
    return "files", folder


def _read_folder(folder: str, fps: float | None, camera_index: int | None, face: int | None = None) -> TrackerImport:
    kind, folder = _folder_layout(folder)
    if kind == "vhap-export":
        return _read_vhap_export(folder, fps, camera_index)
    entries = sorted(os.listdir(folder))
    if kind == "emoca-codes":
        faces, note = _emoca_face([e for e in entries if os.path.isfile(os.path.join(folder, e, "exp.npy"))], face)
        names = _numbered(folder, faces)
        result = _relabel(_read_frames(folder, names, _read_emoca_codes, fps, f"{len(names)} --save_codes folders"),
                          "emoca-codes")
        result.report.notes += [note] if note else []
        return result
    tracked = sorted((e for e in entries if e.startswith("tracked_flame_params") and e.endswith(".npz")),
                     key=lambda e: frame_number(e.replace("tracked_flame_params", "")) or -1)
    if tracked:
        return _read_tracker(os.path.join(folder, tracked[-1]), fps, None, True)
    files = [e for e in entries if e.lower().endswith(_EXTENSIONS) and os.path.isfile(os.path.join(folder, e))]
    names = _numbered(folder, files)
    if not names:
        raise TrackerFormatError(f"{folder} holds no numbered tracker files (.npz, .npy, .pkl, .pth, .frame, .txt); "
                                 f"supported: {SUPPORTED}")
    extensions = sorted({os.path.splitext(n)[1].lower() for _, n in names})
    if len(extensions) > 1:
        raise TrackerFormatError(f"{folder} mixes {extensions}: keep one tracker's per-frame files in a folder")
    if extensions == [".txt"]:  # INSTA's flame/exp: one expression vector per file
        def read(path: str) -> dict[str, Any]:
            return {"flame.exp": read_file_arrays(path).popitem()[1]}
        result = _relabel(_read_frames(folder, names, read, fps, f"{len(names)} per-frame .txt files"), "insta")
        result.report.mapped = [m.replace("flame.exp", "exp .txt") for m in result.report.mapped]
        result.report.notes.append("INSTA's folders hold expression only: pose, jaw, eyes and shape stay at rest")
        return result
    result = _read_frames(folder, names, read_file_arrays, fps, f"{len(names)} per-frame {extensions[0]} files")
    if os.path.basename(folder) == "flame_param" and result.report.tool == tool_by_id("gaussian-avatars").name:
        result = _relabel(result, "vhap-export")
        result.report.notes.append("no transforms.json beside the folder: no camera")
    return result


def _relabel(result: TrackerImport, tool_id: str) -> TrackerImport:
    """Name the tool a folder's layout revealed (its files' keys alone look like another tool's)."""
    tool = tool_by_id(tool_id)
    result.report.tool, result.report.flame_version = tool.name, tool.flame_version
    result.clip.extra.update(source_tool=tool.name, flame_version=tool.flame_version)
    return result


def _sequence_folder(path: str) -> str | None:
    """The folder to read when ``path`` is one frame of a per-frame layout, else None."""
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if name == "transforms.json":
        return parent
    if name in _EMOCA_CODES and os.path.isfile(os.path.join(parent, "exp.npy")):  # EMOCA <frame>/exp.npy
        return os.path.dirname(parent)
    if frame_number(name) is None or name.startswith("tracked_flame_params"):
        return None
    extension = os.path.splitext(name)[1].lower()
    siblings = [e for e in os.listdir(parent) if e.lower().endswith(extension) and frame_number(e) is not None]
    if len(siblings) < 2:
        return None
    grandparent = os.path.dirname(parent)
    if os.path.basename(parent) == "flame_param" and os.path.isfile(os.path.join(grandparent, "transforms.json")):
        return grandparent
    return parent


def read_tracker(path: str | os.PathLike, *, fps: float | None = None, camera_index: int | None = None,
                 whole_sequence: bool = True, limits: ReadLimits = TRACKER_LIMITS) -> TrackerImport:
    """A tracker file or folder as a clip plus its report.

    ``fps``: the source frame rate when the user knows it (tracker files carry none).
    ``camera_index``: which view of a multi-view export to import (default: the first).
    ``whole_sequence``: a numbered per-frame file (``00012.frame``) imports its whole folder.
    ``limits``: what the whole read may allocate (``max_bytes``, checked against declared sizes
    before allocating) and how many frames it may hold (the server passes its own).
    """
    with read_budget(limits):
        return _read_tracker(os.fspath(path), fps, camera_index, whole_sequence)


def _read_tracker(path: str, fps: float | None, camera_index: int | None, whole_sequence: bool) -> TrackerImport:
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise TrackerFormatError(f"source fps must be a positive number, got {fps!r}")
    if os.path.isdir(path):
        return _read_folder(path, fps, camera_index)
    if not os.path.isfile(path):
        raise TrackerFormatError(f"animation file not found: {path}")
    folder = _sequence_folder(path) if whole_sequence else None
    if folder is not None:  # a file of one EMOCA detection folder imports that face
        detection = _EMOCA_DETECTION.match(os.path.basename(os.path.dirname(os.path.abspath(path))))
        return _read_folder(folder, fps, camera_index, int(detection.group(2)) if detection else None)
    arrays = read_file_arrays(path)
    return import_arrays(os.path.basename(path), arrays, "one file", fps)
