"""The inference pipeline on the tiny preset: frames, determinism, subsets, previews, streaming,
cancel, default steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flamediff.demo import demo_animation
from flamediff.flame.model import FlameModel
from flamediff.pipelines.render import FlameDiffPipeline, RenderCancelled, RenderSettings
from test_server_helpers import counting_calls
from tiny_data import visible_control_tiny_model


@pytest.fixture(scope="module")
def pipeline(head_asset) -> FlameDiffPipeline:
    return FlameDiffPipeline(visible_control_tiny_model(head_asset), FlameModel(head_asset))


@pytest.fixture(scope="module")
def temporal(pipeline) -> FlameDiffPipeline:
    """The tiny model with (non-zero) temporal layers."""
    import copy

    model = copy.deepcopy(pipeline.model)
    model.add_temporal_layers()
    with torch.no_grad():
        for parameter in model.temporal.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return FlameDiffPipeline(model, pipeline.flame)


@pytest.fixture(scope="module")
def clip(head_asset):
    return demo_animation(head_asset, num_frames=4, resolution=48)


REFERENCE = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
FAST = RenderSettings(steps=3, guidance=2.0, seed=7, frames_per_batch=2, framing="camera")


def test_renders_every_frame_with_control_previews(pipeline, clip):
    out = pipeline(REFERENCE, clip, FAST, return_control=True)
    assert out.frame_numbers == [1, 2, 3, 4]
    assert len(out.frames) == 4 and out.frames[0].shape == (32, 32, 3) and out.frames[0].dtype == np.uint8
    assert len(out.control_previews) == 4 and out.control_previews[0].shape == (32, 32, 3)
    assert out.control_previews[0].std() > 0  # the head shows in the control map
    assert not np.array_equal(out.frames[0], out.frames[1])


def test_deterministic_for_a_seed_and_subsets_match(pipeline, clip):
    full = pipeline(REFERENCE, clip, FAST)
    again = pipeline(REFERENCE, clip, FAST)
    for a, b in zip(full.frames, again.frames):
        np.testing.assert_array_equal(a, b)
    subset = pipeline(REFERENCE, clip.select_frames([2, 3]), FAST)
    for index, frame_number in enumerate(subset.frame_numbers):
        np.testing.assert_allclose(subset.frames[index].astype(int), full.frames[frame_number - 1].astype(int),
                                   atol=1)
    other_seed = pipeline(REFERENCE, clip, RenderSettings(steps=3, seed=8, frames_per_batch=2, framing="camera"))
    assert not np.array_equal(other_seed.frames[0], full.frames[0])


def test_progress_counts_frame_steps_and_cancel_keeps_handed_out_frames(pipeline, clip):
    seen, delivered = [], []

    def progress(phase, done, total):
        seen.append((phase, done, total))
        return done < 8  # stop after the first step of the second chunk

    with pytest.raises(RenderCancelled):
        for piece in pipeline.stream(REFERENCE, clip, FAST, progress=progress):
            delivered += piece.frame_numbers
    assert seen == [("denoising", done, 4 * 3) for done in (2, 4, 6, 8)]  # 4 frames x 3 steps
    assert delivered == [1, 2]


def test_steps_zero_is_the_checkpoints_default(pipeline, clip):
    assert RenderSettings().steps == 0
    assert pipeline.resolved_steps(0) == pipeline.model.config.default_steps and pipeline.resolved_steps(3) == 3
    totals = []

    def stop(phase, done, total):
        totals.append(total)
        return False

    with pytest.raises(RenderCancelled):
        pipeline(REFERENCE, clip.select_frames([1]), RenderSettings(steps=0, framing="camera"), progress=stop)
    assert totals == [pipeline.model.config.default_steps]  # one frame: frame-steps are steps
    with pytest.raises(ValueError, match="steps must be >= 0"):
        pipeline(REFERENCE, clip, RenderSettings(steps=-1))


@pytest.mark.parametrize("temporal_layers, pieces", [(False, [[1, 2], [3, 4], [5, 6], [7]]),
                                                     (True, [[1, 2], [3, 4], [5, 6], [7]])])
def test_stream_hands_out_every_frame_once_in_order_as_it_is_decoded(pipeline, temporal, head_asset,
                                                                      temporal_layers, pieces):
    """Chunks without temporal layers; with them, each window's final frames once it is denoised
    (windows of frames 1-2, 1-4, 3-6, 5-7 and 7: frames 1-2 are final after the second, 3-4
    after the third, 5-6 after the fourth, 7 at the end), decoded 3 at a time.
    The ReferenceNet runs once per render however many chunks it has."""
    pipe = temporal if temporal_layers else pipeline
    clip = demo_animation(head_asset, num_frames=7, resolution=48)
    settings = RenderSettings(steps=2, seed=3, frames_per_batch=3 if temporal_layers else 2, context_window=4,
                              context_overlap=2, framing="camera")
    streamed, calls_at_first_piece = [], None
    with counting_calls(pipe.model.reference_unet, pipe.model.denoiser) as calls:
        for piece in pipe.stream(REFERENCE, clip, settings, return_control=True):
            streamed.append(piece)
            calls_at_first_piece = calls_at_first_piece or calls[1]
    assert calls[0] == 1 and calls_at_first_piece < calls[1]
    assert [piece.frame_numbers for piece in streamed] == pieces
    whole = pipe(REFERENCE, clip, settings, return_control=True)
    assert [n for piece in streamed for n in piece.frame_numbers] == whole.frame_numbers == list(range(1, 8))
    for name in ("frames", "control_previews"):
        for got, expected in zip([image for piece in streamed for image in getattr(piece, name)],
                                 getattr(whole, name), strict=True):
            np.testing.assert_array_equal(got, expected)


def test_shape_from_reference_changes_the_control(pipeline, clip):
    shape = np.zeros(100)
    shape[1] = 3.0  # a much wider head
    wide = pipeline.control_maps(pipeline._driving_clip(clip, "reference", shape))
    base = pipeline.control_maps(clip)
    assert (wide - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs the reference identity's shape"):
        pipeline(REFERENCE, clip, RenderSettings(shape_from="reference"))


def test_needs_a_camera(pipeline, head_asset):
    from flamediff.formats.animation import make_clip

    with pytest.raises(ValueError, match="no camera"):
        pipeline(REFERENCE, make_clip(2))


def test_context_windows_are_anchored_to_frame_numbers_and_blend_to_one():
    from flamediff.pipelines.render import context_windows

    windows = context_windows(np.arange(1, 41), 16, 4)
    assert [(w.rows.start, w.rows.stop) for w in windows] == [(0, 12), (8, 24), (20, 36), (32, 40)]
    total = np.zeros(40)
    for window in windows:
        total[window.rows] += window.weights
    np.testing.assert_allclose(total, 1.0)     # every frame's blend weights sum to one
    np.testing.assert_allclose(windows[1].weights[:4], [0.2, 0.4, 0.6, 0.8])
    assert [w.final_rows for w in windows] == [8, 12, 12, 8]   # the last window: all its rows
    short = context_windows(np.arange(1, 9), 16, 4)
    assert [(w.rows.start, w.rows.stop) for w in short] == [(0, 8)]
    later = context_windows(np.arange(21, 33), 16, 4)   # frames 21-24 end one window and start the next
    assert [(w.rows.start + 21, w.rows.stop + 21) for w in later] == [(21, 25), (21, 33)]
    with pytest.raises(ValueError, match="overlap < window"):
        context_windows(np.arange(1, 41), 8, 8)


def test_frames_for_exact_subset_are_the_windows_holding_the_wanted_frames():
    from flamediff.formats.windows import frames_for_exact_subset

    assert frames_for_exact_subset([5, 6, 7], range(1, 8), 4, 2) == [3, 4, 5, 6, 7]
    assert frames_for_exact_subset([30], range(1, 100), 16, 4) == list(range(21, 37))
    assert frames_for_exact_subset([2], range(1, 100), 16, 4) == list(range(1, 13))


def test_temporal_model_renders_long_clips_through_windows(pipeline, temporal, head_asset):
    """Windows denoised one after the other: the frames differ from one window over the whole
    clip (other neighbours); a subset holding the windows of frames 5-7 whole gives those frames
    the full render's pixels; zero-initialised temporal layers give the frames of no temporal
    layers."""
    import copy

    from flamediff.formats.windows import frames_for_exact_subset

    clip = demo_animation(head_asset, num_frames=7, resolution=48)
    settings = RenderSettings(steps=2, seed=3, frames_per_batch=3, context_window=4, context_overlap=2, framing="camera")
    windowed = temporal(REFERENCE, clip, settings, return_control=True)
    assert len(windowed.frames) == 7 and len(windowed.control_previews) == 7
    whole = temporal(REFERENCE, clip, RenderSettings(steps=2, seed=3, frames_per_batch=3, context_window=9, framing="camera"))
    differs = [not np.array_equal(a, b) for a, b in zip(windowed.frames, whole.frames)]
    assert any(differs)  # the temporal layers see different neighbours
    needed = frames_for_exact_subset([5, 6, 7], clip.frame, 4, 2)
    subset = temporal(REFERENCE, clip.select_frames(needed), settings)
    assert subset.frame_numbers == needed == [3, 4, 5, 6, 7]
    for a, b in zip(subset.frames[2:], windowed.frames[4:], strict=True):
        np.testing.assert_array_equal(a, b)   # frames 5-7: the full render's pixels
    assert not np.array_equal(subset.frames[0], windowed.frames[2])   # frame 3's first window was cut
    fresh = FlameDiffPipeline(copy.deepcopy(pipeline.model), pipeline.flame)
    plain = fresh(REFERENCE, clip, RenderSettings(steps=2, seed=3, frames_per_batch=3, framing="camera"))
    fresh.model.add_temporal_layers()  # zero-initialised: same frames as without temporal layers
    windows = fresh(REFERENCE, clip, settings)
    for a, b in zip(plain.frames, windows.frames):
        np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)


def test_optimised_path_equals_the_plain_one(pipeline, clip):
    """Batched guidance branches + ReferenceNet tokens computed once per job give the frames of a
    plain loop that runs each branch separately and recomputes the reference every step."""
    from flamediff.models.config import LABELS
    from flamediff.models.pixels import tensor_to_images
    from flamediff.pipelines.render import image_to_tensor

    settings = RenderSettings(steps=3, guidance=2.5, seed=5, frames_per_batch=4, framing="camera")
    fast = pipeline(REFERENCE, clip, settings)
    model, scheduler = pipeline.model, pipeline.scheduler
    with torch.no_grad():
        reference = model.encode_images(image_to_tensor(REFERENCE, model.config.resolution))
        features = pipeline.control_maps(clip).permute(0, 3, 1, 2)[None]
        latents = pipeline._initial_noise(clip.frame, settings.seed, model.config.latent_resolution)[None]
        scheduler.set_timesteps(settings.steps)
        real = torch.tensor([LABELS["real"]])
        for timestep in scheduler.timesteps:
            model.write_reference(reference)
            cond = model.predict(latents, timestep[None], features, real, torch.tensor([True]))
            model.write_reference(reference)
            uncond = model.predict(latents, timestep[None], features, real, torch.tensor([False]))
            velocity = uncond + settings.guidance * (cond - uncond)
            latents = scheduler.step(velocity[0], timestep, latents[0]).prev_sample[None]
        plain = tensor_to_images(model.decode_latents(latents[0]))
    for a, b in zip(fast.frames, plain):
        np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)


def test_wide_camera_keeps_its_whole_framing(pipeline, clip):
    """A 16:9 camera renders frames of its aspect showing its whole view (the square is
    letterboxed around it), not a zoomed centre square."""
    from dataclasses import replace

    from flamediff.formats.conventions import fitted_frame, intrinsics_from_fov, square_fit_intrinsics

    width, height = 64, 36
    wide = replace(clip, K=np.repeat(intrinsics_from_fov(27.0, width, height)[None], clip.num_frames, 0),
                   image_size=(width, height))
    out = pipeline(REFERENCE, wide, FAST, return_control=True)
    assert out.frames[0].shape == (18, 32, 3) and out.control_previews[0].shape == (18, 32, 3)
    # a point seen at pixel (u, v) of the wide image lands at the matching pixel of the fitted square
    K = square_fit_intrinsics(wide.K[0], (width, height), 32)
    point = np.array([0.3, -0.2, 1.0])
    u, v = (wide.K[0] @ point)[:2]
    fu, fv = (K @ point)[:2]
    rows, cols = fitted_frame((width, height), 32)
    assert fu == pytest.approx(u * 0.5 + cols.start) and fv == pytest.approx(v * 0.5 + rows.start)
    square = pipeline(REFERENCE, clip, FAST)      # square cameras are unchanged
    assert square.frames[0].shape == (32, 32, 3)


def test_head_framing_places_the_head_square_in_a_transparent_frame_of_the_image_size(pipeline, clip):
    """Head framing: each frame renders the square around its head and hands out an RGBA frame of
    the camera's image size, opaque inside that square and transparent outside; a frame rendered
    alone is the same frame (its square depends on that frame only)."""
    from dataclasses import replace

    from flamediff.formats.conventions import head_squares, intrinsics_from_fov, project_points

    width, height = 192, 108
    wide = replace(clip, K=np.repeat(intrinsics_from_fov(27.0, width, height)[None], clip.num_frames, 0),
                   image_size=(width, height))
    settings = replace(FAST, framing="head", matte="tile")
    out = pipeline(REFERENCE, wide, settings, return_control=True)
    vertices = pipeline.flame.forward_clip(wide).vertices.double().numpy()
    squares = head_squares(vertices, wide.K, wide.R, wide.t)
    for frame, preview, square, row in zip(out.frames, out.control_previews, squares, range(wide.num_frames)):
        assert frame.shape == preview.shape == (height, width, 4)
        left, top, side = square
        assert 0 < side < width   # the head is smaller than this frame
        ys, xs = np.nonzero(frame[..., 3])
        assert abs(xs.min() - max(0, left)) <= 1 and abs(xs.max() + 1 - min(width, left + side)) <= 1
        assert abs(ys.min() - max(0, top)) <= 1 and abs(ys.max() + 1 - min(height, top + side)) <= 1
        assert (frame[frame[..., 3] == 0, :3] == 0).all()
        u, v = project_points(vertices[row].mean(0, keepdims=True), wide.K[row], wide.R[row], wide.t[row])[0][0]
        assert frame[int(v), int(u), 3] == 255     # the head is inside its square
    alone = pipeline(REFERENCE, wide.select_frames([2]), settings)
    np.testing.assert_array_equal(alone.frames[0], out.frames[1])
    with pytest.raises(ValueError, match="framing must be"):
        pipeline(REFERENCE, wide, replace(FAST, framing="centre"))
    with pytest.raises(ValueError, match="more than 8K UHD"):
        pipeline(REFERENCE, replace(wide, image_size=(20000, 10000)), settings)


def test_head_matte_is_the_feathered_silhouette_and_the_tile_stays_as_it_was(pipeline, clip):
    """Head framing's alpha is the head: opaque over the FLAME silhouette, feathered at its edge,
    transparent in the square's corners (which the tile fills); the colours are the tile's, so
    the square tile is the same render with a full alpha; head_neck adds the neck below the head."""
    from dataclasses import replace

    from flamediff.formats.conventions import head_squares, intrinsics_from_fov, project_points

    width, height = 192, 108
    wide = replace(clip, K=np.repeat(intrinsics_from_fov(27.0, width, height)[None], clip.num_frames, 0),
                   image_size=(width, height)).select_frames([1, 2])
    frames = {matte: pipeline(REFERENCE, wide, replace(FAST, framing="head", matte=matte)).frames
              for matte in ("tile", "head", "head_neck")}
    vertices = pipeline.flame.forward_clip(wide).vertices.double().numpy()
    squares = head_squares(vertices, wide.K, wide.R, wide.t)
    for row, (tile, head, neck) in enumerate(zip(frames["tile"], frames["head"], frames["head_neck"])):
        left, top, side = squares[row]
        square = tile[..., 3] == 255
        assert head[..., 3][~square].max() == 0          # never outside the tile
        corner = (int(top + 0.05 * side), int(left + 0.05 * side))
        assert tile[corner + (3,)] == 255 and head[corner + (3,)] == 0
        u, v = project_points(vertices[row].mean(0, keepdims=True), wide.K[row], wide.R[row], wide.t[row])[0][0]
        assert head[int(v), int(u), 3] == 255
        feathered = (head[..., 3] > 0) & (head[..., 3] < 255)
        assert feathered.sum() > 0.2 * np.sqrt((head[..., 3] == 255).sum())   # a soft edge all round
        shown = head[..., 3] > 0
        np.testing.assert_array_equal(head[shown, :3], tile[shown, :3])
        assert (neck[..., 3] >= head[..., 3]).all() and neck[..., 3].sum() > head[..., 3].sum()
        bottom = (min(height, int(top + side)) - 1, int(u))
        assert neck[bottom + (3,)] == 255 and head[bottom + (3,)] < 255   # the neck reaches the square's edge
    with pytest.raises(ValueError, match="matte must be one of"):
        pipeline(REFERENCE, wide, replace(FAST, framing="head", matte="oval"))


def test_place_in_frame_samples_only_the_visible_part():
    from flamediff.pipelines.render import place_in_frame

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, 4:] = 200                               # right half bright
    frame = place_in_frame(image, np.array([-4.0, 2.0, 16.0]), (10, 20))
    assert frame.shape == (20, 10, 4)
    assert (frame[2:18, :, 3] == 255).all() and (frame[:2, :, 3] == 0).all() and (frame[18:, :, 3] == 0).all()
    assert frame[10, 1, 0] < 20 and frame[10, 8, 0] > 180    # the square's left quarter is cut off
    huge = place_in_frame(image, np.array([-1e6, -1e6, 4e6]), (10, 20))   # bounded by the frame, not the square
    assert (huge[..., 3] == 255).all()
    assert not place_in_frame(image, np.array([50.0, 50.0, 8.0]), (10, 20))[..., 3].any()


def test_guidance_zero_is_the_checkpoints_default(pipeline, clip):
    """guidance 0 renders with config.default_guidance (the demo checkpoint's is 1: no second
    branch), exactly as asking for that scale does."""
    from dataclasses import replace

    assert RenderSettings().guidance == 0.0
    default = pipeline.model.config.default_guidance
    assert pipeline.resolved_guidance(0.0) == default and pipeline.resolved_guidance(3.0) == 3.0
    one = clip.select_frames([1])
    np.testing.assert_array_equal(pipeline(REFERENCE, one, replace(FAST, guidance=0.0)).frames[0],
                                  pipeline(REFERENCE, one, replace(FAST, guidance=default)).frames[0])
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        pipeline(REFERENCE, one, replace(FAST, guidance=-1.0))
