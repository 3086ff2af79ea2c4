"""Shaded preview images of meshes (painter's algorithm with Pillow), for demos and docs.

Not the training renderer: no anti-aliasing or texture, just enough to see a posed head.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from flamediff.formats.conventions import project_points
from flamediff.geometry.mesh import face_normals

LIGHT = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])


def unit_face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals ``[F, 3]`` of one triangle mesh."""
    normals = face_normals(torch.as_tensor(vertices)[None], torch.as_tensor(faces, dtype=torch.long))[0]
    return F.normalize(normals, dim=-1, eps=1e-12).numpy()


def render_preview(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                   size: tuple[int, int], face_colors: np.ndarray | None = None,
                   background: tuple[int, int, int] = (40, 44, 52)) -> Image.Image:
    """Flat-shaded render of one mesh seen by an OpenCV camera; back faces are drawn dark."""
    pixels, depth = project_points(vertices, K, R, t)
    corners_depth = depth[faces].mean(axis=1)
    normals_cam = unit_face_normals(vertices, faces) @ np.asarray(R).T
    centres_cam = vertices[faces].mean(axis=1) @ np.asarray(R).T + t
    facing = np.einsum("fc,fc->f", normals_cam, -centres_cam) > 0
    light_cam = np.asarray(R) @ LIGHT
    shade = np.clip(normals_cam @ light_cam, 0.0, 1.0) * 0.75 + 0.25
    colors = np.full((len(faces), 3), (224.0, 182.0, 160.0)) if face_colors is None else np.asarray(face_colors, float)
    colors = np.where(facing[:, None], colors * shade[:, None], (60.0, 20.0, 25.0))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    visible = np.nonzero((depth[faces] > 1e-3).all(axis=1))[0]
    for index in visible[np.argsort(-corners_depth[visible])]:
        polygon = [tuple(p) for p in pixels[faces[index]]]
        draw.polygon(polygon, fill=tuple(int(c) for c in colors[index]))
    return image
