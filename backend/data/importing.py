"""``flamediff dataset import``: tracked real footage -> the training dataset format (``dataset.py``).

A *capture* is one tracked sequence of one person; its folder name says who, by VHAP's own rule
(``combine_nerf_datasets.py``: the subject is the name up to the first ``_``, so
``074_EMO-1_v16_DS4_whiteBg`` is subject ``074``). Two capture layouts are read, both through the
tracker layer (``flamediff.formats.trackers``), so every tracker ``flamediff convert`` reads works:

- a VHAP export (GaussianAvatars' input; NeRSemble is published this way): ``transforms.json``
  (per view and timestep: ``file_path``, ``fg_mask_path``, ``flame_param_path``, OpenGL
  camera-to-world and intrinsics), ``images/``, ``fg_masks/``, ``flame_param/``; every view is
  imported as its own sequence;
- video frames plus a tracker: ``images/`` (or ``frames/``, or metrical-tracker's ``input/``) of
  numbered frames beside the tracker's output (metrical-tracker's ``checkpoint/``, a monocular VHAP
  track's ``tracked_flame_params_*.npz``, ...); the tracker must save a camera, and the frames must
  be the ones it tracked (same numbers, same size or aspect).

Frames are cropped to the square that frames the head as the procedural training set and the render
pipeline do (``conventions.head_squares``) and resized to the dataset resolution; the intrinsics
follow the crop exactly. Every sample is labelled real; identities are split into
train and held-out sets (``splits.json``) as in the procedural dataset.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from flamediff.data.dataset import DatasetError, DatasetIndex, write_dataset
from flamediff.data.splits import read_splits, split_identities, write_splits
from flamediff.formats.animation import POSE_FIELDS, AnimationClip
from flamediff.formats.conventions import head_squares, square_region_intrinsics
from flamediff.formats.trackers import (
    TrackerFormatError,
    TrackerReport,
    flame_version_note,
    frame_number,
    read_tracker,
    transforms_views,
)

#: Folders of video frames a capture may hold, in the order they are looked for (metrical-tracker
#: writes the frames it tracked to input/ beside checkpoint/).
FRAME_FOLDERS = ("images", "frames", "input")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BACKGROUNDS: dict[str, tuple[int, ...]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
LAYOUTS = ("a VHAP export (transforms.json + images/ + flame_param/), or images/ (frames/, input/) of numbered video "
           "frames beside a tracker's output (e.g. checkpoint/*.frame, flame_param/*.npz)")


@dataclass
class CaptureView:
    """One camera's frames of one capture: the images, their masks and the tracked clip."""

    capture: str          # the capture folder's name
    subject: str          # identity name
    view: str             # camera name ("" for a monocular capture)
    clip: AnimationClip   # one row per image, with the camera of each
    images: list[str]
    masks: list[str | None]
    notes: list[str]


def subject_of(capture: str) -> str:
    """VHAP's rule: the subject is the capture folder's name up to the first underscore."""
    return capture.split("_")[0]


# ============================================================================ finding captures

def _is_capture(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "transforms.json")) or _frames_folder(folder) is not None


def _frames_folder(folder: str) -> str | None:
    for name in FRAME_FOLDERS:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            return path
    return None


def find_captures(source: str) -> list[str]:
    """``source`` itself when it is a capture, else its sub-folders that are captures (sorted)."""
    if not os.path.isdir(source):
        raise DatasetError(f"{source} is not a folder; give a capture folder ({LAYOUTS}) or a folder of them")
    if _is_capture(source):
        return [source]
    if os.path.isfile(os.path.join(source, "transforms_train.json")):  # vhap/combine_nerf_datasets.py
        raise DatasetError(f"{source} is a combined VHAP dataset (transforms_train.json pointing into its sibling "
                           "sequence exports): give the folder that holds those exports (sequences_trainval.txt "
                           "and sequences_test.txt list them)")
    found = sorted(os.path.join(source, e) for e in os.listdir(source) if _is_capture(os.path.join(source, e)))
    if not found:
        raise DatasetError(f"{source} holds no capture: expected {LAYOUTS}, or a folder of such captures")
    return found


