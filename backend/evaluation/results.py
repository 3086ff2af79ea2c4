"""``flamediff results``: the results document (docs/RESULTS.md) from one plan file.

The plan (JSON, paths relative to it) names the datasets and checkpoints; this module runs
every measurement on held-out identities and writes the tables, the raw numbers (JSON) and a
picture grid (reference | control map | output | ground truth):

- ``main``: the shipped checkpoint against the baselines (self/cross-reenactment, AED/APD);
- ``views``: the shipped checkpoint's PSNR by yaw on wide-pose samples;
- ``temporal``: flicker and PSNR of continuous sequences, one row per checkpoint (stage 1 vs 1 + 2);
- ``ablations``: the paper's ablations, one row per checkpoint trained on the same data with the
  same budget: self-reenactment metrics, artefact level, PSNR by yaw.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from flamediff.errors import FlamediffError

if TYPE_CHECKING:
    from flamediff.data.dataset import DatasetIndex
    from flamediff.evaluation.metrics import ProceduralRegressor
    from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings

DESCRIPTION = """\
Regenerate docs/RESULTS.md: evaluate the checkpoints a plan file names (see
configs/results/plan.json) on held-out identities and write tables, JSON and a picture grid.
`make results` trains the ablation checkpoints first (resumable) and then runs this.
"""
PSNR_GAIN_TARGET_DB = 3.5  # the demo model's quality target: its PSNR gain over copying the reference


def _resolve(base: str, path: str) -> str:
    """``~`` and ``$VARIABLES`` expanded (run state lives outside the checkout), then made absolute."""
    path = os.path.expanduser(os.path.expandvars(path))
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def load_plan(path: str) -> dict[str, Any]:
    """The plan with every path made absolute (relative paths are relative to the plan file)."""
    with open(path, encoding="utf-8") as handle:
        plan = json.load(handle)
    base = os.path.dirname(os.path.abspath(path))

    def fix(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: fix(v, k) for k, v in value.items()}
        if isinstance(value, str) and key in ("data", "checkpoint", "output"):
            return _resolve(base, value)
        return value

    plan = fix(plan)
    for section in ("temporal", "ablations"):
        if section in plan:  # a row is a checkpoint path or {"checkpoint": path, "temporal": false}
            plan[section]["rows"] = {name: row if isinstance(row, dict) else {"checkpoint": _resolve(base, row)}
                                     for name, row in plan[section]["rows"].items()}
    return plan


class _Session:
    """Shared state of one results run: asset, regressor, renderer, cached pipelines."""

    def __init__(self, plan: dict[str, Any], log: Callable[[str], None]) -> None:
        from flamediff.assets import load_asset
        from flamediff.data.procedural import ProceduralRenderer

        self.plan, self.log = plan, log
        self.asset = load_asset()
        self.renderer = ProceduralRenderer(self.asset)
        self._pipelines: dict[tuple[str, bool], Any] = {}

    @functools.cached_property
    def estimator(self) -> ProceduralRegressor:
        """The AED/APD regressor, trained on first use (only sections that score AED/APD need it)."""
        from flamediff.data.dataset import read_dataset
        from flamediff.data.splits import read_splits
        from flamediff.evaluation.metrics import train_regressor

        spec = self.plan["regressor"]
        index = read_dataset(spec["data"])
        rows = np.nonzero(np.isin(index.identity, read_splits(spec["data"])["train"]))[0]
        self.log(f"training the expression/pose regressor ({spec['steps']} steps, train identities)")
        return train_regressor(index, steps=spec["steps"], seed=0, rows=rows)

    def pipeline(self, checkpoint: str, temporal: bool = True) -> FlameDiffPipeline:
        """The pipeline of ``checkpoint``, loaded once per run (views and the grid reuse main's)."""
        import torch

        from flamediff.flame.model import FlameModel
        from flamediff.models.flamediff_model import FlameDiffModel
        from flamediff.pipelines.render import FlameDiffPipeline

        key = (checkpoint, temporal)
        if key not in self._pipelines:
            model = FlameDiffModel.from_pretrained(checkpoint, asset=self.asset, temporal=temporal)
            self._pipelines[key] = FlameDiffPipeline(model, FlameModel(self.asset), dtype=torch.float32)  # fp32 metrics
        return self._pipelines[key]

    def settings(self, pipeline: FlameDiffPipeline) -> RenderSettings:
        from flamediff.evaluation.evaluate import FRAMING
        from flamediff.pipelines.render import RenderSettings

        config = pipeline.model.config
        return RenderSettings(steps=config.default_steps, guidance=self.plan.get("guidance") or config.default_guidance,
                              seed=0, frames_per_batch=8, framing=FRAMING)

    def identities(self, spec: dict[str, Any]) -> tuple[DatasetIndex, list[int]]:
        """A section's dataset and the identities it evaluates (``split``, default "heldout")."""
        from flamediff.data.dataset import read_dataset
        from flamediff.evaluation.selection import identities_in_split

        index = read_dataset(spec["data"])
        return index, identities_in_split(index, spec.get("split", "heldout"))


def _main(session: _Session) -> dict[str, Any]:
    from flamediff.evaluation.evaluate import evaluate

    spec = session.plan["main"]
    session.log(f"main: {spec['checkpoint']} on {spec['data']}")
    return evaluate(session.pipeline(spec["checkpoint"]).model, spec["data"], spec.get("split", "heldout"),
                    max_frames=spec.get("max_frames", 8), flame_asset=session.asset, estimator=session.estimator)


def _views(session: _Session) -> dict[str, Any]:
    from flamediff.evaluation.studies import view_study

    spec = session.plan["main"]
    pipeline = session.pipeline(spec["checkpoint"])
    index, identities = session.identities(spec)
    session.log("views: PSNR by yaw")
    return view_study(pipeline, index, identities, session.settings(pipeline), session.renderer)


def _temporal(session: _Session) -> dict[str, Any]:
    from flamediff.evaluation.studies import flicker_study

    spec = session.plan["temporal"]
    index, identities = session.identities(spec)
    out = {}
    for name, row in spec["rows"].items():
        session.log(f"temporal: {name}")
        pipeline = session.pipeline(row["checkpoint"], row.get("temporal", True))
        out[name] = flicker_study(pipeline, index, identities, session.settings(pipeline), session.renderer)
    return out


def _ablations(session: _Session) -> dict[str, Any]:
    from flamediff.evaluation.evaluate import evaluate
    from flamediff.evaluation.studies import artefact_study, view_study

    spec = session.plan["ablations"]
    index, identities = session.identities(spec)
    out = {}
    for name, row in spec["rows"].items():
        session.log(f"ablation: {name}")
        checkpoint = row["checkpoint"]
        pipeline = session.pipeline(checkpoint)
        settings = session.settings(pipeline)
        scores = evaluate(pipeline.model, spec["data"], spec.get("split", "heldout"),
                          max_frames=spec.get("max_frames", 8), flame_asset=session.asset, estimator=session.estimator)
        out[name] = {"checkpoint": checkpoint, "identities": scores["identities"], "self": scores["self"]["method"],
                     "cross": scores["cross"]["method"],
                     "copy_reference": scores["self"]["baselines"]["copy_reference"],
                     "artefacts": artefact_study(pipeline, index, identities, settings, session.renderer),
                     "views": view_study(pipeline, index, identities, settings, session.renderer)}
    return out


def picture_grid(session: _Session, path: str, count: int = 4) -> None:
    """Rows of reference | control map | output | ground truth for held-out identities."""
    from PIL import Image

    from flamediff.evaluation.selection import reference_row, spread, to_resolution

    spec = session.plan["main"]
    pipeline = session.pipeline(spec["checkpoint"])
    index, identities = session.identities(spec)
    resolution = pipeline.model.config.resolution
    rows = []
    for identity in identities[:count]:
        ref = reference_row(index, identity)
        samples = index.samples_of_identity(identity)
        drive = spread(samples[samples != ref], 3)[1:2]
        out = pipeline(index.load_frame(ref), index.annotations.take_rows(drive), session.settings(pipeline),
                       return_control=True, reference_pose=index.annotations.take_rows(np.array([ref])))
        rows.append(np.concatenate([to_resolution(index.load_frame(ref), resolution), out.control_previews[0],
                                    out.frames[0], to_resolution(index.load_frame(int(drive[0])), resolution)], 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)


# ---------------------------------------------------------------------------------------------
# Markdown


def _cell(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _views_cells(views: dict[str, Any]) -> list[str]:
    return [f"{_cell(v['psnr'])} ({v['frames']})" for v in views.values()]


def _shown_path(path: str) -> str:
    """A data path as the reader should see it: relative to the checkout, or under the cache."""
    cache = os.path.expanduser("~/.cache/flamediff")
    return path.replace(cache, "~/.cache/flamediff", 1) if path.startswith(cache) else os.path.relpath(path)


def render_markdown(results: dict[str, Any], plan: dict[str, Any], grid: str | None) -> str:
    lines = ["# Results", "", f"Regenerated by `{results['command']}` in {results['minutes']:.0f} min on "
             f"{results['machine']}. Every figure is on identities no training run saw (a dataset drawn with a seed "
             "no training config uses, or a training dataset's held-out split); raw numbers in `RESULTS.json`.", ""]
    main = results.get("main")
    if main:
        split = plan["main"].get("split", "heldout")
        lines += ["## Shipped demo checkpoint vs baselines", "",
                  f"`{os.path.relpath(plan['main']['checkpoint'])}` on `{_shown_path(plan['main']['data'])}` "
                  f"(split `{split}`), {len(main['identities'])} identities, {main['settings']['steps']} steps, guidance "
                  f"{main['settings']['guidance']}. Self-reenactment: reference = the identity's first clean frame, "
                  "drive = its other frames (novel poses, expressions and views); metrics over the head mask. "
                  "Colour: mean-colour error of the head / the background in 0–255 levels; sharpness: high-frequency "
                  "energy (3x3 Laplacian) of the output over the ground truth's, over the head (1 = as sharp). "
                  "AED/APD: a small regressor trained on the train identities' renders (its own error on ground "
                  "truth is given below). Cross-reenactment: drive with another identity, shape from the reference. "
                  "\"VAE reconstruction\" is the ground truth encoded and decoded: the ceiling of any output.",
                  "", "| | PSNR ↑ | SSIM ↑ | L1 ↓ | colour head ↓ | colour bg ↓ | sharpness | AED ↓ | APD ↓ | "
                  "cross AED ↓ | cross APD ↓ | frames |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        empty = {"aed": None, "apd": None}
        rows = [("flamediff (demo checkpoint)", main["self"]["method"], main["cross"]["method"])]
        rows += [(name.replace("_", " "), main["self"]["baselines"][name], main["cross"]["baselines"].get(name, empty))
                 for name in ("copy_reference", "other_identity_gt", "vae_reconstruction") if name in main["self"]["baselines"]]
        for name, own, cross in rows:
            lines.append(f"| {name} | {_cell(own['psnr'])} | {_cell(own['ssim'], 3)} | {_cell(own['l1'], 4)} | "
                         f"{_cell(own.get('head_colour'), 1)} | {_cell(own.get('background_colour'), 1)} | "
                         f"{_cell(own.get('sharpness'))} | {_cell(own['aed'], 3)} | {_cell(own['apd'], 3)} | "
                         f"{_cell(cross['aed'], 3)} | {_cell(cross['apd'], 3)} | {own['frames']} |")
        error = main["estimator"]["error_on_ground_truth"]
        gain = (main["self"]["method"]["psnr"] or 0) - (main["self"]["baselines"]["copy_reference"]["psnr"] or 0)
        lines += ["", f"PSNR gain over copying the reference: **{gain:+.2f} dB** (target ≥ {PSNR_GAIN_TARGET_DB} dB). "
                  f"Regressor error on ground-truth renders: AED {_cell(error['aed'], 3)}, APD {_cell(error['apd'], 3)}."]
        sensitivity = main.get("reference_sensitivity")
        if sensitivity:
            lines += ["", f"Reference sensitivity (each identity's drive rendered with its own and the next identity's "
                      f"reference, {sensitivity['frames']} frames): the outputs' mean colour moves "
                      f"{sensitivity['head_ratio']:.2f}x (head) and {sensitivity['background_ratio']:.2f}x (background) "
                      f"as far as the references' colours differ; the output is nearer its own reference's colour in "
                      f"{sensitivity['head_follows']:.0%} (head) and {sensitivity['background_follows']:.0%} "
                      "(background) of frames."]
        lines += [f"Note: {n}." for n in main["notes"]]
        lines.append("")
    if results.get("views"):
        buckets = list(results["views"])
        lines += ["## Novel views: PSNR by yaw (demo checkpoint)", "",
                  "Wide-pose samples driven from a near-frontal reference; head mask minus the ears and mouth "
                  "interior (those samples' ground truth carries the synthetic artefacts). (frames) in brackets.", "",
                  "| |yaw| | " + " | ".join(f"{b}°" for b in buckets) + " |", "|---" * (len(buckets) + 1) + "|",
                  "| PSNR | " + " | ".join(_views_cells(results["views"])) + " |", ""]
    if results.get("temporal"):
        lines += ["## Temporal consistency (stage 1 vs stage 1 + 2)", "",
                  "Each held-out continuous sequence rendered as one clip. Flicker: mean absolute difference of "
                  "consecutive frames (0–1) over the head; excess = output flicker − ground-truth flicker.", "",
                  "| checkpoint | flicker ↓ | ground-truth flicker | excess ↓ | PSNR ↑ | sequences |", "|---|---|---|---|---|---|"]
        for name, row in results["temporal"].items():
            lines.append(f"| {name} | {_cell(row['flicker'], 4)} | {_cell(row['flicker_ground_truth'], 4)} | "
                         f"{_cell(row['flicker_excess'], 4)} | {_cell(row['psnr'])} | {row['sequences']} |")
        lines.append("")
    if results.get("ablations"):
        ablation = plan["ablations"]
        buckets = list(next(iter(results["ablations"].values()))["views"])
        lines += ["## The paper's ablations (same data, same training budget)", "",
                  ablation.get("description", ""), "",
                  "| variant | PSNR ↑ | SSIM ↑ | AED ↓ | APD ↓ | artefact L1 ↓ | saturation excess ↓ | "
                  + " | ".join(f"PSNR {b}°" for b in buckets) + " |", "|---" * (7 + len(buckets)) + "|"]
        floor = next(iter(results["ablations"].values()))["copy_reference"]
        lines.append(f"| copy the reference (floor) | {_cell(floor['psnr'])} | {_cell(floor['ssim'], 3)} | "
                     f"{_cell(floor['aed'], 3)} | {_cell(floor['apd'], 3)} | – | – | " + " | ".join("–" for _ in buckets) + " |")
        for name, row in results["ablations"].items():
            own, art = row["self"], row["artefacts"]
            lines.append(f"| {name} | {_cell(own['psnr'])} | {_cell(own['ssim'], 3)} | {_cell(own['aed'], 3)} | "
                         f"{_cell(own['apd'], 3)} | {_cell(art['artefact_l1'], 4)} | {_cell(art['saturation_excess'], 4)} | "
                         + " | ".join(_views_cells(row["views"])) + " |")
        lines.append("")
    if grid:
        lines += ["## Picture grid", "", "reference | control map (Gaussian features, 3 principal colours) | "
                  "output | ground truth, one held-out identity per row:", "",
                  f"![grid]({os.path.relpath(grid, os.path.dirname(plan['output']))})", ""]
    lines += plan.get("discussion", [])
    return "\n".join(lines).rstrip() + "\n"


def run_results(plan_path: str, sections: list[str] | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every section of the plan (or ``sections``; ``[]``: none, only rewrite the document from
    RESULTS.json and the plan's text) and write the document; returns the numbers."""
    started = time.perf_counter()
    plan = load_plan(plan_path)
    session = _Session(plan, log)
    runners = {"main": _main, "views": _views, "temporal": _temporal, "ablations": _ablations}
    chosen = sections if sections is not None else [name for name in runners
                                                    if name in plan or name == "views" and "main" in plan]
    output = plan["output"]
    numbers = os.path.splitext(output)[0] + ".json"
    results: dict[str, Any] = {}
    if sections is not None and os.path.isfile(numbers):  # re-running some sections keeps the others' numbers
        with open(numbers, encoding="utf-8") as handle:
            results = {k: v for k, v in json.load(handle).items() if k in runners or k in ("minutes", "command", "machine")}
    elif sections == []:
        raise FlamediffError(f"{numbers} does not exist: run the sections first (without --document-only)")
    results.update({name: runners[name](session) for name in chosen})
    grid = os.path.join(os.path.dirname(output), "results", "grid.png") if "main" in plan else None
    if grid and "main" in chosen:
        picture_grid(session, grid)
    if chosen:  # the machine that computed the numbers
        results.update(command=f"flamediff results --plan {os.path.relpath(plan_path)}",
                       machine=f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
                               f"{__import__('torch').get_num_threads()}")
    results["minutes"] = (time.perf_counter() - started) / 60 + results.get("minutes", 0)  # kept sections' time too
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(numbers, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(render_markdown(results, plan, grid if grid and os.path.isfile(grid) else None))
    log(f"wrote {output}")
    return results


def cmd_results(args: argparse.Namespace) -> int:
    run_results(args.plan, [] if args.document_only else args.sections)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``results`` to an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser("results", help="regenerate docs/RESULTS.md from a plan of checkpoints and data",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="configs/results/plan.json", metavar="FILE",
                        help="plan file (default configs/results/plan.json)")
    parser.add_argument("--sections", nargs="+", choices=("main", "views", "temporal", "ablations"), default=None,
                        help="run only these sections (default: every section the plan has)")
    parser.add_argument("--document-only", action="store_true",
                        help="run no section: rewrite the document from its RESULTS.json and the plan's "
                             "discussion (after editing the plan's text)")
    parser.set_defaults(func=cmd_results)
    return parser
