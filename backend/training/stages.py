"""The training stages, one object each: what a stage adds to the model, trains (the rest is
frozen), caches and draws, its loss, and what it records beside the finished model.

- ``vae``: small presets have no Stable Diffusion VAE to start from, so the VAE is first trained
  as an autoencoder (MSE + a tiny KL term) on the dataset frames; at ``sd15`` scale the SD VAE
  is used frozen and this stage is skipped.
- ``1``: single frames; the Gaussian field (absent with ``"overrides": {"control": "geometry"}``,
  the ablation's rasterised normals + depth + landmarks), pose guider, both U-Nets and the label
  vectors learn with v-prediction MSE as the only loss; the VAE is frozen.
- ``2``: clips of ``sequence_length`` consecutive frames from the "real" sequences only (the
  multi-view synthetic samples are not continuous); only the temporal layers learn, added to the
  stage-1 model given by ``init_from`` if it has none yet.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from accelerate import Accelerator

    from flamediff.data.dataset import DatasetIndex
    from flamediff.formats.flame_asset import FlameAsset
    from flamediff.models.flamediff_model import FlameDiffModel
    from flamediff.training.batches import Batch


class Run(Protocol):
    """What a stage uses of its run (the Trainer; a protocol, so stages need not import it)."""

    model: FlameDiffModel
    accelerator: Accelerator
    index: DatasetIndex
    pool: np.ndarray
    heldout: list[int]
    asset: FlameAsset
    log: Callable[[str], None]

    def diffusion_loss(self, model: FlameDiffModel, batch: Batch) -> torch.Tensor: ...


class Stage:
    """A diffusion stage's defaults: single frames, the frozen VAE's latents cached, v-MSE."""

    name = ""
    summary = ""
    needs_init_from = ""     # why the stage needs a trained model to start from ("": it does not)
    caches_latents = True    # the VAE is frozen, so its latents of a frame never change

    def clip_length(self, sequence_length: int) -> int:
        """Frames per drawn sample (``sequence_length``: the config's)."""
        return 1

    def prepare(self, model: FlameDiffModel) -> None:
        """Add what the stage trains to a built (or loaded) model."""

    def parameter_groups(self, model: FlameDiffModel, learning_rate: float,
                         field_learning_rate: float) -> list[dict[str, Any]]:
        """The optimiser's groups (parameters and learning rate), in a fixed order: checkpoints'
        optimiser states are stored by position."""
        raise NotImplementedError

    def loss(self, run: Run, batch: Batch) -> torch.Tensor:
        return run.diffusion_loss(run.model, batch)

    def finish(self, run: Run) -> None:
        """Complete the model's config before it is saved."""

    def write_reports(self, run: Run, folder: str) -> None:
        """Write the stage's reports beside the saved model."""


class VaeStage(Stage):
    name = "vae"
    summary = "the VAE as an autoencoder, small presets"
    caches_latents = False   # the VAE is what learns

    def parameter_groups(self, model: FlameDiffModel, learning_rate: float,
                         field_learning_rate: float) -> list[dict[str, Any]]:
        return [{"params": list(model.vae.parameters()), "lr": learning_rate}]

    def loss(self, run: Run, batch: Batch) -> torch.Tensor:
        # The posterior mean, as the diffusion model will see it (encode_images): sampled
        # latents taught the old demo VAE to leave two of four channels almost empty.
        assert batch.target is not None, "the vae stage draws pixels (it has no latent cache)"
        vae = run.model.vae
        target = batch.target.to(run.accelerator.device).flatten(0, 1)
        posterior = vae.encode(target).latent_dist
        reconstruction = vae.decode(posterior.mean).sample
        return F.mse_loss(reconstruction, target) + 1e-6 * posterior.kl().mean()

    def finish(self, run: Run) -> None:
        """Record the per-channel latent normalisation the diffusion stages will use."""
        model = run.model
        model.config = replace(model.config, **latent_statistics(model, run.index, run.pool))

    def write_reports(self, run: Run, folder: str) -> None:
        """What the VAE alone keeps of the held-out identities (reconstruction.json)."""
        if run.heldout:
            from flamediff.evaluation.reconstruction import write_reconstruction_report

            write_reconstruction_report(run.model, run.index, run.heldout, run.asset, folder,
                                        log=run.log)


class FrameStage(Stage):
    name = "1"
    summary = "single frames: Gaussian field, pose guider, both U-Nets, label vectors"

    def parameter_groups(self, model: FlameDiffModel, learning_rate: float,
                         field_learning_rate: float) -> list[dict[str, Any]]:
        network = [*model.denoiser.parameters(), *model.reference_unet.parameters(),
                   *model.pose_guider.parameters(), *model.label_embedding.parameters()]
        groups = [{"params": network, "lr": learning_rate}]
        if model.gaussian_field is not None:
            groups.append({"params": list(model.gaussian_field.parameters()), "lr": field_learning_rate})
        return groups


class ClipStage(Stage):
    name = "2"
    summary = "clips: the temporal layers only, on an init_from model"
    needs_init_from = "stage 2 trains temporal layers on a stage-1 model"

    def clip_length(self, sequence_length: int) -> int:
        return sequence_length

    def prepare(self, model: FlameDiffModel) -> None:
        model.add_temporal_layers()

    def parameter_groups(self, model: FlameDiffModel, learning_rate: float,
                         field_learning_rate: float) -> list[dict[str, Any]]:
        return [{"params": list(model.temporal.parameters()), "lr": learning_rate}]


@torch.no_grad()
def latent_statistics(model: FlameDiffModel, index: DatasetIndex, pool: np.ndarray, count: int = 256) -> dict[str, tuple]:
    """Per-channel mean and std of the VAE's raw latents over ``count`` training frames."""
    rows = pool[np.linspace(0, len(pool) - 1, min(count, len(pool))).astype(int)]
    model.eval()
    device = next(model.vae.parameters()).device
    latents = torch.cat([model.vae.encode(torch.stack([index.frame_tensor(int(r)) for r in chunk]).to(device))
                         .latent_dist.mean for chunk in np.array_split(rows, max(1, len(rows) // 16))])
    shift = latents.mean((0, 2, 3))
    scale = latents.std((0, 2, 3)).clamp_min(1e-4)
    return {"latent_shift": tuple(round(float(v), 6) for v in shift),
            "latent_scale": tuple(round(float(v), 6) for v in scale)}


STAGES: dict[str, Stage] = {stage.name: stage for stage in (VaeStage(), FrameStage(), ClipStage())}


def trained_groups(stage: Stage, model: FlameDiffModel, learning_rate: float,
                   field_learning_rate: float) -> list[dict[str, Any]]:
    """The stage's parameter groups, with every other parameter of the model frozen."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups = stage.parameter_groups(model, learning_rate, field_learning_rate)
    for group in groups:
        for parameter in group["params"]:
            parameter.requires_grad_(True)
    return groups
