"""Where a stage-1 training step's time goes, before and after the fast CPU splatter and the
latent cache and the triangle-id cache, measured side by side in one run.

    python benchmarks/bench_training.py [--dataset DIR] [--init-from backend/checkpoints/demo]
                                        [--steps 3] [--threads 2] [--markdown docs/BENCHMARKS.md]

The step is the demo recipe's (configs/demo/stage1.json: demo preset, batch 8, 128 px) started
from the shipped checkpoint. "before" composites with the pure-torch splatter and encodes every
target and reference with the frozen VAE, rasterises every frame's and reference's mesh for
the correspondence and steps AdamW's per-tensor loop (the step as it was); "after" uses the
compiled CPU splatter, reads the latents and the triangle ids from their caches (steady state:
every frame drawn was seen once before, as in a long run) and steps the fused AdamW. Both trainers start from the same weights and draw the same batches; the script checks
their first losses agree. Each part is timed inside the measured steps themselves (see
``StepParts``, each part without the parts timed inside it): batch drawing, the VAE encoding
(or the cache read), FLAME, the reference correspondence of a checkpoint with it (posing the
references, their depth buffers and the frames' fragments, no gradient), the splatter's forward
(render_control without the correspondence: the whole Gaussian-field path) and its backward; "the rest" (U-Nets, pose
guider, optimiser, EMA) is the whole step minus these. Also times the
splatter alone at the sd15 preset's size (32 features, 256x256 UV grid, 512 px) for the record;
an sd15 U-Net step does not fit a 2-core CPU's time or memory.

Without ``--dataset`` it uses the demo recipe's dataset when it exists
($FLAMEDIFF_DEMO_WORK/data, see configs/demo/train.sh), else generates 8 procedural identities.
With ``--markdown FILE`` the table replaces the section between this script's markers in FILE.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import use_splatter  # noqa: E402
from flamediff.assets import load_asset  # noqa: E402
from flamediff.formats.conventions import square_crop_intrinsics  # noqa: E402
from flamediff.formats.paths import cache_dir  # noqa: E402
from flamediff.training.train import TrainConfig, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_training: begin -->", "<!-- bench_training: end -->"
VARIANTS = {"before": ("torch", False), "after": ("numba", True)}  # splatter, caches + fused AdamW


def demo_dataset(work: str) -> str:
    """The demo recipe's dataset, else a small procedural one generated into ``work``."""
    recipe = os.environ.get("FLAMEDIFF_DEMO_WORK") or os.path.join(cache_dir(), "train", "demo")
    if os.path.isfile(os.path.join(recipe, "data", "dataset.json")):
        return os.path.join(recipe, "data")
    from flamediff.data.procedural.generate import generate_procedural_dataset

    folder = os.path.join(work, "data")
    generate_procedural_dataset(folder, identities=8, views_per_identity=6, sequences_per_identity=1,
                                frames_per_sequence=8, resolution=128, seed=0)
    return folder


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(fn: Callable[[], object]) -> float:
    """Seconds of ``fn()`` on the chosen clock (``--clock cpu``: this process's CPU time, all
    threads, which other work on a busy machine disturbs far less than wall time)."""
    start = clock()
    fn()
    return clock() - start


def make_trainer(dataset: str, init_from: str, work: str, name: str, fast: bool) -> Trainer:
    """The demo recipe's stage-1 trainer; ``fast``: with the caches and the fused AdamW, else the step as it was."""
    config = TrainConfig.from_dict({"dataset": dataset, "output_dir": os.path.join(work, name),
                                    "init_from": init_from, "stage": "1", "batch_size": 8, "steps": 2800,
                                    "learning_rate": 1e-3, "warmup_steps": 200, "ema_decay": 0.998,
                                    "cache_latents": fast, "cache_triangle_ids": fast, "fused_optimizer": fast})
    return Trainer(config, log=lambda message: None)


