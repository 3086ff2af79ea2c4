"""The demo job: pose the FLAME asset through a short animation and write what it looks like.

Until the render path exists this is the whole of ``make demo``: an animation file in the
shared format, the posed meshes as OBJ, preview images, a contact sheet and an animated GIF.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from PIL import Image

from backend.formats.animation import AnimationClip, make_clip, save_animation
from backend.formats.conventions import intrinsics_from_fov, look_at_opencv
from backend.formats.flame_asset import FlameAsset, write_obj
from backend.flame.model import FlameModel
from backend.flame.preview import render_preview

SMILE, MOUTH_OPEN, EYES_CLOSED = 0, 1, 4  # procedural head expression components


def _pulse(frames: np.ndarray, start: float, end: float) -> np.ndarray:
    """0 -> 1 -> 0 smoothly over ``[start, end]`` (fractions of the clip)."""
    phase = np.clip((frames - start) / (end - start), 0.0, 1.0)
    return np.sin(np.pi * phase) ** 2


def demo_animation(asset: FlameAsset, num_frames: int = 24, resolution: int = 256, fps: float = 24.0) -> AnimationClip:
    """Head turn, jaw open, smile and a blink, seen by a fixed portrait camera."""
    s = np.linspace(0.0, 1.0, num_frames)
    expression = np.zeros((num_frames, 50))
    expression[:, SMILE] = 1.6 * _pulse(s, 0.45, 0.95)
    expression[:, MOUTH_OPEN] = 0.6 * _pulse(s, 0.15, 0.5)
    expression[:, EYES_CLOSED] = 1.0 * _pulse(s, 0.62, 0.78)
    global_pose = np.zeros((num_frames, 3))
    global_pose[:, 1] = 0.5 * np.sin(2.0 * math.pi * s)
    jaw_pose = np.zeros((num_frames, 3))
    jaw_pose[:, 0] = 0.25 * _pulse(s, 0.15, 0.5)
    rotation, translation = look_at_opencv([0.0, 0.0, 0.65], [0.0, -0.005, 0.0])
    K = intrinsics_from_fov(26.0, resolution, resolution)
    camera = (np.repeat(K[None], num_frames, 0), np.repeat(rotation[None], num_frames, 0),
              np.repeat(translation[None], num_frames, 0))
    return make_clip(num_frames, fps=fps, expression=expression, global_pose=global_pose, jaw_pose=jaw_pose,
                     camera=camera, image_size=(resolution, resolution), flame_asset=asset.identity())


def _face_colors(asset: FlameAsset) -> np.ndarray:
    colors = np.full((len(asset.faces), 3), (224.0, 182.0, 160.0))
    for joint in (3, 4):  # eyeballs: faces whose vertices all follow an eye joint
        colors[(asset.weights[asset.faces, joint] > 0.99).all(axis=1)] = (235.0, 235.0, 240.0)
    return colors


def run_demo(asset: FlameAsset, out_dir: str, num_frames: int = 24, resolution: int = 256,
             log=print) -> dict[str, str]:
    """Write the demo outputs into ``out_dir``; returns the main paths."""
    started = time.perf_counter()
    os.makedirs(os.path.join(out_dir, "meshes"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "frames"), exist_ok=True)
    clip = demo_animation(asset, num_frames, resolution)
    animation_path = os.path.join(out_dir, "animation.npz")
    save_animation(animation_path, clip)
    log(f"wrote {animation_path} ({clip.num_frames} frames)")
    with torch.no_grad():
        vertices = FlameModel(asset).forward_clip(clip).vertices.double().numpy()
    colors = _face_colors(asset)
    frames = []
    for row, frame_number in enumerate(clip.frame):
        write_obj(os.path.join(out_dir, "meshes", f"frame_{frame_number:04d}.obj"), vertices[row], asset.faces,
                  asset.uv, asset.faces_uv)
        image = render_preview(vertices[row], asset.faces, clip.K[row], clip.R[row], clip.t[row],
                               clip.image_size, colors)
        image.save(os.path.join(out_dir, "frames", f"frame_{frame_number:04d}.png"))
        frames.append(image)
        log(f"frame {row + 1}/{clip.num_frames}")
    sheet_path = os.path.join(out_dir, "contact_sheet.png")
    _contact_sheet(frames, columns=6).save(sheet_path)
    gif_path = os.path.join(out_dir, "preview.gif")
    frames[0].save(gif_path, save_all=True, append_images=frames[1:], duration=int(1000 / clip.fps), loop=0)
    log(f"done in {time.perf_counter() - started:.1f} s: {sheet_path}, {gif_path}")
    return {"animation": animation_path, "contact_sheet": sheet_path, "preview": gif_path}


def _contact_sheet(images: list[Image.Image], columns: int) -> Image.Image:
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * width, (index // columns) * height))
    return sheet
