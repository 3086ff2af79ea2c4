"""The tracker-import layer: one fixture per tool, written the way that tool's own writer code
writes it (key names, dtypes, shapes, per-frame folders, torch.save archives), then read back
through ``flamediff.formats.trackers`` without torch; bad input gets one clear line."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flamediff.formats.animation import AnimationFormatError, make_clip, read_npz, save_animation
from flamediff.formats.conventions import look_at_opencv, project_points
from flamediff.formats.rotations import (RotationError, axis_angle_to_matrix, matrix_to_axis_angle,
                                        matrix_to_rotation_6d, rotation_6d_to_matrix)
from flamediff.formats.trackers import TRACKER_LIMITS, TrackerFormatError, load_any, read_animation_input, retime

torch = pytest.importorskip("torch")  # only to WRITE torch.save fixtures; the reader never imports it

T = 4
V = 5143  # FLAME 2023 with VHAP's teeth: offsets are per vertex of that mesh
RNG = np.random.default_rng(13)


def f32(*shape: int, scale: float = 0.2) -> np.ndarray:
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def assert_close(actual, expected, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), atol=atol, rtol=0)


# ------------------------------------------------------------------ fixtures, faithful to each writer

def write_vhap_tracker(folder) -> dict:
    """vhap/model/tracker.py save_result: np.savez of stacked per-timestep parameters."""
    params = dict(rotation=f32(T, 3), translation=f32(T, 3, scale=0.01), neck_pose=f32(T, 3), jaw_pose=f32(T, 3),
                  eyes_pose=f32(T, 6), shape=f32(300), expr=f32(T, 100),
                  timestep_id=np.array([f"{i:05d}" for i in range(10, 10 + T)]), n_processed_frames=T,
                  focal_length=np.array([1.5], np.float32), tex=f32(100), lights=f32(9, 3),
                  static_offset=f32(1, V, 3, scale=0.001), image_size=np.array([512, 512]))
    np.savez(folder / "tracked_flame_params_30.npz", **params)
    return params


def write_vhap_export(root, cameras: int = 2) -> tuple[dict, list]:
    """vhap/export_as_nerf_dataset.py: transforms.json (OpenGL camera-to-world per view) and
    flame_param/<timestep>.npz holding each timestep's rows with a leading 1."""
    params = dict(rotation=f32(T, 3), translation=f32(T, 3, scale=0.01), neck_pose=f32(T, 3), jaw_pose=f32(T, 3),
                  eyes_pose=f32(T, 6), shape=f32(300), expr=f32(T, 100), static_offset=f32(1, V, 3, scale=0.001))
    (root / "flame_param").mkdir(parents=True)
    frames, w2c = [], []
    for c in range(cameras):
        R, t = look_at_opencv([0.3 * c - 0.1, 0.05, 1.0], [0.0, 0.0, 0.0])
        w2c.append((R, t))
    for ti in range(T):
        np.savez(root / "flame_param" / f"{ti:05d}.npz",
                 **{k: (v if k in ("shape", "static_offset") else v[[ti]]) for k, v in params.items()})
        for c, (R, t) in enumerate(w2c):
            m = np.eye(4)
            m[:3, :3], m[:3, 3] = R, t
            c2w_gl = np.linalg.inv(m) @ np.diag([1.0, -1.0, -1.0, 1.0])
            frames.append({"timestep_index": ti, "timestep_index_original": ti, "timestep_id": f"{ti:05d}",
                           "camera_index": c, "camera_id": f"22{c}", "cx": 256.0 + c, "cy": 250.0, "fl_x": 1100.0 + c,
                           "fl_y": 1101.0, "h": 512, "w": 550, "camera_angle_x": 0.5, "camera_angle_y": 0.5,
                           "transform_matrix": c2w_gl.tolist(), "file_path": f"images/{ti:05d}_{c:02d}.png",
                           "fg_mask_path": f"fg_masks/{ti:05d}_{c:02d}.png", "flame_param_path": f"flame_param/{ti:05d}.npz"})
    db = {"frames": frames, "cx": 256.0, "cy": 250.0, "fl_x": 1100.0, "fl_y": 1101.0, "h": 512, "w": 550,
          "camera_angle_x": 0.5, "camera_angle_y": 0.5, "timestep_indices": list(range(T)),
          "camera_indices": list(range(cameras))}
    (root / "transforms.json").write_text(json.dumps(db, indent=4))
    return params, w2c


def write_gaussian_avatars(folder, vertices: int = V) -> dict:
    """scene/flame_gaussian_model.py save_ply: np.savez(flame_param.npz, **self.flame_param)."""
    params = dict(shape=f32(300), expr=f32(T, 100), rotation=f32(T, 3), neck_pose=f32(T, 3), jaw_pose=f32(T, 3),
                  eyes_pose=f32(T, 6), translation=f32(T, 3, scale=0.01),
                  static_offset=f32(vertices, 3, scale=0.001), dynamic_offset=np.zeros((T, vertices, 3), np.float32))
    np.savez(folder / "flame_param.npz", **params)
    return params


def smirk_outputs() -> dict:
    """src/smirk_encoder.py: pose/cam, shape, expression + eyelid + jaw heads (torch tensors)."""
    return dict(pose_params=f32(T, 3), cam=np.c_[RNG.uniform(7, 9, T), f32(T, 2, scale=0.02)].astype(np.float32),
                shape_params=f32(T, 300), expression_params=f32(T, 50),
                eyelid_params=RNG.uniform(0, 1, (T, 2)).astype(np.float32),
                jaw_params=np.c_[RNG.uniform(0, 0.3, T), f32(T, 2, scale=0.1)].astype(np.float32))


