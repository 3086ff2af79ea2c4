"""The reference-guided diffusion model: config presets, pose guider, reference attention."""

from backend.models.config import PRESETS, FlameDiffConfig
from backend.models.flamediff_model import FlameDiffModel

__all__ = ["PRESETS", "FlameDiffConfig", "FlameDiffModel"]
