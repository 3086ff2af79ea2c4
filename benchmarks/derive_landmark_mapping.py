"""Derive the fixed MediaPipe -> iBUG-51 landmark mapping of ``flamediff.tracking.embedding``.

How: render procedural heads (``flamediff.data.procedural``: random identities, expressions,
jaw, gaze, lighting) from cameras within +-30 deg yaw and +-20 deg pitch, where the positions
of the head's 51 iBUG landmarks and of its two pupils are known exactly (the asset's landmark
embedding projected through the render camera); run MediaPipe's face mesh on each render; for
every iBUG point (and pupil) take the MediaPipe point with the smallest median distance over
all renders, distances divided by the eye-corner distance so that every render counts alike.

Run: ``python benchmarks/derive_landmark_mapping.py [--identities 24] [--views 12]``; it prints
the tables to paste into ``backend/tracking/embedding.py`` and the median residual of each pick.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from flamediff.assets import load_asset
from flamediff.data import procedural
from flamediff.tracking.embedding import pupil_vertices
from flamediff.tracking.landmarks import LandmarkDetector


def _project(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    camera = np.einsum("bij,blj->bli", R, points) + t[:, None]
    pixels = np.einsum("bij,blj->bli", K, camera)
    return pixels[..., :2] / pixels[..., 2:3]


def collect(identities: int, views: int, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Known points ``[N, 53, 2]`` (51 iBUG + left/right pupil) and MediaPipe points ``[N, 478, 2]``."""
    asset = load_asset(None)
    renderer = procedural.ProceduralRenderer(asset)
    pupils = torch.as_tensor(pupil_vertices(asset))
    plan = procedural.plan_dataset(renderer.regions, identities, views, 0, 1, resolution, seed)
    known, found = [], []
    with LandmarkDetector() as detector:
        for look, specs in zip(plan.looks, plan.specs):
            rng = np.random.default_rng([seed, look.identity, 9])
            cameras = [procedural.orbit_camera(y, p) for y, p in zip(rng.uniform(-30, 30, views),
                                                                        rng.uniform(-20, 20, views))]
            specs.R, specs.t = np.stack([c[0] for c in cameras]), np.stack([c[1] for c in cameras])
            images = renderer.render(look, specs, resolution).images
            with torch.no_grad():
                flame = renderer.model(shape=torch.as_tensor(look.shape, dtype=torch.float32)[None].expand(views, -1),
                                       expression=torch.as_tensor(specs.expression, dtype=torch.float32),
                                       pose=torch.as_tensor(specs.pose, dtype=torch.float32))
            points = torch.cat([flame.landmarks, flame.vertices[:, pupils]], 1).numpy()
            projected = _project(points, specs.K, specs.R, specs.t)
            for image, truth in zip(images, projected):
                detected = detector.detect(image)
                if detected is not None:
                    known.append(truth)
                    found.append(detected)
    return np.stack(known), np.stack(found)


def nearest(known: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per known point the MediaPipe index with the smallest median normalised distance, and that distance."""
    scale = np.linalg.norm(known[:, 19] - known[:, 28], axis=-1)  # outer eye corners (iBUG 36, 45)
    distance = np.linalg.norm(known[:, :, None] - found[:, None], axis=-1) / scale[:, None, None]
    median = np.median(distance, axis=0)                            # [53, 478]
    best = median.argmin(axis=1)
    return best, median[np.arange(len(best)), best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=24)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    torch.set_num_threads(1)
    known, found = collect(args.identities, args.views, args.resolution, args.seed)
    best, residual = nearest(known, found)
    print(f"{len(known)} renders with a face found of {args.identities * args.views}")
    print("IBUG51_FROM_MEDIAPIPE =", tuple(int(i) for i in best[:51]))
    print("PUPILS_FROM_MEDIAPIPE =", tuple(int(i) for i in best[51:]))
    print("median residual (x eye-corner distance):", np.round(residual, 3).tolist())


if __name__ == "__main__":
    main()
