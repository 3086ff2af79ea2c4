"""Reference correspondence (models/correspondence.py): the reference's colour at each surface
point a frame shows, its model input and its training."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from flamediff.demo import demo_animation
from flamediff.flame.model import FlameModel
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv
from flamediff.geometry.rasterizer import fragments_of, rasterize
from flamediff.models import FlameDiffConfig, FlameDiffModel
from flamediff.models.correspondence import CORRESPONDENCE_CHANNELS, ReferenceView, correspondence_maps
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
from flamediff.training.train import TrainConfig, Trainer
from test_server_helpers import animation_bytes, make_checkpoint, png_bytes
from tiny_data import make_tiny_dataset, visible_control_tiny_model

SIDE = 64


def _camera(eye: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    R, t = look_at_opencv(eye, [0.0, -0.005, 0.0])
    viewmat = np.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = R, t
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)[None]  # noqa: E731
    return as_tensor(viewmat), as_tensor(intrinsics_from_fov(27.0, SIDE, SIDE))


@pytest.fixture(scope="module")
def posed(head_asset):
    flame = FlameModel(head_asset)
    with torch.no_grad():
        vertices = flame(pose=torch.zeros(1, 5, 3)).vertices
    return flame, vertices


def _gradient_image() -> torch.Tensor:
    """A reference whose colour says where each pixel is: R = column, G = row, B = -1."""
    ramp = torch.linspace(-1.0, 1.0, SIDE)
    return torch.stack([ramp[None, :].expand(SIDE, SIDE), ramp[:, None].expand(SIDE, SIDE),
                        -torch.ones(SIDE, SIDE)])[None]


def test_a_frame_seen_as_the_reference_was_gets_the_reference_back(posed):
    flame, vertices = posed
    viewmat, K = _camera([0.0, 0.0, 0.62])
    image = _gradient_image()
    maps = correspondence_maps(vertices, flame.faces, viewmat, K, SIDE, ReferenceView.of(vertices, flame.faces, viewmat, K, image))
    assert maps.shape == (1, SIDE, SIDE, CORRESPONDENCE_CHANNELS)
    covered = rasterize(vertices, flame.faces, K, viewmat[:, :3, :3], viewmat[:, :3, 3], SIDE, SIDE).mask[0]
    known = maps[0, ..., 3] > 0
    assert not known[~covered].any(), "colour where the frame shows no mesh"
    assert known[covered].float().mean() > 0.97, "a point seen by the reference's own camera must be visible"
    error = (maps[0, ..., :3] - image[0].permute(1, 2, 0)).abs()[known]
    assert error.max() < 1e-3


def test_points_turned_away_from_the_reference_are_unknown_and_the_rest_lands_where_it_was(posed):
    flame, vertices = posed
    reference_viewmat, K = _camera([0.0, 0.0, 0.62])
    side_viewmat, _ = _camera([0.62, 0.0, 0.0])        # the head's left side, which the reference hardly sees
    view = ReferenceView.of(vertices, flame.faces, reference_viewmat, K, _gradient_image())
    maps = correspondence_maps(vertices, flame.faces, side_viewmat, K, SIDE, view)[0]
    fragments = rasterize(vertices, flame.faces, K, side_viewmat[:, :3, :3], side_viewmat[:, :3, 3], SIDE, SIDE)
    covered, known = fragments.mask[0], maps[..., 3] > 0
    share = known[covered].float().mean()
    assert 0.15 < share < 0.85, share
    # the known part's colour decodes to the reference pixel the point projects to: the face's
    # front, so its column coordinate lies inside the reference's head, never at the border
    columns = maps[..., 0][known]
    assert columns.abs().max() < 0.9


def test_a_model_gains_the_channels_without_changing_its_predictions(head_asset, tmp_path):
    config = FlameDiffConfig(resolution=32)
    model = FlameDiffModel(config)
    model.attach_control(head_asset)
    torch.manual_seed(0)
    for parameter in model.pose_guider.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    maps = torch.randn(2, config.feature_dim, 32, 32)
    before = model.guide(maps)
    model.add_reference_correspondence()
    widened = torch.cat([maps, torch.randn(2, CORRESPONDENCE_CHANNELS, 32, 32)], dim=1)
    assert model.config.correspondence
    torch.testing.assert_close(model.guide(widened), before)
    model.save_pretrained(str(tmp_path / "model"))
    loaded = FlameDiffModel.from_pretrained(str(tmp_path / "model"), asset=head_asset)
    torch.testing.assert_close(loaded.guide(widened), before)


def test_training_with_the_correspondence_teaches_its_inputs(head_asset, tmp_path):
    make_tiny_dataset(str(tmp_path / "data"), head_asset, resolution=32)
    config = TrainConfig(dataset=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), steps=3, batch_size=2, preset="tiny", warmup_steps=0,
                         learning_rate=1e-2, correspondence=True, checkpoint_every=100)
    # (the guider's zero-initialised output layer passes no gradient to its inputs on the first step)
    trainer = Trainer(config, log=lambda message: None)
    first = trainer.model.pose_guider.body[0].weight[:, -CORRESPONDENCE_CHANNELS:].detach().clone()
    batch = trainer.draw(0)
    view = trainer.reference_view(trainer.model, batch)
    assert view.image.shape == (2, 3, 32, 32)
    shared = dataclasses.replace(batch, reference_rows=np.repeat(batch.reference_rows[:1], 2),
                                 reference=batch.reference[:1].repeat(2, 1, 1, 1))
    view = trainer.reference_view(trainer.model, shared)   # two samples, one reference
    assert view.vertices.shape[0] == 2 and torch.equal(view.vertices[0], view.vertices[1])
    trainer.train()
    learned = trainer.model.pose_guider.body[0].weight[:, -CORRESPONDENCE_CHANNELS:]
    assert not torch.equal(learned, first), "the correspondence inputs got no gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fragments_from_the_winning_triangles_are_the_rasterisers(posed, dtype):
    """``fragments_of`` (what the triangle-id cache rebuilds from) gives rasterize's fragments
    bit for bit: barycentrics, depth, facing and the background, seen from the front and the side."""
    flame, vertices = posed
    views = [_camera(eye) for eye in ([0.0, 0.0, 0.6], [0.45, 0.1, 0.35])]
    viewmats, Ks = torch.cat([v for v, _ in views]), torch.cat([k for _, k in views])
    meshes = vertices.expand(2, -1, -1).to(dtype)
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    full = rasterize(meshes, flame.faces, Ks, R, t, SIDE, SIDE)
    rebuilt = fragments_of(full.face_id, meshes, flame.faces, Ks, R, t)
    assert full.mask.any() and (~full.mask).any() and (~full.front[full.mask]).any()  # background and back faces
    for name in ("face_id", "bary", "depth", "front"):
        assert torch.equal(getattr(rebuilt, name), getattr(full, name)), name


def test_the_triangle_id_cache_gives_the_same_loss_and_rasterises_each_frame_once(head_asset, tmp_path, monkeypatch):
    """Training with the correspondence reads the drawn frames' and references' triangle ids back
    from disk: the same loss as rasterising every step, no z-buffer search for a frame seen
    before, the entries rebuilt when the annotations change."""
    import flamediff.training.triangle_cache as triangle_cache

    monkeypatch.setenv("FLAMEDIFF_CACHE", str(tmp_path / "cache"))
    make_tiny_dataset(str(tmp_path / "data"), head_asset, resolution=32)
    settings = dict(dataset=str(tmp_path / "data"), steps=3, batch_size=2, preset="tiny", warmup_steps=0,
                    reference_dropout=0.0, correspondence=True, checkpoint_every=100)
    cached = Trainer(TrainConfig(output_dir=str(tmp_path / "cached"), **settings), log=lambda message: None)
    plain = Trainer(TrainConfig(output_dir=str(tmp_path / "plain"), cache_triangle_ids=False, **settings),
                    log=lambda message: None)
    assert cached.triangle_ids is not None and plain.triangle_ids is None
    rasterised = []
    rasterize_meshes = triangle_cache.rasterize
    monkeypatch.setattr(triangle_cache, "rasterize", lambda v, *a, **k: rasterised.append(len(v)) or rasterize_meshes(v, *a, **k))
    batch = cached.draw(1)
    with torch.no_grad():
        plain.loss(plain.draw(1))   # the latent cache's first encoding rounds differently: warm it
        expected = plain.loss(plain.draw(1))
        first = cached.loss(batch)
        assert torch.equal(first, expected)
        assert torch.equal(cached.loss(batch), first)
    rows = {int(r) for r in batch.rows.reshape(-1)} | {int(r) for r in batch.reference_rows}
    (store,) = cached.triangle_ids.stores.values()   # targets and references share the 32 px entries
    assert sorted(os.listdir(store.folder)) == [f"{r:06d}.npy" for r in sorted(rows)]
    assert sum(rasterised) == len(rows)              # each frame once, however often it is drawn
    annotations = os.path.join(str(tmp_path / "data"), "annotations.npz")
    stat = os.stat(annotations)
    os.utime(annotations, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # "regenerated"
    with torch.no_grad():
        assert torch.equal(cached.loss(batch), first)
    assert sum(rasterised) == 2 * len(rows)


def test_a_render_reads_the_reference_pose_and_renders_without_it(head_asset):
    model = visible_control_tiny_model(head_asset)
    model.add_reference_correspondence()
    with torch.no_grad():   # inputs that matter, as a trained model's do
        model.pose_guider.body[0].weight[:, -CORRESPONDENCE_CHANNELS:].normal_(std=0.5)
    pipeline = FlameDiffPipeline(model, FlameModel(head_asset))
    clip = demo_animation(head_asset, num_frames=2, resolution=48)
    reference_pose = clip.take_rows(np.array([0]))
    reference = np.asarray(clip_frame_colours(48))
    settings = RenderSettings(steps=2, guidance=1.0)
    with_pose = pipeline(reference, clip, settings, reference_pose=reference_pose, return_control=True)
    without = pipeline(reference, clip, settings, return_control=True)
    assert any(np.abs(a.astype(int) - b.astype(int)).max() > 2 for a, b in zip(with_pose.frames, without.frames))
    # the previews show the field, not the correspondence channels
    assert all(np.array_equal(a, b) for a, b in zip(with_pose.control_previews, without.control_previews))
    with pytest.raises(ValueError, match="one frame with a camera"):
        pipeline(reference, clip, settings, reference_pose=clip)


def clip_frame_colours(side: int) -> np.ndarray:
    """A reference with colour everywhere (left half warm, right half cool)."""
    image = np.zeros((side, side, 3), np.uint8)
    image[:, : side // 2] = (210, 160, 130)
    image[:, side // 2:] = (90, 120, 200)
    return image


def _shipped_reference() -> bytes:
    import flamediff

    with open(os.path.join(os.path.dirname(flamediff.__file__), "checkpoints", "demo", "reference.png"), "rb") as handle:
        return handle.read()


def test_the_reference_photos_pose_and_camera_are_tracked(head_asset):
    pytest.importorskip("mediapipe", reason="the tracking extra")
    from flamediff.tracking.track import track_reference_pose

    pose, note = track_reference_pose(_shipped_reference(), "png", head_asset)
    assert note == "" and pose.num_frames == 1 and pose.has_camera
    flame = FlameModel(head_asset)
    with torch.no_grad():
        vertices = flame.forward_clip(pose).vertices
    fragments = rasterize(vertices, flame.faces, torch.as_tensor(pose.K, dtype=torch.float32),
                          torch.as_tensor(pose.R, dtype=torch.float32), torch.as_tensor(pose.t, dtype=torch.float32),
                          pose.image_size[1], pose.image_size[0])
    photo = np.asarray(Image.open(io.BytesIO(_shipped_reference())).convert("RGB"), np.float64)
    head = fragments.mask[0].numpy()
    # the tracked mesh lands on the photo's head: skin under it, the plain backdrop around it
    assert 0.1 < head.mean() < 0.6
    assert np.abs(photo[head].mean(0) - photo[~head].mean(0)).max() > 20

    pose, note = track_reference_pose(png_bytes(), "png", head_asset)   # no face in it
    assert pose is None and "could not be tracked" in note and "reference.png" not in note


def test_a_job_on_a_correspondence_checkpoint_renders_with_or_without_a_trackable_reference(tmp_path, head_asset,
                                                                                            head_folder):
    pytest.importorskip("mediapipe", reason="the tracking extra")
    import argparse

    from flamediff.server.cli import register_cli

    models = tmp_path / "models"
    make_checkpoint(str(models / "tiny-correspondence"), head_asset, correspondence=True)
    (tmp_path / "anim.npz").write_bytes(animation_bytes(head_asset, num_frames=2))
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    notes = {}
    for name, reference in (("photo", _shipped_reference()), ("flat", png_bytes())):
        (tmp_path / f"{name}.png").write_bytes(reference)
        args = parser.parse_args(["render", "--reference", str(tmp_path / f"{name}.png"), "--animation",
                                  str(tmp_path / "anim.npz"), "--out", str(tmp_path / name), "--checkpoint",
                                  str(models / "tiny-correspondence"), "--steps", "1", "--device", "cpu",
                                  "--models-dir", str(models)])
        assert args.func(args) == 0
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["status"] == "done" and manifest["frames_done"] == 2
        notes[name] = manifest.get("notes", [])
    assert not any("could not be tracked" in note for note in notes["photo"])
    assert any("could not be tracked" in note for note in notes["flat"])


def test_evaluation_reads_annotated_tracked_or_no_reference_poses(head_asset, tmp_path):
    from flamediff.evaluation.evaluate import evaluate

    data = str(tmp_path / "data")
    make_tiny_dataset(data, head_asset, resolution=32)
    model = visible_control_tiny_model(head_asset)
    model.add_reference_correspondence()
    with torch.no_grad():
        model.pose_guider.body[0].weight[:, -CORRESPONDENCE_CHANNELS:].normal_(std=0.5)
    scores = {poses: evaluate(model, data, "all", steps=1, guidance=1.0, max_frames=2, flame_asset=head_asset,
                              device="cpu", reference_check=False, reference_poses=poses)
              for poses in ("annotated", "none")}
    assert scores["annotated"]["self"]["method"]["psnr"] != scores["none"]["self"]["method"]["psnr"]
    with pytest.raises(ValueError, match="annotated, tracked, none"):
        evaluate(model, data, "all", flame_asset=head_asset, device="cpu", reference_poses="guessed")
