"""The ablation control (FLAME normals + depth + landmarks through the pose guider): maps, model,
rendering pipeline, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flamediff.geometry.rasterizer import project
from flamediff.demo import demo_animation
from flamediff.flame.model import FlameModel
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv
from flamediff.models import FlameDiffConfig, FlameDiffModel
from flamediff.models.config import LABELS
from flamediff.models.flamediff_model import CheckpointError
from flamediff.models.geometry_control import GEOMETRY_CHANNELS, LANDMARK_SIGMA, render_geometry_control
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings
from flamediff.training.train import TrainConfig, Trainer
from tiny_data import make_tiny_dataset

RESOLUTION = 128  # maps of the rendering tests (the model tests use the tiny preset's 32 px)


def _cameras(distances: list[float], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frontal OpenCV cameras at ``distances`` whose focal length keeps the head as large as the
    training data's 27 degree camera at 0.62 m does."""
    viewmats, Ks = [], []
    for distance in distances:
        R, t = look_at_opencv([0.0, 0.0, distance], [0.0, -0.005, 0.0])
        viewmat = np.eye(4)
        viewmat[:3, :3], viewmat[:3, 3] = R, t
        fov = float(np.degrees(2 * np.arctan(np.tan(np.radians(13.5)) * 0.62 / distance)))
        viewmats.append(viewmat)
        Ks.append(intrinsics_from_fov(fov, resolution, resolution))
    return torch.as_tensor(np.stack(viewmats), dtype=torch.float32), torch.as_tensor(np.stack(Ks), dtype=torch.float32)


@pytest.fixture(scope="module")
def head(head_asset):
    """The procedural head with its mouth open, seen by two cameras: control maps, landmark pixels."""
    flame = FlameModel(head_asset)
    pose = torch.zeros(2, 5, 3)
    pose[:, 2, 0] = 0.2
    with torch.no_grad():
        out = flame(pose=pose)
    viewmats, Ks = _cameras([0.62, 1.24], RESOLUTION)
    triangles = flame.faces[flame.landmark_faces]
    maps = render_geometry_control(out.vertices, flame.faces, viewmats, Ks, RESOLUTION, triangles,
                                   flame.landmark_barycentrics)
    _, pixels = project(out.landmarks, Ks, viewmats[:, :3, :3], viewmats[:, :3, 3])
    return maps, pixels


def test_channels_and_value_ranges(head):
    maps, _ = head
    assert maps.shape == (2, RESOLUTION, RESOLUTION, GEOMETRY_CHANNELS) and maps.dtype == torch.float32
    normals, depth = maps[..., :3], maps[..., 3]
    mask = normals.norm(dim=-1) > 0
    assert 0.15 < mask.float().mean() < 0.9
    torch.testing.assert_close(normals[mask].norm(dim=-1), torch.ones(int(mask.sum())), atol=1e-4, rtol=0)
    assert (maps[..., :4][~mask] == 0).all()                            # background: no normal, no depth
    assert (depth[mask].abs() <= 1.0).all() and depth[mask].std() > 0.05
    assert (normals[..., 2][mask] < 0).float().mean() > 0.9  # seen surfaces face the camera (-z) but the mouth
    # distance-independent: twice as far with twice the focal length gives nearly the same map (only
    # the perspective differs; unnormalised depths would differ by 0.62 m, several head radii)
    both = mask[0] & mask[1]
    assert (depth[0][both] - depth[1][both]).abs().mean() < 0.1


def test_landmark_heatmap_peaks_at_the_projected_landmarks(head):
    maps, pixels = head
    heat = maps[..., 4]
    sigma = LANDMARK_SIGMA * RESOLUTION
    assert heat.min() >= 0 and heat.max() <= 1
    for frame in range(2):
        column, row = pixels[frame].floor().long().unbind(-1)
        assert (heat[frame, row, column] > np.exp(-0.5 / (2 * sigma ** 2))).all()  # <= 0.71 px from a centre
        axis = torch.arange(float(RESOLUTION)) + 0.5
        centres = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).view(-1, 2)
        nearest = torch.cdist(centres, pixels[frame]).amin(-1).view(RESOLUTION, RESOLUTION)
        assert (heat[frame][nearest > 4 * sigma] < 1e-3).all()


