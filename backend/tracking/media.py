"""Reading the tracker's input (a photo, a video or a folder of frames) and writing its overlay.

Videos are decoded (and the overlay video encoded) with PyAV, FFmpeg's Python binding; photos
and folder frames with the one image reader (:func:`flamediff.formats.images.decode_image`:
upright by EXIF orientation, 16-bit and grey read right, large photos downsized, the one
decode-safety limit). Frames are RGB ``uint8`` arrays ``[H, W, 3]``. A video is decoded twice (landmarks,
then overlay) instead of being held in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flamediff.formats.images import (ImageFormatError, ImageHeader, check_image_file, decode_image, reading_notes,
                                      working_size)
from flamediff.tracking.landmarks import INSTALL_HINT, TrackingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FOLDER_FPS = 25.0
HINT = "give a photo (.png/.jpg), a video (.mp4/.mov/.mkv/.avi/.webm) or a folder of frames"


@dataclass
class Footage:
    """What ``flamediff track`` reads: its kind, frame count, frame rate and size ``(W, H)`` (of the
    frames as read: upright, downsized); ``notes`` say what reading a photo changed; ``seconds``: a
    video's length as its container declares it (0 when it does not), which Matroska gives
    without a frame count."""

    path: str
    kind: str              # "image", "video" or "folder"
    count: int
    fps: float
    size: tuple[int, int]
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order (decoded again on each call)."""
        if self.kind == "video":
            yield from _video_frames(self.path)
        else:
            for path in self.files:
                yield _read_image(path, self.size)


def _read_image(path: str, size: tuple[int, int]) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            frame = decode_image(handle.read(), path).pixels
    except ImageFormatError as exc:
        raise TrackingError(f"{exc}; {HINT}") from None
    except OSError as exc:
        raise TrackingError(f"{path} could not be read ({exc.strerror or exc}); {HINT}") from None
    if (frame.shape[1], frame.shape[0]) != size:
        raise TrackingError(f"{path} is {frame.shape[1]}x{frame.shape[0]} but the folder's first frame is "
                            f"{size[0]}x{size[1]}; give frames of one size")
    return frame


def _header(path: str) -> ImageHeader:
    """The image header of ``path``, checked for a safe decode; a file that is no image raises
    ImageFormatError (kind 'format': perhaps a video), any other refusal TrackingError."""
    try:
        return check_image_file(path)
    except ImageFormatError as exc:
        if exc.kind == "format":
            raise
        raise TrackingError(f"{exc}; {HINT}") from None
    except OSError as exc:
        raise TrackingError(f"{path} could not be read ({exc.strerror or exc}); {HINT}") from None


def _photo_footage(path: str, kind: str, files: tuple[str, ...], fps: float, header: ImageHeader) -> Footage:
    notes = tuple(f"{os.path.basename(files[0])}: {note}" for note in reading_notes(header))
    return Footage(path=path, kind=kind, count=len(files), fps=fps, size=working_size(header), files=files,
                   notes=notes)


def _frame_number(name: str) -> tuple[int, str]:
    numbers = re.findall(r"\d+", name)
    return (int(numbers[-1]) if numbers else -1, name)


def _av():
    try:
        import av
    except ImportError:
        raise TrackingError(f"reading videos needs PyAV; {INSTALL_HINT}") from None
    return av


def _video_frames(path: str) -> Iterator[np.ndarray]:
    av = _av()
    with av.open(path) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _open_video(path: str, count_frames: bool = True) -> Footage:
    """A video's footage from its container; without ``count_frames`` a container that declares
    no frame count gives 0 rather than being decoded to count (the server caps that while tracking)."""
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise TrackingError(f"{path} has no video stream; {HINT}")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS)
            count = stream.frames or (sum(1 for _ in container.decode(video=0)) if count_frames else 0)
            size = (stream.codec_context.width, stream.codec_context.height)
            seconds = _declared_seconds(container, stream)
    except av.error.FFmpegError as exc:
        raise TrackingError(f"{path} could not be read as an image or a video ({exc}); {HINT}") from None
    return Footage(path=path, kind="video", count=int(count), fps=fps, size=size, seconds=seconds)


