"""``flamediff train``: stage-1 training of the Gaussian field and the dual-branch network.

Stages:

- ``vae``: small presets have no Stable Diffusion VAE to start from, so the VAE is first
  trained as an autoencoder (MSE + a tiny KL term) on the dataset frames. At ``sd15`` scale the
  SD VAE is used frozen and this stage is skipped.
- ``1``: single frames; the Gaussian field (absent with ``"overrides": {"control": "geometry"}``,
  the ablation's rasterised normals + depth + landmarks), pose guider, both U-Nets and the label
  vectors learn with v-prediction MSE as the only loss; the VAE is frozen. The reference (and the
  label) is dropped with ``reference_dropout`` for classifier-free guidance.
- ``2``: clips of ``sequence_length`` consecutive frames from the "real" sequences only (the
  multi-view synthetic samples are not continuous); only the temporal layers learn, added
  to the stage-1 model given by ``init_from`` if it has none yet.

Batches are drawn from a generator seeded by (seed, step, process), so a run resumed from a
checkpoint continues exactly where the killed run was, with no data-loader state to save.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from flamediff.assets import load_asset
from flamediff.data.dataset import DatasetIndex, read_dataset
from flamediff.data.splits import SplitsError, identities_of_split
from flamediff.flame.model import FlameModel
from flamediff.formats.conventions import square_crop_intrinsics
from flamediff.models.config import LABELS, FlameDiffConfig
from flamediff.models.flamediff_model import FlameDiffModel
from flamediff.pipelines.scheduling import make_scheduler
from flamediff.training.batches import Batch, draw_batch, training_pool
from flamediff.training.config import TrainConfig, TrainConfigError
from flamediff.training.latent_cache import LatentCache

LOSS_LOG = "loss.jsonl"     # one {"step", "loss", "lr"} line per log_every steps, in output_dir


# ---------------------------------------------------------------------------------------------
# The run


class Trainer:
    """One training run: model, optimiser, accelerator, checkpoints."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        os.makedirs(config.output_dir, exist_ok=True)  # the loss log is written from the first step
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
        if self.accelerator.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormal weights make CPU training 10-20x slower after a while
        set_seed(config.seed + self.accelerator.process_index)
        self.index = read_dataset(config.dataset)
        self.asset = load_asset(config.flame_asset)
        if self.index.flame_asset.get("hash") not in (None, self.asset.content_hash):
            raise TrainConfigError(f"dataset {config.dataset} was made with FLAME asset "
                                   f"{self.index.flame_asset.get('name')!r}, not {self.asset.name!r}")
        self.heldout = heldout_identities(config.dataset)
        self.pool = training_pool(self.index, config.domains, self.heldout)
        if config.batch_size > len(self.pool):
            raise TrainConfigError(f"batch_size {config.batch_size} is larger than the dataset's "
                                   f"{'+'.join(config.domains)} training samples ({len(self.pool)} frames)")
        if self.heldout:
            log(f"splits.json: {len(self.heldout)} held-out identities are never sampled")
        self.model = self._build_model()
        if self.model.config.resolution != self.index.resolution:
            raise TrainConfigError(f"the {self.model.config.preset} preset renders {self.model.config.resolution} px "
                                   f"but the dataset's frames are {self.index.resolution} px")
        self.flame = FlameModel(self.asset).to(self.accelerator.device)
        self.scheduler = make_scheduler(self.model.config)
        self.model.to(self.accelerator.device)
        # The model is not wrapped in DDP (its ReferenceNet has layers that no loss reaches, and
        # the steps call model methods, not forward): gradients are averaged in _sync_gradients.
        self.optimizer = self.accelerator.prepare(
            torch.optim.AdamW(self._parameter_groups(), weight_decay=config.weight_decay))
        # Not prepared by accelerate: its wrapper steps the schedule once per process per step.
        self.lr_scheduler = get_scheduler(
            "cosine" if config.lr_schedule == "cosine" else "constant_with_warmup", self.optimizer,
            num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
        self.ema = (EMAModel(self.trained_parameters, decay=config.ema_decay)
                    if config.ema_decay is not None else None)
        self.accelerator.register_for_checkpointing(self.model)
        self.accelerator.register_for_checkpointing(self.lr_scheduler)
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)
        self.latent_cache = (LatentCache(self.index, self.model.vae)
                             if config.stage != "vae" and config.cache_latents else None)
        self.step = 0

    def _build_model(self) -> FlameDiffModel:
        config = self.config
        if config.init_from:
            model = FlameDiffModel.from_pretrained(config.init_from, asset=self.asset)
        else:
            overrides = dict(config.overrides, flame_asset=self.asset.identity())
            model_config = FlameDiffConfig.preset_named(config.preset, **overrides)
            model = (FlameDiffModel.from_stable_diffusion(model_config) if model_config.pretrained
                     else FlameDiffModel(model_config))
            if config.vae_from:
                model.vae.load_state_dict(FlameDiffModel.from_pretrained(config.vae_from, asset=self.asset).vae.state_dict())
        if not model.has_control:
            model.attach_control(self.asset)
        if config.stage == "2":
            model.add_temporal_layers()
        if config.reference_dropout is not None:
            model.config = replace(model.config, reference_dropout=config.reference_dropout)
        model.config = replace(model.config, training_domain=self.index.source)   # renders warn outside it
        return model

    def _parameter_groups(self) -> list[dict[str, Any]]:
        model = self.model
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if self.config.stage == "vae":
            groups = [{"params": list(model.vae.parameters()), "lr": self.config.learning_rate}]
        elif self.config.stage == "2":
            groups = [{"params": list(model.temporal.parameters()), "lr": self.config.learning_rate}]
        else:
            network = [*model.denoiser.parameters(), *model.reference_unet.parameters(),
                       *model.pose_guider.parameters(), *model.label_embedding.parameters()]
            groups = [{"params": network, "lr": self.config.learning_rate}]
            if model.gaussian_field is not None:
                groups.append({"params": list(model.gaussian_field.parameters()),
                               "lr": self.config.field_learning_rate})
        for group in groups:
            for parameter in group["params"]:
                parameter.requires_grad_(True)
        return groups

    @property
    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # -- steps ----------------------------------------------------------------------------------

    @property
    def clip_length(self) -> int:
        return self.config.sequence_length if self.config.stage == "2" else 1

    def draw(self, step: int) -> Batch:
        """The batch of ``step`` for this process (pixels only where no latent cache stands in)."""
        return draw_batch(self.index, step, self.config.batch_size, self.config.seed,
                          self.accelerator.process_index, self.clip_length, self.pool,
                          load_images=self.latent_cache is None)

    def loss(self, batch: Batch) -> torch.Tensor:
        model, device = self.model, self.accelerator.device
        if self.config.stage == "vae":
            # The posterior mean, as the diffusion model will see it (encode_images): sampled
            # latents taught the old demo VAE to leave two of four channels almost empty.
            assert batch.target is not None, "the vae stage draws pixels (it has no latent cache)"
            target = batch.target.to(device).flatten(0, 1)
            posterior = model.vae.encode(target).latent_dist
            reconstruction = model.vae.decode(posterior.mean).sample
            return F.mse_loss(reconstruction, target) + 1e-6 * posterior.kl().mean()
        return self.diffusion_loss(model, batch)

    def clean_latents(self, model: FlameDiffModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised latents of the ``[B, F]`` targets and the ``[B]`` references: from the
        latent cache, or encoded from the batch's pixels."""
        device, rows = self.accelerator.device, batch.rows
        with torch.no_grad():
            if self.latent_cache is None:
                assert batch.target is not None and batch.reference is not None, "drawn without pixels"
                latents = model.encode_images(batch.target.to(device).flatten(0, 1))
                reference = model.encode_images(batch.reference.to(device))
            else:
                latents = model.normalise_latents(self.latent_cache.raw_latents(rows.reshape(-1), device))
                reference = model.normalise_latents(self.latent_cache.raw_latents(batch.reference_rows, device))
        return latents.unflatten(0, rows.shape), reference

    def diffusion_loss(self, model: FlameDiffModel, batch: Batch) -> torch.Tensor:
        """v-prediction MSE on ``[B, F]`` frames; one timestep per clip, noise per frame."""
        device, clip = self.accelerator.device, batch.clip
        batch_size, frames = batch.shape
        latents, reference = self.clean_latents(model, batch)
        with torch.no_grad():
            vertices = self.flame.forward_clip(clip).vertices
        Ks = torch.as_tensor(square_crop_intrinsics(clip.K, clip.image_size, model.config.resolution),
                             dtype=torch.float32, device=device)
        feature_maps = model.render_control(vertices, self.flame.faces, batch.viewmats.to(device), Ks)
        feature_maps = feature_maps.permute(0, 3, 1, 2).unflatten(0, (batch_size, frames))
        generator = torch.Generator().manual_seed(batch.noise_seed)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, model.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        per_frame = timesteps.repeat_interleave(frames)
        flat_latents, flat_noise = latents.flatten(0, 1), noise.flatten(0, 1)
        noisy = self.scheduler.add_noise(flat_latents, flat_noise, per_frame).unflatten(0, (batch_size, frames))
        velocity = self.scheduler.get_velocity(flat_latents, flat_noise, per_frame).unflatten(0, (batch_size, frames))
        keep = torch.as_tensor(batch.reference_draws >= model.config.reference_dropout, device=device)
        model.write_reference(reference)
        labels = batch.label if self.config.domain_label else torch.full_like(batch.label, LABELS["real"])
        prediction = model.predict(noisy, timesteps, feature_maps, labels.to(device), keep)
        per_clip = (prediction.float() - velocity.float()).pow(2).flatten(1).mean(1)
        return (per_clip * self.loss_weights(timesteps)).mean()

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-clip weights of the v-MSE: 1, or min-SNR-gamma's ``min(SNR, gamma) / (SNR + 1)``
        (for v-prediction) which stops the easy low-noise steps from dominating the gradient."""
        if self.config.snr_gamma is None:
            return torch.ones(len(timesteps), device=timesteps.device)
        snr = compute_snr(self.scheduler, timesteps)
        return torch.clamp(snr, max=self.config.snr_gamma) / (snr + 1.0)

    def train(self, max_steps: int | None = None) -> float:
        """Run until ``config.steps`` (or ``max_steps`` more steps); returns the last loss."""
        from tqdm.auto import tqdm

        self.resume()
        end = self.config.steps if max_steps is None else min(self.config.steps, self.step + max_steps)
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not self.accelerator.is_main_process,
                   desc=f"stage {self.config.stage}", dynamic_ncols=True)
        loss_value, started, first_step = float("nan"), time.perf_counter(), self.step
        self.model.train()
        while self.step < end:
            loss_value = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if self.step % self.config.log_every == 0:
                self._log_step(loss_value, started, first_step, end)
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save_checkpoint()
        bar.close()
        if self.step >= self.config.steps:
            self.save_model()
        self.log(f"stage {self.config.stage}: step {self.step}/{self.config.steps}, loss {loss_value:.4f}, "
                 f"{time.perf_counter() - started:.1f} s on {self.accelerator.num_processes} process(es)")
        return loss_value

    def train_step(self) -> float:
        """One optimisation step on the batch of ``self.step``; returns the loss (mean over processes)."""
        batch = self.draw(self.step)
        with self.accelerator.autocast():
            loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self._sync_gradients()
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trained_parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.trained_parameters)
        self.step += 1
        return float(self.accelerator.gather(loss.detach()[None]).mean())

    def _log_step(self, loss_value: float, started: float, first_step: int, end: int) -> None:
        """Append to the loss log (the curve drawn beside the model) and print a line with the
        ETA, for runs whose output goes to a file rather than a terminal."""
        if not self.accelerator.is_main_process:
            return
        learning_rate = self.lr_scheduler.get_last_lr()[0]
        with open(os.path.join(self.config.output_dir, LOSS_LOG), "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": self.step, "loss": loss_value, "lr": learning_rate}) + "\n")
        if self.step % (self.config.log_every * 10) == 0:
            per_step = (time.perf_counter() - started) / max(self.step - first_step, 1)
            self.log(f"stage {self.config.stage}: step {self.step}/{self.config.steps} loss {loss_value:.4f} "
                     f"lr {learning_rate:.2e} {per_step:.2f} s/step, ETA {format_duration(per_step * (end - self.step))}")

    def _sync_gradients(self) -> None:
        """Average gradients over processes (what DDP would do), so every replica steps alike."""
        if self.accelerator.num_processes == 1:
            return
        for parameter in self.model.parameters():
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= self.accelerator.num_processes

    # -- checkpoints ----------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> str:
        return os.path.join(self.config.output_dir, "checkpoints")

    def save_checkpoint(self) -> None:
        """Accelerate state (weights, optimiser, RNG) + the step, written then renamed."""
        self.accelerator.wait_for_everyone()
        final = os.path.join(self.checkpoint_root, f"step-{self.step:07d}")
        staging = final + ".partial"
        self.accelerator.save_state(staging)
        if self.accelerator.is_main_process:
            with open(os.path.join(staging, "trainer_state.json"), "w", encoding="utf-8") as handle:
                json.dump({"step": self.step, "config": asdict(self.config)}, handle, indent=2)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            for old in sorted(glob.glob(os.path.join(self.checkpoint_root, "step-???????")))[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def resume(self) -> None:
        """Continue from the newest complete checkpoint, if any (partial ones are ignored)."""
        checkpoints = sorted(glob.glob(os.path.join(self.checkpoint_root, "step-???????")))
        if not checkpoints:
            return
        self.accelerator.load_state(checkpoints[-1])
        with open(os.path.join(checkpoints[-1], "trainer_state.json"), encoding="utf-8") as handle:
            self.step = int(json.load(handle)["step"])
        if self.accelerator.is_main_process:
            truncate_loss_log(os.path.join(self.config.output_dir, LOSS_LOG), self.step)
        self.log(f"resumed from {checkpoints[-1]} (step {self.step})")

    def save_model(self) -> str:
        """The final model (EMA weights when EMA is on) with its loss curve; after the ``vae``
        stage also the per-channel latent normalisation and the reconstruction report."""
        folder = os.path.join(self.config.output_dir, "model")
        if self.accelerator.is_main_process:
            if self.ema is not None:
                self.ema.copy_to(self.trained_parameters)
            extra = {"trained_steps": self.step, "stage": self.config.stage, "seed": self.config.seed,
                     "ema_decay": self.config.ema_decay, "heldout_identities": self.heldout}
            if self.config.stage == "vae":
                self.model.config = replace(self.model.config, **latent_statistics(self.model, self.index, self.pool))
            self.model.save_pretrained(folder, extra=extra)
            plot_loss_curve(os.path.join(self.config.output_dir, LOSS_LOG), os.path.join(folder, "loss.png"),
                            title=f"stage {self.config.stage}")
            if self.config.stage == "vae" and self.heldout:
                from flamediff.evaluation.reconstruction import write_reconstruction_report
                write_reconstruction_report(self.model, self.index, self.heldout, self.asset, folder, log=self.log)
        self.accelerator.wait_for_everyone()
        return folder


def heldout_identities(dataset: str) -> list[int]:
    """The identities ``splits.json`` holds out (none when the dataset has no splits file)."""
    try:
        return identities_of_split(dataset, "heldout") or []
    except SplitsError as exc:  # the run cannot start: a config error, like a wrong dataset path
        raise TrainConfigError(str(exc)) from None


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


def truncate_loss_log(path: str, step: int) -> None:
    """Drop the lines a killed run logged after the checkpoint it resumes from."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        kept = [line for line in handle if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(kept)


def plot_loss_curve(log_path: str, out_path: str, title: str) -> None:
    """Loss (raw and smoothed, log scale) and learning rate against step, as a PNG."""
    if not os.path.isfile(log_path):
        return
    with open(log_path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 25)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, loss, color="0.75", linewidth=0.8, label="loss")
    axis.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    rate = axis.twinx()
    rate.plot(steps, [r["lr"] for r in rows], color="C1", linewidth=0.8, label="learning rate")
    rate.set_ylabel("learning rate", color="C1")
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def train(config: TrainConfig, max_steps: int | None = None, log: Callable[[str], None] = print) -> float:
    """Run (or resume) the training described by ``config``; returns the last loss."""
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "train_config.json"), "w", encoding="utf-8") as handle:
        json.dump(asdict(config), handle, indent=2)
    return Trainer(config, log).train(max_steps)