class _BackwardMark(torch.autograd.Function):
    """Identity that notes the time its gradient arrives: where the splatter's backward starts."""

    @staticmethod
    def forward(ctx, maps: torch.Tensor, parts: "StepParts") -> torch.Tensor:  # type: ignore[override]
        ctx.parts = parts
        return maps.view_as(maps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.parts.backward_started = clock()
        return grad, None


class StepParts:
    """Times the parts of a trainer's real steps from inside them, so the parts and the whole
    are the same work: batch drawing, VAE encoding (or cache read), FLAME, the splatter's
    forward (``render_control``) and its backward (from the control maps' gradient arriving to
    the last Gaussian-field gradient: autograd runs those nodes last, as they were made first)."""

    PARTS = ("batch drawing", "VAE encoding (or cache read)", "FLAME forward",
             "reference correspondence (no gradient)", "splatting forward", "splatting backward")

    def __init__(self, trainer: Trainer) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.backward_started = self.field_grads_done = 0.0
        self._open: list[float] = []   # seconds of the timed calls inside each open timed call
        for name, owner, method in (("batch drawing", trainer, "draw"),
                                    ("VAE encoding (or cache read)", trainer, "clean_latents"),
                                    ("FLAME forward", trainer.flame, "forward_clip")):
            setattr(owner, method, self._timing(name, getattr(owner, method)))
        # render_control holds the correspondence of a checkpoint with it, timed apart
        for owner, method in ((trainer, "reference_view"), (trainer.model, "reference_correspondence")):
            setattr(owner, method, self._timing("reference correspondence (no gradient)", getattr(owner, method)))
        render = self._timing("splatting forward", trainer.model.render_control)
        trainer.model.render_control = lambda *a, **k: _BackwardMark.apply(render(*a, **k), self)
        for parameter in trainer.model.gaussian_field.parameters():
            parameter.register_post_accumulate_grad_hook(self._field_grad_done)

    def _timing(self, name: str, fn: Callable) -> Callable:
        """``fn`` adding its seconds to part ``name``, less those of timed calls inside it."""
        def timed_call(*args, **kwargs):
            start = clock()
            self._open.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed, nested = clock() - start, self._open.pop()
                self.seconds[name] += elapsed - nested
                if self._open:
                    self._open[-1] += elapsed
        return timed_call

    def _field_grad_done(self, parameter: torch.Tensor) -> None:
        self.field_grads_done = clock()

    def step(self, trainer: Trainer) -> tuple[float, dict[str, float]]:
        """One real training step: (its seconds, the seconds of each part within it)."""
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        whole = timed(trainer.train_step)
        self.seconds["splatting backward"] = self.field_grads_done - self.backward_started
        return whole, dict(self.seconds)


def measure(trainers: dict[str, Trainer], steps: int) -> dict[str, tuple[float, dict[str, float]]]:
    """Mean whole-step time and mean parts per variant over ``steps`` steps after one warm-up,
    the variants' steps interleaved so the machine's noise falls on both alike."""
    timers = {name: StepParts(trainer) for name, trainer in trainers.items()}
    for name, trainer in trainers.items():
        use_splatter(VARIANTS[name][0])
        trainer.train_step()  # warm-up (compilation, allocator)
        if trainer.latent_cache is not None:  # steady state: these steps' frames were seen before
            with torch.no_grad():
                for step in range(trainer.step, trainer.step + steps):
                    trainer.loss(trainer.draw(step))
    wholes: dict[str, list[float]] = {name: [] for name in trainers}
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in trainers}
    for _ in range(steps):
        for name, trainer in trainers.items():
            use_splatter(VARIANTS[name][0])
            whole, within = timers[name].step(trainer)
            wholes[name].append(whole)
            parts[name].append(within)
    return {name: (statistics.mean(wholes[name]), {k: statistics.mean(p[k] for p in parts[name]) for k in parts[name][0]})
            for name in trainers}


def first_losses(dataset: str, init_from: str, work: str) -> tuple[float, float]:
    """The loss of step 0's batch under both variants, from the same weights."""
    losses = []
    for name, (backend, fast) in VARIANTS.items():
        use_splatter(backend)
        trainer = make_trainer(dataset, init_from, work, f"parity-{name}", fast)
        with torch.no_grad():
            losses.append(float(trainer.loss(trainer.draw(0))))
    return losses[0], losses[1]


def sd15_splatter(backend: str, repeats: int = 2) -> tuple[float, float]:
    """(forward, forward + backward) seconds of the sd15-size field on one 512 px frame."""
    from flamediff.demo import demo_animation
    from flamediff.flame.model import FlameModel
    from flamediff.formats.conventions import view_matrices
    from flamediff.gaussians.field import UVGaussianField
    from flamediff.gaussians.uv_binding import load_or_compute_uv_binding
    from flamediff.models import FlameDiffConfig

    asset = load_asset()
    config = FlameDiffConfig.preset_named("sd15", flame_asset=asset.identity())
    field = UVGaussianField(load_or_compute_uv_binding(asset, config.uv_resolution), config.feature_dim)
    flame, res = FlameModel(asset), config.resolution
    clip = demo_animation(asset, num_frames=1, resolution=res)
    with torch.no_grad():
        vertices = flame.forward_clip(clip).vertices
    viewmats = torch.as_tensor(view_matrices(clip.R, clip.t), dtype=torch.float32)
    Ks = torch.as_tensor(square_crop_intrinsics(clip.K, clip.image_size, res), dtype=torch.float32)

    def forward():
        return field.render(vertices, flame.faces, viewmats, Ks, res, res, backend=backend)[0]

    def forward_backward():
        forward().sum().backward()
        field.zero_grad(set_to_none=True)

    forward_backward()
    return (min(timed(forward) for _ in range(repeats)), min(timed(forward_backward) for _ in range(repeats)))


