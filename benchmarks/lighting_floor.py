"""How much of the head colour error no model can remove: the procedural frames' lighting is drawn
per frame (per clip for the "real" clips) and is not part of the control, so the target's head
colour is only predictable up to its lighting.

    python benchmarks/lighting_floor.py DATASET [--identities 16] [--frames 8] [--draws 8] [--out docs/diagnosis]

DATASET is a procedural dataset made by ``flamediff dataset procedural`` (its generation arguments
are read from the command in ``--plan``, default the demo recipe's). For validation identities
(held-out split) each chosen frame is re-rendered by the procedural renderer with

- its own lighting (must give the dataset's frame: a check of the re-rendering),
- ``--draws`` lightings drawn from the generator's own lighting distribution: their mean head
  colour is the best guess of a model that knows the identity's albedo and the frame's geometry
  exactly but not its lighting (the lighting-marginal oracle),
- the reference's lighting (what a model that carries the reference's look would render),

and the head / background mean-colour errors of those renders against the real frame are
reported, beside the same numbers for the checkpoint (``flamediff eval``'s metric, head mask =
FLAME coverage). Writes ``lighting_floor.json`` and ``lighting_floor.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from flamediff.assets import load_asset
from flamediff.data.dataset import read_dataset
from flamediff.data.splits import read_splits
from flamediff.data.procedural.generate import plan_dataset
from flamediff.data.procedural.renderer import ProceduralRenderer
from flamediff.data.procedural.scene import _lighting
from flamediff.evaluation.masks import coverage_masks
from flamediff.evaluation.reconstruction import reconstruct
from flamediff.evaluation.selection import reference_row, spread
from flamediff.flame.model import FlameModel
from flamediff.models import FlameDiffModel
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings

#: The demo recipe's generation arguments (configs/demo/train.sh): identities, views, clips,
#: frames per clip, resolution, seed.
DEMO_PLAN = (160, 12, 2, 14, 128, 0)
LIGHT_FIELDS = ("light", "light_colour", "ambient", "diffuse", "specular")


def colours(images: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """``[N, 2, 3]`` mean RGB (0-255) of head and background."""
    x = images.astype(np.float64)
    return np.stack([np.stack([img[h].mean(0), img[~h].mean(0)]) for img, h in zip(x, heads)])


def relit(specs: Any, source: dict[str, np.ndarray]) -> Any:
    return replace(specs, **{name: source[name] for name in LIGHT_FIELDS})


def identity_floor(renderer: ProceduralRenderer, pipeline: Any, index: Any, asset: Any, identity: int, frames: int,
                   draws: int, plan_args: tuple) -> dict[str, np.ndarray]:
    identities, views, clips, length, resolution, seed = plan_args
    plan = plan_dataset(renderer.regions, identities, views, clips, length, resolution, seed, persons=[identity])
    look, specs = plan.looks[0], plan.specs[0]
    rows = index.samples_of_identity(identity)
    ref = reference_row(index, identity)
    local = {int(r): k for k, r in enumerate(rows)}
    chosen = spread(rows[rows != ref], frames)
    at = np.asarray([local[int(r)] for r in chosen])
    target = specs.rows(at)
    texture = renderer.bake_texture(look)
    truth = np.stack([index.load_frame(int(r)) for r in chosen])
    heads = coverage_masks(index.annotations.take_rows(chosen), asset, resolution)
    own = renderer.render(look, target, resolution, texture).images
    rng = np.random.default_rng([seed, identity, 99])
    marginal = np.mean([colours(renderer.render(look, relit(target, _lighting(rng, target.R, len(at))), resolution,
                                                texture).images, heads) for _ in range(draws)], axis=0)
    reference = specs.rows(np.asarray([local[ref]]))
    ref_head = coverage_masks(index.annotations.take_rows(np.asarray([ref])), asset, resolution)
    ref_truth = colours(index.load_frame(ref)[None], ref_head)[0]
    ref_marginal = np.mean([colours(renderer.render(look, relit(reference, _lighting(rng, reference.R, 1)), resolution,
                                                    texture).images, ref_head)[0] for _ in range(draws)], axis=0)
    ref_light = {name: np.repeat(getattr(specs, name)[local[ref]][None], len(at), axis=0) for name in LIGHT_FIELDS}
    as_reference = renderer.render(look, relit(target, ref_light), resolution, texture).images
    rendered = pipeline(index.load_frame(ref), index.annotations.take_rows(chosen), RenderSettings(seed=0, frames_per_batch=8, framing="camera")).frames
    truth_c = colours(truth, heads)
    error = lambda c: np.abs(c - truth_c).mean(-1)  # noqa: E731  [N, 2] head, background
    return {"rerender_max_abs": np.array([np.abs(own.astype(int) - truth.astype(int)).max()]),
            "marginal_oracle": error(marginal), "reference_lighting": error(colours(as_reference, heads)),
            "albedo_from_reference": marginal * (ref_truth / ref_marginal)[None], "truth": truth_c,
            "checkpoint": error(colours(np.stack([f[..., :3] for f in rendered]), heads)),
            "vae_reconstruction": error(colours(reconstruct(pipeline.model, truth), heads))}


def reference_only_oracle(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """An oracle that knows the geometry and the lighting distribution but sees the albedo only
    through the (lit) reference: the marginal head colour scaled by the reference's actual over
    its marginal head colour, then shrunk towards the mean by the least-squares line per channel
    (fitted on these very frames, so slightly optimistic)."""
    estimate = np.concatenate([p["albedo_from_reference"][:, 0] for p in parts])    # [N, 3] head
    truth = np.concatenate([p["truth"][:, 0] for p in parts])
    fitted = np.stack([np.polyval(np.polyfit(estimate[:, c], truth[:, c], 1), estimate[:, c]) for c in range(3)], -1)
    return {"head_colour_error_unshrunk": round(float(np.abs(estimate - truth).mean()), 2),
            "head_colour_error": round(float(np.abs(fitted - truth).mean()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "backend", "checkpoints", "demo"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "diagnosis"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    asset, index = load_asset(), read_dataset(args.dataset)
    identities = read_splits(args.dataset)["heldout"][:args.identities]
    renderer = ProceduralRenderer(asset)
    pipeline = FlameDiffPipeline(FlameDiffModel.from_pretrained(args.checkpoint, asset=asset), FlameModel(asset))
    parts = [identity_floor(renderer, pipeline, index, asset, i, args.frames, args.draws, DEMO_PLAN)
             for i in identities]
    result: dict[str, Any] = {"identities": identities, "frames_per_identity": args.frames, "draws": args.draws,
                              "rerender_max_abs_levels": int(max(p["rerender_max_abs"][0] for p in parts))}
    result["reference_only_oracle"] = reference_only_oracle(parts)
    for key in ("vae_reconstruction", "checkpoint", "marginal_oracle", "reference_lighting"):
        values = np.concatenate([p[key] for p in parts])
        result[key] = {"head_colour_error": round(float(values[:, 0].mean()), 2),
                       "background_colour_error": round(float(values[:, 1].mean()), 2)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lighting_floor.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    plot(parts, os.path.join(args.out, "lighting_floor.png"))
    print(json.dumps(result))


def plot(parts: list[dict[str, np.ndarray]], path: str) -> None:
    """Per-frame head colour error of the checkpoint against the lighting-marginal oracle's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oracle = np.concatenate([p["marginal_oracle"][:, 0] for p in parts])
    model = np.concatenate([p["checkpoint"][:, 0] for p in parts])
    vae = np.concatenate([p["vae_reconstruction"][:, 0] for p in parts])
    fig, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.scatter(oracle, model, s=9, color="tab:red", label=f"checkpoint (mean {model.mean():.1f})")
    axis.scatter(oracle, vae, s=9, color="0.5", label=f"VAE reconstruction (mean {vae.mean():.1f})")
    top = max(oracle.max(), model.max())
    axis.plot([0, top], [0, top], color="0.8", linewidth=0.8)
    axis.set_xlabel(f"lighting-marginal oracle (mean {oracle.mean():.1f})")
    axis.set_ylabel("head colour error (levels)")
    axis.set_title("per frame, validation identities", fontsize=9)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
