"""Derive the fixed MediaPipe -> iBUG-51 landmark mapping of ``flamediff.tracking.embedding`` and
the procedural head's own MediaPipe embedding (``flamediff.tracking.procedural_mediapipe``).

How: render procedural heads (``flamediff.data.procedural``: random identities, expressions,
jaw, gaze, lighting) from cameras within +-30 deg yaw and +-20 deg pitch, where the positions
of the head's 51 iBUG landmarks and of its two pupils are known exactly (the asset's landmark
embedding projected through the render camera); run MediaPipe's face mesh on each render; for
every iBUG point (and pupil) take the MediaPipe point with the smallest median distance over
all renders, distances divided by the eye-corner distance so that every render counts alike.

The procedural head's MediaPipe embedding is made the same way the other way round: for every
MediaPipe point (except the face oval, a silhouette that slides over the mesh with the view) the
head vertex, among those facing forward in the rest pose, whose projection has the smallest median
distance to it; points whose best median residual exceeds ``--keep-below`` are left out.

Run: ``python benchmarks/derive_landmark_mapping.py [--identities 24] [--views 12]``; it prints
the iBUG tables to paste into ``backend/tracking/embedding.py`` with the median residual of each
pick, and writes ``backend/tracking/procedural_mediapipe.py``.
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


def collect(identities: int, views: int, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Known points ``[N, 53, 2]`` (51 iBUG + left/right pupil), MediaPipe points ``[N, 478, 2]`` and
    every vertex's projection ``[N, V, 2]``."""
    asset = load_asset(None)
    renderer = procedural.ProceduralRenderer(asset)
    pupils = torch.as_tensor(pupil_vertices(asset))
    plan = procedural.plan_dataset(renderer.regions, identities, views, 0, 1, resolution, seed)
    known, found, vertices = [], [], []
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
            mesh = _project(flame.vertices.numpy(), specs.K, specs.R, specs.t)
            for image, truth, mesh_points in zip(images, projected, mesh):
                detected = detector.detect(image)
                if detected is not None:
                    known.append(truth)
                    found.append(detected)
                    vertices.append(mesh_points)
    return np.stack(known), np.stack(found), np.stack(vertices).astype(np.float32)


def nearest(points: np.ndarray, candidates: np.ndarray, scale: np.ndarray, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per point ``[N, P, 2]`` the candidate ``[N, C, 2]`` with the smallest median distance over the
    N renders (distances divided by ``scale`` [N]), and that median."""
    best, residual = [], []
    for start in range(0, points.shape[1], block):
        chunk = points[:, start:start + block]
        distance = np.linalg.norm(chunk[:, :, None] - candidates[:, None], axis=-1) / scale[:, None, None]
        median = np.median(distance, axis=0)                        # [block, C]
        best.append(median.argmin(axis=1))
        residual.append(median.min(axis=1))
    return np.concatenate(best), np.concatenate(residual)


def front_vertices(asset) -> np.ndarray:
    """Rest vertices that face forward and lie on the front half of the head (MediaPipe's candidates)."""
    from flamediff.geometry.mesh import vertex_normals

    rest = torch.as_tensor(asset.v_template, dtype=torch.float32)[None]
    normals = vertex_normals(rest, torch.as_tensor(asset.faces))[0].numpy()
    return np.flatnonzero((normals[:, 2] > 0.3) & (asset.v_template[:, 2] > np.median(asset.v_template[:, 2])))


def write_embedding(path: str, asset, vertex_of: dict[int, int], residual: dict[int, float]) -> None:
    """The procedural head's MediaPipe embedding as a Python table (a vertex per MediaPipe index)."""
    rows = "\n".join(f"    {index}: {vertex},  # {residual[index]:.3f}" for index, vertex in sorted(vertex_of.items()))
    spec = {key: asset.metadata["spec"][key] for key in ("rows", "columns", "eye_rings", "eye_segments")}
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f'''"""The procedural head's MediaPipe landmark embedding: MediaPipe face-mesh index -> head vertex.

Generated by benchmarks/derive_landmark_mapping.py (see its docstring: nearest forward-facing
vertex by median distance over procedural renders at +-30 deg yaw; the comment after each entry
is that median in eye-corner distances). Valid for procedural heads of this topology.
"""

GENERATOR_VERSION = {asset.metadata["generator_version"]}
TOPOLOGY = {spec!r}
VERTEX_OF_MEDIAPIPE = {{
{rows}
}}
''')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=24)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--keep-below", type=float, default=0.1,
                        help="keep MediaPipe points whose best median residual is below this (eye-corner distances)")
    parser.add_argument("--write", default="backend/tracking/procedural_mediapipe.py")
    args = parser.parse_args()
    torch.set_num_threads(1)
    known, found, vertices = collect(args.identities, args.views, args.resolution, args.seed)
    scale = np.linalg.norm(known[:, 19] - known[:, 28], axis=-1)  # outer eye corners (iBUG 36, 45)
    best, residual = nearest(known, found, scale)
    print(f"{len(known)} renders with a face found of {args.identities * args.views}")
    print("IBUG51_FROM_MEDIAPIPE =", tuple(int(i) for i in best[:51]))
    print("PUPILS_FROM_MEDIAPIPE =", tuple(int(i) for i in best[51:]))
    print("median residual (x eye-corner distance):", np.round(residual, 3).tolist())
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    asset = load_asset(None)
    oval = {index for edge in FACEMESH_FACE_OVAL for index in edge}
    indices = np.array([i for i in range(found.shape[1]) if i not in oval])
    candidates = front_vertices(asset)
    vertex, distance = nearest(found[:, indices], vertices[:, candidates], scale)
    keep = distance < args.keep_below
    write_embedding(args.write, asset, {int(i): int(candidates[v]) for i, v in zip(indices[keep], vertex[keep])},
                    {int(i): float(d) for i, d in zip(indices[keep], distance[keep])})
    print(f"kept {int(keep.sum())} of {len(indices)} MediaPipe points (median residual {np.median(distance):.3f}); "
          f"wrote {args.write}")


if __name__ == "__main__":
    main()
