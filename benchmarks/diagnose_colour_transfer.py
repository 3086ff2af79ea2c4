"""Why the reference's skin tone does not reach the demo checkpoint's frames: measurements on
validation identities (the training dataset's held-out split), with a figure each.

    python benchmarks/diagnose_colour_transfer.py DATASET [--checkpoint DIR] [--out docs/diagnosis]
        [--identities 16] [--frames 4] [--only attention,dropout,loss,counterfactual,floor,residual]

- ``attention``: for denoiser queries on the target's head, the attention mass on the ReferenceNet's
  tokens that lie on the reference's head, on its background, and on the denoiser's own tokens, in
  every self-attention layer that reads the reference bank (and which U-Net blocks read none);
- ``dropout``: the clean-frame estimate with and without the reference / the label token, its
  change on the head and on the background, and each variant's head colour error;
- ``loss``: the head's share of the latent pixels and of the v-MSE, and how much of the loss a
  perfect head colour would remove;
- ``counterfactual``: the same drive rendered with another identity's reference: how far the
  output's head / background mean colour moves against how far the references' differ;
- ``floor``: the head colour error that perfect copying of the reference's head colour, or of the
  identity's mean head colour, would leave (the per-frame lighting is not in the control);
- ``residual``: what the output's signed head colour error follows: the reference's own head
  colour minus the frame's (a model that reads the reference's colour as a whole inherits it) or
  the identity's brightness (a model that shrinks towards the mean face), and how much of it is
  per identity rather than per frame.

The clean-frame estimates use the stage-1 model (``temporal=False``: stage 2 trains only the
motion modules) one frame at a time; the counterfactual renders through the pipeline with the
checkpoint's default settings. Writes ``diagnosis.json`` and ``*.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flamediff.assets import load_asset
from flamediff.data.dataset import DatasetIndex, read_dataset
from flamediff.data.splits import read_splits
from flamediff.evaluation.masks import coverage_masks
from flamediff.evaluation.selection import reference_row, spread
from flamediff.flame.model import FlameModel
from flamediff.formats.conventions import square_crop_intrinsics, view_matrices
from flamediff.models import FlameDiffModel
from flamediff.models.config import LABELS
from flamediff.models.pixels import tensor_to_images
from flamediff.models.reference_attention import ReferenceAttnProcessor
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings, image_to_tensor
from flamediff.pipelines.scheduling import make_scheduler

TIMESTEPS = (999, 750, 500, 250)
LUMINANCE = np.array([0.299, 0.587, 0.114])


@dataclass
class Sample:
    """One validation identity: its reference and driving frames, prepared for the model."""

    identity: int
    reference_row: int
    rows: np.ndarray
    reference: np.ndarray          # [R, R, 3] uint8
    truth: np.ndarray              # [N, R, R, 3] uint8
    reference_head: np.ndarray     # [R, R] bool
    heads: np.ndarray              # [N, R, R] bool
    reference_latent: torch.Tensor  # [1, C, h, w]
    latents: torch.Tensor          # [N, C, h, w]
    pose: torch.Tensor             # [N, C0, h, w] pose-guider output


def validation_identities(index: DatasetIndex, count: int) -> list[int]:
    """The first ``count`` held-out identities of the dataset's splits.json."""
    heldout = read_splits(index.folder)["heldout"]
    if not heldout:
        raise SystemExit(f"{index.folder} has no held-out identities in splits.json")
    return heldout[:count]


