"""The noise schedule shared by training and inference (one definition, so they never drift)."""

from __future__ import annotations

from diffusers import DDIMScheduler

from flamediff.models.config import FlameDiffConfig


def make_scheduler(config: FlameDiffConfig) -> DDIMScheduler:
    """DDIM with v-prediction, zero terminal SNR and trailing timesteps (as Champ / Animate
    Anyone do), so the last training step is pure noise and sampling starts from it."""
    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, prediction_type=config.prediction_type, rescale_betas_zero_snr=True,
        timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
    )
