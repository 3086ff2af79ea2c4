"""Evaluation: masked pixel metrics, network hooks from files, the regressor, evaluate() and the CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from flamediff.evaluation import metrics as M
from flamediff.evaluation.evaluate import evaluate, format_table
from flamediff.evaluation.masks import background_mask
from flamediff.evaluation.selection import to_resolution
from flamediff.formats.rotations import axis_angle_to_matrix, matrix_to_axis_angle

RNG = np.random.default_rng(0)


def _image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# pixel metrics


def test_psnr_and_l1_of_a_known_error():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[..., 0] += 10  # one channel off by 10/255: MSE = (10/255)^2 / 3
    expected_mse = (10 / 255) ** 2 / 3
    assert M.mse(a, b) == pytest.approx(expected_mse, rel=1e-12)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-12)
    assert M.l1(a, b) == pytest.approx(10 / 255 / 3, rel=1e-12)
    assert M.psnr(a, a) == M.PSNR_CAP and M.l1(a, a) == 0.0


def test_metrics_respect_the_mask():
    a = _image(1)
    b = a.copy()
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    b[~mask] = 255 - b[~mask]  # change only outside the mask
    assert M.psnr(a, b, mask) == M.PSNR_CAP
    assert M.l1(a, b, mask) == 0.0
    assert M.psnr(a, b) < 20 and M.l1(a, b) > 0.1
    # inside the mask: the MSE over exactly the masked pixels
    c = a.astype(int)
    c[mask] = np.clip(c[mask] + 20, 0, 255)
    c = c.astype(np.uint8)
    expected = ((c[mask].astype(float) - a[mask]) / 255) ** 2
    assert M.psnr(a, c, mask) == pytest.approx(10 * math.log10(1 / expected.mean()), rel=1e-12)
    assert M.ssim(a, c, mask) < M.ssim(a, c, ~mask)  # outside the mask the images are equal...
    assert M.ssim(a, c, ~mask) < 1.0                  # ...but the window reaches across the edge
    with pytest.raises(M.MetricError, match="mask"):
        M.psnr(a, c, np.ones((8, 8), bool))


def test_colour_error_and_sharpness_ratio():
    rng = np.random.RandomState(0)
    image = rng.randint(40, 200, size=(32, 32, 3)).astype(np.uint8)
    shifted = image.copy()
    shifted[..., 0] += 12            # red 12 levels brighter everywhere
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    assert M.colour_error(shifted, image, mask) == pytest.approx(4.0)   # (12 + 0 + 0) / 3
    assert M.colour_error(image, image, ~mask) == 0.0
    assert M.sharpness_ratio(image, image, mask) == pytest.approx(1.0)
    blurred = (image.astype(float) + np.roll(image, 1, 0) + np.roll(image, 1, 1) + np.roll(image, (1, 1), (0, 1))) / 4
    assert M.sharpness_ratio(blurred.astype(np.uint8), image, mask) < 0.5
    assert M.sharpness_ratio(image, blurred.astype(np.uint8), mask) > 2.0


class _CopyReference:
    """A stand-in pipeline whose frames are the reference's colours on a fixed head silhouette
    (follow=1) or always the same colours whatever the reference (follow=0)."""

    def __init__(self, follow: float, resolution: int = 32) -> None:
        from types import SimpleNamespace

        self.follow = follow
        self.model = SimpleNamespace(config=SimpleNamespace(resolution=resolution))

    def __call__(self, reference, clip, settings):
        from types import SimpleNamespace

        small = to_resolution(reference, self.model.config.resolution).astype(float)
        grey = np.full_like(small, 128.0)
        frame = (self.follow * small + (1 - self.follow) * grey).astype(np.uint8)
        return SimpleNamespace(frames=[frame] * clip.num_frames)


def test_reference_sensitivity_tells_following_from_ignoring(tmp_path, head_asset):
    from flamediff.evaluation.evaluate import reference_sensitivity
    from flamediff.evaluation.masks import coverage_masks
    from flamediff.evaluation.selection import reference_row, spread

    data = str(tmp_path / "data")
    index = _shared_pose_dataset(data, head_asset)
    masks_for = lambda rows, frames: list(coverage_masks(index.annotations.take_rows(rows), head_asset, 32))  # noqa: E731
    def run(pipeline):   # each identity's drive rendered with its own reference, as evaluate() does
        runs = {}
        for identity in (0, 1):
            samples, ref = index.samples_of_identity(identity), reference_row(index, identity)
            drive = spread(samples[samples != ref], 2)
            frames = pipeline(index.load_frame(ref), index.annotations.take_rows(drive), None).frames
            runs[identity] = (drive, frames, masks_for(drive, None))
        return reference_sensitivity(pipeline, index, [0, 1], None, masks_for, runs)

    follows, ignores = run(_CopyReference(1.0)), run(_CopyReference(0.0))
    assert follows["frames"] == ignores["frames"] == 4
    assert follows["head_follows"] == 1.0 and ignores["head_ratio"] == 0.0
    assert follows["head_ratio"] > 0.5 and ignores["head_follows"] < 1.0


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    a = _image(2)
    smooth = (np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1).sum(-1) * 4)[..., None].repeat(3, -1)
    smooth = smooth.clip(0, 255).astype(np.uint8)
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(smooth, smooth) == pytest.approx(1.0, abs=1e-12)
    values = []
    for sigma in (2, 10, 40):
        noisy = np.clip(smooth + np.random.default_rng(sigma).normal(0, sigma, smooth.shape), 0, 255).astype(np.uint8)
        values.append(M.ssim(smooth, noisy))
    assert 1.0 > values[0] > values[1] > values[2] > 0.0


def test_background_mask_finds_the_head():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:] = np.linspace(40, 120, 32)[:, None, None]  # vertical gradient background
    image[10:20, 12:22] = (200, 150, 120)
    mask = background_mask(image)
    assert mask[10:20, 12:22].all() and mask.sum() == 100


# ---------------------------------------------------------------------------------------------
# network hooks from files (small stand-in networks made here, never downloaded)


def test_lpips_style_metric_loads_a_stand_in_network(tmp_path):
    torch.manual_seed(0)
    net = M.ConvFeatures([(3, 8, 3), (8, 16, 3)])
    state = dict(net.state_dict())
    state["lins.0.weight"] = torch.rand(1, 8, 1, 1)
    state["lins.1.weight"] = torch.rand(1, 16, 1, 1)
    path = str(tmp_path / "lpips.pt")
    torch.save(state, path)
    metric = M.LPIPSMetric(path)
    a = _image(3)
    b = np.clip(a.astype(int) + np.random.default_rng(1).normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert metric(a, a) == pytest.approx(0.0, abs=1e-9)
    assert metric(a, b) > 0
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    c = a.copy()
    c[16:] = 255 - c[16:]
    assert metric(a, c, mask) < metric(a, c)
    bad = str(tmp_path / "bad.pt")
    torch.save({"something": torch.zeros(2)}, bad)
    with pytest.raises(M.MetricError, match="no conv layers"):
        M.LPIPSMetric(bad)
    with pytest.raises(M.MetricError, match="do not exist"):
        M.LPIPSMetric(str(tmp_path / "missing.pt"))


def test_csim_loads_state_dict_and_torchscript_embedders(tmp_path):
    torch.manual_seed(0)
    features = M.ConvFeatures([(3, 8, 3), (8, 16, 3)])
    state = dict(features.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(12, 16), torch.randn(12)
    path = str(tmp_path / "embed.pt")
    torch.save(state, path)
    metric = M.CSIMMetric(path, input_size=32)
    a, b = _image(4), _image(5)
    assert metric(a, a) == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= metric(a, b) <= 1.0
    assert metric.embed(np.stack([a, b])).shape == (2, 12)

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    scripted = str(tmp_path / "arcface_stand_in.ts")
    torch.jit.script(Embed()).save(scripted)
    ts = M.CSIMMetric(scripted, input_size=32)
    assert ts(a, a) == pytest.approx(1.0, abs=1e-6) and ts.embed(a[None]).shape == (1, 4)


def test_expression_pose_distance_and_rotations():
    assert M.expression_pose_distance(np.ones(4), np.zeros(6), np.zeros(4), np.full(6, 0.5)) == {"aed": 1.0, "apd": 0.5}
    v = RNG.normal(size=(6, 3)) * 0.7
    np.testing.assert_allclose(matrix_to_axis_angle(axis_angle_to_matrix(v)), v, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# evaluate() on a tiny dataset and a tiny random checkpoint


def _shared_pose_dataset(folder: str, asset, resolution: int = 32):
    """Two identities x 3 frames; identity 1's frames 1 and 2 repeat identity 0's poses."""
    from flamediff.data.dataset import write_dataset
    from flamediff.flame.model import FlameModel
    from flamediff.flame.preview import render_preview
    from flamediff.formats.animation import make_clip
    from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv

    rng = np.random.RandomState(0)
    identity = np.repeat([0, 1], 3)
    shape = rng.normal(size=(2, 100))[identity]
    expression = np.zeros((6, 50))
    expression[:, :3] = rng.uniform(-1.0, 1.5, size=(6, 3))
    global_pose = np.zeros((6, 3))
    global_pose[:, 1] = rng.uniform(-0.5, 0.5, size=6)
    for src, dst in ((1, 4), (2, 5)):
        expression[dst], global_pose[dst] = expression[src], global_pose[src]
    R, t = look_at_opencv([0.0, 0.0, 0.62], [0.0, -0.005, 0.0])
    K = intrinsics_from_fov(27.0, resolution, resolution)
    camera = tuple(np.repeat(m[None], 6, 0) for m in (K, R, t))
    clip = make_clip(6, first_frame=0, shape=shape, expression=expression, global_pose=global_pose,
                     camera=camera, image_size=(resolution, resolution), flame_asset=asset.identity())
    with torch.no_grad():
        vertices = FlameModel(asset).forward_clip(clip).vertices.double().numpy()
    skins = [(224.0, 182.0, 160.0), (150.0, 105.0, 80.0)]
    frames = [np.asarray(render_preview(vertices[i], asset.faces, K, R, t, (resolution, resolution),
                                        np.full((len(asset.faces), 3), skins[identity[i]]))) for i in range(6)]
    index = write_dataset(folder, frames, clip, identity=identity, label=np.zeros(6, int), sequence=identity,
                          frame_in_sequence=np.tile(np.arange(3), 2))
    with open(f"{folder}/splits.json", "w") as handle:
        json.dump({"train": [0], "heldout": [1]}, handle)
    return index


@pytest.fixture(scope="module")
def tiny_setup(head_asset, tmp_path_factory):
    from flamediff.models import FlameDiffConfig, FlameDiffModel

    root = tmp_path_factory.mktemp("evaluation")
    data = str(root / "data")
    index = _shared_pose_dataset(data, head_asset)
    torch.manual_seed(0)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", flame_asset=head_asset.identity()))
    model.attach_gaussian_field(head_asset)
    checkpoint = str(root / "checkpoint")
    model.save_pretrained(checkpoint)
    estimator = M.train_regressor(index, steps=5, input_size=32)
    return data, checkpoint, index, estimator


FAST = {"steps": 2, "max_frames": 2, "frames_per_batch": 2}


def test_evaluate_returns_every_metric_and_baseline(tiny_setup, head_asset, tmp_path):
    data, checkpoint, index, estimator = tiny_setup
    torch.manual_seed(1)
    lpips_path, csim_path = str(tmp_path / "lpips.pt"), str(tmp_path / "csim.pt")
    torch.save(M.ConvFeatures([(3, 4, 3), (4, 8, 3)]).state_dict(), lpips_path)
    torch.save(M.ConvFeatures([(3, 4, 3), (4, 8, 3)]).state_dict(), csim_path)
    result = evaluate(checkpoint, data, "all", flame_asset=head_asset, estimator=estimator,
                      lpips_weights=lpips_path, csim_weights=csim_path, device="cpu", **FAST)
    assert result["identities"] == [0, 1] and result["mask"] == "flame-coverage"
    self_, cross = result["self"], result["cross"]
    for values in (self_["method"], *self_["baselines"].values()):
        assert {"psnr", "ssim", "l1", "lpips", "csim", "aed", "apd", "frames"} <= set(values)
        for key in ("psnr", "ssim", "l1", "lpips", "csim", "aed", "apd"):
            assert values[key] is not None and np.isfinite(values[key]), key
    assert self_["method"]["frames"] == 4 and self_["baselines"]["copy_reference"]["frames"] == 4
    # identity 1's frames 1, 2 repeat identity 0's poses (and vice versa); frames without a match are skipped
    assert self_["baselines"]["other_identity_gt"]["frames"] == 4
    for values in (cross["method"], *cross["baselines"].values()):
        assert values["frames"] == 4
        for key in ("csim", "aed", "apd"):
            assert np.isfinite(values[key])
    assert cross["baselines"]["other_identity_gt"]["aed"] == 0.0  # the driving frame itself
    assert result["estimator"]["error_on_ground_truth"]["frames"] == 4
    json.dumps(result)  # JSON-ready
    assert "copy_reference" in format_table(result) and "reference sensitivity" in format_table(result)
    for key in ("head_colour", "background_colour", "sharpness"):
        assert np.isfinite(self_["method"][key]) and np.isfinite(self_["baselines"]["vae_reconstruction"][key])
    assert self_["baselines"]["vae_reconstruction"]["frames"] == 4
    assert {"head_ratio", "background_ratio", "head_follows", "background_follows"} <= set(result["reference_sensitivity"])

    # copy-reference PSNR is exactly the metrics' value on those image pairs (coverage masks)
    from flamediff.evaluation.masks import coverage_masks

    values = []
    for identity in (0, 1):
        rows = index.samples_of_identity(identity)
        reference = to_resolution(index.load_frame(int(rows[0])), 32)
        masks = coverage_masks(index.annotations.take_rows(rows[1:3]), head_asset, 32)
        for row, mask in zip(rows[1:3], masks):
            assert 20 < mask.sum() < 32 * 32
            values.append(M.psnr(reference, index.load_frame(int(row)), mask))
    assert self_["baselines"]["copy_reference"]["psnr"] == pytest.approx(float(np.mean(values)), rel=1e-12)


def test_evaluate_splits_and_missing_measurements(tiny_setup, head_asset):
    from flamediff.evaluation.selection import EvaluationError
    from flamediff.models import FlameDiffModel

    data, checkpoint, _, _ = tiny_setup
    model = FlameDiffModel.from_pretrained(checkpoint, asset=head_asset)
    result = evaluate(model, data, "heldout", flame_asset=head_asset, device="cpu", **FAST)
    assert result["identities"] == [1]
    assert result["self"]["method"]["frames"] == 2 and result["cross"]["method"]["frames"] == 0
    assert result["self"]["method"]["aed"] is None and result["self"]["method"]["lpips"] is None
    assert np.isfinite(result["self"]["method"]["psnr"])
    assert any("no cross-reenactment" in n for n in result["notes"])
    background = evaluate(model, data, "heldout", flame_asset=head_asset, device="cpu", head_mask="background", **FAST)
    assert background["mask"] == "background-difference"
    assert np.isfinite(background["self"]["baselines"]["copy_reference"]["psnr"])
    assert background["self"]["baselines"]["copy_reference"]["psnr"] != result["self"]["baselines"]["copy_reference"]["psnr"]
    with pytest.raises(EvaluationError, match="split"):
        evaluate(model, data, "test", flame_asset=head_asset, device="cpu", **FAST)


def test_cli_runs_and_writes_json(tiny_setup, tmp_path, capsys):
    from flamediff.evaluation.cli import register_cli

    data, checkpoint, _, _ = tiny_setup
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    out = str(tmp_path / "eval.json")
    args = parser.parse_args(["eval", "--checkpoint", checkpoint, "--data", data, "--split", "train", "--json", out,
                              "--steps", "2", "--max-frames", "2", "--regressor-steps", "3", "--device", "cpu"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "copy_reference" in printed and "psnr" in printed
    with open(out) as handle:
        result = json.load(handle)
    assert result["split"] == "train" and result["identities"] == [0]
    assert result["self"]["method"]["aed"] is not None


def test_cli_without_checkpoint_says_the_shipped_one_is_missing(tmp_path, monkeypatch):
    from flamediff.evaluation import evaluate as E
    from flamediff.evaluation.cli import register_cli

    monkeypatch.setattr(E, "default_checkpoint", lambda: None)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--data", str(tmp_path)])
    with pytest.raises(E.EvaluationError, match="no checkpoint was given.*the shipped one .* is missing"):
        args.func(args)