def read_capture(folder: str, asset_name: str, cameras: list[int] | None = None, every: int = 1) -> list[CaptureView]:
    """The views of one capture folder, each a clip with one row per image; the notes say what
    the tracker layer dropped and which FLAME version the tool implies if not the asset's."""
    name = os.path.basename(os.path.normpath(folder))
    frames_dir = _frames_folder(folder)
    try:
        if os.path.isfile(os.path.join(folder, "transforms.json")):
            views = _read_vhap_export(folder, name, cameras, asset_name)
        elif frames_dir is not None:
            views = [_read_frames_and_tracker(folder, name, frames_dir, asset_name)]
        else:
            raise DatasetError(f"{name} is not a capture: expected {LAYOUTS}")
    except TrackerFormatError as exc:
        raise DatasetError(f"{name}: {exc}") from None
    return [_every(view, every) for view in views]


def _notes(report: TrackerReport, asset_name: str) -> list[str]:
    version = flame_version_note(report, asset_name)
    return report.notes + [f"dropped: {d}" for d in report.dropped] + ([version] if version else [])


def _every(view: CaptureView, every: int) -> CaptureView:
    rows = np.arange(0, view.clip.num_frames, every)
    return replace(view, clip=view.clip.take_rows(rows), images=[view.images[i] for i in rows],
                   masks=[view.masks[i] for i in rows])


def _read_vhap_export(folder: str, name: str, cameras: list[int] | None, asset_name: str) -> list[CaptureView]:
    """Every camera of a VHAP export: parameters and cameras through the tracker layer, the image
    and mask paths from ``transforms.json`` (``file_path``, ``fg_mask_path``)."""
    rows_of = transforms_views(os.path.join(folder, "transforms.json"))
    chosen = list(rows_of) if cameras is None else cameras
    missing = sorted(set(chosen) - set(rows_of))
    if missing:
        raise DatasetError(f"{name}/transforms.json has no camera_index {missing}; it has {list(rows_of)}")
    views = []
    for camera in chosen:
        result = read_tracker(folder, camera_index=camera)
        own = rows_of[camera]
        images = [_exported_path(folder, name, row, "file_path") for row in own]
        masks = [_exported_path(folder, name, row, "fg_mask_path") if row.get("fg_mask_path") else None
                 for row in own]
        camera_id = str(own[0].get("camera_id", camera))
        views.append(CaptureView(name, subject_of(name), camera_id, result.clip, images, masks,
                                 _notes(result.report, asset_name)))
    return views


def _exported_path(folder: str, name: str, row: dict, key: str) -> str:
    """The file a ``transforms.json`` frame names under ``key``, checked to exist."""
    relative = row.get(key)
    if not relative:
        raise DatasetError(f"{name}/transforms.json: a frame (timestep {row.get('timestep_index')}) lacks "
                           f"'{key}': export the dataset again with VHAP's export_as_nerf_dataset")
    path = os.path.normpath(os.path.join(folder, relative))
    if not os.path.isfile(path):
        raise DatasetError(f"{name}: transforms.json names {relative}, which is missing: the export is incomplete "
                           "(copy the whole export folder)")
    return path


def _read_frames_and_tracker(folder: str, name: str, frames_dir: str, asset_name: str) -> CaptureView:
    """Numbered video frames matched by frame number to a tracker's per-frame output."""
    result = read_tracker(folder)
    clip = result.clip
    camera_of(clip, f"{name}: {result.report.tool}")
    images = _numbered_images(frames_dir, name)
    tracked, have = set(clip.frame.tolist()), set(images)
    if tracked != have:
        lacking, untracked = sorted(tracked - have), sorted(have - tracked)
        raise DatasetError(f"{name}: {len(tracked)} tracked frames but {len(have)} images in "
                           f"{os.path.basename(frames_dir)}/ (no image for frames {lacking[:5]}, no tracking for "
                           f"images {untracked[:5]}): the frames folder must hold exactly the frames the tracker ran "
                           "on, named by frame number")
    paths = [images[int(n)] for n in clip.frame]
    return CaptureView(name, subject_of(name), "", clip, paths, [None] * len(paths), _notes(result.report, asset_name))