def _declared_seconds(container, stream) -> float:
    """The length the container's header declares (the stream's, else the file's), 0 if none."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else 0.0  # AV_TIME_BASE units


def open_footage(path: str, fps: float | None = None, count_frames: bool = True) -> Footage:
    """Classify and open ``path``: a folder of frames, a photo (the image reader's header) or a video
    (``count_frames``: see :func:`_open_video`)."""
    if os.path.isdir(path):
        files = sorted((os.path.join(path, name) for name in os.listdir(path) if name.lower().endswith(IMAGE_SUFFIXES)),
                       key=lambda p: _frame_number(os.path.basename(p)))
        if not files:
            raise TrackingError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}); {HINT}")
        try:
            header = _header(files[0])
        except ImageFormatError as exc:
            raise TrackingError(f"{exc}; {HINT}") from None
        return _photo_footage(path, "folder", tuple(files), fps or DEFAULT_FOLDER_FPS, header)
    if not os.path.isfile(path):
        raise TrackingError(f"{path} does not exist; {HINT}")
    try:
        header = _header(path)
    except ImageFormatError:
        footage = _open_video(path, count_frames)
        return footage if fps is None else Footage(**{**vars(footage), "fps": fps})
    return _photo_footage(path, "image", (path,), fps or DEFAULT_FOLDER_FPS, header)


def draw_overlay(frame: np.ndarray, pixels: np.ndarray, faces: np.ndarray, camera_points: np.ndarray,
                 detected: np.ndarray | None, fitted: np.ndarray, caption: str) -> np.ndarray:
    """The fitted mesh, flat-shaded and half transparent, over ``frame`` (``pixels`` [V, 2] and
    ``camera_points`` [V, 3] in the camera frame), MediaPipe's points (green), the fitted landmarks
    (red) and a caption. Faces are painted far to near (painter's algorithm)."""
    import cv2

    corners = camera_points[faces]                                         # [F, 3, 3]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    centres = corners.mean(axis=1)
    facing = -(normals * centres).sum(axis=1) / (np.linalg.norm(normals, axis=1) * np.linalg.norm(centres, axis=1) + 1e-12)
    visible = np.flatnonzero((facing > 0) & (corners[..., 2] > 0).all(axis=1))
    layer = frame.copy()
    polygons = np.round(pixels[faces[visible]] * 16).astype(np.int32)
    shades = (60 + 195 * facing[visible]).astype(int)
    for k in np.argsort(-centres[visible, 2]):
        cv2.fillConvexPoly(layer, polygons[k], (int(shades[k]),) * 3, cv2.LINE_AA, shift=4)
    out = cv2.addWeighted(layer, 0.6, frame, 0.4, 0.0)
    scale = max(frame.shape[:2]) / 512.0
    radius = max(1, round(2 * scale))
    for points, colour in ((detected, (40, 220, 60)), (fitted, (235, 40, 40))):
        for x, y in ([] if points is None else points):
            cv2.circle(out, (round(x), round(y)), radius, colour, -1, cv2.LINE_AA)
    cv2.putText(out, caption, (int(8 * scale) + 2, int(24 * scale) + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale + 0.2,
                (255, 255, 0), max(1, round(scale)), cv2.LINE_AA)
    return out


class FrameWriter:
    """Writes frames: one PNG for a photo, an H.264 MP4 for a clip (the overlay; the benchmark's test video)."""

    def __init__(self, path: str, fps: float, size: tuple[int, int], single: bool) -> None:
        self.path, self.single = path, single
        if single:
            return
        av = _av()
        self._container = av.open(path, mode="w")
        self._stream = self._container.add_stream("libx264", rate=round(fps))
        self._stream.width, self._stream.height = size[0] // 2 * 2, size[1] // 2 * 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray) -> None:
        if self.single:
            Image.fromarray(frame).save(self.path)
            return
        av = _av()
        even = np.ascontiguousarray(frame[: self._stream.height, : self._stream.width])
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if not self.single:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
