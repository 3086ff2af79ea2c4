"""The dual-branch model: ReferenceNet + denoising U-Net + pose guider + VAE + domain labels.

Frames are ``[B, F, ...]`` throughout (F frames per sample) so temporal layers have a place;
the U-Nets see ``[B * F, ...]``. Save/load follows diffusers: a folder with ``config.json``
and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flamediff.errors import FlamediffError
from flamediff import __version__
from flamediff.formats.flame_asset import FlameAsset
from flamediff.gaussians.field import UVGaussianField
from flamediff.gaussians.uv_binding import load_or_compute_uv_binding
from flamediff.models.config import LABELS, FlameDiffConfig
from flamediff.models.correspondence import (CORRESPONDENCE_CHANNELS, Rasterise, ReferenceView, correspondence_maps,
                                             rasterise_meshes)
from flamediff.models.geometry_control import GEOMETRY_CHANNELS, render_geometry_control
from flamediff.models.pose_guider import PoseGuider
from flamediff.models.reference_attention import ReferenceBank, install_reference_attention
from flamediff.models.temporal import attach_motion_modules, build_motion_adapter, load_motion_adapter

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(FlamediffError):
    """A checkpoint that cannot be used here; the message says why and what to do."""


class FlameDiffModel(nn.Module):
    """Predicts v for noisy latents of frames, guided by a control map and a reference image.

    The control map is the splatted Gaussian feature field (``config.control == "gaussian"``,
    the paper's method) or normals + depth + landmarks rasterised from the FLAME mesh
    (``"geometry"``, the paper's ablation baseline); :meth:`attach_control` sets either up.
    """

    def __init__(self, config: FlameDiffConfig, vae: AutoencoderKL | None = None,
                 denoiser: UNet2DConditionModel | None = None,
                 reference_unet: UNet2DConditionModel | None = None,
                 gaussian_field: UVGaussianField | None = None) -> None:
        super().__init__()
        if gaussian_field is not None and config.control != "gaussian":
            raise ValueError(f"a model with the {config.control!r} control has no Gaussian field")
        self.config = config
        self.gaussian_field = gaussian_field
        # geometry control: the asset's landmark embedding, rebuilt from the asset at load
        self.register_buffer("landmark_triangles", None, persistent=False)
        self.register_buffer("landmark_barycentrics", None, persistent=False)
        self.vae = vae or AutoencoderKL(**config.vae_kwargs())
        self.denoiser = denoiser or UNet2DConditionModel(**config.unet_kwargs())
        self.reference_unet = reference_unet or UNet2DConditionModel(**config.unet_kwargs())
        guided_channels = self.control_channels + (CORRESPONDENCE_CHANNELS if config.correspondence else 0)
        self.pose_guider = PoseGuider(guided_channels, config.unet_channels[0], config.guider_channels,
                                      downsample=config.vae_factor)
        self.label_embedding = nn.Embedding(len(LABELS), config.cross_attention_dim)
        self.bank = ReferenceBank()
        self.num_reference_layers = install_reference_attention(self.reference_unet, self.denoiser, self.bank)
        self._control: Tensor | None = None
        self.denoiser.conv_in.register_forward_hook(self._add_control)
        self.temporal: nn.Module | None = None
        self._num_frames = 1
        if config.temporal_layers:
            self.add_temporal_layers()

    def add_temporal_layers(self, adapter: nn.Module | None = None) -> nn.Module:
        """Give the denoiser motion modules (fresh ones leave predictions unchanged); the
        config's ``motion_adapter`` (AnimateDiff, hub id or folder) is used when set."""
        if self.temporal is not None:
            return self.temporal
        config = self.config
        if adapter is None and config.motion_adapter:
            try:
                adapter = load_motion_adapter(config.motion_adapter)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"could not load the motion adapter {config.motion_adapter!r} ({exc}); "
                                      "download it once or pass a local folder") from None
        if adapter is None:
            adapter = build_motion_adapter(config.unet_channels, config.layers_per_block, config.temporal_heads,
                                           config.norm_num_groups, config.temporal_max_frames)
        attach_motion_modules(self.denoiser, adapter, lambda: self._num_frames)
        self.temporal = adapter.to(self.label_embedding.weight.device)
        if not config.temporal_layers:
            self.config = replace(config, temporal_layers=True)
        return self.temporal

    def add_reference_correspondence(self) -> None:
        """Give the pose guider the correspondence channels (models/correspondence.py); their
        input weights start at zero, so the model's predictions are unchanged until it learns."""
        if self.config.correspondence:
            return
        first = self.pose_guider.body[0]
        widened = nn.Conv2d(first.in_channels + CORRESPONDENCE_CHANNELS, first.out_channels, first.kernel_size,
                            padding=first.padding).to(first.weight.device)
        with torch.no_grad():
            widened.weight.zero_()
            widened.weight[:, :first.in_channels] = first.weight
            widened.bias.copy_(first.bias)
        self.pose_guider.body[0] = widened
        self.config = replace(self.config, correspondence=True)

    # -- conditioning ---------------------------------------------------------------------------

    @property
    def control_channels(self) -> int:
        """Channels of :meth:`render_control`'s maps without the correspondence: the field's
        features or the geometry maps."""
        return GEOMETRY_CHANNELS if self.config.control == "geometry" else self.config.feature_dim

    @property
    def has_control(self) -> bool:
        """Whether :meth:`render_control` can run (:meth:`attach_control` was called or loaded)."""
        return self.gaussian_field is not None or self.landmark_triangles is not None

    def attach_control(self, asset: FlameAsset, cache_dir: str | None = None) -> None:
        """Set the control up for ``asset``: a fresh learnable Gaussian field on its UV layout, or
        for the geometry control its landmark embedding."""
        if self.config.control == "geometry":
            device = self.label_embedding.weight.device
            self.landmark_triangles = torch.as_tensor(asset.faces[asset.landmark_faces], dtype=torch.long,
                                                      device=device)
            self.landmark_barycentrics = torch.as_tensor(asset.landmark_barycentrics, dtype=torch.float32,
                                                         device=device)
        else:
            self.attach_gaussian_field(asset, cache_dir)

    def attach_gaussian_field(self, asset: FlameAsset, cache_dir: str | None = None) -> UVGaussianField:
        """Create the learnable Gaussian field on ``asset``'s UV layout (training from scratch)."""
        if self.config.control != "gaussian":
            raise ValueError(f"this model's control is {self.config.control!r}: it has no Gaussian field; "
                             "use attach_control(asset)")
        binding = load_or_compute_uv_binding(asset, self.config.uv_resolution, cache_dir)
        self.gaussian_field = UVGaussianField(binding, self.config.feature_dim).to(self.label_embedding.weight.device)
        return self.gaussian_field

    def render_control(self, vertices: Tensor, faces: Tensor, viewmats: Tensor, Ks: Tensor,
                       resolution: int | None = None, reference: ReferenceView | None = None,
                       rasterise: Rasterise = rasterise_meshes) -> Tensor:
        """Control maps ``[N, R, R, C]`` of posed meshes ``[N, V, 3]`` at ``resolution`` (default the
        model's; ``Ks`` must already be in those pixels): the splatted Gaussian field
        (C = feature_dim) or the geometry maps (C = GEOMETRY_CHANNELS), then, for a model with the
        correspondence, its channels from ``reference`` (all zero without one; ``rasterise``: how
        the meshes' fragments are found, e.g. the training cache's)."""
        if not self.has_control:
            raise RuntimeError("this model's control is not set up: call attach_control(asset) first")
        resolution = resolution or self.config.resolution
        if self.config.control == "geometry":
            maps = render_geometry_control(vertices, faces, viewmats, Ks, resolution,
                                           self.landmark_triangles, self.landmark_barycentrics)
        else:
            maps, _ = self.gaussian_field.render(vertices, faces, viewmats, Ks, resolution, resolution)
        if not self.config.correspondence:
            return maps
        extra = self.reference_correspondence(vertices, faces, viewmats, Ks, resolution, reference, rasterise)
        return torch.cat([maps, extra.to(maps.dtype)], dim=-1)

    def reference_correspondence(self, vertices: Tensor, faces: Tensor, viewmats: Tensor, Ks: Tensor, resolution: int,
                                 reference: ReferenceView | None, rasterise: Rasterise = rasterise_meshes) -> Tensor:
        """The correspondence channels ``[N, R, R, CORRESPONDENCE_CHANNELS]`` of :meth:`render_control`
        (models/correspondence.py), all zero without a ``reference``."""
        if reference is None:
            return vertices.new_zeros((vertices.shape[0], resolution, resolution, CORRESPONDENCE_CHANNELS))
        return correspondence_maps(vertices, faces, viewmats, Ks, resolution, reference, rasterise)

    def _add_control(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """Adds the pose guider's output to the denoiser's ``conv_in`` output (the paper's input)."""
        return output if self._control is None else output + self._control.to(output.dtype)

    def label_tokens(self, labels: Tensor) -> Tensor:
        """``[N]`` label ids -> ``[N, 1, cross_attention_dim]`` cross-attention tokens."""
        return self.label_embedding(labels)[:, None, :]

    def _latent_normalisation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(shift, scale)`` broadcastable over ``[N, C, h, w]``: per channel when the config
        records them, else 0 and ``1 / vae_scaling_factor``."""
        config, channels = self.config, self.config.latent_channels
        if config.latent_scale is None:
            shift, scale = [0.0] * channels, [1.0 / config.vae_scaling_factor] * channels
        else:
            shift, scale = config.latent_shift, config.latent_scale
        as_tensor = lambda v: torch.as_tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)  # noqa: E731
        return as_tensor(shift), as_tensor(scale)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [-1, 1] -> normalised latents (the posterior mean: deterministic)."""
        return self.normalise_latents(self.vae.encode(images).latent_dist.mean)

    def normalise_latents(self, raw: Tensor) -> Tensor:
        """The VAE's raw latents -> what the U-Nets see (``(raw - shift) / scale``)."""
        shift, scale = self._latent_normalisation(raw)
        return (raw - shift) / scale

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Normalised latents -> ``[N, 3, H, W]`` in [-1, 1]."""
        shift, scale = self._latent_normalisation(latents)
        return self.vae.decode(latents * scale + shift).sample.clamp(-1.0, 1.0)

    def write_reference(self, reference_latents: Tensor) -> None:
        """Run the ReferenceNet once on ``[R, C, h, w]`` clean latents and keep its tokens."""
        self.bank.clear()
        self.bank.writing = True
        try:
            timestep = torch.zeros(reference_latents.shape[0], device=reference_latents.device)
            labels = torch.full((reference_latents.shape[0],), LABELS["real"], device=reference_latents.device)
            self.reference_unet(reference_latents, timestep,
                                encoder_hidden_states=self.label_tokens(labels).to(reference_latents.dtype))
        finally:
            self.bank.writing = False

    # -- prediction -----------------------------------------------------------------------------

    def guide(self, feature_maps: Tensor) -> Tensor:
        """Pose guider: ``[N, D, H, W]`` control maps -> ``[N, C, h, w]`` (added after conv_in).
        Computed once per frame; long renders keep these instead of the feature maps."""
        return self.pose_guider(feature_maps)

    def predict(self, noisy_latents: Tensor, timesteps: Tensor, feature_maps: Tensor, labels: Tensor,
                keep_reference: Tensor | None, reference_index: Tensor | None = None) -> Tensor:
        """v-prediction for ``[B, F, C, h, w]`` latents, in the latents' dtype.

        ``feature_maps`` [B, F, D, H, W] (the control maps), ``timesteps`` [B],
        ``labels`` [B] domain ids, ``keep_reference`` [B] bool (False = unconditional branch:
        no reference, null label; None = every sample keeps it), ``reference_index`` [B] which
        written reference each sample uses (default: sample i uses reference i). The bank must
        have been written first.
        """
        pose_features = self.guide(feature_maps.flatten(0, 1)).unflatten(0, feature_maps.shape[:2])
        return self.predict_guided(noisy_latents, timesteps, pose_features, labels, keep_reference, reference_index)

    def predict_guided(self, noisy_latents: Tensor, timesteps: Tensor, pose_features: Tensor, labels: Tensor,
                       keep_reference: Tensor | None, reference_index: Tensor | None = None) -> Tensor:
        """:meth:`predict` with the pose guider's output ``[B, F, C, h, w]`` already computed.

        Whether any sample drops the reference is decided here, once per forward, rather than in
        every attention layer: one host sync instead of one per layer (none for ``None``), and no
        data-dependent branch inside the denoiser, so ``torch.compile`` traces it whole.
        """
        batch, frames = noisy_latents.shape[:2]
        if not self.bank.tokens:
            raise RuntimeError("call write_reference() before predict()")
        if reference_index is None:
            reference_index = torch.arange(batch, device=noisy_latents.device)
        per_frame = lambda x: x.repeat_interleave(frames, dim=0)  # noqa: E731
        if keep_reference is not None:
            labels = torch.where(keep_reference, labels, torch.full_like(labels, LABELS["null"]))
        dropped = keep_reference is not None and not bool(keep_reference.all())
        self.bank.route(per_frame(reference_index), per_frame(keep_reference) if dropped else None)
        self._control = pose_features.flatten(0, 1)
        self._num_frames = frames
        try:
            tokens = self.label_tokens(per_frame(labels)).to(noisy_latents.dtype)
            out = self.denoiser(noisy_latents.flatten(0, 1), per_frame(timesteps), encoder_hidden_states=tokens).sample
        finally:
            self._control = None
            self.bank.route(None, None)  # type: ignore[arg-type]
        return out.unflatten(0, (batch, frames))

    # -- save / load ----------------------------------------------------------------------------

    def save_pretrained(self, folder: str, extra: dict[str, Any] | None = None) -> None:
        """Write ``model.safetensors``, then ``config.json``, each under a temporary name renamed
        into place: a crash or a full disk leaves each file whole (old or new), never half
        written. The two renames are separate, so a reader between them sees the new weights
        with the old config."""
        os.makedirs(folder, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        tmp = os.path.join(folder, f".{WEIGHTS_NAME}.tmp")
        save_file(state, tmp, metadata={"format": "pt", "flamediff_version": __version__})
        os.replace(tmp, os.path.join(folder, WEIGHTS_NAME))
        payload = {"_class_name": type(self).__name__, "_flamediff_version": __version__,
                   **self.config.to_dict(), **({"_extra": extra} if extra else {})}
        if self.gaussian_field is not None:
            payload["_gaussian_field"] = self.gaussian_field.config()
        tmp = os.path.join(folder, f".{CONFIG_NAME}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(tmp, os.path.join(folder, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, path: str, asset: FlameAsset | None = None, device: str | torch.device = "cpu",
                        cache_dir: str | None = None, temporal: bool = True) -> "FlameDiffModel":
        """Load a folder (or a hub id already in the local cache) written by :meth:`save_pretrained`.

        ``temporal=False`` leaves out the motion modules: since stage 2 trains only them, that
        is exactly the stage-1 model a stage-2 checkpoint was trained from.

        A model with a Gaussian field or the geometry control needs the FLAME ``asset`` it was
        trained for (its UV layout binds the field; its landmark embedding places the landmarks);
        another asset is refused with a clear message.
        """
        folder = resolve_checkpoint(path)
        config, field_config = read_config(folder)
        if not temporal:
            config = replace(config, temporal_layers=False)
        trained_for = config.flame_asset.get("hash")
        if asset is not None and trained_for and asset.content_hash != trained_for:
            raise CheckpointError(
                f"checkpoint {path} was trained for FLAME asset {config.flame_asset.get('name')!r} "
                f"(hash {trained_for[:12]}), not {asset.name!r} (hash {asset.content_hash[:12]}); "
                "use the asset it was trained for (--flame-asset) or train a checkpoint for yours")
        if asset is None and (field_config is not None or config.control == "geometry"):
            raise CheckpointError(f"checkpoint {path} has a {config.control} control bound to the FLAME mesh: "
                                  "load it with its FLAME asset")
        field = None
        if field_config is not None:
            binding = load_or_compute_uv_binding(asset, config.uv_resolution, cache_dir)
            field = UVGaussianField.from_config(field_config, binding)
        model = cls(config, gaussian_field=field)
        if config.control == "geometry":
            model.attach_control(asset)
        state = load_file(os.path.join(folder, WEIGHTS_NAME), device=str(device))
        if not temporal:
            state = {name: value for name, value in state.items() if not name.startswith("temporal.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{folder}: weights do not match the config (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
        return model.to(device)

    @classmethod
    def from_stable_diffusion(cls, config: FlameDiffConfig) -> "FlameDiffModel":
        """``sd15`` preset: both U-Nets and the VAE start from Stable Diffusion 1.5 weights."""
        source = config.pretrained
        if not source:
            raise CheckpointError("config.pretrained is empty: give a hub id or folder of SD-1.5 weights")
        try:
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
            reference = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"could not load Stable Diffusion 1.5 weights from {source!r} ({exc}). Download them once with "
                f"'huggingface-cli download {source}' (or copy a folder with unet/ and vae/ subfolders) and pass "
                "that hub id or folder; set HF_HUB_OFFLINE=1 to never touch the network") from None
        for name, expected in (("cross_attention_dim", config.cross_attention_dim),
                               ("in_channels", config.latent_channels)):
            if unet.config[name] != expected:
                raise CheckpointError(f"{source}: U-Net {name} is {unet.config[name]}, the sd15 preset needs {expected}")
        return cls(config, vae=vae, denoiser=unet, reference_unet=reference)


def resolve_checkpoint(path: str) -> str:
    """A local folder as is; otherwise a hub id, resolved from the local Hugging Face cache."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, CONFIG_NAME)):
            raise CheckpointError(f"{path} has no {CONFIG_NAME}: not a flamediff checkpoint folder")
        return expanded
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except Exception as exc:  # hub errors have many types; all mean "not available here"
        raise CheckpointError(f"checkpoint {path!r} is neither a folder nor a reachable hub id ({type(exc).__name__}); "
                              "give the path of a folder written by 'flamediff train'") from None


def read_config(folder: str) -> tuple[FlameDiffConfig, dict[str, Any] | None]:
    """The model config and, when the checkpoint has one, the Gaussian field's config."""
    path = os.path.join(folder, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        config = FlameDiffConfig.from_dict({k: v for k, v in data.items() if not k.startswith("_")})
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a flamediff model config ({exc})") from None
    return config, data.get("_gaussian_field")
