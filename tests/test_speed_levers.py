"""Speed levers of the pipeline on the tiny preset: bf16 + channels-last U-Nets within bf16
tolerance of fp32, the plain path untouched on the CPU, torch.compile traced whole or falling back
to eager; and previews (half resolution, few steps, first frame alone)."""

from __future__ import annotations

import copy
import functools
import logging

import numpy as np
import pytest
import torch

from flamediff.demo import demo_animation
from flamediff.flame.model import FlameModel
from flamediff.models import FlameDiffConfig, FlameDiffModel
from flamediff.pipelines.render import PREVIEW_STEPS, FlameDiffPipeline, RenderSettings, preview_resolution
from test_server_helpers import counting_calls
from tiny_data import visible_control_tiny_model

REFERENCE = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
SETTINGS = RenderSettings(steps=3, guidance=2.0, seed=7, frames_per_batch=2, framing="camera")


@pytest.fixture(scope="module")
def model(head_asset) -> FlameDiffModel:
    """The tiny model with a visible control; pipelines prepare their model in place, so each
    test gives one a copy."""
    return visible_control_tiny_model(head_asset)


@pytest.fixture(scope="module")
def flame(head_asset) -> FlameModel:
    return FlameModel(head_asset)


@pytest.fixture(scope="module")
def clip(head_asset):
    return demo_animation(head_asset, num_frames=4, resolution=48)


@pytest.fixture(scope="module")
def fp32_frames(model, flame, clip) -> np.ndarray:
    pipeline = FlameDiffPipeline(copy.deepcopy(model), flame, dtype=torch.float32, channels_last=False)
    return np.stack(pipeline(REFERENCE, clip, SETTINGS).frames).astype(np.float64)


def test_default_on_cpu_is_the_plain_fp32_path(model, flame, clip, fp32_frames):
    pipeline = FlameDiffPipeline(copy.deepcopy(model), flame)
    assert pipeline.dtype == torch.float32 and not pipeline.compiled
    weight = pipeline.model.denoiser.conv_in.weight
    assert weight.dtype == torch.float32 and weight.is_contiguous()
    np.testing.assert_array_equal(np.stack(pipeline(REFERENCE, clip, SETTINGS).frames), fp32_frames)


def test_bf16_channels_last_frames_are_within_bf16_tolerance(model, flame, clip, fp32_frames):
    """Bound: mean |difference| < 2 of 255 levels and PSNR > 40 dB (measured: 0.39 levels, 51 dB)."""
    pipeline = FlameDiffPipeline(copy.deepcopy(model), flame, dtype=torch.bfloat16, channels_last=True)
    for unet in (pipeline.model.denoiser, pipeline.model.reference_unet):
        assert unet.conv_in.weight.dtype == torch.bfloat16
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipeline.model.vae.decoder.conv_out.weight.dtype == torch.float32  # the decode stays fp32
    frames = np.stack(pipeline(REFERENCE, clip, SETTINGS).frames).astype(np.float64)
    difference = frames - fp32_frames
    psnr = 10 * np.log10(255.0 ** 2 / np.mean(difference ** 2))
    assert np.abs(difference).mean() < 2.0 and psnr > 40.0, (np.abs(difference).mean(), psnr)


def test_bf16_temporal_model_renders(model, flame, head_asset):
    """The motion modules are hooked into the denoiser, not its submodules: they are cast too."""
    temporal = copy.deepcopy(model)
    temporal.add_temporal_layers()
    pipeline = FlameDiffPipeline(temporal, flame, dtype=torch.bfloat16)
    assert next(pipeline.model.temporal.parameters()).dtype == torch.bfloat16
    clip = demo_animation(head_asset, num_frames=3, resolution=48)
    out = pipeline(REFERENCE, clip, RenderSettings(steps=2, seed=1, frames_per_batch=8, framing="camera"))
    assert len(out.frames) == 3 and out.frames[0].shape == (32, 32, 3)


