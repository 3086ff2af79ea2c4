"""The inference pipeline: reference image + animation clip -> frames (and control previews).

Work done once per job: the reference latents, the ReferenceNet pass (its tokens are read by
every step and frame), the FLAME forward. Per frame once: splat the Gaussian field and run the
pose guider. Then DDIM with both guidance branches in one batched forward, then decode.

Models without temporal layers denoise chunks of frames independently, and each frame's
initial noise is seeded by (seed, Blender frame number): rendering a subset of frames gives
the same pixels for those frames as the full render. Models with temporal layers denoise the
clip through context windows of ``context_window`` frames, consecutive ones sharing
``context_overlap``, anchored to absolute frame numbers (a clip starting at frame 1 starts a
window); each window is denoised on its own and a frame held by two windows blends their
results (see :func:`context_windows`). So a frame's pixels depend only on the frames of its
windows: a subset render reproduces the full render's pixels for every frame whose windows
it holds whole (:func:`frames_for_exact_subset` says which frames that takes). Activations are
bounded by the window, and only latents and guider outputs (small) are kept for the sequence.

:meth:`FlameDiffPipeline.stream` hands frames out as soon as they are decoded (per chunk, or per
window), so frames arrive progressively and a long job is one call: one ReferenceNet pass,
unbroken temporal context, and memory bounded by the chunk or window when the consumer writes
frames out.

Framing (``RenderSettings.framing``): ``"camera"`` fits the camera's whole image (any aspect)
into the model's square, letterboxed, and crops the frames back to the camera's aspect (the
framing of the training set when the camera is the dataset's; evaluation uses it). ``"head"``
(the default, as for jobs) renders, per frame, the square around the head that frames it as the training
set does (:func:`~flamediff.formats.conventions.head_squares`), and places it, resized, into a
transparent RGBA frame of the camera's image size: the model always sees a head framed as it
learned, whatever the artist's lens and resolution, and the strip composites over other work.
The frame's alpha (``RenderSettings.matte``) is the head's matte: the FLAME silhouette of that
frame, rasterised in the square at :data:`MATTE_SUPERSAMPLE` times its resolution and feathered
(:func:`head_matte`), with the neck continued down to the square's edge for ``head_neck``; or,
with ``tile``, the whole opaque square as before.

Speed levers (on by default on CUDA, off on CPU where bf16 is slow and the result must equal the
fp32 reference): the U-Nets run in bf16 and channels-last; ``compile_denoiser=True`` compiles the
denoiser. A preview (``RenderSettings.preview``) renders at half resolution with at most
``PREVIEW_STEPS`` steps and hands its first frame out alone, as early as possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from flamediff.flame.model import FlameModel
from flamediff.formats.animation import AnimationClip
from flamediff.formats.conventions import (fitted_frame, head_squares, square_fit_intrinsics,
                                           square_region_intrinsics, view_matrices)
from flamediff.formats.protocol import setting
from flamediff.formats.windows import CONTEXT_OVERLAP, CONTEXT_WINDOW, frames_for_exact_subset, window_indices
from flamediff.models.config import LABELS, FlameDiffConfig
from flamediff.models.correspondence import ReferenceView
from flamediff.models.flamediff_model import FlameDiffModel
from flamediff.models.pixels import images_to_tensor, tensor_to_images
from flamediff.pipelines.scheduling import make_scheduler

log = logging.getLogger("flamediff.pipeline")

#: Most denoising steps a preview takes (fewer when the render asks for fewer).
PREVIEW_STEPS = 4

# ("denoising", frame-steps done, frame-steps in the render) after every step -> False to cancel
ProgressCallback = Callable[[str, int, int], bool | None]


class RenderCancelled(RuntimeError):
    """Raised when the progress callback asks to stop; frames already yielded are kept."""


#: Head-framed frames are RGBA at the camera's image size: at most 8K UHD, ~130 MB a frame in memory.
MAX_FRAME_PIXELS = 7680 * 4320


def _job_default(name: str) -> Any:
    """The default of the job setting ``name`` (:data:`flamediff.formats.protocol.JOB_SETTINGS`)."""
    return setting(name).default


@dataclass
class RenderSettings:
    """What one pipeline call renders with. The fields that are job settings (see
    :data:`flamediff.server.job_execution.PIPELINE_FIELDS`) take the protocol's defaults, so a
    direct call renders as a job that names no settings does."""

    steps: int = _job_default("steps")        # 0 = the checkpoint's default (config.default_steps)
    guidance: float = _job_default("guidance")  # classifier-free guidance scale; 0 = config.default_guidance
    seed: int = _job_default("seed")
    frames_per_batch: int = _job_default("frames_per_batch")
    shape_from: str = _job_default("shape_from")  # or "reference": drive with the reference identity's shape
    context_window: int = CONTEXT_WINDOW   # temporal models: frames seen together
    context_overlap: int = CONTEXT_OVERLAP
    preview: bool = _job_default("preview")   # half resolution, at most PREVIEW_STEPS steps, first frame alone
    framing: str = _job_default("framing")    # "head" or "camera": see the module docstring
    matte: str = _job_default("matte")        # head framing's alpha: "head", "head_neck" or "tile" (the whole square)


#: The settings of a call that names none (one shared instance: the pipeline never changes settings).
DEFAULT_SETTINGS = RenderSettings()


@dataclass
class RenderOutput:
    frame_numbers: list[int]
    frames: list[np.ndarray]                      # [H, W, 3] uint8 each; [H, W, 4] with head framing
    control_previews: list[np.ndarray] = field(default_factory=list)


def image_to_tensor(image: np.ndarray, resolution: int) -> Tensor:
    """``[H, W, 3]`` uint8 -> ``[1, 3, R, R]`` in [-1, 1] (centre square crop, bilinear resize)."""
    array = images_to_tensor(np.ascontiguousarray(image)[None])
    height, width = array.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    array = array[..., top:top + side, left:left + side]
    return torch.nn.functional.interpolate(array, size=(resolution, resolution), mode="bilinear",
                                           align_corners=False, antialias=True)


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


def place_in_frame(square_image: np.ndarray, square: np.ndarray, image_size: tuple[int, int],
                   matte: np.ndarray | None = None) -> np.ndarray:
    """An RGBA ``[height, width, 4]`` frame, transparent but for the ``(left, top, side)``
    square, which shows ``square_image`` resampled (bicubic) to its pixels; its alpha is the
    ``matte`` (``[S, S]`` in 0..1, resampled bilinearly) when given, else the whole square. Only
    the visible part of the square is sampled, so a square far larger than the frame costs no
    more than the frame."""
    width, height = image_size
    left, top, side = (float(v) for v in square)
    frame = np.zeros((height, width, 4), dtype=np.uint8)
    x0, x1 = max(0, int(np.floor(left))), min(width, int(np.ceil(left + side)))
    y0, y1 = max(0, int(np.floor(top))), min(height, int(np.ceil(top + side)))
    if x0 >= x1 or y0 >= y1:
        return frame
    # pixel centres of the visible rectangle in the square's [-1, 1] coordinates (align_corners=False)
    u = (torch.arange(x0, x1, dtype=torch.float64) + 0.5 - left) / side * 2 - 1
    v = (torch.arange(y0, y1, dtype=torch.float64) + 0.5 - top) / side * 2 - 1
    grid = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)[None].float()
    image = torch.from_numpy(np.ascontiguousarray(square_image)).permute(2, 0, 1)[None].float()
    sampled = torch.nn.functional.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(-1)[0].numpy()
    frame[y0:y1, x0:x1, :3] = sampled[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    alpha = np.where(inside, 255, 0)
    if matte is not None:
        coverage = torch.nn.functional.grid_sample(torch.from_numpy(np.ascontiguousarray(matte, np.float32))[None, None],
                                                   grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        alpha = np.where(inside, (coverage[0, 0].numpy() * 255).round().clip(0, 255), 0)
    frame[y0:y1, x0:x1, 3] = alpha.astype(np.uint8)
    frame[..., :3] *= (frame[..., 3:] > 0)
    return frame


#: The matte is rasterised at this many times the model's resolution (a 128 px square -> 512 px),
#: and feathered by a Gaussian of MATTE_FEATHER times the square's side.
MATTE_SUPERSAMPLE = 4
MATTE_FEATHER = 0.008
MATTES = ("head", "head_neck", "tile")


def head_matte(vertices: Tensor, faces: Tensor, K: np.ndarray, R: np.ndarray, t: np.ndarray, side: int,
               neck: bool = False) -> np.ndarray:
    """``[F, side, side]`` float mattes in 0..1: each frame's FLAME silhouette through its square's
    intrinsics ``K`` ``[F, 3, 3]``, feathered outwards (Gaussian, then doubled and clipped, so the
    silhouette's edge stays opaque). ``neck``: every column the silhouette's lowest rows cover is
    continued down to the square's bottom (the neck and shoulders the model draws below FLAME)."""
    from flamediff.geometry.rasterizer import rasterize

    mask = rasterize(vertices.float(), faces, torch.as_tensor(K), torch.as_tensor(R), torch.as_tensor(t), side,
                     side).mask.float()
    if neck:
        rows = torch.arange(side, dtype=torch.float32)[None, :, None]
        lowest = torch.where(mask > 0, rows, torch.full_like(mask, -1.0)).amax(dim=1, keepdim=True)   # [F, 1, side]
        bottom = lowest.amax(dim=2, keepdim=True)
        neck_columns = lowest >= bottom - 0.04 * side           # columns reaching the silhouette's bottom
        mask = torch.maximum(mask, ((rows >= lowest) & neck_columns).float())
    sigma = MATTE_FEATHER * side
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = mask[:, None]
    for shape in ((1, 1, 1, -1), (1, 1, -1, 1)):
        pad = (radius, radius, 0, 0) if shape[-1] == -1 else (0, 0, radius, radius)
        blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(blurred, pad, mode="replicate"),
                                             kernel.reshape(shape))
    return (blurred[:, 0] * 2).clamp(0, 1).numpy()