def deca_codedict() -> dict:
    """decalib/deca.py encode: shape, tex, exp, pose [global | jaw], cam, light, detail."""
    return dict(shape=f32(T, 100), tex=f32(T, 50), exp=f32(T, 50), pose=f32(T, 6),
                cam=np.c_[RNG.uniform(8, 10, T), f32(T, 2, scale=0.02)].astype(np.float32),
                light=f32(T, 9, 3), detail=f32(T, 128))


def write_metrical(folder) -> list[dict]:
    """tracker.py save_checkpoint: torch.save of numpy arrays (jaw, eyes as pytorch3d 6D) per frame."""
    (folder / "checkpoint").mkdir(parents=True)
    frames = []
    for i in range(T):
        jaw, left, right = Rotation.from_rotvec(RNG.normal(0, 0.2, (3, 3))).as_matrix()
        R, t = look_at_opencv([0.05 * i, 0.0, 1.0], [0.0, 0.0, 0.0])
        frame = {
            "flame": {"exp": f32(1, 100), "shape": f32(1, 300), "tex": f32(1, 140), "sh": f32(1, 9, 3),
                      "eyes": np.concatenate([matrix_to_rotation_6d(left), matrix_to_rotation_6d(right)])[None]
                      .astype(np.float32),
                      "eyelids": f32(1, 2), "jaw": matrix_to_rotation_6d(jaw)[None].astype(np.float32)},
            "camera": {"R": f32(1, 6), "t": f32(1, 3), "fl": f32(1, 1), "pp": f32(1, 2)},
            "opencv": {"R": R[None].astype(np.float32), "t": t[None].astype(np.float32),
                       "K": np.array([[[2000.0, 0, 256.5], [0, 2000.0, 255.5], [0, 0, 1]]], np.float32)},
            "img_size": np.array([512, 512]), "frame_id": f"{i:05d}", "global_step": 100 * i,
        }
        torch.save(frame, folder / "checkpoint" / f"{i:05d}.frame")
        frames.append({**frame, "rot": (jaw, left, right)})
    return frames


# ------------------------------------------------------------------ rotations

def test_rotations_match_scipy_and_pytorch3d_6d():
    rotvecs = np.concatenate([RNG.normal(0, 1.0, (200, 3)), [[0, 0, 0], [1e-9, 0, 0], [np.pi, 0, 0],
                                                             [0, np.pi - 1e-7, 0]]])
    reference = Rotation.from_rotvec(rotvecs).as_matrix()
    assert_close(axis_angle_to_matrix(rotvecs), reference, 1e-12)
    back = matrix_to_axis_angle(reference)
    assert_close(axis_angle_to_matrix(back), reference, 1e-9)
    inside = np.linalg.norm(rotvecs, axis=1) < np.pi - 1e-3
    assert_close(back[inside], rotvecs[inside], 1e-9)
    # pytorch3d keeps the first two ROWS and stacks Gram-Schmidt (b1, b2, b1 x b2) as rows
    d6 = matrix_to_rotation_6d(reference)
    assert_close(d6, reference[:, :2, :].reshape(-1, 6), 0)
    assert_close(rotation_6d_to_matrix(d6), reference, 1e-12)
    raw = torch.tensor(d6 + RNG.normal(0, 0.1, d6.shape))
    b1 = torch.nn.functional.normalize(raw[:, :3], dim=-1)
    b2 = torch.nn.functional.normalize(raw[:, 3:] - (b1 * raw[:, 3:]).sum(-1, keepdim=True) * b1, dim=-1)
    expected = torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-2).numpy()
    assert_close(rotation_6d_to_matrix(raw.numpy()), expected, 1e-12)
    with pytest.raises(RotationError, match="not rotations"):
        matrix_to_axis_angle(np.eye(3)[None] * 2)


# ------------------------------------------------------------------ one fixture per tool

def test_vhap_tracker_file(tmp_path):
    p = write_vhap_tracker(tmp_path)
    result = load_any(tmp_path / "tracked_flame_params_30.npz")
    clip, report = result.clip, result.report
    assert report.tool == "VHAP tracker" and report.flame_version == "FLAME 2023" and not report.fps_in_file
    np.testing.assert_array_equal(clip.frame, np.arange(10, 10 + T))  # timestep_id
    assert_close(clip.global_pose, p["rotation"])
    assert_close(clip.neck_pose, p["neck_pose"])
    assert_close(clip.left_eye_pose, p["eyes_pose"][:, :3])
    assert_close(clip.right_eye_pose, p["eyes_pose"][:, 3:])
    assert_close(clip.translation, p["translation"])
    assert_close(clip.shape, np.repeat(p["shape"][None], T, 0))
    assert_close(clip.expression, p["expr"])
    dropped = " ".join(report.dropped)
    for name in ("static_offset", "tex", "lights"):
        assert name in dropped
    # the monocular camera as vhap/model/tracker.py sets it when uncalibrated: RT = [I | (0, 0, -1)] in
    # OpenGL axes, f = focal_length * max(h, w), principal point at the centre; a point at the origin
    # projects to the image centre, one 0.1 m right (and up) to f * 0.1 right of (and above) it
    assert_close(clip.K[0], [[1.5 * 512, 0, 256], [0, 1.5 * 512, 256], [0, 0, 1]])
    pixels, depth = project_points(np.array([[0.0, 0.0, 0.0], [0.1, 0.1, 0.0]]), clip.K[0], clip.R[0], clip.t[0])
    assert_close(depth, [1.0, 1.0])
    assert_close(pixels, [[256, 256], [256 + 76.8, 256 - 76.8]])
    assert clip.image_size == (512, 512) and "monocular camera" in report.camera
    # the folder holding it works too (the newest epoch is chosen)
    assert load_any(tmp_path).clip.num_frames == T