def _numbered_images(folder: str, name: str) -> dict[int, str]:
    images: dict[int, str] = {}
    for entry in sorted(os.listdir(folder)):
        number = frame_number(entry)
        if not entry.lower().endswith(IMAGE_EXTENSIONS) or number is None:
            continue
        if number in images:
            raise DatasetError(f"{name}: {os.path.basename(images[number])} and {entry} are both frame {number}: "
                               "keep one image per frame")
        images[number] = os.path.join(folder, entry)
    if not images:
        raise DatasetError(f"{name}: {folder} holds no numbered images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


# ============================================================================ cropping

def camera_of(clip: AnimationClip, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """``(K, R, t, image_size)`` of a tracked clip; training needs the camera each frame was seen from."""
    if clip.K is None or clip.R is None or clip.t is None or clip.image_size is None:
        raise DatasetError(f"{source} saves no camera, and training needs the camera each frame was seen from; "
                           "track with a tool that saves one (VHAP, metrical-tracker)")
    return clip.K, clip.R, clip.t, clip.image_size


def head_crops(capture: str, clip: AnimationClip, vertices: np.ndarray) -> np.ndarray:
    """``[T, 3]`` squares ``(left, top, side)`` framing each frame's head the way the procedural
    training set and the render pipeline do (:func:`head_squares`); they may reach past the image."""
    K, R, t, _ = camera_of(clip, capture)
    depth = np.einsum("fij,fvj->fv", R, vertices)[..., 2] + t[:, None, 2]
    behind = np.nonzero((depth <= 0).any(axis=1))[0]
    if len(behind):
        raise DatasetError(f"{capture}: frame {int(clip.frame[behind[0]])} has the head behind the camera: the "
                           "tracker's camera does not match its parameters")
    return head_squares(vertices, K, R, t)


def load_sample(image_path: str, mask_path: str | None, square: np.ndarray, resolution: int,
                background: str) -> np.ndarray:
    """One ``[R, R, 3]`` uint8 frame: the square of the image, composited on ``background`` by its
    mask; where the square reaches past the image it is filled with the background colour (with
    ``keep``: the median colour of the image's border)."""
    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
        if background != "keep" and mask_path is not None:  # import_dataset checked every frame has one
            with Image.open(mask_path) as opened:
                mask = opened.convert("L")
            image = Image.composite(image, Image.new("RGB", image.size, BACKGROUNDS[background]), mask)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{image_path} is not a readable image ({exc})") from None
    left, top, side = (float(v) for v in square)
    pad = int(np.ceil(max(0.0, -left, -top, left + side - image.width, top + side - image.height)))
    if pad:
        fill = BACKGROUNDS.get(background) or _border_colour(np.asarray(image))
        padded = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), fill)
        padded.paste(image, (pad, pad))
        image, left, top = padded, left + pad, top + pad
    box = (left, top, left + side, top + side)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box))


def _border_colour(pixels: np.ndarray) -> tuple[int, ...]:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


def _image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable image ({exc})") from None


def fit_camera_to_images(view: CaptureView) -> AnimationClip:
    """The view's clip with ``K`` in the images' pixels: equal sizes pass, a uniformly scaled
    copy (a downscaled video) scales ``K``; anything else is refused."""
    clip = view.clip
    K, _, _, (tracked_w, tracked_h) = camera_of(clip, view.capture)
    sizes = {_image_size(path) for path in view.images}
    if len(sizes) != 1:
        raise DatasetError(f"{view.capture}: the images of one view differ in size ({sorted(sizes)})")
    width, height = sizes.pop()
    if (width, height) == (tracked_w, tracked_h):
        return clip
    scale = width / tracked_w
    if abs(height / tracked_h - scale) > 1e-3:
        raise DatasetError(f"{view.capture}: the images are {width} x {height} px but the tracker's camera is for "
                           f"{tracked_w} x {tracked_h}: give the frames the tracker ran on (e.g. its crops)")
    K = np.array(K, np.float64)
    K[:, :2, :] *= scale
    return replace(clip, K=K, image_size=(width, height))


