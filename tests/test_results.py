"""Results studies (views, artefacts, flicker), artefact-region masks and `flamediff results`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from flamediff.data import procedural as P
from flamediff.evaluation import selection, studies
from flamediff.formats.animation import make_clip


@pytest.fixture(scope="module")
def procedural_data(head_asset, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("results") / "data")
    P.generate_procedural_dataset(folder, identities=4, views_per_identity=3, sequences_per_identity=1,
                                  frames_per_sequence=4, resolution=32, seed=0, heldout_fraction=0.5, asset=head_asset)
    return folder


def test_region_masks_match_the_generators_artefact_regions(head_asset):
    renderer = P.ProceduralRenderer(head_asset)
    plan = P.plan_dataset(renderer.regions, 1, 3, 1, 3, 48, seed=3)
    specs, look = plan.specs[0], plan.looks[0]
    reference = renderer.render(look, specs, 48)
    pose = specs.pose
    clip = make_clip(len(specs.label), shape=np.repeat(look.shape[None], len(specs.label), 0),
                     expression=specs.expression, global_pose=pose[:, 0], neck_pose=pose[:, 1], jaw_pose=pose[:, 2],
                     left_eye_pose=pose[:, 3], right_eye_pose=pose[:, 4], translation=specs.translation,
                     camera=(specs.K, specs.R, specs.t), image_size=(48, 48))
    head, artefact = P.region_masks(renderer, clip, 48)
    np.testing.assert_array_equal(head, reference.head_mask)
    np.testing.assert_array_equal(artefact, reference.artefact_mask)
    assert artefact.sum() > 0 and (artefact <= head + 1e-6).all()


def test_view_yaw_is_the_camera_angle_around_the_head():
    yaws = np.array([0.0, 30.0, -60.0, 85.0])
    cameras = [P.orbit_camera(y, 10.0) for y in yaws]
    K = np.repeat(np.eye(3)[None], 4, 0)
    R, t = np.stack([c[0] for c in cameras]), np.stack([c[1] for c in cameras])
    clip = make_clip(4, camera=(K, R, t), image_size=(32, 32))
    np.testing.assert_allclose(studies.view_yaw(clip), np.abs(yaws), atol=1e-6)
    # turning the head by the camera's yaw makes the view frontal again
    turned = make_clip(4, camera=(K, R, t), image_size=(32, 32),
                       global_pose=np.stack([[0.0, np.radians(y), 0.0] for y in yaws]))
    np.testing.assert_allclose(studies.view_yaw(turned), 0.0, atol=1e-6)


def test_flicker_of_still_and_alternating_frames():
    masks = np.ones((3, 4, 4), bool)
    still = [np.full((4, 4, 3), 90, np.uint8)] * 3
    assert studies.flicker(still, masks) == 0.0
    alternating = [np.full((4, 4, 3), v, np.uint8) for v in (90, 141, 90)]
    assert studies.flicker(alternating, masks) == pytest.approx(51 / 255)
    masks[:, :2] = False
    alternating[1][:2] = 0  # outside every mask: ignored
    assert studies.flicker(alternating, masks) == pytest.approx(51 / 255)


def test_reference_row_and_spread(procedural_data):
    from flamediff.data.dataset import read_dataset

    index = read_dataset(procedural_data)
    rows = index.samples_of_identity(0)
    assert index.label[rows[0]] == 1  # multi-view samples come first...
    ref = selection.reference_row(index, 0)
    assert index.label[ref] == 0 and ref == rows[index.label[rows] == 0][0]  # ...the reference is clean
    np.testing.assert_array_equal(selection.spread(np.arange(10), 3), [0, 4, 9])
    np.testing.assert_array_equal(selection.spread(np.arange(2), 3), [0, 1])


@pytest.fixture(scope="module")
def tiny_checkpoint(head_asset, tmp_path_factory):
    from flamediff.models import FlameDiffConfig, FlameDiffModel

    torch.manual_seed(0)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", flame_asset=head_asset.identity(), default_steps=2))
    model.attach_gaussian_field(head_asset)
    folder = str(tmp_path_factory.mktemp("results") / "checkpoint")
    model.save_pretrained(folder)
    return folder


def test_results_document_from_a_plan(procedural_data, tiny_checkpoint, tmp_path):
    from flamediff.evaluation.results import run_results

    plan = {"output": str(tmp_path / "docs" / "RESULTS.md"), "guidance": 1.5,
            "regressor": {"data": procedural_data, "steps": 3},
            "main": {"data": procedural_data, "checkpoint": tiny_checkpoint, "max_frames": 2},
            "temporal": {"data": procedural_data, "rows": {"stage 1": {"checkpoint": tiny_checkpoint, "temporal": False}}},
            "ablations": {"data": procedural_data, "split": "all", "max_frames": 2, "description": "two equal rows",
                          "rows": {"a": tiny_checkpoint, "b": tiny_checkpoint}}}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    results = run_results(str(plan_path), log=lambda message: None)
    main = results["main"]
    assert main["split"] == "heldout" and len(main["identities"]) == 2
    assert np.isfinite(main["self"]["method"]["psnr"]) and np.isfinite(main["self"]["method"]["aed"])
    assert sum(v["frames"] for v in results["views"].values()) == 2 * 3  # every wide-pose sample, bucketed
    temporal = results["temporal"]["stage 1"]
    assert temporal["sequences"] == 2 and temporal["flicker"] > 0 and temporal["flicker_ground_truth"] > 0
    a, b = results["ablations"]["a"], results["ablations"]["b"]
    assert a["self"]["psnr"] == b["self"]["psnr"]  # same checkpoint, same seed: same numbers
    assert len(a["identities"]) == 4 and sum(v["frames"] for v in a["views"].values()) == 4 * 3  # split "all"
    assert a["artefacts"]["frames"] > 0 and a["artefacts"]["artefact_l1"] > 0
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    for heading in ("vs baselines", "PSNR by yaw", "Temporal consistency", "ablations", "Picture grid"):
        assert heading in text
    assert "two equal rows" in text and "| copy reference |" in text
    assert os.path.isfile(tmp_path / "docs" / "results" / "grid.png")
    assert json.loads((tmp_path / "docs" / "RESULTS.json").read_text())["main"]["split"] == "heldout"

    again = run_results(str(plan_path), sections=["temporal"], log=lambda message: None)  # the others are kept
    assert again["main"] == json.loads(json.dumps(main)) and again["temporal"] == results["temporal"]
    assert "vs baselines" in (tmp_path / "docs" / "RESULTS.md").read_text()

    plan["discussion"] = ["- the plan's new reading"]
    plan_path.write_text(json.dumps(plan))
    rewritten = run_results(str(plan_path), sections=[], log=lambda message: None)  # no section evaluated
    assert rewritten["main"] == again["main"] and rewritten["ablations"] == again["ablations"]
    assert "- the plan's new reading" in (tmp_path / "docs" / "RESULTS.md").read_text()