def test_vhap_export_with_cameras(tmp_path):
    p, w2c = write_vhap_export(tmp_path / "export")
    for path in (tmp_path / "export", tmp_path / "export" / "transforms.json",
                 tmp_path / "export" / "flame_param" / "00002.npz"):
        result = load_any(path)
        clip, report = result.clip, result.report
        assert report.tool.startswith("VHAP export") and clip.num_frames == T
        np.testing.assert_array_equal(clip.frame, np.arange(T))
        assert_close(clip.jaw_pose, p["jaw_pose"])
        assert_close(clip.expression, p["expr"])
        assert_close(clip.R, np.repeat(w2c[0][0][None], T, 0), 1e-9)
        assert_close(clip.t, np.repeat(w2c[0][1][None], T, 0), 1e-9)
        assert_close(clip.K[0], [[1100.0, 0, 256.0], [0, 1101.0, 512 - 250.0], [0, 0, 1]])
        assert clip.image_size == (550, 512)
        assert "static_offset" in " ".join(report.dropped) and "camera_index 0 of [0, 1]" in report.camera
    second = load_any(tmp_path / "export", camera_index=1).clip
    assert_close(second.R[0], w2c[1][0], 1e-9)
    with pytest.raises(TrackerFormatError, match="no camera_index 5"):
        load_any(tmp_path / "export", camera_index=5)


def test_vhap_cameras_project_as_vhaps_renderer(tmp_path):
    """VHAP's own projection (vhap/util/render_nvdiffrast.py projection_from_intrinsics, then
    world_to_ndc(flip_y=True) and (ndc * 0.5 + 0.5) * [w, h] as tracker.py draws its landmarks; the
    NDC spans the image's outer edges, so pixel centres sit at +0.5 as in flamediff) lands every
    point where flamediff's OpenCV reading of transforms.json puts it, off-centre principal point
    included: the y axis points up in VHAP's clip space, so its principal row is h - cy."""
    write_vhap_export(tmp_path / "export")
    frame = json.loads((tmp_path / "export" / "transforms.json").read_text())["frames"][0]
    clip = load_any(tmp_path / "export").clip
    points = RNG.normal(0.0, 0.08, (20, 3))
    w, h, cx, cy, fx, fy = (frame[k] for k in ("w", "h", "cx", "cy", "fl_x", "fl_y"))
    near, far = 0.1, 10.0
    proj = np.array([[2 * fx / w, 0, (w - 2 * cx) / w, 0], [0, 2 * fy / h, (h - 2 * cy) / h, 0],
                     [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)], [0, 0, -1, 0]])
    w2c = np.linalg.inv(np.asarray(frame["transform_matrix"]))
    clip_space = np.c_[points, np.ones(len(points))] @ (proj @ w2c).T
    ndc = clip_space[:, :2] / clip_space[:, 3:]
    ndc[:, 1] *= -1  # flip_y
    vhap_pixels = (ndc * 0.5 + 0.5) * [w, h]
    ours, _ = project_points(points, clip.K[0], clip.R[0], clip.t[0])
    assert_close(ours, vhap_pixels, 1e-9)


def test_gaussian_avatars(tmp_path):
    p = write_gaussian_avatars(tmp_path)
    result = load_any(tmp_path / "flame_param.npz")
    assert result.report.tool == "GaussianAvatars" and result.report.flame_version == "FLAME 2023"
    assert_close(result.clip.global_pose, p["rotation"])
    assert_close(result.clip.right_eye_pose, p["eyes_pose"][:, 3:])
    assert_close(result.clip.shape[2], p["shape"])
    assert [d.split(" ")[0] for d in result.report.dropped] == ["dynamic_offset", "static_offset"]
    assert_close(result.static_offset, p["static_offset"], 0)
    assert "optional shape key" in result.report.dropped[1]


def test_smirk_torch_file_with_weak_perspective_camera(tmp_path):
    outputs = smirk_outputs()
    torch.save({k: torch.from_numpy(v) for k, v in outputs.items()}, tmp_path / "smirk.pth")
    result = load_any(tmp_path / "smirk.pth")
    clip, report = result.clip, result.report
    assert report.tool == "SMIRK" and report.flame_version == "FLAME 2020"
    assert_close(clip.global_pose, outputs["pose_params"])
    assert_close(clip.jaw_pose, outputs["jaw_params"])
    assert_close(clip.expression, outputs["expression_params"])
    assert_close(clip.shape, outputs["shape_params"])
    assert [d.split(" ")[0] for d in report.dropped] == ["eyelid_params"]
    # the pinhole stand-in projects like SMIRK's batch_orth_proj: ((s (x + t)) * 112 + 112, y flipped)
    # exactly on the face's plane (z = 0); a portrait distance, not a 10 m camera with a 1,300 mm lens
    points = RNG.normal(0, 0.08, (50, 3)) * [1.0, 1.0, 0.0]
    s, tx, ty = outputs["cam"][0].astype(np.float64)
    expected = np.c_[s * (points[:, 0] + tx) * 112 + 112, -s * (points[:, 1] + ty) * 112 + 112]
    cam = points @ clip.R[0].T + clip.t[0]
    pixels = (cam @ clip.K[0].T)[:, :2] / (cam @ clip.K[0].T)[:, 2:]
    assert np.abs(pixels - expected).max() < 1e-6 * s * 112
    assert clip.image_size == (224, 224) and 0.5 < np.linalg.norm(clip.t[0]) < 1.0
    lens_mm = clip.K[0, 0, 0] / 224 * 36.0    # on a 36 mm sensor
    assert 20.0 < lens_mm < 300.0, lens_mm


def test_deca_npz_and_spectre_pth(tmp_path):
    code = deca_codedict()
    np.savez(tmp_path / "deca.npz", **code)
    torch.save({**{k: torch.from_numpy(v) for k, v in code.items()}, "images": torch.rand(T, 3, 224, 224)},
               tmp_path / "spectre.pth")
    for name in ("deca.npz", "spectre.pth"):
        result = load_any(tmp_path / name)
        assert result.report.tool == "DECA / SPECTRE codedict" and result.report.flame_version == "FLAME 2020"
        assert_close(result.clip.global_pose, code["pose"][:, :3])
        assert_close(result.clip.jaw_pose, code["pose"][:, 3:])
        assert_close(result.clip.expression, code["exp"])
        assert_close(result.clip.shape, code["shape"])
        assert result.clip.has_camera
    dropped = [d.split(" ")[0] for d in result.report.dropped]
    assert dropped == ["detail", "images", "light", "tex"]