@torch.no_grad()
def prepare(model: FlameDiffModel, flame: FlameModel, index: DatasetIndex, asset: Any, identity: int,
            frames: int) -> Sample:
    resolution = model.config.resolution
    ref = reference_row(index, identity)
    samples = index.samples_of_identity(identity)
    rows = spread(samples[samples != ref], frames)
    images = np.stack([index.load_frame(int(r)) for r in [ref, *rows]])
    masks = coverage_masks(index.annotations.take_rows(np.asarray([ref, *rows])), asset, resolution)
    tensors = torch.cat([image_to_tensor(image, resolution) for image in images])
    latents = model.encode_images(tensors)
    clip = index.annotations.take_rows(rows)
    Ks = torch.as_tensor(square_crop_intrinsics(clip.K, clip.image_size, resolution), dtype=torch.float32)
    control = model.render_control(flame.forward_clip(clip).vertices, flame.faces,
                                   torch.as_tensor(view_matrices(clip.R, clip.t), dtype=torch.float32), Ks)
    return Sample(identity, ref, rows, tensor_to_images(tensors[:1])[0], np.stack(tensor_to_images(tensors[1:])),
                  masks[0], masks[1:], latents[:1], latents[1:], model.guide(control.permute(0, 3, 1, 2)))


def layer_masks(mask: np.ndarray, tokens: int) -> torch.Tensor:
    """``[N, R, R]`` pixel masks -> ``[N, tokens]`` bool at a layer's token grid (area >= half)."""
    side = int(round(tokens ** 0.5))
    area = F.adaptive_avg_pool2d(torch.as_tensor(mask, dtype=torch.float32)[:, None], side)
    return (area >= 0.5).flatten(1)