def preview_resolution(config: FlameDiffConfig) -> int:
    """Half the checkpoint's resolution, rounded down to a size the VAE and every U-Net level
    divide evenly (a multiple of ``vae_factor * 2 ** (levels - 1)``)."""
    multiple = config.vae_factor * 2 ** (len(config.unet_channels) - 1)
    return max(multiple, config.resolution // 2 // multiple * multiple)


@dataclass(frozen=True)
class ContextWindow:
    """One context window of a temporal render: ``rows`` index the job's sorted frames,
    ``weights`` (one per row) blend its final latents with the neighbouring window's where
    the two overlap, and ``final_rows`` rows are final once this window is done."""

    rows: slice
    weights: np.ndarray
    final_rows: int


def context_windows(frame_numbers: np.ndarray, window: int, overlap: int) -> list[ContextWindow]:
    """The context windows holding ``frame_numbers`` (sorted Blender frame numbers), in order.

    Windows are anchored to absolute frame numbers, not to the first frame of the render:
    window ``k`` spans frames ``1 - overlap + k * (window - overlap)`` onwards, so a clip that
    starts at frame 1 starts a window, and which frames share a window never depends on where a
    render starts. Each window is denoised on its own (its noise is seeded per frame number);
    a frame in two windows gets both final latents blended, the later window's weight rising
    linearly across the overlap. So a frame's pixels depend only on the frames of the windows
    holding it: a subset render reproduces the full render for every frame whose windows hold
    the same frames in both (see :func:`frames_for_exact_subset`).
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {window} and {overlap}")
    frames = np.asarray(frame_numbers, dtype=np.int64)
    if len(frames) == 0:
        return []
    stride, base = window - overlap, 1 - overlap
    first = window_indices(int(frames[0]), window, overlap)[0]
    last = window_indices(int(frames[-1]), window, overlap)[-1]
    windows = []
    for k in range(first, last + 1):
        start = base + k * stride
        lo, hi = np.searchsorted(frames, [start, start + window])
        if lo == hi:
            continue
        position = frames[lo:hi] - start       # place of each frame inside the window
        rising = np.clip((position + 1) / (overlap + 1), 0.0, 1.0)          # entering overlap
        falling = np.clip((window - position) / (overlap + 1), 0.0, 1.0)    # leaving overlap
        final = int(np.searchsorted(frames, start + stride)) - lo           # rows before the next window
        windows.append(ContextWindow(slice(int(lo), int(hi)), np.minimum(rising, falling), max(final, 0)))
    return windows[:-1] + [replace(windows[-1], final_rows=windows[-1].rows.stop - windows[-1].rows.start)]


class FlameDiffPipeline:
    """Renders frames for an animation clip with a trained :class:`FlameDiffModel`.

    The pipeline prepares the model it is given for inference, in place: ``dtype`` (default
    bf16 on CUDA, fp32 elsewhere) for the U-Nets and motion modules, channels-last U-Nets
    (default on CUDA), and with ``compile_denoiser`` a ``torch.compile``d denoiser that falls
    back to eager when compiling fails. The VAE, pose guider and Gaussian field stay fp32: they
    run once per frame (cheap) and the decode is where bf16 rounding would show in the pixels.
    """

    def __init__(self, model: FlameDiffModel, flame: FlameModel, dtype: torch.dtype | None = None,
                 channels_last: bool | None = None, compile_denoiser: bool = False) -> None:
        self.model, self.flame = model.eval(), flame
        self._preview_basis: Tensor | None = None
        self.scheduler = make_scheduler(model.config)
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if on_cuda else torch.float32)
        self._prepare_unets(on_cuda if channels_last is None else channels_last)
        self.compiled = compile_denoiser and self._compile_denoiser()
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # trained weights hold denormals that slow CPU maths a lot

    def _prepare_unets(self, channels_last: bool) -> None:
        # nn.Module.to, not diffusers' override: that one warns about modules to keep in fp32
        # even for models that list none (these U-Nets and the motion adapter list none)
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        for unet in (self.model.denoiser, self.model.reference_unet):
            torch.nn.Module.to(unet, dtype=self.dtype, memory_format=memory_format)
        if self.model.temporal is not None:  # hooked into the denoiser, not its submodules
            torch.nn.Module.to(self.model.temporal, dtype=self.dtype)

    def _compile_denoiser(self) -> bool:
        """``torch.compile`` the denoiser's forward; False (eager) where dynamo is unsupported.
        Default (automatic) dynamic shapes: a second batch size or resolution (last chunk,
        preview) recompiles once with dynamic sizes instead of once per shape."""
        if not torch._dynamo.is_dynamo_supported():
            log.warning("torch.compile is not supported here; the denoiser runs eagerly")
            return False
        denoiser = self.model.denoiser
        denoiser.forward = torch.compile(denoiser.forward)
        return True

    def _predict(self, *args, **kwargs) -> Tensor:
        """The denoiser's prediction. Compile errors surface at a call (no compiler, no triton):
        the first one switches the denoiser back to eager, so a render never fails for them."""
        try:
            return self.model.predict_guided(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:
            if not self.compiled:
                raise
            log.warning("torch.compile failed (%s); the denoiser runs eagerly", str(exc).splitlines()[0])
            del self.model.denoiser.forward  # the class's own forward again
            self.compiled = False
            return self.model.predict_guided(*args, **kwargs)

    def resolved_steps(self, steps: int, preview: bool = False) -> int:
        """``steps``, or the checkpoint's own default when it is 0 (small models need fewer);
        a preview takes at most ``PREVIEW_STEPS``."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0 (0 = the checkpoint's default), not {steps}")
        steps = steps or self.model.config.default_steps
        return min(steps, PREVIEW_STEPS) if preview else steps

    def resolved_guidance(self, guidance: float) -> float:
        """``guidance``, or the checkpoint's own default scale when it is 0 (chosen, like
        ``default_steps``, by measuring on validation identities)."""
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0 (0 = the checkpoint's default), not {guidance}")
        return guidance or self.model.config.default_guidance

    def resolution(self, preview: bool = False) -> int:
        """Side of the frames in pixels: the checkpoint's, or :func:`preview_resolution`."""
        return preview_resolution(self.model.config) if preview else self.model.config.resolution

    def __call__(self, reference_image: np.ndarray, clip: AnimationClip, settings: RenderSettings = DEFAULT_SETTINGS,
                 reference_shape: np.ndarray | None = None, progress: ProgressCallback | None = None,
                 return_control: bool = False, reference_pose: AnimationClip | None = None) -> RenderOutput:
        """Every frame of ``clip`` at once; :meth:`stream` hands them out as they are decoded."""
        out = RenderOutput(frame_numbers=[], frames=[])
        for piece in self.stream(reference_image, clip, settings, reference_shape, progress, return_control,
                                 reference_pose):
            out.frame_numbers += piece.frame_numbers
            out.frames += piece.frames
            out.control_previews += piece.control_previews
        return out

    @torch.no_grad()
    def stream(self, reference_image: np.ndarray, clip: AnimationClip, settings: RenderSettings = DEFAULT_SETTINGS,
               reference_shape: np.ndarray | None = None, progress: ProgressCallback | None = None,
               return_control: bool = False, reference_pose: AnimationClip | None = None) -> Iterator[RenderOutput]:
        """Render ``clip``, yielding frames in order as soon as they are decoded.

        ``reference_pose``: the reference image's FLAME parameters and camera (one frame, e.g.
        tracked from it), which a model with the correspondence control reads; without it that
        control is empty, as in training's correspondence dropout. The reference runs once for the whole clip. Models without temporal layers yield each
        chunk of ``frames_per_batch`` frames; temporal ones yield each context window's new
        frames as soon as that window is denoised. A consumer that does not keep the frames
        holds at most one chunk or window of them.
        """
        if not clip.has_camera:
            raise ValueError("the animation has no camera (K, R, t): export it from Blender with a camera")
        clip = self._driving_clip(clip, settings.shape_from, reference_shape)
        settings = replace(settings, steps=self.resolved_steps(settings.steps, settings.preview),
                           guidance=self.resolved_guidance(settings.guidance))
        resolution = self.resolution(settings.preview)
        reference_pixels = image_to_tensor(reference_image, resolution).to(self.device)
        reference = self.model.encode_images(reference_pixels)
        self.model.write_reference(reference.to(self.dtype))
        reference_view = self.reference_view(reference_pixels, reference_pose)
        self._preview_basis = None  # preview colours: one projection per job
        plan = [(rows, self._windows(clip.frame[rows], settings))
                for rows in self._denoising_groups(clip.num_frames, settings.frames_per_batch,
                                                   first_alone=settings.preview)]
        denoising = _DenoisingProgress(progress, settings.steps * sum(window.rows.stop - window.rows.start
                                                                      for _, windows in plan for window in windows))
        for rows, windows in plan:
            group = clip.take_rows(rows)
            intrinsics, finish = self.framing(group, settings.framing, resolution, settings.matte)
            pose_features, previews = self._pose_features(group, settings, resolution, return_control, intrinsics,
                                                          reference_view)
            regions = self._denoise(pose_features, group.frame, windows, settings, denoising)
            yield from self._decoded(regions, group.frame, previews, settings.frames_per_batch, finish)

    def framing(self, clip: AnimationClip, framing: str, resolution: int, matte: str = "tile"
                 ) -> tuple[np.ndarray, Callable[[np.ndarray, int], np.ndarray]]:
        """The square each frame renders (as intrinsics ``[F, 3, 3]``) and how a rendered square
        becomes the frame handed out (given the image and its row in ``clip``; with head framing,
        its alpha is the ``matte``)."""
        if framing == "camera":
            rows, columns = fitted_frame(clip.image_size, resolution)
            return (square_fit_intrinsics(clip.K, clip.image_size, resolution),
                    lambda image, _row: np.ascontiguousarray(image[rows, columns]))
        if framing != "head":
            raise ValueError(f"framing must be 'camera' or 'head', not {framing!r}")
        width, height = clip.image_size
        if width * height > MAX_FRAME_PIXELS:
            raise ValueError(f"the camera's image is {width}x{height}, more than 8K UHD (7680x4320) pixels: lower the "
                             "scene's resolution (Output Properties > Format > %) or render with framing 'camera'")
        vertices = self.flame.forward_clip(clip).vertices.double().cpu()
        squares = head_squares(vertices.numpy(), clip.K, clip.R, clip.t)
        if matte not in MATTES:
            raise ValueError(f"matte must be one of {', '.join(MATTES)}, not {matte!r}")
        if matte == "tile":
            return (square_region_intrinsics(clip.K, squares, resolution),
                    lambda image, row: place_in_frame(image, squares[row], clip.image_size))
        side = MATTE_SUPERSAMPLE * resolution
        matte_K = square_region_intrinsics(clip.K, squares, side)
        faces = self.flame.faces.cpu()
        latest: dict[int, np.ndarray] = {}   # a frame's matte serves its image and its control preview

        def matted(image: np.ndarray, row: int) -> np.ndarray:
            if row not in latest:
                latest.clear()
                latest[row] = head_matte(vertices[row:row + 1], faces, matte_K[row:row + 1], clip.R[row:row + 1],
                                         clip.t[row:row + 1], side, neck=matte == "head_neck")[0]
            return place_in_frame(image, squares[row], clip.image_size, latest[row])

        return square_region_intrinsics(clip.K, squares, resolution), matted

    def frames_to_render(self, wanted: list[int], job_frames: list[int], settings: RenderSettings) -> list[int]:
        """The frames to denoise so that ``wanted`` (a subset of the job's ``job_frames``) get the
        pixels of the whole job's render: ``wanted`` itself without temporal layers, else every
        job frame of the context windows holding them."""
        if self.model.temporal is None:
            return sorted(wanted)
        return frames_for_exact_subset(wanted, job_frames, settings.context_window, settings.context_overlap)

    def _windows(self, frame_numbers: np.ndarray, settings: RenderSettings) -> list[ContextWindow]:
        """Context windows of temporal models; one plain window of every row otherwise."""
        if self.model.temporal is not None:
            return context_windows(frame_numbers, settings.context_window, settings.context_overlap)
        return [ContextWindow(slice(0, len(frame_numbers)), np.ones(len(frame_numbers)), len(frame_numbers))]

    def _denoising_groups(self, num_frames: int, frames_per_batch: int, first_alone: bool = False) -> list[np.ndarray]:
        """Rows denoised together: chunks of ``frames_per_batch``, or every frame for temporal
        models (their windows see neighbours across chunk borders). ``first_alone`` (previews)
        denoises the first frame by itself so it is handed out after one frame's work."""
        first = 1 if first_alone and num_frames > 1 else 0
        if self.model.temporal is not None:
            groups = [np.arange(first, num_frames)]
        else:
            groups = [np.arange(start, min(start + frames_per_batch, num_frames))
                      for start in range(first, num_frames, frames_per_batch)]
        return [np.arange(first)] * first + groups

    def _decoded(self, regions: Iterator[tuple[int, Tensor]], frame_numbers: np.ndarray, previews: list[np.ndarray],
                 frames_per_batch: int, finish: Callable[[np.ndarray, int], np.ndarray]) -> Iterator[RenderOutput]:
        """Decode each ``(first row, final latents)`` region in batches of ``frames_per_batch``;
        ``finish`` turns each rendered square (frame or control preview) into the frame handed out."""
        for first, latents in regions:
            for offset in range(0, len(latents), frames_per_batch):
                batch = latents[offset:offset + frames_per_batch]
                rows = slice(first + offset, first + offset + len(batch))
                images = tensor_to_images(self.model.decode_latents(batch))
                yield RenderOutput(frame_numbers=[int(f) for f in frame_numbers[rows]],
                                   frames=[finish(image, row) for image, row in zip(images, range(rows.start, rows.stop))],
                                   control_previews=[finish(preview, row) for preview, row in
                                                     zip(previews[rows], range(rows.start, rows.stop))])

    def _pose_features(self, clip: AnimationClip, settings: RenderSettings, resolution: int,
                       return_control: bool, intrinsics: np.ndarray,
                       reference: ReferenceView | None) -> tuple[Tensor, list[np.ndarray]]:
        """Pose-guider outputs ``[F, C, h, w]`` of every frame in the denoiser's dtype (splatting
        in chunks, each frame's square given by ``intrinsics``), and the control previews (of the
        field or geometry channels) when asked for."""
        outputs, previews = [], []
        for start in range(0, clip.num_frames, settings.frames_per_batch):
            rows = np.arange(start, min(start + settings.frames_per_batch, clip.num_frames))
            control = self.control_maps(clip.take_rows(rows), resolution, intrinsics[rows], reference)
            outputs.append(self.model.guide(control.permute(0, 3, 1, 2)).to(self.dtype))
            if return_control:
                images, self._preview_basis = feature_preview(control[..., :self.model.control_channels],
                                                              self._preview_basis)
                previews += images
        return torch.cat(outputs), previews

    def _driving_clip(self, clip: AnimationClip, shape_from: str, reference_shape: np.ndarray | None) -> AnimationClip:
        if shape_from == "animation":
            return clip
        if shape_from != "reference":
            raise ValueError(f"shape_from must be 'animation' or 'reference', not {shape_from!r}")
        if reference_shape is None:
            raise ValueError("shape_from='reference' needs the reference identity's shape coefficients")
        shape = np.repeat(np.asarray(reference_shape, np.float64).reshape(1, -1), clip.num_frames, axis=0)
        return replace(clip, shape=shape)

    def reference_view(self, reference_pixels: Tensor, reference_pose: AnimationClip | None) -> ReferenceView | None:
        """What the correspondence control reads of the reference (``[1, 3, R, R]`` pixels as the
        model sees them, the centre square): None for a model without it or without the pose."""
        if not self.model.config.correspondence or reference_pose is None:
            return None
        if reference_pose.num_frames != 1 or not reference_pose.has_camera:
            raise ValueError("reference_pose must be one frame with a camera (K, R, t): the reference image's "
                             "FLAME parameters and the camera that took it")
        return ReferenceView.posed(self.flame, reference_pose, reference_pixels)

    def control_maps(self, clip: AnimationClip, resolution: int | None = None,
                     intrinsics: np.ndarray | None = None, reference: ReferenceView | None = None) -> Tensor:
        """Control maps ``[F, R, R, C]`` (the splatted Gaussian features, then the correspondence
        from ``reference`` for a model with it) for every frame of ``clip`` at
        ``resolution`` (default the checkpoint's), through ``intrinsics`` ``[F, 3, 3]`` of the
        square; by default the camera's whole image fitted into it (letterboxed when it is not
        square; :func:`fitted_frame` gives the part it covers)."""
        resolution = resolution or self.model.config.resolution
        vertices = self.flame.forward_clip(clip).vertices.to(self.device)
        Ks = square_fit_intrinsics(clip.K, clip.image_size, resolution) if intrinsics is None else intrinsics
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        return self.model.render_control(vertices, self.flame.faces, as_tensor(view_matrices(clip.R, clip.t)),
                                         as_tensor(Ks), resolution, reference)

    def _initial_noise(self, frame_numbers: np.ndarray, seed: int, latent_size: int) -> Tensor:
        """fp32 noise ``[F, C, latent_size, latent_size]``, seeded per (seed, frame number)."""
        shape = (self.model.config.latent_channels, latent_size, latent_size)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(f)))
                 for f in frame_numbers]
        return torch.stack(noise).to(self.device)

    def _denoise(self, pose_features: Tensor, frame_numbers: np.ndarray, windows: list[ContextWindow],
                 settings: RenderSettings, progress: "_DenoisingProgress") -> Iterator[tuple[int, Tensor]]:
        """DDIM over ``[F, C, h, w]`` pose-guider outputs, one context window after the other
        (``settings.guidance`` is the classifier-free guidance scale).

        Each window goes through every step on its own, from its frames' own noise, before the
        next one starts; its final latents are added, weighted, into the frames' blend (see
        :func:`context_windows`). Rows that no later window holds are then final and are
        yielded as ``(first row, final latents)``: frames arrive progressively, a cancelled
        render keeps them, and a frame never depends on where the render started. One window
        (every model without temporal layers, short clips) is plain DDIM. Latents and the
        scheduler stay fp32; only the denoiser's input and output are in its dtype.
        """
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        noise = self._initial_noise(frame_numbers, settings.seed, pose_features.shape[-1])
        guided = settings.guidance != 1.0
        branches = 2 if guided else 1
        keep = torch.tensor([True, False], device=self.device) if guided else None
        labels = torch.full((branches,), LABELS["real"], device=self.device)
        index = torch.zeros(branches, dtype=torch.long, device=self.device)
        blend = torch.zeros_like(noise)
        done = 0                                    # rows handed out
        for window in windows:
            latents = noise[window.rows]
            for timestep in self.scheduler.timesteps:
                v = self._predict(latents[None].to(self.dtype).expand(branches, -1, -1, -1, -1),
                                  timestep.repeat(branches),
                                  pose_features[None, window.rows].expand(branches, -1, -1, -1, -1),
                                  labels, keep, reference_index=index).float()
                v = v[1] + settings.guidance * (v[0] - v[1]) if guided else v[0]
                latents = self.scheduler.step(v, timestep, latents).prev_sample
                progress.advance(len(latents))
            weights = torch.as_tensor(window.weights, dtype=latents.dtype, device=self.device)
            blend[window.rows] += weights[:, None, None, None] * latents
            final_end = window.rows.start + window.final_rows
            if final_end > done:
                yield done, blend[done:final_end]
                done = final_end


@dataclass
class _DenoisingProgress:
    """Counts frame-steps denoised over a whole render for the caller's progress callback, so
    its ``done / total`` grows steadily however the frames are grouped; raises when asked to stop."""

    callback: ProgressCallback | None
    total: int
    done: int = 0

    def advance(self, frames: int) -> None:
        self.done += frames
        if self.callback is not None and self.callback("denoising", self.done, self.total) is False:
            raise RenderCancelled("cancelled")
