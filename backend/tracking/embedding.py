"""Which mesh points the MediaPipe landmarks are fitted to, for a given FLAME asset.

An asset that carries FLAME 2023's MediaPipe embedding (``mediapipe_landmark_embedding.npz``:
``lmk_face_idx``, ``lmk_b_coords`` and the MediaPipe ``landmark_indices``) is fitted with it; the
procedural head with its own MediaPipe table (``procedural_mediapipe.py``, derived on its renders).
Otherwise (or with ``use="ibug"``) the asset's own iBUG embedding is used (FLAME 2020 / the procedural head: 51 points,
iBUG 17-67; a 68-point one is cut to its last 51, the jaw contour being view-dependent) with the
fixed MediaPipe index of each iBUG point below. Both get the two pupils (the front-most vertex of
each eyeball) matched to MediaPipe's iris centres, which is what makes the eye pose observable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from flamediff.formats.flame_asset import FlameAsset
from flamediff.tracking.landmarks import TrackingError

# Made by benchmarks/derive_landmark_mapping.py (defaults: 24 identities x 12 views, seed 17): the
# procedural head rendered cleanly at +-30 deg yaw / +-10 deg pitch with random expressions, MediaPipe run
# on each render, and for every iBUG point the MediaPipe point of smallest median distance to its
# known projection. Not copied from any published table.
IBUG51_FROM_MEDIAPIPE: tuple[int, ...] = (
    63, 53, 52, 65, 107, 336, 296, 282, 444, 276,             # brows (iBUG 17-26)
    8, 6, 419, 2, 240, 97, 164, 326, 327,                     # nose (27-35)
    190, 28, 29, 33, 229, 22, 414, 258, 259, 263, 449, 451,   # eyes (36-47)
    185, 39, 37, 0, 393, 391, 291, 404, 314, 17, 84, 181,     # outer lips (48-59)
    78, 72, 11, 302, 292, 315, 16, 85)                        # inner lips (60-67)
# Median residual of the picks: 0.05-0.11 of the eye-corner distance; both pupils 0.04.
# MediaPipe's iris centres nearest to FLAME's left eye (+x, the subject's left) and right eye pupils.
PUPILS_FROM_MEDIAPIPE: tuple[int, int] = (473, 468)
MEDIAPIPE_EMBEDDING_FILE = "mediapipe_landmark_embedding.npz"
LEFT_EYE_JOINT, RIGHT_EYE_JOINT = 3, 4


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Fitted points: MediaPipe index ``[L]`` of each, and where it lies on the mesh
    (triangle vertex ids ``[L, 3]`` and barycentrics ``[L, 3]``)."""

    kind: str                   # "mediapipe" or "ibug51"
    mediapipe_index: np.ndarray
    triangles: np.ndarray
    barycentrics: np.ndarray


def pupil_vertices(asset: FlameAsset) -> np.ndarray:
    """The front-most (+z) rest vertex of each eyeball (left, right): the centre of the pupil."""
    pupils = []
    for joint in (LEFT_EYE_JOINT, RIGHT_EYE_JOINT):
        eyeball = np.flatnonzero(asset.weights[:, joint] > 0.5)
        if not len(eyeball):
            raise TrackingError(f"{asset.name} has no vertices skinned to eye joint {joint}; the tracker needs "
                                "FLAME's eyeballs (use a FLAME 2020/2023 asset or the procedural head)")
        pupils.append(eyeball[np.argmax(asset.v_template[eyeball, 2])])
    return np.asarray(pupils, np.int64)


def _mediapipe_embedding(asset: FlameAsset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    path = os.path.join(asset.folder, MEDIAPIPE_EMBEDDING_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        missing = {"lmk_face_idx", "lmk_b_coords", "landmark_indices"} - set(data.files)
        if missing:
            raise TrackingError(f"{path} lacks {sorted(missing)}; use FLAME 2023's MediaPipe embedding file or remove it")
        faces = np.asarray(data["lmk_face_idx"], np.int64).reshape(-1)
        return (np.asarray(data["landmark_indices"], np.int64).reshape(-1), asset.faces[faces],
                np.asarray(data["lmk_b_coords"], np.float64).reshape(-1, 3))


def _ibug_embedding(asset: FlameAsset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = len(asset.landmark_faces)
    if count not in (51, 68):
        raise TrackingError(f"{asset.name} has a {count}-point landmark embedding; the tracker needs FLAME's 51 or "
                            f"68 iBUG points or FLAME 2023's {MEDIAPIPE_EMBEDDING_FILE} in the asset folder")
    keep = slice(count - 51, count)
    return (np.asarray(IBUG51_FROM_MEDIAPIPE, np.int64), asset.faces[asset.landmark_faces[keep]],
            np.asarray(asset.landmark_barycentrics[keep], np.float64))


def _procedural_embedding(asset: FlameAsset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    from flamediff.tracking import procedural_mediapipe as table

    spec = asset.metadata.get("spec") or {}
    if (asset.metadata.get("name") != "procedural-head" or asset.metadata.get("generator_version") != table.GENERATOR_VERSION
            or {key: spec.get(key) for key in table.TOPOLOGY} != table.TOPOLOGY):
        return None
    pairs = np.array([(index, vertex) for index, vertex in table.VERTEX_OF_MEDIAPIPE.items()
                      if index not in PUPILS_FROM_MEDIAPIPE], np.int64)
    return pairs[:, 0], np.repeat(pairs[:, 1:], 3, axis=1), np.tile([1.0, 0.0, 0.0], (len(pairs), 1))


def landmark_embedding(asset: FlameAsset, use: str = "auto") -> LandmarkEmbedding:
    """``use="auto"``: MediaPipe's embedding when the asset has one (its file, or the procedural
    head's table), else the iBUG subset; ``"ibug"``: the iBUG subset. Plus the pupils."""
    if use not in ("auto", "ibug"):
        raise TrackingError(f"landmark embedding {use!r} is not one of auto, ibug")
    kind, found = "ibug51", None
    if use == "auto":
        for kind, reader in (("mediapipe", _mediapipe_embedding), ("procedural-mediapipe", _procedural_embedding)):  # noqa: B007 (kind is read after the loop)
            found = reader(asset)
            if found is not None:
                break
        else:
            kind = "ibug51"
    index, triangles, barycentrics = found if found is not None else _ibug_embedding(asset)
    pupils = pupil_vertices(asset)
    one_hot = np.tile([1.0, 0.0, 0.0], (2, 1))
    return LandmarkEmbedding(kind=kind, mediapipe_index=np.concatenate([index, PUPILS_FROM_MEDIAPIPE]),
                             triangles=np.concatenate([triangles, np.repeat(pupils[:, None], 3, 1)]),
                             barycentrics=np.concatenate([barycentrics, one_hot]))