class ProbeProcessor(ReferenceAttnProcessor):
    """A reading processor that records its attention probabilities (mean over heads) and can
    leave the reference out (``drop``) whatever the bank's routing says."""

    def __init__(self, bank: Any, name: str) -> None:
        super().__init__(bank, name, "read")
        self.drop = False
        self.record = False
        self.probabilities: torch.Tensor | None = None

    def _with_reference(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (hidden_states, None) if self.drop else super()._with_reference(hidden_states)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.record:
            context, mask = self._with_reference(hidden_states)
            batch, head_dim = hidden_states.shape[0], attn.to_k.out_features // attn.heads
            q = attn.to_q(hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            k = attn.to_k(context).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            logits = q @ k.transpose(-1, -2) / head_dim ** 0.5
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            self.probabilities = logits.softmax(-1).mean(1)
        return super().__call__(attn, hidden_states, *args, **kwargs)


def install_probes(model: FlameDiffModel) -> dict[str, ProbeProcessor]:
    processors = dict(model.denoiser.attn_processors)
    probes = {name: ProbeProcessor(model.bank, name) for name, p in processors.items()
              if isinstance(p, ReferenceAttnProcessor) and p.role == "read"}
    processors.update(probes)
    model.denoiser.set_attn_processor(processors)
    return probes


def reading_blocks(model: FlameDiffModel) -> dict[str, Any]:
    """Which denoiser blocks hold a layer that reads the bank, at which token grid."""
    blocks: dict[str, Any] = {}
    named = [*(f"down_blocks.{i}" for i in range(len(model.denoiser.down_blocks))), "mid_block",
             *(f"up_blocks.{i}" for i in range(len(model.denoiser.up_blocks)))]
    for block in named:
        layers = [name for name, p in model.denoiser.attn_processors.items()
                  if name.startswith(block + ".") and isinstance(p, ReferenceAttnProcessor)]
        blocks[block] = {"reading_layers": len(layers),
                         "tokens": {n: int(model.bank.tokens[n].shape[1]) for n in layers if n in model.bank.tokens}}
    return blocks


@torch.no_grad()
def noisy_input(model: FlameDiffModel, scheduler: Any, sample: Sample, timestep: int, seed: int) -> torch.Tensor:
    noise = torch.randn(sample.latents.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.full((len(noise),), timestep, dtype=torch.long)
    return scheduler.add_noise(sample.latents, noise, t)


@torch.no_grad()
def clean_estimate(model: FlameDiffModel, scheduler: Any, sample: Sample, noisy: torch.Tensor, timestep: int,
                   label: str = "real") -> torch.Tensor:
    """x0 from one v-prediction (reference and label as the probes / ``label`` say)."""
    count = len(noisy)
    t = torch.full((count,), timestep, dtype=torch.long)
    labels = torch.full((count,), LABELS[label], dtype=torch.long)
    v = model.predict_guided(noisy[:, None], t, sample.pose[:, None], labels, None,
                             torch.zeros(count, dtype=torch.long))[:, 0]
    alpha = scheduler.alphas_cumprod[timestep].sqrt()
    sigma = (1 - scheduler.alphas_cumprod[timestep]).sqrt()
    return alpha * noisy - sigma * v


def region_colours(images: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """``[N, 2, 3]`` mean RGB of head and background of each image."""
    x = images.astype(np.float64)
    return np.stack([np.stack([img[h].mean(0), img[~h].mean(0)]) for img, h in zip(x, heads)])


def colour_errors(images: np.ndarray, truth: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """``[N, 2]`` mean-over-RGB |mean colour difference| on head and background (the metric's)."""
    return np.abs(region_colours(images, heads) - region_colours(truth, heads)).mean(-1)


# -- (1) + (2) attention --------------------------------------------------------------------------


def measure_attention(model: FlameDiffModel, scheduler: Any, samples: list[Sample],
                      probes: dict[str, ProbeProcessor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for probe in probes.values():
        probe.record = True
    for timestep in TIMESTEPS:
        sums: dict[str, np.ndarray] = {name: np.zeros((2, 4)) for name in probes}
        for sample in samples:
            model.write_reference(sample.reference_latent)
            clean_estimate(model, scheduler, sample, noisy_input(model, scheduler, sample, timestep, 0), timestep)
            for name, probe in probes.items():
                p = probe.probabilities                      # [N, Lq, Lq + Lr]
                own = p.shape[1]
                query_head = layer_masks(sample.heads, own)
                ref_head = layer_masks(sample.reference_head[None], p.shape[2] - own)[0]
                parts = torch.stack([p[:, :, :own].sum(-1), p[:, :, own:][:, :, ref_head].sum(-1),
                                     p[:, :, own:][:, :, ~ref_head].sum(-1)], -1)   # [N, Lq, 3]
                for which, queries in enumerate((query_head, ~query_head)):
                    chosen = parts[queries]
                    sums[name][which, :3] += chosen.sum(0).numpy()
                    sums[name][which, 3] += len(chosen)
        out[str(timestep)] = {}
        for name, s in sums.items():
            tokens = int(model.bank.tokens[name].shape[1])
            head_share = float(np.mean([layer_masks(x.reference_head[None], tokens)[0].float().mean() for x in samples]))
            out[str(timestep)][name] = {
                "tokens": tokens,
                "uniform_attention": {"self": 0.5, "reference_head": round(head_share / 2, 4),
                                      "reference_background": round((1 - head_share) / 2, 4)},
                "head_queries": dict(zip(("self", "reference_head", "reference_background"),
                                         (s[0, :3] / max(s[0, 3], 1)).round(4).tolist())),
                "background_queries": dict(zip(("self", "reference_head", "reference_background"),
                                               (s[1, :3] / max(s[1, 3], 1)).round(4).tolist())),
            }
    for probe in probes.values():
        probe.record = False
        probe.probabilities = None
    return out


def plot_attention(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(result[str(TIMESTEPS[0])])
    short = [n.replace(".transformer_blocks.0.attn1.processor", "").replace("attentions.", "a")
             .replace("_blocks.", ".") for n in layers]
    fig, axes = plt.subplots(1, len(TIMESTEPS), figsize=(4.2 * len(TIMESTEPS), 4.2), sharey=True)
    colours = {"self": "0.6", "reference_head": "tab:orange", "reference_background": "tab:blue"}
    for axis, timestep in zip(axes, TIMESTEPS):
        rows = result[str(timestep)]
        bottom = np.zeros(len(layers))
        for part, colour in colours.items():
            values = np.array([rows[n]["head_queries"][part] for n in layers])
            axis.barh(np.arange(len(layers)), values, left=bottom, color=colour, label=part.replace("_", " "))
            bottom += values
        chance = np.array([rows[n]["uniform_attention"]["self"] + rows[n]["uniform_attention"]["reference_head"]
                           for n in layers])
        axis.scatter(chance, np.arange(len(layers)), marker="|", s=300, color="black",
                     label="end of 'reference head' under uniform attention")
        axis.set_yticks(np.arange(len(layers)), [f"{s} ({rows[n]['tokens']})" for s, n in zip(short, layers)],
                        fontsize=8)
        axis.set_xlim(0, 1)
        axis.set_title(f"t = {timestep}: queries on the head", fontsize=9)
        axis.set_xlabel("attention mass")
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- (3) dropout / label ---------------------------------------------------------------------------


def measure_dropout(model: FlameDiffModel, scheduler: Any, samples: list[Sample],
                    probes: dict[str, ProbeProcessor]) -> dict[str, Any]:
    variants = {"reference + real label": (False, "real"), "reference + null label": (False, "null"),
                "no reference + real label": (True, "real"), "no reference + null label (unconditional)": (True, "null")}
    out: dict[str, Any] = {}
    for timestep in (999, 500):
        errors: dict[str, list[np.ndarray]] = {name: [] for name in variants}
        changes: dict[str, list[np.ndarray]] = {name: [] for name in variants}
        for sample in samples:
            model.write_reference(sample.reference_latent)
            noisy = noisy_input(model, scheduler, sample, timestep, 0)
            images = {}
            for name, (drop, label) in variants.items():
                for probe in probes.values():
                    probe.drop = drop
                x0 = clean_estimate(model, scheduler, sample, noisy, timestep, label)
                images[name] = np.stack(tensor_to_images(model.decode_latents(x0)))
                errors[name].append(colour_errors(images[name], sample.truth, sample.heads))
            full = region_colours(images["reference + real label"], sample.heads)
            for name in variants:
                changes[name].append(np.abs(region_colours(images[name], sample.heads) - full).mean(-1))
        for probe in probes.values():
            probe.drop = False
        out[str(timestep)] = {name: {"head_colour_error": round(float(np.concatenate(errors[name])[:, 0].mean()), 2),
                                     "background_colour_error": round(float(np.concatenate(errors[name])[:, 1].mean()), 2),
                                     "head_change_from_full": round(float(np.concatenate(changes[name])[:, 0].mean()), 2),
                                     "background_change_from_full":
                                         round(float(np.concatenate(changes[name])[:, 1].mean()), 2)}
                              for name in variants}
    out["reference_dropout"] = model.config.reference_dropout
    return out


def plot_dropout(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["999"]
    names = list(rows)
    fig, axis = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(names))
    axis.bar(x - 0.2, [rows[n]["head_colour_error"] for n in names], 0.4, label="head", color="tab:orange")
    axis.bar(x + 0.2, [rows[n]["background_colour_error"] for n in names], 0.4, label="background", color="tab:blue")
    axis.set_xticks(x, [n.replace(" + ", "\n+ ").replace(" (", "\n(") for n in names], fontsize=7)
    axis.set_ylabel("colour error vs ground truth (levels)")
    axis.set_title("one-step estimate (t = 999) with / without the reference and the label", fontsize=9)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- (4) loss share --------------------------------------------------------------------------------


@torch.no_grad()
def measure_loss(model: FlameDiffModel, scheduler: Any, samples: list[Sample], seed: int = 0) -> dict[str, Any]:
    latent = model.config.latent_resolution
    head_px, head_tokens, head_loss, all_loss, fixed_gain = [], [], [], [], []
    rng = np.random.RandomState(seed)
    for sample in samples:
        model.write_reference(sample.reference_latent)
        head = layer_masks(sample.heads, latent * latent).view(-1, latent, latent)
        head_px.append(sample.heads.mean())
        head_tokens.append(float(head.float().mean()))
        for _ in range(4):                                            # timesteps as training draws them
            timestep = int(rng.randint(0, model.config.num_train_timesteps))
            noise = torch.randn(sample.latents.shape, generator=torch.Generator().manual_seed(int(rng.randint(2 ** 31))))
            t = torch.full((len(noise),), timestep, dtype=torch.long)
            noisy = scheduler.add_noise(sample.latents, noise, t)
            v = model.predict_guided(noisy[:, None], t, sample.pose[:, None],
                                     torch.zeros(len(t), dtype=torch.long), None,
                                     torch.zeros(len(t), dtype=torch.long))[:, 0]
            error = (v - scheduler.get_velocity(sample.latents, noise, t)).pow(2).mean(1)   # [N, h, w]
            head_loss.append(float(error[head].sum()))
            all_loss.append(float(error.sum()))
        fixed_gain.append(head_colour_fix_gain(model, scheduler, sample))
    return {"head_pixel_fraction_128px": round(float(np.mean(head_px)), 4),
            "head_latent_fraction_16x16": round(float(np.mean(head_tokens)), 4),
            "head_loss_share": round(float(np.sum(head_loss) / np.sum(all_loss)), 4),
            "loss_per_head_latent_over_per_background_latent": round(
                float((np.sum(head_loss) / np.mean(head_tokens)) /
                      ((np.sum(all_loss) - np.sum(head_loss)) / (1 - np.mean(head_tokens)))), 3),
            "one_step_x0_loss_removed_by_perfect_head_colour": round(float(np.mean(fixed_gain)), 4)}


@torch.no_grad()
def head_colour_fix_gain(model: FlameDiffModel, scheduler: Any, sample: Sample) -> float:
    """Fraction of the one-step estimate's latent MSE that shifting its head to the true mean
    colour (in pixels, re-encoded) removes: how much the loss 'sees' of the head colour error."""
    noisy = noisy_input(model, scheduler, sample, 999, 0)
    x0 = clean_estimate(model, scheduler, sample, noisy, 999)
    decoded = model.decode_latents(x0)
    truth = torch.as_tensor(sample.truth, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
    head = torch.as_tensor(sample.heads)[:, None]
    shifted = decoded.clone()
    for n in range(len(decoded)):
        delta = truth[n][:, head[n, 0]].mean(1) - decoded[n][:, head[n, 0]].mean(1)
        shifted[n] = torch.where(head[n], decoded[n] + delta[:, None, None], decoded[n])
    before = (model.encode_images(decoded) - sample.latents).pow(2).mean()
    after = (model.encode_images(shifted.clamp(-1, 1)) - sample.latents).pow(2).mean()
    return float(1 - after / before)


# -- (5) counterfactual + floor -------------------------------------------------------------------


def render_drive(pipeline: FlameDiffPipeline, index: DatasetIndex, sample: Sample, reference: np.ndarray) -> np.ndarray:
    """``[N, R, R, 3]`` the sample's driving frames rendered from ``reference`` with the checkpoint's defaults."""
    clip = index.annotations.take_rows(sample.rows)
    settings = RenderSettings(steps=0, guidance=0.0, seed=0, frames_per_batch=8, framing="camera")
    return np.stack([f[..., :3] for f in pipeline(reference, clip, settings).frames])


def measure_counterfactual(pipeline: FlameDiffPipeline, index: DatasetIndex, samples: list[Sample]) -> dict[str, Any]:
    own, swapped, refs, truth = [], [], [], []
    for position, sample in enumerate(samples):
        other = samples[(position + 1) % len(samples)]
        frames = [render_drive(pipeline, index, sample, ref) for ref in (sample.reference, other.reference)]
        own.append(region_colours(frames[0], sample.heads))
        swapped.append(region_colours(frames[1], sample.heads))
        refs.append(np.stack([region_colours(r.reference[None], r.reference_head[None])[0] for r in (sample, other)]))
        truth.append(region_colours(sample.truth, sample.heads))
    own_c, swap_c, ref_c, truth_c = (np.stack(x) for x in (own, swapped, refs, truth))  # [I, N, 2, 3], refs [I, 2, 2, 3]
    ref_change = np.linalg.norm(ref_c[:, 1] - ref_c[:, 0], axis=-1)                    # [I, 2]
    out_change = np.linalg.norm(swap_c - own_c, axis=-1).mean(1)                         # [I, 2]
    ratio = out_change.sum(0) / ref_change.sum(0)
    # across identities: the output's mean head colour against the reference's (slope 1 = transfer)
    ref_l, out_l, truth_l = ref_c[:, 0] @ LUMINANCE, own_c.mean(1) @ LUMINANCE, truth_c.mean(1) @ LUMINANCE
    slopes = {region: {"output_on_reference": round(float(np.polyfit(ref_l[:, k], out_l[:, k], 1)[0]), 3),
                       "truth_on_reference": round(float(np.polyfit(ref_l[:, k], truth_l[:, k], 1)[0]), 3)}
              for k, region in enumerate(("head", "background"))}
    return {"identities": len(samples), "frames_per_identity": int(own_c.shape[1]),
            "head_ratio": round(float(ratio[0]), 3), "background_ratio": round(float(ratio[1]), 3),
            "luminance_slopes": slopes,
            "scatter": {"reference": ref_l.round(2).tolist(), "output": out_l.round(2).tolist(),
                        "truth": truth_l.round(2).tolist()}}


def plot_counterfactual(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, out, truth = (np.array(result["scatter"][k]) for k in ("reference", "output", "truth"))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4))
    for k, (axis, region) in enumerate(zip(axes, ("head", "background"))):
        axis.scatter(ref[:, k], truth[:, k], s=14, color="0.5", label="ground truth")
        axis.scatter(ref[:, k], out[:, k], s=14, color="tab:red", label="output (own reference)")
        low, high = min(ref[:, k].min(), out[:, k].min()), max(ref[:, k].max(), out[:, k].max())
        axis.plot([low, high], [low, high], color="0.8", linewidth=0.8)
        slope = result["luminance_slopes"][region]["output_on_reference"]
        axis.set_title(f"{region}: output slope {slope:.2f}, swap ratio {result[region + '_ratio']:.2f}", fontsize=9)
        axis.set_xlabel("reference mean luminance (levels)")
        axis.set_ylabel("frame mean luminance (levels)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_residual(pipeline: FlameDiffPipeline, index: DatasetIndex, samples: list[Sample]) -> dict[str, Any]:
    """Regress the output's signed head luminance error on the reference's and on the identity's brightness."""
    out_error, ref_error, brightness, identity = [], [], [], []
    for position, sample in enumerate(samples):
        truth = region_colours(sample.truth, sample.heads)[:, 0] @ LUMINANCE
        output = region_colours(render_drive(pipeline, index, sample, sample.reference), sample.heads)[:, 0] @ LUMINANCE
        reference = region_colours(sample.reference[None], sample.reference_head[None])[0, 0] @ LUMINANCE
        out_error.append(output - truth)
        ref_error.append(reference - truth)
        brightness.append(truth)
        identity.append(np.full(len(truth), position))
    e_out, e_ref, light, who = (np.concatenate(x) for x in (out_error, ref_error, brightness, identity))
    per_identity = np.array([e_out[who == i].mean() for i in range(len(samples))])
    within = e_out - per_identity[who]
    return {"identities": len(samples), "frames": int(len(e_out)),
            "mean_abs_output_error": round(float(np.abs(e_out).mean()), 2),
            "mean_abs_reference_error": round(float(np.abs(e_ref).mean()), 2),
            "slope_on_reference_error": round(float(np.polyfit(e_ref, e_out, 1)[0]), 3),
            "correlation_with_reference_error": round(float(np.corrcoef(e_ref, e_out)[0, 1]), 3),
            "slope_on_brightness": round(float(np.polyfit(light - light.mean(), e_out, 1)[0]), 3),
            "mean_signed_output_error": round(float(e_out.mean()), 2),
            "per_identity_abs_error": round(float(np.abs(per_identity).mean()), 2),
            "within_identity_abs_error": round(float(np.abs(within).mean()), 2),
            "scatter": {"reference_error": e_ref.round(2).tolist(), "output_error": e_out.round(2).tolist()}}


def plot_residual(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, out = (np.array(result["scatter"][k]) for k in ("reference_error", "output_error"))
    fig, axis = plt.subplots(figsize=(4.6, 4))
    axis.scatter(ref, out, s=12, color="tab:red")
    axis.axhline(0, color="0.8", linewidth=0.8)
    axis.axvline(0, color="0.8", linewidth=0.8)
    axis.set_title(f"slope {result['slope_on_reference_error']:.2f}, "
                   f"r = {result['correlation_with_reference_error']:.2f}", fontsize=9)
    axis.set_xlabel("reference head luminance - frame's (levels)")
    axis.set_ylabel("output head luminance - frame's (levels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_floor(index: DatasetIndex, asset: Any, identities: list[int], resolution: int) -> dict[str, Any]:
    """Head colour error of two oracles that know the identity but not the target's lighting."""
    copy_ref, identity_mean, background_copy = [], [], []
    for identity in identities:
        rows = index.samples_of_identity(identity)
        ref = reference_row(index, identity)
        images = np.stack([index.load_frame(int(r)) for r in rows])
        heads = coverage_masks(index.annotations.take_rows(rows), asset, resolution)
        colours = region_colours(images, heads)                      # [N, 2, 3]
        own = colours[rows == ref][0]
        others = colours[rows != ref]
        copy_ref.append(np.abs(others[:, 0] - own[0]).mean(-1))
        identity_mean.append(np.abs(others[:, 0] - others[:, 0].mean(0)).mean(-1))
        background_copy.append(np.abs(others[:, 1] - own[1]).mean(-1))
    return {"identities": len(identities),
            "head_error_copying_reference_head_colour": round(float(np.concatenate(copy_ref).mean()), 2),
            "head_error_of_identity_mean_head_colour": round(float(np.concatenate(identity_mean).mean()), 2),
            "background_error_copying_reference_background_colour": round(float(np.concatenate(background_copy).mean()), 2)}


# -- driver ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "backend", "checkpoints", "demo"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "diagnosis"))
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--only", default="attention,dropout,loss,counterfactual,floor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    wanted = set(args.only.split(","))
    asset, index = load_asset(), read_dataset(args.dataset)
    identities = validation_identities(index, args.identities)
    model = FlameDiffModel.from_pretrained(args.checkpoint, asset=asset, temporal=False).eval()
    flame, scheduler = FlameModel(asset), make_scheduler(model.config)
    report_path = os.path.join(args.out, "diagnosis.json")
    report: dict[str, Any] = {}
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as handle:
            report = json.load(handle)
    report.update(checkpoint=os.path.abspath(args.checkpoint), dataset=os.path.abspath(args.dataset),
                  identities=identities, frames_per_identity=args.frames)
    started = time.perf_counter()
    samples = [prepare(model, flame, index, asset, i, args.frames) for i in identities]
    probes = install_probes(model)
    model.write_reference(samples[0].reference_latent)
    report["reading_blocks"] = reading_blocks(model)
    @functools.cache
    def full_pipeline() -> FlameDiffPipeline:
        """The checkpoint with its temporal layers, loaded once for the rendering measurements."""
        return FlameDiffPipeline(FlameDiffModel.from_pretrained(args.checkpoint, asset=asset), flame)

    steps = {"attention": lambda: measure_attention(model, scheduler, samples, probes),
             "dropout": lambda: measure_dropout(model, scheduler, samples, probes),
             "loss": lambda: measure_loss(model, scheduler, samples),
             "counterfactual": lambda: measure_counterfactual(full_pipeline(), index, samples),
             "floor": lambda: measure_floor(index, asset, identities, model.config.resolution),
             "residual": lambda: measure_residual(full_pipeline(), index, samples)}
    plots = {"attention": plot_attention, "dropout": plot_dropout, "counterfactual": plot_counterfactual,
             "residual": plot_residual}
    for name, measure in steps.items():
        if name in wanted:
            report[name] = measure()
            if name in plots:
                plots[name](report[name], os.path.join(args.out, f"{name}.png"))
            print(f"{name} ({time.perf_counter() - started:.0f} s): {json.dumps(report[name])[:600]}", flush=True)
    with open(report_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