def test_compiled_denoiser_traces_without_graph_breaks_and_matches_eager(model, flame, clip, fp32_frames,
                                                                         monkeypatch):
    """dynamo's eager backend (no C compiler needed) with fullgraph=True: the denoiser, its
    reference-attention processors and the pose-guider hook trace as one graph."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager", fullgraph=True))
    torch._dynamo.reset()
    pipeline = FlameDiffPipeline(copy.deepcopy(model), flame, compile_denoiser=True)
    frames = np.stack(pipeline(REFERENCE, clip, SETTINGS).frames)
    assert pipeline.compiled
    np.testing.assert_allclose(frames, fp32_frames, atol=1)


def test_compile_failure_falls_back_to_eager(model, flame, clip, fp32_frames, monkeypatch, caplog):
    def failing_compile(function, **_):
        def compiled(*args, **kwargs):
            raise torch._dynamo.exc.TorchDynamoException("no working C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    pipeline = FlameDiffPipeline(copy.deepcopy(model), flame, compile_denoiser=True)
    assert pipeline.compiled
    with caplog.at_level(logging.WARNING, logger="flamediff.pipeline"):
        frames = np.stack(pipeline(REFERENCE, clip, SETTINGS).frames)
    assert not pipeline.compiled and "no working C++ compiler" in caplog.text
    np.testing.assert_array_equal(frames, fp32_frames)


def test_preview_resolution_divides_the_vae_and_every_unet_level():
    sizes = {name: preview_resolution(FlameDiffConfig.preset_named(name)) for name in ("tiny", "demo", "sd15")}
    assert sizes == {"tiny": 16, "demo": 64, "sd15": 256}
    odd = FlameDiffConfig.preset_named("demo", resolution=96)  # multiple 32: 48 rounds down to 32
    assert preview_resolution(odd) == 32


@pytest.mark.parametrize("temporal_layers", [False, True])
def test_preview_is_half_size_with_few_steps_and_hands_the_first_frame_out_alone(model, flame, head_asset,
                                                                                  temporal_layers):
    preview_model = copy.deepcopy(model)
    if temporal_layers:
        preview_model.add_temporal_layers()
    pipeline = FlameDiffPipeline(preview_model, flame)
    assert pipeline.resolved_steps(0, preview=True) == PREVIEW_STEPS == 4
    assert pipeline.resolved_steps(2, preview=True) == 2 and pipeline.resolved_steps(30, preview=True) == 4
    clip = demo_animation(head_asset, num_frames=5, resolution=48)
    totals = []
    settings = RenderSettings(steps=2, seed=3, frames_per_batch=2, preview=True, framing="camera")
    with counting_calls(pipeline.model.reference_unet) as reference_calls:
        pieces = list(pipeline.stream(REFERENCE, clip, settings, return_control=True,
                                      progress=lambda _, done, total: totals.append(total)))
    assert reference_calls == [1]  # once per job, however the frames are grouped
    assert set(totals) == {5 * 2}  # 5 frames x the 2 steps asked for
    assert pieces[0].frame_numbers == [1]
    assert [n for piece in pieces for n in piece.frame_numbers] == [1, 2, 3, 4, 5]
    for piece in pieces:
        assert all(frame.shape == (16, 16, 3) for frame in piece.frames + piece.control_previews)
    assert pipeline.resolution(preview=True) == 16 and pipeline.resolution() == 32


def test_preview_control_maps_are_the_full_ones_at_half_size(model, flame, clip):
    """Intrinsics scaled to the preview size: the head covers the same part of the frame."""
    pipeline = FlameDiffPipeline(copy.deepcopy(model), flame)
    full = pipeline.control_maps(clip).abs().sum(-1) > 0                # [F, 32, 32]
    half = pipeline.control_maps(clip, resolution=16).abs().sum(-1) > 0  # [F, 16, 16]
    pooled = torch.nn.functional.avg_pool2d(full[:, None].float(), 2)[:, 0] > 0.5
    intersection, union = (pooled & half).sum().item(), (pooled | half).sum().item()
    assert half.any() and intersection / union > 0.8, intersection / union
