"""Tiny test fixtures: a few-frame dataset of the procedural head (painter renders, 32 px) and a
tiny model whose control visibly changes its output."""

from __future__ import annotations

import numpy as np
import torch

from flamediff.data.dataset import DatasetIndex, write_dataset
from flamediff.flame.model import FlameModel
from flamediff.flame.preview import render_preview
from flamediff.formats.animation import make_clip
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv

SKIN = [(224.0, 182.0, 160.0), (150.0, 105.0, 80.0), (240.0, 205.0, 190.0)]


def make_tiny_dataset(folder: str, asset, resolution: int = 32, identities: int = 2,
                      frames_per_identity: int = 3, seed: int = 0, all_real: bool = False) -> DatasetIndex:
    """One continuous sequence per identity; every other frame is labelled synthetic unless
    ``all_real``."""
    rng = np.random.RandomState(seed)
    count = identities * frames_per_identity
    identity = np.repeat(np.arange(identities), frames_per_identity)
    shape = rng.normal(size=(identities, 100))[identity]
    expression = np.zeros((count, 50))
    expression[:, :3] = rng.uniform(-1.0, 1.5, size=(count, 3))
    global_pose = np.zeros((count, 3))
    global_pose[:, 1] = rng.uniform(-0.5, 0.5, size=count)
    jaw = np.zeros((count, 3))
    jaw[:, 0] = rng.uniform(0.0, 0.25, size=count)
    R, t = look_at_opencv([0.0, 0.0, 0.62], [0.0, -0.005, 0.0])
    K = intrinsics_from_fov(27.0, resolution, resolution)
    camera = tuple(np.repeat(m[None], count, 0) for m in (K, R, t))
    clip = make_clip(count, first_frame=0, shape=shape, expression=expression, global_pose=global_pose,
                     jaw_pose=jaw, camera=camera, image_size=(resolution, resolution), flame_asset=asset.identity())
    with torch.no_grad():
        vertices = FlameModel(asset).forward_clip(clip).vertices.double().numpy()
    frames = [np.asarray(render_preview(vertices[i], asset.faces, K, R, t, (resolution, resolution),
                                        np.full((len(asset.faces), 3), SKIN[identity[i] % len(SKIN)])))
              for i in range(count)]
    return write_dataset(folder, frames, clip, identity=identity, label=np.zeros(count, int) if all_real else np.arange(count) % 2,
                         sequence=identity, frame_in_sequence=np.tile(np.arange(frames_per_identity), identities))


def visible_control_tiny_model(asset):
    """The tiny preset with random non-zero pose-guider output and Gaussian features (fresh
    ones are zero-initialised, which would hide the control from pipeline tests)."""
    from flamediff.models import FlameDiffConfig, FlameDiffModel

    torch.manual_seed(0)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", flame_asset=asset.identity()))
    model.attach_gaussian_field(asset)
    with torch.no_grad():
        torch.nn.init.normal_(model.pose_guider.out.weight, std=0.1)
        model.gaussian_field.features.normal_()
    return model
