"""Head and artefact-region masks of annotated samples, rendered by the procedural renderer
(the evaluation's view, artefact and flicker studies use them)."""

from __future__ import annotations

import numpy as np

from flamediff.data.procedural.appearance import NUM_SHAPE, make_appearance
from flamediff.data.procedural.renderer import BATCH, ProceduralRenderer
from flamediff.data.procedural.scene import NUM_EXPRESSION, FrameSpecs
from flamediff.formats.animation import AnimationClip
from flamediff.formats.conventions import square_crop_intrinsics


def region_masks(renderer: ProceduralRenderer, clip: AnimationClip, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, R, R]`` head and artefact-region coverage of annotated samples, whatever their label:
    where a synthetic frame would be corrupted (ears, mouth interior). The regions depend on
    geometry and camera only, so any appearance with the sample's shape gives them."""
    look = make_appearance(0, 0, renderer.regions)
    texture = renderer.bake_texture(look)
    pose = np.stack([clip.global_pose, clip.neck_pose, clip.jaw_pose, clip.left_eye_pose, clip.right_eye_pose], 1)
    count = clip.num_frames
    K = square_crop_intrinsics(clip.K, clip.image_size, resolution) if clip.image_size else clip.K
    specs = FrameSpecs(expression=clip.expression[:, :NUM_EXPRESSION], pose=pose, translation=clip.translation,
                       K=K, R=clip.R, t=clip.t, light=np.tile([0.0, 0.0, 1.0], (count, 1)),
                       light_colour=np.ones((count, 3)), ambient=np.ones(count), diffuse=np.zeros(count),
                       specular=np.zeros(count), label=np.zeros(count, np.int64), noise_seed=np.zeros(count, np.int64))
    heads, artefacts = np.zeros((2, count, resolution, resolution), np.float32)
    shapes, group = np.unique(np.asarray(clip.shape, np.float64), axis=0, return_inverse=True)
    for which, shape in enumerate(shapes):
        rows = np.nonzero(group.reshape(-1) == which)[0]
        look.shape = np.zeros(NUM_SHAPE)
        look.shape[:min(NUM_SHAPE, len(shape))] = shape[:NUM_SHAPE]
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            out = renderer.render(look, specs.rows(chunk), resolution, texture=texture)
            heads[chunk], artefacts[chunk] = out.head_mask, out.artefact_mask
    return heads, artefacts