def test_emoca_codedict_pickle_and_save_codes_folders(tmp_path):
    code = {k.replace("shape", "shapecode").replace("exp", "expcode").replace("pose", "posecode")
            .replace("tex", "texcode").replace("light", "lightcode").replace("detail", "detailcode"): v
            for k, v in deca_codedict().items()}
    with open(tmp_path / "emoca.pkl", "wb") as handle:
        pickle.dump(code, handle)
    result = load_any(tmp_path / "emoca.pkl")
    assert result.report.tool == "EMOCA codedict"
    assert_close(result.clip.jaw_pose, code["posecode"][:, 3:])
    # gdl_apps/EMOCA/utils/io.py save_codes: <out>/<image name>/shape.npy, exp.npy, tex.npy, pose.npy, detail.npy
    out = tmp_path / "emoca_out"
    for i, frame in enumerate((3, 1, 2, 10)):  # numeric order, not text order
        folder = out / f"{frame:06d}_000"
        folder.mkdir(parents=True)
        for name, key in (("shape", "shapecode"), ("exp", "expcode"), ("tex", "texcode"), ("pose", "posecode"),
                          ("detail", "detailcode")):
            np.save(folder / f"{name}.npy", code[key][i])
    for path in (out, out / "000002_000" / "exp.npy"):
        result = load_any(path)
        assert result.report.tool == "EMOCA --save_codes" and result.report.flame_version == "FLAME 2020"
        np.testing.assert_array_equal(result.clip.frame, [1, 2, 3, 10])
        order = [1, 2, 0, 3]
        assert_close(result.clip.expression, code["expcode"][order])
        assert_close(result.clip.global_pose, code["posecode"][order, :3])
        assert [d.split(" ")[0] for d in result.report.dropped] == ["detail", "tex"]


def test_emoca_video_folders_with_several_faces_take_the_first(tmp_path):
    """gdl/datasets/FaceDataModuleBase.py names each detection <frame %06d>_<detection %03d>; the
    first face is imported (or the face of the file named) and the note names the faces left out."""
    code = deca_codedict()
    for i, name in enumerate(("000001_000", "000001_001", "000002_000", "000003_000", "000003_001")):
        (tmp_path / name).mkdir()
        for key in ("shape", "exp", "pose", "tex", "detail"):
            np.save(tmp_path / name / f"{key}.npy", code[key][i % T])
    result = load_any(tmp_path)
    np.testing.assert_array_equal(result.clip.frame, [1, 2, 3])
    assert_close(result.clip.expression, code["exp"][[0, 2, 3]])
    note = next(n for n in result.report.notes if "several faces" in n)
    assert "imported face 000 (3 frames)" in note and "face 001 (2 frames, e.g. 000001_001)" in note
    second = load_any(tmp_path / "000003_001" / "exp.npy")  # one of face 001's files: that face
    np.testing.assert_array_equal(second.clip.frame, [1, 3])
    assert_close(second.clip.expression, code["exp"][[1, 0]])
    assert any("imported face 001 (2 frames), left out face 000" in n for n in second.report.notes)


def test_metrical_tracker_frames(tmp_path):
    frames = write_metrical(tmp_path)
    for path in (tmp_path, tmp_path / "checkpoint", tmp_path / "checkpoint" / "00001.frame"):
        result = load_any(path)
        clip, report = result.clip, result.report
        assert report.tool == "metrical-tracker / FlashAvatar" and report.flame_version == "FLAME 2020"
        np.testing.assert_array_equal(clip.frame, np.arange(T))
        for i, frame in enumerate(frames):
            jaw, left, right = frame["rot"]
            assert_close(axis_angle_to_matrix(clip.jaw_pose[i]), jaw, 1e-6)
            assert_close(axis_angle_to_matrix(clip.left_eye_pose[i]), left, 1e-6)
            assert_close(axis_angle_to_matrix(clip.right_eye_pose[i]), right, 1e-6)
            assert_close(clip.expression[i], frame["flame"]["exp"][0])
            assert_close(clip.R[i], frame["opencv"]["R"][0])
            assert_close(clip.t[i], frame["opencv"]["t"][0])
        assert clip.image_size == (512, 512) and clip.K[0, 0, 2] == 256.5
        dropped = [d.split(" ")[0] for d in report.dropped]
        assert {"flame.eyelids", "flame.tex", "flame.sh", "camera.R"} <= set(dropped)


def test_tracker_rotations_that_are_not_rotations_are_the_files_error(tmp_path):
    frame = {"flame": {"exp": f32(1, 100), "jaw": np.zeros((1, 6), np.float32)}, "img_size": np.array([512, 512])}
    torch.save(frame, tmp_path / "degenerate.frame")
    with pytest.raises(TrackerFormatError, match="'flame.jaw' holds a degenerate 6D rotation"):
        load_any(tmp_path / "degenerate.frame")
    frame = {"flame": {"exp": f32(1, 100)}, "img_size": np.array([512, 512]),
             "opencv": {"R": 2 * np.eye(3)[None], "t": f32(1, 3), "K": np.eye(3)[None]}}
    torch.save(frame, tmp_path / "scaled.frame")
    with pytest.raises(TrackerFormatError, match="'opencv.R' holds 3x3 matrices that are not rotations"):
        load_any(tmp_path / "scaled.frame")


