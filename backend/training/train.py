"""``flamediff train``: one run of a training stage (training/stages.py says what each stage
trains, freezes, caches and draws): the accelerator, optimiser, learning-rate schedule and EMA,
the step loop with its loss log, checkpoints and exact resume.

Batches are drawn from a generator seeded by (seed, step, process) (training/batches.py), so a
run resumed from a checkpoint continues exactly where the killed run was, with no data-loader
state to save; the checkpoint holds the accelerate state (model, optimiser, schedule, EMA, RNG).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from flamediff.assets import load_asset
from flamediff.data.dataset import DatasetIndex, read_dataset
from flamediff.data.splits import SplitsError, identities_of_split
from flamediff.flame.model import FlameModel
from flamediff.formats.flame_asset import FlameAsset
from flamediff.formats.conventions import square_crop_intrinsics
from flamediff.models.config import LABELS, FlameDiffConfig
from flamediff.models.correspondence import Rasterise, ReferenceView, rasterise_meshes
from flamediff.models.flamediff_model import FlameDiffModel
from flamediff.pipelines.scheduling import make_scheduler
from flamediff.training.batches import Batch, draw_batch, real_sequences, training_pool
from flamediff.training.config import TrainConfig, TrainConfigError
from flamediff.training.latent_cache import LatentCache
from flamediff.training.triangle_cache import TriangleIdCache
from flamediff.training.plots import plot_loss_curve
from flamediff.training.stages import STAGES, Stage, trained_groups

LOSS_LOG = "loss.jsonl"     # one {"step", "loss", "lr"} line per log_every steps, in output_dir


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class TrainingData:
    """The dataset a run draws from, checked against its config, and what it may draw."""

    index: DatasetIndex
    asset: FlameAsset
    heldout: list[int]      # identities splits.json holds out: never drawn
    pool: np.ndarray        # rows that may be drawn (as targets or references)


def load_training_data(config: TrainConfig, stage: Stage, log: Callable[[str], None]) -> TrainingData:
    """The dataset and FLAME asset of ``config``, refused with a one-line error when the run
    could not draw from them (another asset, too few samples, too few long real sequences)."""
    index = read_dataset(config.dataset)
    asset = load_asset(config.flame_asset)
    if index.flame_asset.get("hash") not in (None, asset.content_hash):
        raise TrainConfigError(f"dataset {config.dataset} was made with FLAME asset "
                               f"{index.flame_asset.get('name')!r}, not {asset.name!r}")
    heldout = heldout_identities(config.dataset)
    pool = training_pool(index, config.domains, heldout)
    if config.batch_size > len(pool):
        raise TrainConfigError(f"batch_size {config.batch_size} is larger than the dataset's "
                               f"{'+'.join(config.domains)} training samples ({len(pool)} frames)")
    length = stage.clip_length(config.sequence_length)
    if length > 1 and len(clips := real_sequences(index, length, pool)) < config.batch_size:
        raise TrainConfigError(f"stage {stage.name} needs {config.batch_size} real sequences of at least {length} "
                               f"frames; the dataset has {len(clips)}")
    if heldout:
        log(f"splits.json: {len(heldout)} held-out identities are never sampled")
    return TrainingData(index, asset, heldout, pool)


def build_model(config: TrainConfig, stage: Stage, data: TrainingData) -> FlameDiffModel:
    """The model the run starts from: ``init_from``, or a new one of the preset (with
    ``vae_from``'s VAE), with its control and what the stage adds."""
    if config.init_from:
        model = FlameDiffModel.from_pretrained(config.init_from, asset=data.asset)
    else:
        overrides = dict(config.overrides, flame_asset=data.asset.identity())
        model_config = FlameDiffConfig.preset_named(config.preset, **overrides)
        model = (FlameDiffModel.from_stable_diffusion(model_config) if model_config.pretrained
                 else FlameDiffModel(model_config))
        if config.vae_from:
            model.vae.load_state_dict(FlameDiffModel.from_pretrained(config.vae_from, asset=data.asset).vae.state_dict())
    if not model.has_control:
        model.attach_control(data.asset)
    if config.correspondence:
        model.add_reference_correspondence()
    stage.prepare(model)
    if config.reference_dropout is not None:
        model.config = replace(model.config, reference_dropout=config.reference_dropout)
    model.config = replace(model.config, training_domain=data.index.source)   # renders warn outside it
    if model.config.resolution != data.index.resolution:
        raise TrainConfigError(f"the {model.config.preset} preset renders {model.config.resolution} px "
                               f"but the dataset's frames are {data.index.resolution} px")
    return model


FUSED_ADAMW_DEVICES = ("cpu", "cuda")   # where torch has AdamW's fused kernel; elsewhere the per-tensor loop


def make_optimiser(config: TrainConfig, stage: Stage, model: FlameDiffModel,
                   accelerator: Accelerator) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the stage's parameter groups (the rest of the model frozen) and its
    learning-rate schedule."""
    # The model is not wrapped in DDP (its ReferenceNet has layers that no loss reaches, and
    # the steps call model methods, not forward): gradients are averaged in _sync_gradients.
    groups = trained_groups(stage, model, config.learning_rate, config.field_learning_rate)
    fused = {"fused": True} if config.fused_optimizer and accelerator.device.type in FUSED_ADAMW_DEVICES else {}
    optimizer = accelerator.prepare(torch.optim.AdamW(groups, weight_decay=config.weight_decay, **fused))
    # Not prepared by accelerate: its wrapper steps the schedule once per process per step.
    lr_scheduler = get_scheduler(
        "cosine" if config.lr_schedule == "cosine" else "constant_with_warmup", optimizer,
        num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    return optimizer, lr_scheduler


class Trainer:
    """One training run of a stage: accelerator, model, optimiser, EMA, steps and checkpoints."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log, self.stage = config, log, STAGES[config.stage]
        os.makedirs(config.output_dir, exist_ok=True)  # the loss log is written from the first step
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
        if self.accelerator.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormal weights make CPU training 10-20x slower after a while
        set_seed(config.seed + self.accelerator.process_index)
        data = load_training_data(config, self.stage, log)
        self.index, self.asset, self.heldout, self.pool = data.index, data.asset, data.heldout, data.pool
        self.model = build_model(config, self.stage, data)
        self.flame = FlameModel(self.asset).to(self.accelerator.device)
        self.scheduler = make_scheduler(self.model.config)
        self.model.to(self.accelerator.device)
        self.optimizer, self.lr_scheduler = make_optimiser(config, self.stage, self.model, self.accelerator)
        self.ema = (EMAModel(self.trained_parameters, decay=config.ema_decay)
                    if config.ema_decay is not None else None)
        # Registered in this order, saved as custom_checkpoint_0, _1, _2: checkpoints rely on it.
        self.accelerator.register_for_checkpointing(self.model)
        self.accelerator.register_for_checkpointing(self.lr_scheduler)
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)
        self.latent_cache = (LatentCache(self.index, self.model.vae)
                             if self.stage.caches_latents and config.cache_latents else None)
        self.triangle_ids = (TriangleIdCache(self.index, self.flame)
                             if self.model.config.correspondence and config.cache_triangle_ids else None)
        self.step = 0

    @property
    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # -- steps ----------------------------------------------------------------------------------

    def draw(self, step: int) -> Batch:
        """The batch of ``step`` for this process (pixels only where no latent cache stands in)."""
        return draw_batch(self.index, step, self.config.batch_size, self.config.seed,
                          self.accelerator.process_index, self.stage.clip_length(self.config.sequence_length), self.pool,
                          load_images=self.latent_cache is None, load_references=self.model.config.correspondence)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The stage's loss on ``batch``."""
        return self.stage.loss(self, batch)

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
        reference_view = self.reference_view(model, batch) if model.config.correspondence else None
        feature_maps = model.render_control(vertices, self.flame.faces, batch.viewmats.to(device), Ks,
                                            reference=reference_view, rasterise=self.rasterise(batch.rows))
        feature_maps = feature_maps.permute(0, 3, 1, 2).unflatten(0, (batch_size, frames))
        generator = torch.Generator().manual_seed(batch.noise_seed)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, model.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        per_frame = timesteps.repeat_interleave(frames)
        flat_latents, flat_noise = latents.flatten(0, 1), noise.flatten(0, 1)
        noisy = self.scheduler.add_noise(flat_latents, flat_noise, per_frame).unflatten(0, (batch_size, frames))
        velocity = self.scheduler.get_velocity(flat_latents, flat_noise, per_frame).unflatten(0, (batch_size, frames))
        if model.config.correspondence:
            feature_maps = self.drop_correspondence(model, feature_maps, batch)
        keep = torch.as_tensor(batch.reference_draws >= model.config.reference_dropout, device=device)
        model.write_reference(reference)
        labels = batch.label if self.config.domain_label else torch.full_like(batch.label, LABELS["real"])
        prediction = model.predict(noisy, timesteps, feature_maps, labels.to(device), keep)
        per_clip = (prediction.float() - velocity.float()).pow(2).flatten(1).mean(1)
        return (per_clip * self.loss_weights(timesteps)).mean()

    def reference_view(self, model: FlameDiffModel, batch: Batch) -> ReferenceView:
        """Each sample's reference (posed mesh, camera, pixels, depth), once per frame of the
        sample; each distinct reference is posed and rasterised once."""
        assert batch.reference is not None, "drawn without the references' pixels"
        # samples may share a reference, a clip's frames may not
        rows, first_sample, sample_of = np.unique(batch.reference_rows, return_index=True, return_inverse=True)
        view = ReferenceView.posed(self.flame, self.index.annotations.take_rows(rows), batch.reference[first_sample],
                                   self.rasterise(rows))
        return view.take(torch.as_tensor(sample_of).repeat_interleave(batch.shape[1]))

    def rasterise(self, rows: np.ndarray) -> Rasterise:
        """How the correspondence finds the fragments of dataset ``rows``' posed meshes: from the
        triangle-id cache, or rasterised."""
        if self.triangle_ids is None:
            return rasterise_meshes
        return functools.partial(self.triangle_ids.fragments, rows)

    @staticmethod
    def drop_correspondence(model: FlameDiffModel, feature_maps: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Zero the correspondence channels of ``[B, F, C, H, W]`` maps where the sample's draw
        drops them (renders without the reference's pose). Independent of the reference dropout:
        the pipeline's unconditional branch shares the conditional one's control maps."""
        kept = torch.as_tensor(batch.correspondence_draws >= model.config.correspondence_dropout,
                               device=feature_maps.device)
        channels = torch.ones(feature_maps.shape[2], device=feature_maps.device)
        channels[model.control_channels:] = 0.0
        weight = torch.where(kept[:, None], torch.ones_like(channels), channels)
        return feature_maps * weight[:, None, :, None, None]

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
        """The final model (EMA weights when EMA is on) with its loss curve and what its stage
        records (after ``vae``: the latent normalisation and the reconstruction report)."""
        folder = os.path.join(self.config.output_dir, "model")
        if self.accelerator.is_main_process:
            if self.ema is not None:
                self.ema.copy_to(self.trained_parameters)
            extra = {"trained_steps": self.step, "stage": self.config.stage, "seed": self.config.seed,
                     "ema_decay": self.config.ema_decay, "heldout_identities": self.heldout}
            self.stage.finish(self)
            self.model.save_pretrained(folder, extra=extra)
            plot_loss_curve(os.path.join(self.config.output_dir, LOSS_LOG), os.path.join(folder, "loss.png"),
                            title=f"stage {self.config.stage}")
            self.stage.write_reports(self, folder)
        self.accelerator.wait_for_everyone()
        return folder


def heldout_identities(dataset: str) -> list[int]:
    """The identities ``splits.json`` holds out (none when the dataset has no splits file)."""
    try:
        return identities_of_split(dataset, "heldout") or []
    except SplitsError as exc:  # the run cannot start: a config error, like a wrong dataset path
        raise TrainConfigError(str(exc)) from None


def truncate_loss_log(path: str, step: int) -> None:
    """Drop the lines a killed run logged after the checkpoint it resumes from."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        kept = [line for line in handle if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(kept)


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