def splat_seconds(parts: dict[str, float]) -> float:
    return parts["splatting forward"] + parts["splatting backward"]


def table(results: dict[str, tuple[float, dict[str, float]]]) -> list[str]:
    """Markdown rows: each part, before and after, seconds and share of the whole step."""
    (whole_b, parts_b), (whole_a, parts_a) = results["before"], results["after"]
    rows = ["| part of one stage-1 step | before: s | share | after: s | share |", "|---|---|---|---|---|",
            f"| whole step (draw, forward, backward, optimiser, EMA) | {whole_b:.3f} | 100 % | {whole_a:.3f} | 100 % |"]
    for key in parts_b:
        rows.append(f"| {key} | {parts_b[key]:.3f} | {100 * parts_b[key] / whole_b:.0f} % | "
                    f"{parts_a[key]:.3f} | {100 * parts_a[key] / whole_a:.0f} % |")
    splat_b, splat_a = splat_seconds(parts_b), splat_seconds(parts_a)
    rows.append(f"| splatting forward + backward | {splat_b:.3f} | {100 * splat_b / whole_b:.0f} % | "
                f"{splat_a:.3f} | {100 * splat_a / whole_a:.0f} % |")
    rest_b, rest_a = whole_b - sum(parts_b.values()), whole_a - sum(parts_a.values())
    rows.append(f"| both U-Nets, pose guider, optimiser, EMA (the rest) | {rest_b:.3f} | {100 * rest_b / whole_b:.0f} % "
                f"| {rest_a:.3f} | {100 * rest_a / whole_a:.0f} % |")
    return rows


def write_markdown(path: Path, lines: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="dataset folder (default: the demo recipe's, else a small generated one)")
    parser.add_argument("--init-from", default=str(ROOT / "backend" / "checkpoints" / "demo"))
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="write the tables into this file between the script's markers")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall time, or this process's CPU time (steadier on a machine shared with other work)")
    parser.add_argument("--skip-sd15", action="store_true")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("FLAMEDIFF_CACHE", os.path.join(work, "cache"))  # a cold latent cache
        dataset = args.dataset or demo_dataset(work)
        loss_before, loss_after = first_losses(dataset, args.init_from, work)
        trainers = {name: make_trainer(dataset, args.init_from, work, name, fast)
                    for name, (_, fast) in VARIANTS.items()}
        results = measure(trainers, args.steps)
    whole_b, whole_a = results["before"][0], results["after"][0]
    splat_share = splat_seconds(results["after"][1]) / whole_a
    flags = f"--steps {args.steps} --threads {args.threads} --clock {args.clock}" + (" --skip-sd15" if args.skip_sd15 else "")
    lines = [f"`python benchmarks/bench_training.py {flags}` "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; {args.clock} seconds); means over {args.steps} steps after one warm-up, the two "
             "variants' steps interleaved in one run:", "", *table(results), "",
             f"- whole step after / before: **{whole_a / whole_b:.2f}x** (target <= 0.5x); splatting forward + "
             f"backward after: **{100 * splat_share:.0f} %** of the step (target <= 15 %)",
             f"- same numbers: step 0's loss {loss_before:.6f} before, {loss_after:.6f} after "
             f"(difference {abs(loss_before - loss_after):.1e})"]
    if not args.skip_sd15:
        old, new = sd15_splatter("torch"), sd15_splatter("numba")
        lines.append(f"- sd15 preset's field (32 features, 256x256 UV grid) on one 512 px frame: forward "
                     f"{old[0]:.2f} s -> {new[0]:.2f} s, forward + backward {old[1]:.2f} s -> {new[1]:.2f} s "
                     f"({old[1] / new[1]:.1f}x)")
    print("\n".join(lines))
    if args.markdown:
        write_markdown(Path(args.markdown), lines)


if __name__ == "__main__":
    main()
