"""The reference-guided diffusion model: config presets, pose guider, reference attention."""

from flamediff.models.config import PRESETS, FlameDiffConfig
from flamediff.models.flamediff_model import FlameDiffModel

__all__ = ["PRESETS", "FlameDiffConfig", "FlameDiffModel"]
