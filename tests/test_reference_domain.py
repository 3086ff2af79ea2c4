"""The out-of-domain note of a procedural checkpoint comes only when the reference does not look
like its training data: the measured test (median |Laplacian| of the grey centre square at
128 px) separates flamediff's procedural renders from photos, the shipped reference gets no
note and a photo of a real person (scikit-image's astronaut, offline) does."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFilter

from flamediff.server.service import PROCEDURAL_TEXTURE_LIMIT, reference_notes, reference_texture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "backend", "checkpoints", "demo")


def _photos() -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    astronaut = Image.fromarray(data.astronaut())
    face = astronaut.crop((140, 20, 340, 220))
    compressed = io.BytesIO()
    face.save(compressed, "JPEG", quality=40)
    return {"astronaut": np.asarray(astronaut), "face": np.asarray(face),
            "small face": np.asarray(face.resize((90, 90))), "jpeg q40": np.asarray(Image.open(compressed)),
            "blurred": np.asarray(face.filter(ImageFilter.GaussianBlur(2))),
            "cat": np.asarray(data.chelsea()), "coffee": np.asarray(data.coffee())}


@pytest.fixture(scope="module")
def procedural(tmp_path_factory) -> list[np.ndarray]:
    from flamediff.data.procedural.generate import generate_procedural_dataset

    folder = str(tmp_path_factory.mktemp("procedural"))
    generate_procedural_dataset(folder, identities=6, views_per_identity=1, sequences_per_identity=1,
                                frames_per_sequence=2, resolution=128)
    frames = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(glob.glob(f"{folder}/frames/*.png"))]
    return frames + [np.asarray(Image.open(os.path.join(DEMO, "reference.png")).convert("RGB"))]


def test_the_texture_statistic_separates_procedural_renders_from_photos(procedural):
    rendered = [reference_texture(frame) for frame in procedural]
    photos = {name: reference_texture(pixels) for name, pixels in _photos().items()}
    print(f"procedural renders ({len(rendered)}): {min(rendered):.4f}..{max(rendered):.4f}; photos: "
          + ", ".join(f"{name} {value:.4f}" for name, value in photos.items()))
    assert max(rendered) < PROCEDURAL_TEXTURE_LIMIT < min(photos.values())
    assert max(rendered) * 1.5 < PROCEDURAL_TEXTURE_LIMIT < min(photos.values()) / 1.2   # with a margin each side


def test_the_note_comes_only_for_a_reference_outside_the_training_domain():
    from flamediff.server.checkpoints import describe

    demo = describe(DEMO, "demo", "shipped")
    shipped = np.asarray(Image.open(os.path.join(DEMO, "reference.png")).convert("RGB"))
    assert reference_notes(shipped, demo) == []
    (note,) = reference_notes(_photos()["face"], demo)
    assert "a photo of a real person is outside what it learned" in note