# ============================================================================ writing

class ImportedFrames:
    """The dataset's frames, decoded, cropped and resized one at a time while ``write_dataset`` saves them."""

    def __init__(self, images: list[str], masks: list[str | None], crops: np.ndarray, resolution: int,
                 background: str) -> None:
        self.images, self.masks, self.crops = images, masks, crops
        self.resolution, self.background = resolution, background

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return load_sample(self.images[index], self.masks[index], self.crops[index], self.resolution, self.background)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def _concatenate(clips: list[AnimationClip], asset) -> AnimationClip:
    """One clip of every sample (frame = sample index), coefficients zero-padded to the widest."""
    num_shape = max(c.shape.shape[1] for c in clips)
    num_expression = max(c.expression.shape[1] for c in clips)
    if num_shape > asset.num_shape or num_expression > asset.num_expression:
        raise DatasetError(f"the captures have {num_shape} shape / {num_expression} expression coefficients but the "
                           f"FLAME asset '{asset.name}' has {asset.num_shape} / {asset.num_expression}: pass "
                           "--flame-asset with the FLAME model the tracker used")
    clips = [c.padded(num_shape, num_expression) for c in clips]
    fields = {name: np.concatenate([getattr(c, name) for c in clips])
              for name in ("shape", "expression", *POSE_FIELDS, "translation", "K", "R", "t")}
    total = len(fields["shape"])
    return AnimationClip(frame=np.arange(total, dtype=np.int64), fps=clips[0].fps, image_size=clips[0].image_size,
                         flame_asset=asset.identity(),
                         extra={"source": "flamediff dataset import"}, **fields)


def import_dataset(sources: list[str], out_dir: str, asset, resolution: int = 128, heldout_fraction: float = 0.2,
                   seed: int = 0, cameras: list[int] | None = None, every: int = 1, background: str = "keep",
                   identity: str | None = None, log=print) -> DatasetIndex:
    """Write the training dataset of the captures in ``sources`` to ``out_dir``; returns its index."""
    from flamediff.flame.model import FlameModel

    if every < 1 or resolution < 8 or not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError("--every must be >= 1, --resolution >= 8 and --heldout-fraction in [0, 1)")
    views = [view for source in sources for capture in find_captures(source)
             for view in read_capture(capture, asset.name, cameras, every)]
    if identity:
        views = [replace(view, subject=identity) for view in views]
    if background != "keep" and any(mask is None for view in views for mask in view.masks):
        raise DatasetError(f"--background {background} needs a foreground mask per frame (VHAP's fg_masks/); "
                           "some captures have none: use --background keep")
    subjects = sorted({view.subject for view in views})
    flame = FlameModel(asset)
    framed = [_framed(view, flame, resolution, log) for view in views]
    clips = [clip for clip, _ in framed]
    frames = ImportedFrames([path for view in views for path in view.images],
                            [mask for view in views for mask in view.masks],
                            np.concatenate([squares for _, squares in framed]), resolution, background)
    index = write_dataset(
        out_dir, frames, _concatenate(clips, asset),
        identity=np.concatenate([[subjects.index(view.subject)] * clip.num_frames
                                 for view, clip in zip(views, clips, strict=True)]),
        label=np.zeros(len(frames), np.int64),
        sequence=np.concatenate([[number] * c.num_frames for number, c in enumerate(clips)]),
        frame_in_sequence=np.concatenate([np.arange(c.num_frames) for c in clips]),
        description=f"imported by 'flamediff dataset import' from {len(views)} views of {len(subjects)} subjects",
        source="real")
    train, heldout = split_identities(len(subjects), seed, heldout_fraction)
    write_splits(out_dir, seed, heldout_fraction, train, heldout, identity_names=subjects,
                 sequences=[v.capture + (f"/{v.view}" if v.view else "") for v in views])
    return index


