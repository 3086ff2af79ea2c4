"""One config type for every model size, with named presets (``tiny``, ``demo``, ``sd15``).

Like a diffusers config it is plain JSON-able data: ``save_pretrained`` writes it beside the
weights and ``from_pretrained`` rebuilds the exact architecture from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

LABELS = {"real": 0, "synthetic": 1, "null": 2}  # "null" is the unconditional (dropped) branch
CONTROLS = ("gaussian", "geometry")  # splatted Gaussian feature field | FLAME normals + depth + landmarks


@dataclass(frozen=True)
class FlameDiffConfig:
    """Architecture and training-time conditioning of a flamediff model."""

    preset: str = "tiny"
    resolution: int = 32                       # output frames are resolution x resolution pixels
    unet_channels: tuple[int, ...] = (8, 16)
    layers_per_block: int = 1
    attention_head_dim: int = 4
    cross_attention_dim: int = 16
    norm_num_groups: int = 4
    vae_channels: tuple[int, ...] = (8, 16)  # VAE downsamples by 2 ** (len - 1)
    latent_channels: int = 4
    vae_scaling_factor: float = 1.0            # one scale for every latent channel (SD-1.5's 0.18215)
    # Per-channel latent normalisation measured on the training frames after the VAE stage
    # (latents = (mean - shift) / scale): the diffusion model then sees unit-variance channels,
    # which a single scalar cannot give a small VAE whose channels differ 7x in spread.
    latent_shift: tuple[float, ...] | None = None
    latent_scale: tuple[float, ...] | None = None
    control: str = "gaussian"                  # one of CONTROLS: what the pose guider sees
    feature_dim: int = 16                      # width of the Gaussian feature field
    uv_resolution: int = 64
    guider_channels: tuple[int, ...] = (8, 16)
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"
    reference_dropout: float = 0.1             # classifier-free guidance: drop reference + label
    # The reference's colour at each surface point a frame shows, as extra pose-guider input
    # (models/correspondence.py); dropped alone at this rate in training, so renders without the
    # reference's pose work too.
    correspondence: bool = False
    correspondence_dropout: float = 0.15
    default_steps: int = 25                    # denoising steps when a render asks for 0 ("the model's own")
    default_guidance: float = 2.0              # classifier-free guidance scale when a render asks for 0
    temporal_layers: bool = False              # motion modules in every denoiser block (stage 2)
    temporal_heads: int = 2
    temporal_max_frames: int = 32              # longest window the positional encoding covers
    motion_adapter: str | None = None          # AnimateDiff adapter (hub id or folder) to start from
    pretrained: str | None = None              # hub id or folder of SD-1.5 weights (sd15 preset)
    flame_asset: dict[str, str] = field(default_factory=dict)
    # What the checkpoint learned from, e.g. "procedural" (flamediff's generated heads): renders
    # warn when a reference is likely outside it. Copied from the training dataset's "source".
    training_domain: str = ""

    def __post_init__(self) -> None:
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, not {self.control!r}")
        for name in ("latent_shift", "latent_scale"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(f"{name} has {len(value)} values for {self.latent_channels} latent channels")
        if (self.latent_shift is None) != (self.latent_scale is None):
            raise ValueError("latent_shift and latent_scale are set together (both or neither)")
        if self.latent_scale is not None and min(self.latent_scale) <= 0:
            raise ValueError("latent_scale values must be positive")

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.vae_factor

    def unet_kwargs(self) -> dict[str, Any]:
        """Arguments of ``diffusers.UNet2DConditionModel`` for the denoiser and the ReferenceNet."""
        depth = len(self.unet_channels)
        return dict(
            sample_size=self.latent_resolution, in_channels=self.latent_channels, out_channels=self.latent_channels,
            block_out_channels=tuple(self.unet_channels), layers_per_block=self.layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * (depth - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (depth - 1),
            attention_head_dim=self.attention_head_dim, cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.norm_num_groups,
        )

    def vae_kwargs(self) -> dict[str, Any]:
        """Arguments of ``diffusers.AutoencoderKL``."""
        depth = len(self.vae_channels)
        return dict(
            in_channels=3, out_channels=3, latent_channels=self.latent_channels,
            block_out_channels=tuple(self.vae_channels), layers_per_block=self.layers_per_block,
            down_block_types=("DownEncoderBlock2D",) * depth, up_block_types=("UpDecoderBlock2D",) * depth,
            norm_num_groups=self.norm_num_groups, sample_size=self.resolution,
            scaling_factor=self.vae_scaling_factor,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlameDiffConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; this flamediff knows {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def preset_named(cls, name: str, **overrides: Any) -> "FlameDiffConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, FlameDiffConfig] = {
    "tiny": FlameDiffConfig(),
    "demo": FlameDiffConfig(
        preset="demo", resolution=128, unet_channels=(48, 96, 128), layers_per_block=1, attention_head_dim=8,
        cross_attention_dim=64, norm_num_groups=8, vae_channels=(16, 32, 64, 64), latent_channels=8,
        feature_dim=16, uv_resolution=128,
        guider_channels=(16, 32), temporal_heads=4, default_steps=12,
    ),
    "sd15": FlameDiffConfig(
        preset="sd15", resolution=512, unet_channels=(320, 640, 1280, 1280), layers_per_block=2,
        attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32, vae_channels=(128, 256, 512, 512),
        latent_channels=4, vae_scaling_factor=0.18215, feature_dim=32, uv_resolution=256,
        guider_channels=(16, 32, 96, 256), pretrained="stable-diffusion-v1-5/stable-diffusion-v1-5",
        temporal_heads=8,
    ),
}
