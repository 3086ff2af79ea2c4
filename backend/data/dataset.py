"""The training dataset format: frames plus per-frame FLAME parameters, camera, identity, domain.

A dataset is a folder::

    dataset.json      {"format": "flamediff.dataset", "version": 1, "resolution": R,
                       "flame_asset": {"name", "hash"}, "num_samples": N, "description": ...}
    annotations.npz   an animation file (backend/formats/animation.py) with one row per sample:
                      FLAME parameters and the OpenCV camera K, R, t of that frame
    samples.npz       identity [N] int, label [N] int (0 real, 1 synthetic),
                      sequence [N] int (continuous clips), frame_in_sequence [N] int
    frames/000000.png ...   R x R RGB images, in sample order

Frames of one ``sequence`` are consecutive in time (temporal training); ``identity`` says which
frames may serve as each other's reference image; ``label`` is the paper's real/synthetic flag.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from flamediff.errors import FlamediffError
from flamediff.formats.animation import AnimationClip, AnimationFormatError, load_animation, save_animation

FORMAT_NAME = "flamediff.dataset"
FORMAT_VERSION = 1


class DatasetError(FlamediffError):
    """A dataset folder that breaks the format; the message names the file and field."""


@dataclass
class DatasetIndex:
    """Everything about a dataset but the pixels (those are read lazily per sample)."""

    folder: str
    resolution: int
    flame_asset: dict[str, str]
    annotations: AnimationClip
    identity: np.ndarray
    label: np.ndarray
    sequence: np.ndarray
    frame_in_sequence: np.ndarray
    source: str = "real"   # what the frames are: "procedural" (generated heads) or "real" (footage)

    def __len__(self) -> int:
        return len(self.identity)

    def frame_path(self, index: int) -> str:
        return os.path.join(self.folder, "frames", f"{index:06d}.png")

    def load_frame(self, index: int) -> np.ndarray:
        """``[R, R, 3]`` uint8 image of sample ``index``."""
        path = self.frame_path(index)
        try:
            with Image.open(path) as image:
                array = np.array(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable frame ({exc})") from None
        if array.shape[:2] != (self.resolution, self.resolution):
            raise DatasetError(f"{path} is {array.shape[1]}x{array.shape[0]}, the dataset says "
                               f"{self.resolution}x{self.resolution}")
        return array

    def frame_tensor(self, index: int) -> torch.Tensor:
        """Sample ``index`` as the VAE takes it: ``[3, R, R]`` float32 in [-1, 1]."""
        from flamediff.models.pixels import images_to_tensor  # the networks are not needed to read frames

        return images_to_tensor(self.load_frame(index))

    def samples_of_identity(self, identity: int) -> np.ndarray:
        return np.nonzero(self.identity == identity)[0]

    def sequences(self) -> list[np.ndarray]:
        """Sample indices of each sequence, in time order."""
        out = []
        for sequence in np.unique(self.sequence):
            rows = np.nonzero(self.sequence == sequence)[0]
            out.append(rows[np.argsort(self.frame_in_sequence[rows])])
        return out


def write_dataset(folder: str, frames: list[np.ndarray], annotations: AnimationClip, identity: np.ndarray,
                  label: np.ndarray, sequence: np.ndarray, frame_in_sequence: np.ndarray,
                  description: str = "", source: str = "real") -> DatasetIndex:
    """Write a complete dataset folder (the procedural generator, ``dataset import``, tests);
    ``source`` says what the frames are, and becomes a trained checkpoint's ``training_domain``."""
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    resolution = int(frames[0].shape[0])
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, "frames", f"{index:06d}.png"))
    save_animation(os.path.join(folder, "annotations.npz"), annotations)
    np.savez(os.path.join(folder, "samples.npz"), identity=identity, label=label, sequence=sequence,
             frame_in_sequence=frame_in_sequence)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "resolution": resolution,
              "flame_asset": annotations.flame_asset, "num_samples": len(frames), "description": description,
              "source": source}
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump(header, handle, indent=2)
    return read_dataset(folder)


def _read_header(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(path):
        raise DatasetError(f"{folder} is not a flamediff dataset: no dataset.json (make one with "
                           "'flamediff dataset procedural --out DIR' or see the dataset format in docs/TRAINING.md)")
    try:
        with open(path, encoding="utf-8") as handle:
            header = json.load(handle)
    except ValueError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc})") from None
    if header.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: 'format' is {header.get('format')!r}, expected {FORMAT_NAME!r}")
    if not isinstance(header.get("version"), int) or header["version"] > FORMAT_VERSION:
        raise DatasetError(f"{path}: 'version' {header.get('version')!r} is not one this flamediff reads "
                           f"(<= {FORMAT_VERSION})")
    if not isinstance(header.get("resolution"), int) or header["resolution"] <= 0:
        raise DatasetError(f"{path}: 'resolution' must be a positive integer")
    return header


def read_dataset(folder: str) -> DatasetIndex:
    """Read and validate a dataset folder's index (not the frames)."""
    header = _read_header(folder)
    try:
        annotations = load_animation(os.path.join(folder, "annotations.npz"))
    except AnimationFormatError as exc:
        raise DatasetError(f"{folder}/annotations.npz: {exc}") from None
    if not annotations.has_camera:
        raise DatasetError(f"{folder}/annotations.npz: every sample needs a camera (K, R, t)")
    samples_path = os.path.join(folder, "samples.npz")
    if not os.path.isfile(samples_path):
        raise DatasetError(f"{samples_path} is missing (identity, label, sequence per sample)")
    with np.load(samples_path, allow_pickle=False) as data:
        fields = {}
        for name in ("identity", "label", "sequence", "frame_in_sequence"):
            if name not in data.files:
                raise DatasetError(f"{samples_path}: missing array '{name}'")
            value = np.asarray(data[name])
            if value.shape != (annotations.num_frames,) or value.dtype.kind not in "iu":
                raise DatasetError(f"{samples_path}: '{name}' must be [{annotations.num_frames}] integers, "
                                   f"got {value.dtype} {list(value.shape)}")
            fields[name] = value.astype(np.int64)
    if not np.isin(fields["label"], [0, 1]).all():
        raise DatasetError(f"{samples_path}: 'label' must be 0 (real) or 1 (synthetic)")
    if header.get("num_samples") != annotations.num_frames:
        raise DatasetError(f"{folder}/dataset.json says {header.get('num_samples')} samples, "
                           f"annotations.npz has {annotations.num_frames}")
    return DatasetIndex(folder=folder, resolution=header["resolution"], flame_asset=dict(header.get("flame_asset") or {}),
                        annotations=annotations, source=_source(header), **fields)


def _source(header: dict[str, Any]) -> str:
    """The header's ``source``; datasets written before it existed say it in their description."""
    if isinstance(header.get("source"), str):
        return header["source"]
    return "procedural" if str(header.get("description", "")).startswith("flamediff procedural") else "real"