def _framed(view: CaptureView, flame, resolution: int, log) -> tuple[AnimationClip, np.ndarray]:
    """The view's clip with the cameras of its head squares at ``resolution``, and the squares."""
    clip = fit_camera_to_images(view)
    with torch.no_grad():
        vertices = flame.forward_clip(clip).vertices.double().numpy()
    squares = head_crops(view.capture, clip, vertices)
    K = square_region_intrinsics(camera_of(clip, view.capture)[0], squares, resolution)
    log(f"  {view.capture}{f' camera {view.view}' if view.view else ''}: {clip.num_frames} frames of subject "
        f"{view.subject}")
    for note in dict.fromkeys(view.notes):
        log(f"    {note}")
    return replace(clip, K=K, image_size=(resolution, resolution)), squares


# ============================================================================ command line

def cmd_import(args: argparse.Namespace) -> int:
    from flamediff.assets import load_asset

    asset = load_asset(args.flame_asset)
    index = import_dataset(args.sources, args.out, asset, resolution=args.resolution,
                           heldout_fraction=args.heldout_fraction, seed=args.seed, cameras=args.cameras,
                           every=args.every, background=args.background, identity=args.identity)
    splits = read_splits(args.out)
    names = splits["identity_names"]
    print(f"wrote {len(index)} real frames of {len(names)} subjects ({', '.join(names)}) in "
          f"{len(index.sequences())} sequences to {args.out}; held-out subjects: "
          f"{[names[i] for i in splits['heldout']] or 'none'}")
    return 0


def _camera_list(text: str) -> list[int]:
    """``--cameras 0,8`` as camera_index values."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected camera_index numbers like 0,8, got {text!r}") from None


def add_import_command(commands) -> None:
    """Add ``dataset import`` to the ``dataset`` command's subparsers."""
    parser = commands.add_parser(
        "import", help="turn tracked real footage (VHAP / GaussianAvatars / NeRSemble exports, or video frames + "
                       "a tracker's output) into a training dataset",
        description=f"Each SRC is a capture ({LAYOUTS}) or a folder of captures. The subject of a capture is its "
                    "folder name up to the first '_' (VHAP's rule: 074_EMO-1_v16 is subject 074); every camera view "
                    "becomes a sequence; frames are cropped to the square that frames the head as the procedural "
                    "training set does (padded where it reaches past the image); all samples are "
                    "labelled real; subjects are split into train / held-out (splits.json).")
    parser.add_argument("sources", nargs="+", metavar="SRC", help="capture folder or folder of captures")
    parser.add_argument("--out", required=True, metavar="DIR", help="output dataset folder")
    parser.add_argument("--resolution", type=int, default=128, help="square frame size in pixels (default 128)")
    parser.add_argument("--heldout-fraction", type=float, default=0.2,
                        help="fraction of subjects held out of training (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject split (default 0)")
    parser.add_argument("--cameras", default=None, metavar="I,J", type=_camera_list,
                        help="camera_index values of a multi-view export to import (default: all)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="keep every N-th frame (default 1)")
    parser.add_argument("--background", choices=("keep", *BACKGROUNDS), default="keep",
                        help="composite frames on this colour with the export's fg_masks (default keep)")
    parser.add_argument("--identity", default=None, metavar="NAME",
                        help="one subject name for every capture given (default: folder name up to the first '_')")
    parser.add_argument("--flame-asset", metavar="DIR", default=None,
                        help="FLAME asset folder; default: $FLAMEDIFF_FLAME_ASSET or the procedural head")
    parser.set_defaults(func=cmd_import)