def test_insta_expression_folder(tmp_path):
    exp = f32(T, 100)
    folder = tmp_path / "flame" / "exp"
    folder.mkdir(parents=True)
    for i in range(T):  # scripts/transforms.py dump_text: np.savetxt(fmt='%.8f')
        np.savetxt(folder / f"{i:05d}.txt", exp[i].flatten("F"), fmt="%.8f")
    result = load_any(tmp_path)
    assert result.report.tool == "INSTA" and "expression only" in " ".join(result.report.notes)
    assert_close(result.clip.expression, exp, 1e-8)
    assert np.all(result.clip.jaw_pose == 0) and result.clip.shape.shape[1] == 0


def test_emote_pickle_has_25_fps(tmp_path):
    # inferno TalkingHead evaluation: pickle.dump({shape, expression, jaw_pose, global_pose})
    flame = {"shape": f32(T, 100), "expression": f32(T, 50), "jaw_pose": f32(T, 3), "global_pose": np.zeros((T, 3), np.float32)}
    with open(tmp_path / "flame_M003_angry_1.pkl", "wb") as handle:
        pickle.dump(flame, handle)
    result = load_any(tmp_path / "flame_M003_angry_1.pkl")
    assert result.report.tool == "EMOTE" and result.report.fps_in_file and result.clip.fps == 25.0
    assert_close(result.clip.expression, flame["expression"])
    assert_close(result.clip.jaw_pose, flame["jaw_pose"])


def test_smplx_keywords_and_flame_native_layout(tmp_path):
    smplx = dict(betas=f32(T, 300), expression=f32(T, 100), global_orient=f32(T, 3), neck_pose=f32(T, 3),
                 jaw_pose=f32(T, 3), leye_pose=f32(T, 3), reye_pose=f32(T, 3), transl=f32(T, 3))
    np.savez(tmp_path / "smplx.npz", **smplx)
    clip = load_any(tmp_path / "smplx.npz").clip
    assert_close(clip.left_eye_pose, smplx["leye_pose"])
    assert_close(clip.translation, smplx["transl"])
    assert_close(clip.shape, smplx["betas"])
    native = {"pose": f32(T, 15), "betas": f32(T, 400), "trans": f32(T, 3)}
    with open(tmp_path / "tf_flame.pkl", "wb") as handle:
        pickle.dump(native, handle, protocol=2)
    result = load_any(tmp_path / "tf_flame.pkl")
    assert result.report.tool.startswith("FLAME native")
    assert_close(result.clip.neck_pose, native["pose"][:, 3:6])
    assert_close(result.clip.right_eye_pose, native["pose"][:, 12:])
    assert_close(result.clip.shape, native["betas"][:, :300])
    assert_close(result.clip.expression, native["betas"][:, 300:])
    fitted = {"pose": f32(T, 15), "shape": f32(T, 300), "expression": f32(T, 100), "trans": f32(T, 3)}
    with open(tmp_path / "tf_flame_fit.pkl", "wb") as handle:   # TF_FLAME's fitting output: shape is kept
        pickle.dump(fitted, handle, protocol=2)
    result = load_any(tmp_path / "tf_flame_fit.pkl")
    assert_close(result.clip.shape, fitted["shape"])
    assert_close(result.clip.expression, fitted["expression"])
    assert not result.report.dropped, result.report.dropped


def test_own_file_passes_through(tmp_path):
    save_animation(tmp_path / "own.npz", make_clip(3, fps=30.0, jaw_pose=np.full((3, 3), 0.1)))
    result = load_any(tmp_path / "own.npz")
    assert result.report.tool == "flamediff animation file" and result.clip.fps == 30.0


# ------------------------------------------------------------------ timing

def test_timing_without_fps_is_one_to_one_from_the_scene_start(tmp_path):
    write_gaussian_avatars(tmp_path)
    clip = load_any(tmp_path / "flame_param.npz").clip
    keyed, how = retime(clip, scene_fps=30.0, scene_start=101)
    np.testing.assert_array_equal(keyed.frame, [101, 102, 103, 104])
    assert "no frame rate" in how
    assert_close(keyed.expression, clip.expression, 0)


def test_timing_resamples_to_whole_frames_and_says_so(tmp_path):
    write_gaussian_avatars(tmp_path)
    clip = load_any(tmp_path / "flame_param.npz", fps=20.0).clip  # 4 frames at 20 fps = 0.15 s
    keyed, how = retime(clip, scene_fps=40.0, scene_start=1)
    np.testing.assert_array_equal(keyed.frame, np.arange(1, 8))
    assert "resampled 4 frames at 20 fps onto 7 scene frames at 40 fps" in how
    assert_close(keyed.expression[::2], clip.expression, 1e-12)
    assert_close(keyed.expression[1], (clip.expression[0] + clip.expression[1]) / 2, 1e-12)
    halfway = Rotation.from_rotvec(clip.global_pose[:2])
    expected = (halfway[0] * Rotation.from_rotvec((halfway[0].inv() * halfway[1]).as_rotvec() / 2)).as_rotvec()
    assert_close(keyed.global_pose[1], expected, 1e-9)
    own = make_clip(3, fps=50.0, first_frame=10)
    keyed, how = retime(own, scene_fps=25.0, scene_start=1)
    np.testing.assert_array_equal(keyed.frame, [5, 6])  # own files keep their (rescaled) frame numbers


# ------------------------------------------------------------------ bad input: one clear line each

