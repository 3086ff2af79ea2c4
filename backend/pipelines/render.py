"""The inference pipeline: reference image + animation clip -> frames (and control previews).

Work done once per job: the reference latents, the ReferenceNet pass (its tokens are read by
every step and frame), the FLAME forward. Per chunk of frames: splat the Gaussian field, then
DDIM with both guidance branches in one batched forward, then decode. Each frame's initial
noise is seeded by (seed, Blender frame number), so rendering a subset of frames gives the
same pixels for those frames as the full render.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from backend.flame.model import FlameModel
from backend.formats.animation import AnimationClip
from backend.formats.conventions import square_crop_intrinsics
from backend.models.config import LABELS
from backend.models.flamediff_model import FlameDiffModel
from backend.pipelines.scheduling import make_scheduler

ProgressCallback = Callable[[str, int, int], bool | None]  # (phase, done, total) -> False to cancel


class RenderCancelled(RuntimeError):
    """Raised when the progress callback asks to stop; frames already returned are kept."""


@dataclass
class RenderSettings:
    steps: int = 25
    guidance: float = 2.0
    seed: int = 0
    frames_per_batch: int = 8
    shape_from: str = "animation"  # or "reference": drive with the reference identity's shape


@dataclass
class RenderOutput:
    frame_numbers: list[int]
    frames: list[np.ndarray]                      # [H, W, 3] uint8 each
    control_previews: list[np.ndarray] = field(default_factory=list)


def image_to_tensor(image: np.ndarray, resolution: int) -> Tensor:
    """``[H, W, 3]`` uint8 -> ``[1, 3, R, R]`` in [-1, 1] (centre square crop, bilinear resize)."""
    array = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
    height, width = array.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    array = array[..., top:top + side, left:left + side]
    return torch.nn.functional.interpolate(array, size=(resolution, resolution), mode="bilinear",
                                           align_corners=False, antialias=True)


def tensor_to_images(images: Tensor) -> list[np.ndarray]:
    """``[N, 3, H, W]`` in [-1, 1] -> uint8 ``[H, W, 3]`` arrays."""
    scaled = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [frame.permute(1, 2, 0).cpu().numpy() for frame in scaled]


def feature_preview(feature_maps: Tensor, basis: Tensor | None = None) -> tuple[list[np.ndarray], Tensor]:
    """Colour a ``[N, H, W, D]`` feature map with its top-3 principal directions (fixed per job)."""
    flat = feature_maps.reshape(-1, feature_maps.shape[-1]).float()
    if basis is None:
        centred = flat - flat.mean(0)
        basis = torch.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False).Vh[:3].T
    projected = (flat @ basis).reshape(feature_maps.shape[:-1] + (3,))
    low, high = projected.amin(dim=(0, 1, 2)), projected.amax(dim=(0, 1, 2))
    images = ((projected - low) / (high - low + 1e-8) * 255).round().to(torch.uint8).cpu().numpy()
    return list(images), basis


class FlameDiffPipeline:
    """Renders frames for an animation clip with a trained :class:`FlameDiffModel`."""

    def __init__(self, model: FlameDiffModel, flame: FlameModel) -> None:
        self.model, self.flame = model.eval(), flame
        self.scheduler = make_scheduler(model.config)
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # trained weights hold denormals that slow CPU maths a lot

    @torch.no_grad()
    def __call__(self, reference_image: np.ndarray, clip: AnimationClip, settings: RenderSettings = RenderSettings(),
                 reference_shape: np.ndarray | None = None, progress: ProgressCallback | None = None,
                 return_control: bool = False) -> RenderOutput:
        if not clip.has_camera:
            raise ValueError("the animation has no camera (K, R, t): export it from Blender with a camera")
        clip = self._driving_clip(clip, settings.shape_from, reference_shape)
        resolution = self.model.config.resolution
        reference = self.model.encode_images(image_to_tensor(reference_image, resolution).to(self.device))
        self.model.write_reference(reference)
        out = RenderOutput(frame_numbers=[int(f) for f in clip.frame], frames=[])
        basis = None
        for start in range(0, clip.num_frames, settings.frames_per_batch):
            rows = np.arange(start, min(start + settings.frames_per_batch, clip.num_frames))
            chunk = clip.take_rows(rows)
            control = self.control_maps(chunk)
            frames = self._denoise(control, chunk.frame, settings, progress, start, clip.num_frames)
            out.frames += tensor_to_images(self.model.decode_latents(frames))
            if return_control:
                previews, basis = feature_preview(control, basis)
                out.control_previews += previews
            if progress is not None and progress("frames", int(rows[-1]) + 1, clip.num_frames) is False:
                raise RenderCancelled("cancelled")
        return out

    def _driving_clip(self, clip: AnimationClip, shape_from: str, reference_shape: np.ndarray | None) -> AnimationClip:
        if shape_from == "animation":
            return clip
        if shape_from != "reference":
            raise ValueError(f"shape_from must be 'animation' or 'reference', not {shape_from!r}")
        if reference_shape is None:
            raise ValueError("shape_from='reference' needs the reference identity's shape coefficients")
        shape = np.repeat(np.asarray(reference_shape, np.float64).reshape(1, -1), clip.num_frames, axis=0)
        return replace(clip, shape=shape)

    def control_maps(self, clip: AnimationClip) -> Tensor:
        """Splatted Gaussian feature maps ``[F, R, R, D]`` for every frame of ``clip``."""
        resolution = self.model.config.resolution
        vertices = self.flame.forward_clip(clip).vertices.to(self.device)
        Ks = square_crop_intrinsics(clip.K, clip.image_size, resolution)
        viewmats = np.zeros((clip.num_frames, 4, 4))
        viewmats[:, :3, :3], viewmats[:, :3, 3], viewmats[:, 3, 3] = clip.R, clip.t, 1.0
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        return self.model.render_control(vertices, self.flame.faces, as_tensor(viewmats), as_tensor(Ks))

    def _initial_noise(self, frame_numbers: np.ndarray, seed: int) -> Tensor:
        config = self.model.config
        shape = (config.latent_channels, config.latent_resolution, config.latent_resolution)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(f)))
                 for f in frame_numbers]
        return torch.stack(noise).to(self.device)

    def _denoise(self, control: Tensor, frame_numbers: np.ndarray, settings: RenderSettings,
                 progress: ProgressCallback | None, done: int, total: int) -> Tensor:
        """DDIM over one chunk: ``[F, R, R, D]`` control -> ``[F, C, h, w]`` latents."""
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        latents = self._initial_noise(frame_numbers, settings.seed)[None]  # [1, F, C, h, w]
        guided = settings.guidance != 1.0
        features = control.permute(0, 3, 1, 2)[None]
        keep = torch.tensor([True, False] if guided else [True], device=self.device)
        labels = torch.full((len(keep),), LABELS["real"], device=self.device)
        index = torch.zeros(len(keep), dtype=torch.long, device=self.device)
        for step, timestep in enumerate(self.scheduler.timesteps):
            batch = latents.expand(len(keep), -1, -1, -1, -1)
            v = self.model.predict(batch, timestep.repeat(len(keep)), features.expand(len(keep), -1, -1, -1, -1),
                                   labels, keep, reference_index=index)
            v = v[1:] + settings.guidance * (v[:1] - v[1:]) if guided else v
            latents = self.scheduler.step(v[0], timestep, latents[0]).prev_sample[None]
            if progress is not None and progress("denoising", step + 1, settings.steps) is False:
                raise RenderCancelled("cancelled")
        return latents[0]
