"""MediaPipe face-mesh landmarks: 478 points (468 mesh + 10 iris) in pixels per image.

The ``mediapipe`` wheel ships its face detector and face-mesh models inside the package, so nothing
is downloaded at run time. It is an optional extra (``pip install 'flamediff[tracking]'``) and is
imported only when a detector is created.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing

import numpy as np

from flamediff.errors import FlamediffError

MEDIAPIPE_POINTS = 478
INSTALL_HINT = "install the tracking extra: pip install 'flamediff[tracking]'"


class TrackingError(FlamediffError):
    """A user-facing problem of face tracking (no face found, unreadable input, missing extra)."""


def _face_mesh_module():
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as exc:
        raise TrackingError(f"face tracking needs MediaPipe, which is not installed ({exc}); {INSTALL_HINT}") from None
    return face_mesh


class LandmarkDetector:
    """One MediaPipe FaceMesh (with iris refinement) for a photo, a folder or a video.

    ``video=True`` lets MediaPipe track the face from frame to frame (faster, steadier points);
    otherwise every image is searched on its own. Close it (``contextlib.closing``) when done.
    """

    def __init__(self, video: bool = False, min_confidence: float = 0.5) -> None:
        face_mesh = _face_mesh_module()
        self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=1, refine_landmarks=True,
                                        min_detection_confidence=min_confidence,
                                        min_tracking_confidence=min_confidence)

    def close(self) -> None:
        self._mesh.close()

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """``[478, 2]`` pixel coordinates (top-left image corner at 0) of the face in an RGB
        ``uint8`` image ``[H, W, 3]``, or ``None`` when MediaPipe finds no face."""
        image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        height, width = image.shape[:2]
        return np.array([[p.x * width, p.y * height] for p in points], dtype=np.float64)


def detect_all(images: Iterable[np.ndarray], video: bool = False) -> Iterator[np.ndarray | None]:
    """Landmarks of each image in turn (``None`` where no face is found)."""
    with closing(LandmarkDetector(video=video)) as detector:
        for image in images:
            yield detector.detect(image)
