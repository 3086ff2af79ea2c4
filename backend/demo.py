"""The demo job: pose the FLAME asset through a short animation and write what it looks like.

Until the render path exists this is the whole of ``make demo``: an animation file in the
shared format, the posed meshes as OBJ, preview images, a contact sheet and an animated GIF.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from flamediff.assets import DEMO_CHECKPOINT
from flamediff.errors import FlamediffError
from flamediff.formats.animation import AnimationClip, make_clip, save_animation
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv
from flamediff.formats.flame_asset import FlameAsset, write_obj
from flamediff.formats.protocol import frame_file
from flamediff.flame.model import FlameModel
from flamediff.flame.preview import render_preview

SMILE, MOUTH_OPEN, EYES_CLOSED = 0, 1, 4  # procedural head expression components


def _pulse(frames: np.ndarray, start: float, end: float) -> np.ndarray:
    """0 -> 1 -> 0 smoothly over ``[start, end]`` (fractions of the clip)."""
    phase = np.clip((frames - start) / (end - start), 0.0, 1.0)
    return np.sin(np.pi * phase) ** 2


def demo_animation(asset: FlameAsset, num_frames: int = 24, resolution: int = 256, fps: float = 24.0,
                   aspect: float = 1.0) -> AnimationClip:
    """Head turn, jaw open, smile and a blink, seen by a fixed portrait camera whose image is
    ``resolution`` pixels high and ``aspect`` times as wide."""
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
    width = int(round(resolution * aspect))
    K = intrinsics_from_fov(26.0, width, resolution)
    camera = (np.repeat(K[None], num_frames, 0), np.repeat(rotation[None], num_frames, 0),
              np.repeat(translation[None], num_frames, 0))
    return make_clip(num_frames, fps=fps, expression=expression, global_pose=global_pose, jaw_pose=jaw_pose,
                     camera=camera, image_size=(width, resolution), flame_asset=asset.identity())


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


def _over_grey(frame: np.ndarray) -> np.ndarray:
    """An RGBA frame composited over mid grey (where the strip would show the work below)."""
    alpha = frame[..., 3:].astype(np.float32) / 255.0
    return (frame[..., :3] * alpha + 128.0 * (1.0 - alpha)).round().astype(np.uint8)


def _opaque_square(frame: np.ndarray, size: int) -> np.ndarray:
    """The opaque (rendered) square of a head-framed RGBA frame, resized to ``size`` pixels."""
    rows, columns = np.nonzero(frame[..., 3])
    square = frame[rows.min():rows.max() + 1, columns.min():columns.max() + 1, :3]
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC))


def _contact_sheet(images: list[Image.Image], columns: int) -> Image.Image:
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * width, (index // columns) * height))
    return sheet


# ---------------------------------------------------------------------------------------------
# The whole product: Blender rig -> export -> backend server -> frames on the timeline

BLENDER_SCRIPT = """
import json, sys
import bpy
zip_path, asset, python, port, token, animation, reference, blend, steps, results = sys.argv[-10:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
prefs = bpy.context.preferences.addons["bl_ext.user_default.flamediff"].preferences
prefs.asset_folder, prefs.backend_mode = asset, "LOCAL"
prefs.backend_python, prefs.backend_port, prefs.backend_device, prefs.token_file = python, int(port), "cpu", token
from bl_ext.user_default.flamediff.blender_addon import demo
try:
    outcome = demo.build_and_render(animation, reference, blend, steps=int(steps), checkpoint="demo")
finally:
    bpy.ops.flamediff.backend_stop()
json.dump(outcome, open(results, "w"))
"""


def run_product_demo(asset: FlameAsset, out_dir: str, addon_zip: str, num_frames: int = 24, steps: int = 0,
                     log=print) -> dict[str, str]:
    """The README's main job: the built add-on keys a rig in the ``bpy`` module, renders it through a
    real backend subprocess, and the frames land on the timeline of ``out_dir/demo.blend``."""
    from flamediff.models.flamediff_model import FlameDiffModel
    from flamediff.pipelines.render import FlameDiffPipeline, feature_preview

    started = time.perf_counter()
    if not os.path.isfile(os.path.join(DEMO_CHECKPOINT, "model.safetensors")):
        raise FlamediffError(f"the shipped demo checkpoint is missing ({DEMO_CHECKPOINT}); restore it with "
                             "'git checkout backend/checkpoints' or retrain it with configs/demo/train.sh")
    os.makedirs(out_dir, exist_ok=True)
    clip = demo_animation(asset, num_frames, resolution=270, aspect=16 / 9)   # a 480x270 (16:9) shot
    animation_path = os.path.join(out_dir, "animation.npz")
    save_animation(animation_path, clip)
    reference_path = os.path.join(out_dir, "reference.png")
    shutil.copyfile(os.path.join(DEMO_CHECKPOINT, "reference.png"), reference_path)
    results_path = os.path.join(out_dir, "blender_results.json")
    env = dict(os.environ, BLENDER_USER_RESOURCES=os.path.abspath(os.path.join(out_dir, "blender_user")))
    log(f"Blender (bpy): rig, keys, camera, render through the backend ({num_frames} frames, "
        f"{steps or 'default'} steps)")
    args = [addon_zip, asset.folder, sys.executable, str(_free_port()), os.path.join(out_dir, "token"),
            animation_path, reference_path, os.path.abspath(os.path.join(out_dir, "demo.blend")), str(steps),
            results_path]
    completed = subprocess.run([sys.executable, "-c", BLENDER_SCRIPT, *args], env=env, text=True,
                               capture_output=True, timeout=3600)
    if not os.path.isfile(results_path):
        raise RuntimeError(f"the Blender step failed:\n{completed.stderr[-3000:]}")
    with open(results_path, encoding="utf-8") as handle:
        outcome = json.load(handle)
    if outcome["status"] != "done":
        raise RuntimeError(f"render {outcome['status']}: {outcome['error']} ({outcome['advice']})")
    frames = [np.asarray(Image.open(os.path.join(outcome["output_dir"], frame_file(n))).convert("RGBA"))
              for n in clip.frame]
    with torch.no_grad():
        pipeline = FlameDiffPipeline(FlameDiffModel.from_pretrained(DEMO_CHECKPOINT, asset=asset), FlameModel(asset))
        resolution = pipeline.resolution()
        intrinsics, _ = pipeline.framing(clip, "head", resolution)   # the squares the job rendered
        control = pipeline.control_maps(clip, resolution, intrinsics)[..., :pipeline.model.control_channels]
        previews, _ = feature_preview(control)
    pairs = [Image.fromarray(np.concatenate([p, _opaque_square(f, resolution)], axis=1))
             for p, f in zip(previews, frames)]
    sheet_path = os.path.join(out_dir, "control_and_frames.png")
    _contact_sheet(pairs, columns=6).save(sheet_path)
    gif_path = os.path.join(out_dir, "render.gif")
    big = [Image.fromarray(_over_grey(f)) for f in frames]
    big[0].save(gif_path, save_all=True, append_images=big[1:], duration=int(1000 / clip.fps), loop=0)
    log(f"done in {time.perf_counter() - started:.1f} s: {outcome['output_dir']} (frames), "
        f"{os.path.join(out_dir, 'demo.blend')} (VSE strip over a backdrop), {outcome['composite']} "
        f"(the sequencer's picture of it), {sheet_path}, {gif_path}")
    return {"blend": os.path.join(out_dir, "demo.blend"), "frames": outcome["output_dir"], "sheet": sheet_path,
            "gif": gif_path}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
