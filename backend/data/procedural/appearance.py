"""Per-identity appearance: FLAME shape, skin, lips, brows, eyes, hair or cap, background, and
the canonical head regions (from the asset's rest mesh) the textures are painted on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flamediff.data.procedural.patterns import hsv_colour, smooth_noise, smoothstep
from flamediff.formats.flame_asset import FlameAsset
from flamediff.geometry.mesh import surface_points

NUM_SHAPE = 100
SHAPE_COMPONENTS = 20
SHAPE_SCALE = 0.8
TEXTURE_SIZE = 256


class HeadRegions:
    """Canonical (rest-pose) anchors of the asset: eyes, brows, lips, ears, neck."""

    def __init__(self, asset: FlameAsset) -> None:
        rest = np.asarray(asset.v_template, np.float64)
        faces = np.asarray(asset.faces, np.int64)
        weights = np.asarray(asset.weights)
        self.rest = rest
        eye = [weights[:, joint] > 0.99 for joint in (3, 4)]
        self.eye_vertex = eye[0] | eye[1]
        self.eye_face = self.eye_vertex[faces].all(axis=1)
        self.eye_centres = np.stack([rest[m].mean(axis=0) if m.any() else np.zeros(3) for m in eye])
        lm = surface_points(torch.as_tensor(rest)[None], torch.as_tensor(faces[asset.landmark_faces]),
                            torch.as_tensor(asset.landmark_barycentrics))[0].numpy()
        self.landmarks = lm
        self.brows = [lm[0:5], lm[5:10]]
        lips = lm[31:43]
        self.mouth_centre = lips.mean(axis=0)
        self.mouth_half = np.array([np.abs(lips[:, 0] - self.mouth_centre[0]).max() * 1.08,
                                    (lips[:, 1].max() - lips[:, 1].min()) * 0.5 * 1.25])
        self.eye_y = float(self.eye_centres[:, 1].mean())
        self.brow_y = float(lm[0:10, 1].mean())
        head = ~self.eye_vertex
        ears = []
        for side in (1.0, -1.0):
            band = head & (np.abs(rest[:, 1] - (self.eye_y - 0.015)) < 0.035) & (np.abs(rest[:, 2]) < 0.05) \
                & (side * rest[:, 0] > 0)
            candidates = np.nonzero(band)[0]
            ears.append(rest[candidates[np.argmax(side * rest[candidates, 0])]])
        self.ear_centres = np.stack(ears)
        self.neck_y = float(self.mouth_centre[1] - 0.055)
        self.top_y = float(rest[:, 1].max())


SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.80, 0.70]), np.array([0.36, 0.23, 0.16])
HAIR_COLOURS = np.array([[0.06, 0.05, 0.05], [0.22, 0.13, 0.08], [0.45, 0.30, 0.16], [0.80, 0.65, 0.40],
                         [0.55, 0.22, 0.10], [0.62, 0.60, 0.58]])
IRIS_COLOURS = np.array([[0.30, 0.17, 0.08], [0.20, 0.38, 0.62], [0.25, 0.45, 0.25], [0.45, 0.35, 0.15],
                         [0.45, 0.48, 0.52]])


@dataclass
class Appearance:
    """One identity's look; ``texture`` is [4, T, T] in UV space: RGB skin pattern multiplier and
    a hair-strand channel."""

    identity: int
    shape: np.ndarray          # [NUM_SHAPE]
    skin: np.ndarray           # [3]
    lips: np.ndarray
    brow_colour: np.ndarray
    hair_colour: np.ndarray
    iris: np.ndarray
    background: np.ndarray     # [2, 3] top, bottom
    hairline_front: float      # metres above the brows
    hairline_back: float       # metres, height of the hair's lower edge at the back
    cap: bool
    brow_thickness: float
    texture: torch.Tensor


def make_appearance(identity: int, seed: int, regions: HeadRegions) -> Appearance:
    """One identity's shape and look, drawn from its own seed so any subset of identities gets the
    same looks as the whole dataset."""
    rng = np.random.default_rng([seed, identity, 1])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    shape = np.zeros(NUM_SHAPE)
    shape[:SHAPE_COMPONENTS] = SHAPE_SCALE * rng.standard_normal(SHAPE_COMPONENTS)
    tone = rng.uniform()
    skin = SKIN_LIGHT * (1 - tone) + SKIN_DARK * tone
    skin = np.clip(skin * rng.uniform(0.94, 1.06, 3), 0.0, 1.0)
    lips = np.clip(skin * np.array([0.82, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * rng.uniform(0.5, 1.5), 0, 1)
    cap = bool(rng.uniform() < 0.2)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    if cap:
        hair = hsv_colour(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.85))
    brow = np.clip(HAIR_COLOURS[rng.integers(3)] * 0.8 + skin * 0.15, 0, 1)
    iris = np.clip(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.8, 1.2, 3), 0, 1)
    hue = rng.uniform()
    background = np.stack([hsv_colour(hue, rng.uniform(0.05, 0.45), rng.uniform(0.35, 0.95)),
                           hsv_colour((hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.05, 0.45),
                                rng.uniform(0.2, 0.8))])
    # UV texture: low-frequency blotches, fine mottling, optional freckles, hair strands
    blotch = smooth_noise(generator, 3, (8, 8), TEXTURE_SIZE) * rng.uniform(0.03, 0.10)
    mottle = smooth_noise(generator, 1, (48, 48), TEXTURE_SIZE) * rng.uniform(0.01, 0.04)
    pattern = 1.0 + blotch + mottle
    freckle_density = rng.uniform() if rng.uniform() < 0.4 else 0.0
    if freckle_density > 0:
        spots = smooth_noise(generator, 1, (96, 96), TEXTURE_SIZE)
        threshold = 0.75 - 0.35 * freckle_density
        freckles = smoothstep(threshold, threshold + 0.12, spots)
        pattern = pattern * (1.0 - freckles * torch.tensor([0.30, 0.42, 0.50])[:, None, None])
    strands = smooth_noise(generator, 1, (6, 128), TEXTURE_SIZE)  # fast along u, slow along v
    texture = torch.cat([pattern, strands], 0).float()
    return Appearance(identity=identity, shape=shape, skin=skin, lips=lips, brow_colour=brow, hair_colour=hair,
                      iris=iris, background=background, hairline_front=float(rng.uniform(0.025, 0.05)),
                      hairline_back=float(regions.mouth_centre[1] + rng.uniform(-0.03, 0.02)), cap=cap,
                      brow_thickness=float(rng.uniform(0.0025, 0.0045)), texture=texture)
