"""The shared animation file: round trips, strict validation, and the tolerant reader of
hand-stacked arrays with other tools' key names (in the tracker package)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from flamediff.formats.animation import (FORMAT_VERSION, AnimationFormatError, load_animation, make_clip, read_npz,
                                       save_animation)
from flamediff.formats.conventions import intrinsics_from_fov, look_at_opencv
from flamediff.formats.trackers.aliases import clip_from_aliases


def _clip(frames: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    R, t = look_at_opencv([0.1, 0.0, 0.6], [0.0, 0.0, 0.0])
    K = intrinsics_from_fov(30.0, 320, 240)
    camera = (np.repeat(K[None], frames, 0), np.repeat(R[None], frames, 0), np.repeat(t[None], frames, 0))
    return make_clip(frames, fps=30.0, first_frame=11, shape=rng.normal(size=(frames, 100)),
                     expression=rng.normal(size=(frames, 50)), jaw_pose=rng.normal(size=(frames, 3)),
                     translation=rng.normal(size=(frames, 3)), camera=camera, image_size=(320, 240),
                     flame_asset={"name": "procedural-head", "hash": "abc"})


def test_round_trip_is_exact(tmp_path):
    clip = _clip()
    path = tmp_path / "anim.npz"
    save_animation(path, clip)
    loaded = load_animation(path)
    for name in ("frame", "shape", "expression", "global_pose", "jaw_pose", "translation", "K", "R", "t"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(clip, name))
    assert loaded.fps == 30.0 and loaded.image_size == (320, 240)
    assert loaded.flame_asset == {"name": "procedural-head", "hash": "abc"}
    assert [p.name for p in tmp_path.iterdir()] == ["anim.npz"]  # no temp file left behind


def test_file_is_plain_npz_with_json_header(tmp_path):
    save_animation(tmp_path / "anim.npz", _clip())
    with np.load(tmp_path / "anim.npz", allow_pickle=False) as data:
        header = json.loads(data["header"].tobytes().decode())
    assert header["format"] == "flamediff.animation" and header["version"] == FORMAT_VERSION
    assert header["image_size"] == [320, 240] and "opencv" in header["camera_convention"]


def test_padding_and_frame_selection():
    clip = _clip()
    padded = clip.padded(300, 100)
    assert padded.shape.shape == (5, 300) and np.all(padded.shape[:, 100:] == 0)
    np.testing.assert_array_equal(padded.shape[:, :100], clip.shape)
    subset = clip.select_frames([12, 14])
    np.testing.assert_array_equal(subset.frame, [12, 14])
    np.testing.assert_array_equal(subset.K, clip.K[[1, 3]])
    with pytest.raises(AnimationFormatError, match="frames \\[99\\] are not in the clip"):
        clip.select_frames([99])


def test_deca_style_file_is_mapped_with_a_warning(tmp_path):
    frames = 4
    rng = np.random.default_rng(1)
    pose = rng.normal(size=(frames, 6))
    np.savez(tmp_path / "deca.npz", shape=rng.normal(size=100), exp=rng.normal(size=(frames, 50)), pose=pose,
             cam=rng.normal(size=(frames, 3)))
    clip, note = clip_from_aliases(read_npz(tmp_path / "deca.npz"))
    assert re.search("pose->global_pose\\+jaw_pose.*zero-padded shape \\(100 of 300\\).*ignored \\['cam'\\]", note)
    with pytest.raises(AnimationFormatError, match="deca.npz: no 'header' array: not a flamediff animation file; "
                                                   "convert a tracker's output"):
        load_animation(tmp_path / "deca.npz")
    np.testing.assert_array_equal(clip.global_pose, pose[:, :3])
    np.testing.assert_array_equal(clip.jaw_pose, pose[:, 3:])
    assert clip.shape.shape == (frames, 100) and np.allclose(clip.shape[0], clip.shape[3])
    assert not clip.has_camera


def test_smirk_and_emoca_key_names(tmp_path):
    np.savez(tmp_path / "smirk.npz", expression_params=np.zeros((3, 50)), pose_params=np.ones((3, 3)),
             jaw_params=np.full((3, 3), 0.2), shape_params=np.zeros((3, 300)))
    clip, note = clip_from_aliases(read_npz(tmp_path / "smirk.npz"))
    assert "expression_params->expression" in note
    assert np.all(clip.global_pose == 1.0) and np.all(clip.jaw_pose == 0.2)
    np.savez(tmp_path / "emoca.npz", expcode=np.zeros((2, 50)), posecode=np.zeros((2, 6)), shapecode=np.zeros((2, 100)))
    clip, note = clip_from_aliases(read_npz(tmp_path / "emoca.npz"))
    assert "posecode->global_pose" in note and clip.num_frames == 2


def _save_raw(path, **arrays):
    clip = _clip(3)
    header = {"format": "flamediff.animation", "version": 1, "fps": 25.0, "image_size": [320, 240]}
    base = {name: getattr(clip, name) for name in ("frame", "shape", "expression", "global_pose", "neck_pose",
                                                  "jaw_pose", "left_eye_pose", "right_eye_pose", "translation",
                                                  "K", "R", "t")}
    base["header"] = np.frombuffer(json.dumps(arrays.pop("header", header)).encode(), np.uint8)
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize("arrays, message", [
    ({"jaw_pose": np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0]])}, "'jaw_pose' holds NaN or Inf \\(first at row 1"),
    ({"expression": np.full((3, 50), np.inf)}, "'expression' holds NaN or Inf"),
    ({"translation": np.zeros((4, 3))}, "'translation' has 4 frames but 'frame' has 3"),
    ({"neck_pose": np.zeros((3, 3, 1))}, "'neck_pose' must have rank 2"),
    ({"K": np.zeros((3, 3))}, "'K' must have rank 3"),
    ({"shape": np.zeros((3, 301))}, "'shape' has 301 coefficients"),
    ({"frame": np.array([1, 1, 2])}, "repeated frame numbers"),
    ({"R": None}, "missing array 'R'|needs all of 'K', 'R' and 't'"),
    ({"global_pose": None}, "missing array 'global_pose'"),
    ({"header": {"format": "flamediff.animation", "version": 7}}, "version' is 7, newer than this flamediff"),
    ({"header": {"format": "something-else", "version": 1}}, "expected 'flamediff.animation'"),
])
def test_strict_errors_name_the_field(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    _save_raw(path, **arrays)
    with pytest.raises(AnimationFormatError, match=message) as info:
        load_animation(path)
    assert str(info.value).startswith("bad.npz: ")


def test_unreadable_files(tmp_path):
    with pytest.raises(AnimationFormatError, match="not found"):
        load_animation(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    with pytest.raises(AnimationFormatError, match="not a readable .npz"):
        load_animation(tmp_path / "garbage.npz")
    np.savez(tmp_path / "empty.npz", cam=np.zeros((2, 3)))
    with pytest.raises(AnimationFormatError, match="not a flamediff animation file"):
        load_animation(tmp_path / "empty.npz")
    with pytest.raises(AnimationFormatError, match="found no per-frame array"):
        clip_from_aliases(read_npz(tmp_path / "empty.npz"))


def test_save_refuses_invalid_clip_and_keeps_old_file(tmp_path):
    path = tmp_path / "anim.npz"
    save_animation(path, _clip())
    before = path.read_bytes()
    clip = _clip()
    clip.jaw_pose[2, 1] = np.nan
    with pytest.raises(AnimationFormatError, match="jaw_pose"):
        save_animation(path, clip)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["anim.npz"]