def test_bad_control_is_a_clear_error():
    with pytest.raises(ValueError, match="control must be one of \\('gaussian', 'geometry'\\), not 'depth'"):
        FlameDiffConfig.preset_named("tiny", control="depth")


def _geometry_model(head_asset) -> FlameDiffModel:
    torch.manual_seed(4)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", control="geometry", flame_asset=head_asset.identity()))
    model.attach_control(head_asset)
    with torch.no_grad():  # a trained guider is not zero: make the control matter
        torch.nn.init.normal_(model.pose_guider.out.weight, std=0.1)
    return model.eval()


def _predict(model: FlameDiffModel, head_asset) -> torch.Tensor:
    flame = FlameModel(head_asset)
    with torch.no_grad():
        vertices = flame(expression=torch.tensor([[1.0, -0.5]])).vertices
        viewmats, Ks = _cameras([0.62], 32)
        maps = model.render_control(vertices, flame.faces, viewmats, Ks)
        g = torch.Generator().manual_seed(0)
        model.write_reference(torch.randn(1, 4, 16, 16, generator=g))
        return model.predict(torch.randn(1, 1, 4, 16, 16, generator=g), torch.tensor([300]),
                             maps.permute(0, 3, 1, 2)[None], torch.tensor([LABELS["real"]]), torch.tensor([True]))


def test_geometry_model_has_no_field_and_round_trips(tmp_path, head_asset):
    model = _geometry_model(head_asset)
    assert model.gaussian_field is None and model.pose_guider.body[0].in_channels == GEOMETRY_CHANNELS
    assert not any(name.startswith("gaussian_field") for name, _ in model.named_parameters())
    with pytest.raises(ValueError, match="no Gaussian field"):
        model.attach_gaussian_field(head_asset)
    before = _predict(model, head_asset)
    model.save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="load it with its FLAME asset"):
        FlameDiffModel.from_pretrained(str(tmp_path))
    loaded = FlameDiffModel.from_pretrained(str(tmp_path), asset=head_asset).eval()
    assert loaded.config.control == "geometry" and loaded.has_control
    torch.testing.assert_close(_predict(loaded, head_asset), before, rtol=0, atol=0)


def test_pipeline_renders_frames_and_control_previews(head_asset):
    pipeline = FlameDiffPipeline(_geometry_model(head_asset), FlameModel(head_asset))
    clip = demo_animation(head_asset, num_frames=2, resolution=48)
    out = pipeline(np.full((48, 48, 3), 128, np.uint8), clip, RenderSettings(steps=2, frames_per_batch=8, framing="camera"),
                   return_control=True)
    assert len(out.frames) == len(out.control_previews) == 2
    assert out.control_previews[0].shape == (32, 32, 3) and out.control_previews[0].std() > 0


def test_stage_1_training_with_the_geometry_control(tmp_path, head_asset):
    make_tiny_dataset(str(tmp_path / "data"), head_asset, identities=2, frames_per_identity=3)
    config = TrainConfig.from_dict(dict(dataset=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), steps=2,
                                        batch_size=2, checkpoint_every=2, learning_rate=1e-3, reference_dropout=0.0,
                                        lr_schedule="constant", warmup_steps=0, ema_decay=None,
                                        overrides={"control": "geometry"}))
    trainer = Trainer(config, log=lambda message: None)
    assert trainer.model.gaussian_field is None and len(trainer.optimizer.param_groups) == 1
    guider = {name: value.clone() for name, value in trainer.model.pose_guider.state_dict().items()}
    trainer.train()
    for name, value in trainer.model.pose_guider.state_dict().items():
        assert not torch.equal(value, guider[name]), name
    loaded = FlameDiffModel.from_pretrained(str(tmp_path / "run" / "model"), asset=head_asset)
    assert loaded.config.control == "geometry"
