"""A phone portrait stored sideways (EXIF Orientation 6) and larger than the reader's working size:
``flamediff track`` reads it upright and downsized, says so, and fits the head with the roll of the
same photo stored upright (the sideways pixels read as they are gave an 82-84 degree roll)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mediapipe", reason="the tracking extra (pip install 'flamediff[tracking]')")

from flamediff.assets import load_asset
from flamediff.cli import main
from flamediff.formats.animation import load_animation
from flamediff.tracking.evaluate import head_rotation, procedural_cases


def phone_portrait(face: np.ndarray, size: tuple[int, int] = (4000, 6000)) -> Image.Image:
    """``face`` (a square render) in the middle of an upright portrait photo of ``size`` pixels."""
    side = face.shape[1]
    pad = (side * size[1] // size[0] - side) // 2
    portrait = np.pad(face, ((pad, pad), (0, 0), (0, 0)), mode="edge")
    return Image.fromarray(portrait).resize(size, Image.Resampling.BILINEAR)


def head_roll_degrees(path: str) -> float:
    """The fitted head's roll in the camera's image: 0 when its up axis points up the picture."""
    clip = load_animation(path)
    up = head_rotation(np.stack([clip.global_pose[0], clip.neck_pose[0]]), clip.R[0]) @ [0.0, 1.0, 0.0]
    return float(np.degrees(np.arctan2(up[0], -up[1])))


def test_a_sideways_phone_portrait_is_tracked_upright(tmp_path, capsys):
    case = procedural_cases(load_asset(None), identity=0, yaws=[0.0])[0]
    upright = phone_portrait(case.image)
    exif = Image.Exif()
    exif[0x0112] = 6   # "rotate 90 degrees clockwise to view": what a phone held upright stores
    upright.save(tmp_path / "upright.jpg", quality=90)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", quality=90, exif=exif.tobytes())
    rolls = {}
    for name in ("upright", "sideways"):
        assert main(["track", str(tmp_path / f"{name}.jpg"), "--out", str(tmp_path / f"{name}.npz"), "--steps", "40",
                     "--no-overlay", "--quiet"]) == 0
        rolls[name] = head_roll_degrees(str(tmp_path / f"{name}.npz"))
    out = capsys.readouterr().out
    assert out.count("sideways.jpg: turned upright by its EXIF orientation (6)") == 1
    assert out.count("6000x4000 downsized to") == 0 and out.count("4000x6000 downsized to 1365x2048") == 2
    assert abs(rolls["upright"]) < 10.0 and abs(rolls["sideways"] - rolls["upright"]) < 3.0, rolls
    assert load_animation(str(tmp_path / "sideways.npz")).image_size == (1365, 2048)