def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"expr": Exploit()}, handle)
    with pytest.raises(TrackerFormatError, match="never runs code"):
        load_any(tmp_path / "evil.pkl")
    torch.save({"expr": torch.zeros(2, 50)}, tmp_path / "evil.pth")
    with zipfile.ZipFile(tmp_path / "evil.pth") as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    name = next(n for n in entries if n.endswith("data.pkl"))
    entries[name] = pickle.dumps({"expr": Exploit()}, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as archive:
        for key, data in entries.items():
            archive.writestr(key, data)
    with pytest.raises(TrackerFormatError, match="posix.system|os.system"):
        load_any(tmp_path / "evil.pth")
    assert not marker.exists()


def test_truncated_and_corrupt_files(tmp_path):
    write_metrical(tmp_path)
    frame = tmp_path / "checkpoint" / "00000.frame"
    data = frame.read_bytes()
    (tmp_path / "cut.frame").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrackerFormatError, match="truncated|corrupt"):
        load_any(tmp_path / "cut.frame")
    torch.save({"expression_params": torch.zeros(3, 50)}, tmp_path / "short.pth")
    with zipfile.ZipFile(tmp_path / "short.pth") as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    storage = next(n for n in entries if "/data/" in n)
    entries[storage] = entries[storage][:40]
    with zipfile.ZipFile(tmp_path / "short.pth", "w") as archive:
        for key, value in entries.items():
            archive.writestr(key, value)
    with pytest.raises(TrackerFormatError, match="shorter than it claims"):
        load_any(tmp_path / "short.pth")
    write_gaussian_avatars(tmp_path)
    raw = (tmp_path / "flame_param.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:1000])
    with pytest.raises(TrackerFormatError, match="not a readable"):
        load_any(tmp_path / "cut.npz")
    torch.save({"exp": torch.zeros(2, 50)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(TrackerFormatError, match="before 1.6"):
        load_any(tmp_path / "legacy.pth")


def test_npz_files_are_read_within_limits_with_vhaps_string_arrays(tmp_path):
    """Tracker .npz files go through the bounded reader: VHAP's timestep_id strings are read, object
    arrays (pickles) are refused unread, and sizes are checked from headers before decompressing."""
    params = write_vhap_tracker(tmp_path)
    arrays = read_npz(tmp_path / "tracked_flame_params_30.npz", TRACKER_LIMITS, text=True)
    assert arrays["timestep_id"].dtype.kind == "U" and list(arrays["timestep_id"]) == list(params["timestep_id"])
    with pytest.raises(AnimationFormatError, match="'timestep_id' must be a numeric array"):
        read_npz(tmp_path / "tracked_flame_params_30.npz")  # animation files stay numeric
    np.savez(tmp_path / "objects.npz", expr=f32(T, 100), meta=np.array([{"run": "os.system"}], dtype=object))
    with pytest.raises(TrackerFormatError, match="'meta' must be a numeric or string array, got dtype object"):
        load_any(tmp_path / "objects.npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**4)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("expr.npy", header.getvalue() + bytes(64))
    with pytest.raises(TrackerFormatError, match="bomb.npz: 'expr' declares"):
        load_any(tmp_path / "bomb.npz")


def test_nan_and_wrong_widths_name_the_key(tmp_path):
    p = write_vhap_tracker(tmp_path)
    p["expr"][2, 7] = np.nan
    np.savez(tmp_path / "nan.npz", **p)
    with pytest.raises(TrackerFormatError, match=r"'expr' holds NaN or Inf \(frame 2, index 7\)"):
        load_any(tmp_path / "nan.npz")
    p["expr"][2, 7] = 0.0
    p["eyes_pose"] = f32(T, 12)
    np.savez(tmp_path / "wide.npz", **p)
    with pytest.raises(TrackerFormatError, match=r"'eyes_pose' must be \[T, 6\], got \[4, 12\]"):
        load_any(tmp_path / "wide.npz")


def test_folder_with_mismatched_frames_is_refused(tmp_path):
    p, _ = write_vhap_export(tmp_path / "export", cameras=1)
    folder = tmp_path / "export" / "flame_param"
    with np.load(folder / "00002.npz") as data:
        arrays = dict(data)
    np.savez(folder / "00002.npz", **{**arrays, "expr": np.zeros((1, 50), np.float32)})
    with pytest.raises(TrackerFormatError, match="00002.npz has 'expr' of shape \\[1, 50\\]"):
        load_any(folder)
    np.savez(folder / "00002.npz", **{k: v for k, v in arrays.items() if k != "jaw_pose"})
    with pytest.raises(TrackerFormatError, match="missing \\['jaw_pose'\\]"):
        load_any(folder)
    np.savez(folder / "00002.npz", **{**arrays, "expr": np.zeros((2, 100), np.float32)})
    with pytest.raises(TrackerFormatError, match="one frame of the same size per file"):
        load_any(folder)


def test_unrecognised_files_say_what_they_look_like(tmp_path):
    np.save(tmp_path / "faceformer.npy", np.zeros((30, 5023 * 3), np.float32))
    with pytest.raises(TrackerFormatError, match="per-vertex animation .*FaceFormer.*Supported: VHAP"):
        load_any(tmp_path / "faceformer.npy")
    (tmp_path / "codes.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(TrackerFormatError, match="MATLAB"):
        load_any(tmp_path / "codes.mat")
    with pytest.raises(TrackerFormatError, match="not found"):
        load_any(tmp_path / "nothing.npz")


# ------------------------------------------------------------------ flamediff convert

def test_convert_prints_mapped_and_dropped_and_keeps_no_fps(tmp_path, capsys):
    from flamediff.cli import main

    write_metrical(tmp_path)
    out = tmp_path / "converted.npz"
    assert main(["convert", str(tmp_path / "checkpoint"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "metrical-tracker / FlashAvatar (FLAME 2020)" in printed and "flame.eyelids" in printed
    assert "no frame rate" in printed and "camera: metrical-tracker's OpenCV camera" in printed
    again = load_any(out)
    assert again.report.tool == "flamediff animation file (converted from metrical-tracker / FlashAvatar)"
    assert not again.report.fps_in_file and again.clip.has_camera
    keyed, how = retime(again.clip, scene_fps=30.0, scene_start=5)
    np.testing.assert_array_equal(keyed.frame, np.arange(5, 5 + T))
    write_gaussian_avatars(tmp_path)
    assert main(["convert", str(tmp_path / "flame_param.npz"), str(out), "--fps", "30", "--default-camera"]) == 0
    assert "default portrait camera" in capsys.readouterr().out
    assert load_any(out).clip.has_camera and load_any(out).clip.fps == 30.0
    (tmp_path / "evil.pkl").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")
    assert main(["convert", str(tmp_path / "evil.pkl"), str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "never runs code" in error and "Traceback" not in error


def test_read_animation_input_adds_the_default_camera_only_where_none_is(tmp_path):
    """The one reader of convert, render and the server: a camera in the input is kept, a missing
    one becomes the default portrait camera (and the report says so), unless asked not to."""
    params = write_gaussian_avatars(tmp_path)
    plain = read_animation_input(tmp_path / "flame_param.npz", default_camera=False)
    assert not plain.clip.has_camera and not plain.default_camera and "camera: none in the file" in plain.report.lines()
    given = read_animation_input(tmp_path / "flame_param.npz")
    assert given.default_camera and given.clip.has_camera and given.clip.image_size == (512, 512)
    assert given.report.camera.startswith("none in the file: added flamediff's default portrait camera")
    assert_close(given.clip.expression, params["expr"])
    assert_close(given.clip.R[0], look_at_opencv([0.0, 0.0, 0.65], [0.0, -0.005, 0.0])[0], 1e-12)
    save_animation(tmp_path / "own.npz", given.clip)
    own = read_animation_input(tmp_path / "own.npz")
    assert not own.default_camera and own.report.camera == "K, R, t" and own.clip.image_size == (512, 512)
    np.savez(tmp_path / "smirk.npz", **smirk_outputs())
    tracked = read_animation_input(tmp_path / "smirk.npz")
    assert not tracked.default_camera and tracked.clip.image_size == (224, 224)


# ------------------------------------------------------------------ through the add-on, in bpy

def test_import_through_the_addon_in_bpy(tmp_path, head_folder):
    """The built add-on keys a rig from a VHAP export (rebuilding the rig for 300 / 100
    coefficients, its camera as the scene camera) and from metrical-tracker frames resampled
    from 15 to 30 fps; scripts without rebuild_rig and bad files change nothing."""
    import subprocess
    import sys

    pytest.importorskip("bpy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from build_addon import build

    zip_path = build(str(tmp_path / "dist"))
    from flamediff.formats.flame_asset import load_flame_asset

    (tmp_path / "gaussian_avatars").mkdir()
    ga = write_gaussian_avatars(tmp_path / "gaussian_avatars", load_flame_asset(head_folder).num_vertices + 107)
    p, w2c = write_vhap_export(tmp_path / "vhap_export")
    frames = write_metrical(tmp_path / "metrical")
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(bad / "evil.pkl", "wb") as handle:
        handle.write(b"\x80\x04cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    vhap = write_vhap_tracker(tmp_path)
    vhap["expr"][1, 3] = np.inf
    np.savez(bad / "nan.npz", **vhap)
    (bad / "mismatched").mkdir()
    for i in range(3):
        np.savez(bad / "mismatched" / f"{i:05d}.npz", expr=f32(1, 100 if i != 1 else 50), rotation=f32(1, 3),
                 eyes_pose=f32(1, 6), shape=f32(300))
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"))
    completed = subprocess.run([sys.executable, os.path.join(root, "tests", "tracker_addon_driver.py"), zip_path,
                                str(tmp_path), head_folder], env=env, capture_output=True, text=True, timeout=600)
    results_file = tmp_path / "results.json"
    assert results_file.exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads(results_file.read_text())
    assert not results["errors"], results["errors"][0]
    assert results["install"] == ["FINISHED"] and not results["torch_loaded"]

    refused = results["script_without_rebuild"]
    assert refused["result"] is None and refused["unchanged"], refused
    assert "shape coefficient 300 but rig FLAME exposes 100" in refused["message"]
    assert "rebuild_rig=True" in refused["message"]
    for name, words in (("evil.pkl", "never runs code"), ("nan.npz", "'expr' holds NaN or Inf (frame 1, index 3)"),
                        ("mismatched", "00001.npz has 'expr' of shape [1, 50]")):
        outcome = results[f"bad_{name}"]
        assert outcome["result"] is None and outcome["unchanged"], outcome
        assert "Import failed, nothing changed" in outcome["message"] and words in outcome["message"], outcome
    assert not (tmp_path / "pwned").exists()

    done = results["vhap"]
    assert done["result"] == ["FINISHED"], done
    assert results["counts_before"] == [100, 50] and results["counts_after"] == [300, 100]
    report = done["report"]
    for words in ("VHAP export", "static_offset", "no frame rate in the file: one file frame per scene frame from "
                  "frame 101", "rebuilt rig FLAME with 300 shape and 100 expression", "FLAME 2023",
                  "camera_index 0 of [0, 1]"):
        assert words in report, (words, report)
    assert results["scene_camera"] == "FLAME camera" and results["resolution"] == [550, 512]
    assert results["export_vhap"] == ""
    exported = load_any(tmp_path / "export_vhap.npz").clip
    np.testing.assert_array_equal(exported.frame, [101, 102, 103, 104])
    assert_close(exported.expression, p["expr"])
    assert_close(exported.shape, np.repeat(p["shape"][None], T, 0))
    for name, expected in (("global_pose", p["rotation"]), ("neck_pose", p["neck_pose"]), ("jaw_pose", p["jaw_pose"]),
                           ("left_eye_pose", p["eyes_pose"][:, :3]), ("right_eye_pose", p["eyes_pose"][:, 3:])):
        assert_close(axis_angle_to_matrix(getattr(exported, name)), axis_angle_to_matrix(expected), 1e-6)
    assert_close(exported.translation, p["translation"])
    assert_close(exported.R, np.repeat(w2c[0][0][None], T, 0), 1e-5)
    assert_close(exported.t, np.repeat(w2c[0][1][None], T, 0), 1e-5)
    assert_close(exported.K[0], [[1100.0, 0, 256.0], [0, 1101.0, 512 - 250.0], [0, 0, 1]], 1e-3)
    assert exported.image_size == (550, 512)

    offset = results["gaussian_avatars"]
    assert offset["result"] == ["FINISHED"] and "shape key StaticOffset" in offset["report"], offset
    head = np.load(tmp_path / "static_offset_key.npy")
    assert_close(head, ga["static_offset"][: len(head)], 1e-7)
    assert "static_offset has 5143 vertices but the rig's head has" in done["report"]

    resampled = results["metrical"]
    assert resampled["result"] == ["FINISHED"], resampled
    assert "resampled 4 frames at 15 fps onto 7 scene frames at 30 fps (101..107" in resampled["report"]
    assert results["export_metrical"] == ""
    keyed = load_any(tmp_path / "export_metrical.npz").clip
    assert_close(keyed.expression[::2], np.concatenate([f["flame"]["exp"] for f in frames]))
    for i, frame in enumerate(frames):
        assert_close(axis_angle_to_matrix(keyed.jaw_pose[2 * i]), frame["rot"][0], 1e-6)


def test_render_reads_tracker_folders_with_the_default_camera(tmp_path, capsys, monkeypatch):
    """``flamediff render --animation`` converts through the layer (checked up to the job, not rendered)."""
    import flamediff.server.cli as server_cli
    from flamediff.cli import main

    seen = {}

    def fake_render(args):
        seen["clip"] = load_any(args.animation).clip
        return 0

    monkeypatch.setattr(server_cli, "cmd_render", fake_render)
    p, _ = write_vhap_export(tmp_path / "export", cameras=1)
    (tmp_path / "export" / "transforms.json").unlink()  # the per-frame files alone carry no camera
    assert main(["render", "--reference", "ref.png", "--animation", str(tmp_path / "export" / "flame_param"),
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "VHAP export (GaussianAvatars / NeRSemble layout) (FLAME 2023): 4 per-frame .npz files" in printed and "default portrait camera" in printed
    clip = seen["clip"]
    assert clip.has_camera and clip.image_size == (512, 512)
    assert_close(clip.expression, p["expr"])


def _zipped_folder(folder) -> bytes:
    """``folder`` zipped as a user's archiver does it (the folder itself at the top)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def test_each_tool_through_the_server(tmp_path, head_asset):
    """Each tool's file, or its per-frame folder zipped, uploaded as a job's animation: the job stores
    the values the shared layer reads locally (a camera-less file gets the default camera)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from flamediff.formats.animation import load_animation
    from flamediff.server.app import create_app
    from flamediff.server.service import build_service
    from test_server_helpers import TOKEN, make_checkpoint, png_bytes

    write_vhap_tracker(tmp_path)
    write_gaussian_avatars(tmp_path)
    torch.save({k: torch.from_numpy(v) for k, v in smirk_outputs().items()}, tmp_path / "smirk.pth")
    np.savez(tmp_path / "deca.npz", **deca_codedict())
    write_metrical(tmp_path / "metrical")
    write_vhap_export(tmp_path / "vhap_export")
    uploads = {"VHAP tracker": tmp_path / "tracked_flame_params_30.npz", "GaussianAvatars": tmp_path / "flame_param.npz",
               "SMIRK": tmp_path / "smirk.pth", "DECA / SPECTRE": tmp_path / "deca.npz",
               "metrical-tracker": tmp_path / "metrical" / "checkpoint", "VHAP export": tmp_path / "vhap_export"}
    models = tmp_path / "models"
    make_checkpoint(str(models / "tiny"), head_asset)
    service = build_service(str(tmp_path / "jobs"), str(models), "cpu", shipped_dir=str(tmp_path / "none"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(service, TOKEN)) as client:
        for tool, path in uploads.items():
            data = _zipped_folder(path) if path.is_dir() else path.read_bytes()
            response = client.post("/v1/jobs", headers=auth, data={"settings": json.dumps({"steps": 1})},
                                   files={"reference": ("r.png", png_bytes()), "animation": ("a", data)})
            assert response.status_code == 201, (tool, response.text)
            job = response.json()
            client.delete(f"/v1/jobs/{job['id']}", headers=auth)
            assert any(tool in note for note in job["notes"]), (tool, job["notes"])
            stored = load_animation(tmp_path / "jobs" / job["id"] / "inputs" / "animation.npz")
            local = load_any(path, whole_sequence=path.is_dir()).clip
            for name in ("expression", "global_pose", "jaw_pose", "left_eye_pose", "translation"):
                assert_close(getattr(stored, name), getattr(local, name), 1e-9)
            if local.has_camera:
                assert_close(stored.K, local.K, 1e-9)
                assert_close(stored.R, local.R, 1e-9)
            else:
                assert any("default portrait camera" in note for note in job["notes"]), tool


def test_an_npz_without_header_is_a_tracker_upload_and_its_error_is_the_trackers():
    """The server reads an upload's headerless .npz through the tracker layer: hand-stacked arrays
    become a flamediff file with the default camera, anything else gets the reader's 422."""
    from flamediff.server.inputs import InputError, convert_tracker_upload

    def npz(**arrays) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    data, notes = convert_tracker_upload(npz(exp=f32(2, 50), jaw=f32(2, 3)))
    assert notes[0] == "read as hand-stacked arrays (flamediff names or aliases) output (2 frames)"
    assert "default portrait camera" in notes[-1]
    with pytest.raises(InputError, match="upload.npz holds cam \\[2, 3\\], which is no tracker layout") as info:
        convert_tracker_upload(npz(cam=f32(2, 3)))
    assert info.value.status == 422
