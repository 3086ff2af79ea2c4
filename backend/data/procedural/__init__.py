"""The procedural training dataset: the procedural head rendered with per-identity
appearance, in the paper's two domains, by flamediff's own rasteriser (``flamediff.geometry.rasterizer``).

Per identity (all drawn from ``numpy.random.default_rng([seed, identity])``):

- FLAME shape: standard normal on the first ``SHAPE_COMPONENTS`` (20) coefficients, times 0.8;
- appearance: skin tone, a UV-space skin pattern (smooth low-frequency blotches and, for some
  identities, freckles on the face), lip colour, eyebrows, iris colour, a hair region (top and
  back of the head, variable hairline) or a coloured cap, and a two-colour background gradient.

Two kinds of samples (``samples.npz``'s ``label``):

- **synthetic** (label 1), the paper's multi-view set: ``views_per_identity`` single frames, each
  its own sequence, from cameras orbiting the head at yaw in +-80 deg and pitch in +-35 deg, with
  random expressions (the named components and small random others), jaw, gaze and neck.
  They carry deliberate artefacts in two regions, and only there:
    * **ears**: the ear region (a blob around each ear, from the rest mesh) is painted over
      with noisy, saturated colour blotches (a fresh random UV noise per sample);
    * **mouth interior**: what shows through the open mouth (back faces of the head's inside)
      is a bright saturated colour with noise instead of the clean dark red.
- **real** (label 0), continuous clips for temporal training: ``sequences_per_identity`` clips of
  ``frames_per_sequence`` frames of smooth expression / jaw / gaze / neck / head animation with
  blinks, a near-frontal camera (yaw +-20 deg, pitch +-10 deg) that drifts slowly, clean rendering.

Every frame has its own lighting (direction from the camera's front hemisphere, ambient,
diffuse, a Blinn-Phong specular term, a slight colour tint); within a real clip it drifts smoothly.
Identities are split into train and held-out sets (``splits.json`` beside ``dataset.json``).
Everything is deterministic given the seed (same seed, same PNG bytes).

Modules: :mod:`.scene` (per-frame parameters, cameras, lights), :mod:`.appearance` (per-identity
looks, head regions), :mod:`.patterns` (noise and colours), :mod:`.renderer` (texture baking and
shading), :mod:`.masks` (head / artefact masks of annotated samples), :mod:`.generate` (planning,
worker processes, writing the folder). Splits: :mod:`flamediff.data.splits`; the command line:
:mod:`flamediff.data.cli`.
"""

from flamediff.data.procedural.appearance import Appearance, HeadRegions, make_appearance
from flamediff.data.procedural.generate import DESCRIPTION, DatasetPlan, generate_procedural_dataset, plan_dataset
from flamediff.data.procedural.masks import region_masks
from flamediff.data.procedural.renderer import ProceduralRenderer, RenderedBatch
from flamediff.data.procedural.scene import (
    LABEL_REAL,
    LABEL_SYNTHETIC,
    FrameSpecs,
    orbit_camera,
    real_sequence,
    synthetic_views,
)

__all__ = ["DESCRIPTION", "LABEL_REAL", "LABEL_SYNTHETIC", "Appearance", "DatasetPlan", "FrameSpecs", "HeadRegions",
           "ProceduralRenderer", "RenderedBatch", "generate_procedural_dataset", "make_appearance", "orbit_camera",
           "plan_dataset", "real_sequence", "region_masks", "synthetic_views"]
