"""``flamediff dataset import``: VHAP exports and video frames + tracker output -> a training dataset
that the trainer reads and trains on."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from flamediff.data.dataset import DatasetError, read_dataset
from flamediff.data.importing import import_dataset
from flamediff.flame.model import FlameModel
from flamediff.flame.preview import render_preview
from flamediff.formats.animation import make_clip
from flamediff.formats.conventions import look_at_opencv
from flamediff.formats.trackers import read_tracker
from flamediff.training.train import TrainConfig, Trainer, heldout_identities

TIMESTEPS = 3
WIDTH, HEIGHT = 40, 56  # NeRSemble's frames are portrait too
WHITE = (255, 255, 255)


def _vertices(asset, params: dict) -> np.ndarray:
    timesteps = len(params["expr"])
    clip = make_clip(timesteps, first_frame=0, num_shape=300, num_expression=100,
                     shape=params["shape"][None].repeat(timesteps, 0),
                     expression=params["expr"], global_pose=params["rotation"], neck_pose=params["neck_pose"],
                     jaw_pose=params["jaw_pose"], left_eye_pose=params["eyes_pose"][:, :3],
                     right_eye_pose=params["eyes_pose"][:, 3:], translation=params["translation"])
    with torch.no_grad():
        return FlameModel(asset).forward_clip(clip).vertices.double().numpy()


def write_vhap_export(root, asset, seed: int, cameras: int = 2, timesteps: int = TIMESTEPS,
                      size: tuple[int, int] = (WIDTH, HEIGHT)) -> dict:
    """As vhap/export_as_nerf_dataset.py writes it: images/<ti>_<ci>.png on white, fg_masks/ (alpha),
    flame_param/<ti>.npz (each timestep's rows with a leading 1, shape [300], static_offset),
    transforms.json (OpenGL camera-to-world, fl_x, fl_y, cx, cy, w, h per view and timestep; VHAP's
    renderer puts the principal row at h - cy from the top),
    canonical_flame_param.npz and the backup / split json files beside it. ``size``: (w, h) px.
    Also used by benchmarks/bench_dataset_import.py."""
    width, height = size
    rng = np.random.default_rng(seed)
    params = dict(rotation=rng.normal(0, 0.1, (timesteps, 3)), translation=rng.normal(0, 0.005, (timesteps, 3)),
                  neck_pose=rng.normal(0, 0.05, (timesteps, 3)), jaw_pose=np.c_[rng.uniform(0, 0.2, timesteps),
                                                                                 np.zeros((timesteps, 2))],
                  eyes_pose=rng.normal(0, 0.05, (timesteps, 6)), shape=rng.normal(0, 0.5, 300),
                  expr=rng.normal(0, 0.5, (timesteps, 100)))
    params = {k: v.astype(np.float32) for k, v in params.items()}
    for folder in ("images", "fg_masks", "flame_param"):
        (root / folder).mkdir(parents=True)
    views = [look_at_opencv([0.12 * c - 0.06, 0.02, 0.6], [0.0, -0.01, 0.0]) for c in range(cameras)]
    focal = 110.0 * height / 56
    K = np.array([[focal, 0.0, width / 2 + 1.5], [0.0, focal, 0.45 * height], [0.0, 0.0, 1.0]])  # off-centre
    vertices = _vertices(asset, params)
    frames = []
    for ti in range(timesteps):
        np.savez(root / "flame_param" / f"{ti:05d}.npz", static_offset=np.zeros((1, 5143, 3), np.float32),
                 **{k: (v if k == "shape" else v[[ti]]) for k, v in params.items()})
        for ci, (R, t) in enumerate(views):
            image = render_preview(vertices[ti], asset.faces, K, R, t, (width, height), background=WHITE)
            image.save(root / "images" / f"{ti:05d}_{ci:02d}.png")
            mask = (np.asarray(image) != 255).any(-1)
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / "fg_masks" / f"{ti:05d}_{ci:02d}.png")
            w2c = np.eye(4)
            w2c[:3, :3], w2c[:3, 3] = R, t
            c2w_gl = np.linalg.inv(w2c) @ np.diag([1.0, -1.0, -1.0, 1.0])
            frames.append({"timestep_index": ti, "timestep_index_original": ti, "timestep_id": f"frame_{ti:05d}",
                           "camera_index": ci, "camera_id": f"22{ci}", "cx": K[0, 2], "cy": height - K[1, 2],
                           "fl_x": K[0, 0], "fl_y": K[1, 1], "h": height, "w": width, "camera_angle_x": 0.4,
                           "camera_angle_y": 0.5,
                           "transform_matrix": c2w_gl.tolist(), "file_path": f"images/{ti:05d}_{ci:02d}.png",
                           "fg_mask_path": f"fg_masks/{ti:05d}_{ci:02d}.png",
                           "flame_param_path": f"flame_param/{ti:05d}.npz"})
    db = {"frames": frames, "cx": K[0, 2], "cy": height - K[1, 2], "fl_x": K[0, 0], "fl_y": K[1, 1], "h": height,
          "w": width, "camera_angle_x": 0.4, "camera_angle_y": 0.5, "timestep_indices": list(range(timesteps)),
          "camera_indices": list(range(cameras))}
    for name in ("transforms.json", "transforms_backup.json", "transforms_backup_flame.json"):
        (root / name).write_text(json.dumps(db, indent=4))
    np.savez(root / "canonical_flame_param.npz", shape=params["shape"], expr=np.zeros((1, 100), np.float32))
    return params


@pytest.fixture(scope="module")
def exports(tmp_path_factory, head_asset):
    root = tmp_path_factory.mktemp("nersemble")
    params = {subject: write_vhap_export(root / f"{subject}_EMO-1_v16_DS4_whiteBg_staticOffset", head_asset, seed)
              for seed, subject in enumerate(("074", "104"))}
    return root, params


def _silhouette(frame: np.ndarray) -> np.ndarray:
    return (np.asarray(frame, np.int64) < 235).any(-1)


def _render(asset, clip, size: tuple[int, int]) -> list[np.ndarray]:
    """The head of every row of ``clip`` seen by its camera, on white."""
    with torch.no_grad():
        vertices = FlameModel(asset).forward_clip(clip).vertices.double().numpy()
    return [np.asarray(render_preview(vertices[i], asset.faces, clip.K[i], clip.R[i], clip.t[i], size,
                                      background=WHITE)) for i in range(clip.num_frames)]


def assert_frames_show_the_head(index, asset) -> None:
    """Each imported frame shows the head where its imported (cropped) camera sees it."""
    renders = _render(asset, index.annotations, (index.resolution, index.resolution))
    for row, render in enumerate(renders):
        a, b = _silhouette(index.load_frame(row)), _silhouette(render)
        assert (a & b).sum() / (a | b).sum() > 0.85, row


def test_vhap_exports_become_a_dataset_that_trains(tmp_path, exports, head_asset):
    root, params = exports
    out = str(tmp_path / "data")
    index = import_dataset([str(root)], out, head_asset, resolution=32, heldout_fraction=0.5, log=lambda m: None)
    assert len(index) == 2 * 2 * TIMESTEPS and index.resolution == 32
    assert (index.label == 0).all()  # real, and so is the checkpoint's training_domain
    assert json.loads((tmp_path / "data" / "dataset.json").read_text())["source"] == "real"
    np.testing.assert_array_equal(index.identity, np.repeat([0, 1], 2 * TIMESTEPS))
    assert len(index.sequences()) == 4  # one per subject and camera, in time order
    np.testing.assert_array_equal(index.frame_in_sequence, np.tile(np.arange(TIMESTEPS), 4))
    splits = json.loads((tmp_path / "data" / "splits.json").read_text())
    assert splits["identity_names"] == ["074", "104"] and len(splits["heldout"]) == 1
    assert sorted(splits["train"] + splits["heldout"]) == [0, 1]
    clip = index.annotations
    for s, subject in enumerate(("074", "104")):
        rows = np.arange(s * 2 * TIMESTEPS, (s + 1) * 2 * TIMESTEPS)
        expected = np.tile(params[subject]["expr"], (2, 1))
        np.testing.assert_allclose(clip.expression[rows], expected, atol=1e-6)
        np.testing.assert_allclose(clip.global_pose[rows], np.tile(params[subject]["rotation"], (2, 1)), atol=1e-6)
        np.testing.assert_allclose(clip.shape[rows], np.repeat(params[subject]["shape"][None], 2 * TIMESTEPS, 0),
                                   atol=1e-6)
    assert_frames_show_the_head(index, head_asset)
    # the trainer reads it, never samples the held-out subject, and trains
    assert heldout_identities(out) == splits["heldout"]
    config = TrainConfig.from_dict(dict(dataset=out, output_dir=str(tmp_path / "run"), steps=2, batch_size=2,
                                        checkpoint_every=2, learning_rate=1e-3, lr_schedule="constant",
                                        warmup_steps=0, ema_decay=None))
    trainer = Trainer(config, log=lambda m: None)
    assert not np.isin(index.identity[trainer.pool], splits["heldout"]).any()
    assert np.isfinite(trainer.train())
    assert os.path.isfile(tmp_path / "run" / "model" / "model.safetensors")


def test_background_from_fg_masks_and_camera_choice(tmp_path, exports, head_asset):
    root, _ = exports
    capture = root / "074_EMO-1_v16_DS4_whiteBg_staticOffset"
    index = import_dataset([str(capture)], str(tmp_path / "d"), head_asset, resolution=16, cameras=[1],
                           background="black", log=lambda m: None)
    assert len(index) == TIMESTEPS and len(index.sequences()) == 1
    frame = index.load_frame(0)
    assert (frame[0, 0] < 10).all() and _silhouette(frame).mean() > 0.2  # black outside the head's mask
    with pytest.raises(DatasetError, match="no camera_index \\[5\\]"):
        import_dataset([str(capture)], str(tmp_path / "e"), head_asset, cameras=[5], log=lambda m: None)


def test_broken_exports_name_the_problem(tmp_path, head_asset):
    capture = tmp_path / "200_EMO-1"
    write_vhap_export(capture, head_asset, seed=5, cameras=1)
    os.remove(capture / "images" / "00001_00.png")
    with pytest.raises(DatasetError, match="names images/00001_00.png, which is missing"):
        import_dataset([str(capture)], str(tmp_path / "out"), head_asset, log=lambda m: None)
    os.remove(capture / "flame_param" / "00002.npz")
    with pytest.raises(DatasetError, match="00002.npz, which is missing"):
        import_dataset([str(capture)], str(tmp_path / "out"), head_asset, log=lambda m: None)
    (tmp_path / "empty" / "something").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no capture: expected a VHAP export"):
        import_dataset([str(tmp_path / "empty")], str(tmp_path / "out"), head_asset, log=lambda m: None)
    (tmp_path / "UNION_200").mkdir()
    (tmp_path / "UNION_200" / "transforms_train.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(DatasetError, match="combined VHAP dataset .* give the folder that holds those exports"):
        import_dataset([str(tmp_path / "UNION_200")], str(tmp_path / "out"), head_asset, log=lambda m: None)


def _write_metrical(capture, frames: int) -> None:
    """metrical-tracker's checkpoint/<n>.frame: torch.save of numpy arrays, the OpenCV camera for its
    512 px crops."""
    (capture / "checkpoint").mkdir(parents=True)
    K = np.array([[2000.0, 0, 256.0], [0, 2000.0, 256.0], [0, 0, 1]])
    for i in range(frames):
        R, t = look_at_opencv([0.02 * i, 0.0, 1.0], [0.0, 0.0, 0.0])
        torch.save({"flame": {"exp": np.zeros((1, 100), np.float32), "shape": np.zeros((1, 300), np.float32),
                              "jaw": np.array([[1.0, 0, 0, 0, 1, 0]], np.float32),
                              "eyes": np.array([[1.0, 0, 0, 0, 1, 0] * 2], np.float32)},
                    "opencv": {"R": R[None].astype(np.float32), "t": t[None].astype(np.float32),
                               "K": K[None].astype(np.float32)},
                    "img_size": np.array([512, 512]), "frame_id": f"{i:05d}"},
                   capture / "checkpoint" / f"{i:05d}.frame")


def _write_vhap_monocular(capture, frames: int) -> None:
    """VHAP's tracker on a monocular video (vhap/model/tracker.py save_result): stacked parameters,
    timestep_id strings, the optimised focal_length and image_size [h, w] of the 512 px frames."""
    capture.mkdir(parents=True)
    zeros = {key: np.zeros((frames, width), np.float32) for key, width in
             (("rotation", 3), ("translation", 3), ("neck_pose", 3), ("jaw_pose", 3), ("eyes_pose", 6), ("expr", 100))}
    np.savez(capture / "tracked_flame_params_30.npz", **zeros, shape=np.zeros(300, np.float32),
             timestep_id=np.array([f"{i:05d}" for i in range(frames)]), n_processed_frames=frames,
             focal_length=np.array([2.0], np.float32), image_size=np.array([512, 512]))


@pytest.mark.parametrize("write_tracker, frames_folder",
                         [(_write_metrical, "input"), (_write_vhap_monocular, "images")], ids=["metrical", "vhap"])
def test_video_frames_and_tracker_folder(tmp_path, head_asset, write_tracker, frames_folder):
    """Video frames (here saved at 1/4 of the size the tracker ran on) beside a tracker's output;
    metrical-tracker's output folder holds them as input/ beside checkpoint/."""
    capture = tmp_path / "obama_interview"
    write_tracker(capture, 4)
    tracked = read_tracker(capture).clip
    K = tracked.K.copy()
    K[:, :2] /= 4
    images = capture / frames_folder
    images.mkdir()
    for i, frame in enumerate(_render(head_asset, replace(tracked, K=K, image_size=(128, 128)), (128, 128))):
        Image.fromarray(frame).save(images / f"{i:05d}.png")
    index = import_dataset([str(capture)], str(tmp_path / "out"), head_asset, resolution=32, heldout_fraction=0.0,
                           log=lambda m: None)
    assert len(index) == 4 and len(index.sequences()) == 1
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert splits["identity_names"] == ["obama"] and splits["heldout"] == []
    assert_frames_show_the_head(index, head_asset)  # K followed the 4x downscale and the crop
    os.remove(images / "00003.png")
    with pytest.raises(DatasetError, match="4 tracked frames but 3 images .*no image for frames \\[3\\]"):
        import_dataset([str(capture)], str(tmp_path / "out2"), head_asset, log=lambda m: None)
    Image.new("RGB", (100, 60)).save(images / "00003.png")
    with pytest.raises(DatasetError, match="differ in size"):
        import_dataset([str(capture)], str(tmp_path / "out3"), head_asset, log=lambda m: None)


def test_command_line(tmp_path, exports, capsys):
    from flamediff.cli import main

    root, _ = exports
    out = str(tmp_path / "cli")
    assert main(["dataset", "import", str(root), "--out", out, "--resolution", "16", "--cameras", "0", "--every", "2",
                 "--heldout-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 real frames of 2 subjects (074, 104) in 2 sequences" in printed
    assert "held-out subjects: ['" in printed
    assert "tracks with FLAME 2023, but the FLAME asset is 'procedural-head'" in printed  # the tool's FLAME version
    assert "dropped: static_offset" in printed
    assert len(read_dataset(out)) == 4
    assert main(["dataset", "import", str(tmp_path / "nothing-here"), "--out", out]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("flamediff dataset: error:") and "is not a folder" in error and "\n" not in error
    with pytest.raises(SystemExit):  # argparse's one-line usage error, not a traceback
        main(["dataset", "import", str(root), "--out", out, "--cameras", "front"])
    assert "expected camera_index numbers like 0,8, got 'front'" in capsys.readouterr().err
    assert main(["dataset", "import", str(root), "--out", out, "--heldout-fraction", "1.5"]) == 2
    assert "--heldout-fraction in [0, 1)" in capsys.readouterr().err
