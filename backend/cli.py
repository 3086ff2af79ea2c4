"""The ``flamediff`` command line (also ``python -m flamediff``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from flamediff import __version__
from flamediff.formats.animation import AnimationFormatError
from flamediff.formats.flame_asset import FLAME_SITE, FlameAssetError
from flamediff.formats.protocol import DEFAULT_PORT
from flamediff.errors import FlamediffError

DESCRIPTION = """\
flamediff turns a keyframed FLAME head rig into portrait frames: a learnable Gaussian feature
field on the FLAME surface is splatted into a control map that guides a reference-image
diffusion model. This command runs the backend's jobs without Blender.

FLAME asset: every command uses --flame-asset DIR, else $FLAMEDIFF_FLAME_ASSET, else a
licence-free procedural head generated once into ~/.cache/flamediff (or $FLAMEDIFF_CACHE).
"""


def _add_asset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flame-asset", metavar="DIR", default=None,
                        help="FLAME asset folder (model .pkl/.npz, head_template.obj, landmark embedding); "
                             "default: $FLAMEDIFF_FLAME_ASSET or the procedural head")


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report the environment and what is missing, with the fix for each."""
    problems: list[str] = []
    print(f"flamediff {__version__}")
    print(f"python          {platform.python_version()} ({sys.executable})")
    try:
        import torch
        print(f"torch           {torch.__version__}")
        if torch.cuda.is_available():
            print(f"cuda            {torch.version.cuda}, GPU: {torch.cuda.get_device_name(0)}")
        else:
            print("cuda            not available: rendering and training run on the CPU (slow at paper scale). "
                  "With an NVIDIA GPU, install the CUDA build: pip install torch==2.13.0 "
                  "(from PyPI on Linux, it is the CUDA build).")
    except ImportError:
        problems.append("torch is not installed: run 'make demo' or pip install torch==2.13.0")
    for module, why in (("diffusers", "the diffusion model"), ("smplx", "FLAME cross-checks"),
                        ("safetensors", "checkpoints"), ("huggingface_hub", "loading weights by hub id")):
        try:
            print(f"{module:<15} {importlib.metadata.version(module.replace('_', '-'))}")
            importlib.import_module(module)
        except (ImportError, importlib.metadata.PackageNotFoundError):
            problems.append(f"{module} is missing ({why}): pip install {module.replace('_', '-')}")
    try:
        import gsplat
        print(f"gsplat          {gsplat.__version__} (fast CUDA splatting; compiles its kernels on first use)")
    except ImportError:
        print("gsplat          not installed: the pure-torch splatter is used (fine on CPU; on a CUDA GPU "
              "pip install gsplat for speed)")
    _doctor_asset(args.flame_asset, problems)
    _doctor_tracking(problems)
    _doctor_checkpoint(problems)
    _doctor_port(args.port, problems)
    if problems:
        print("\nmissing:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("\nall good")
    return 0


def _doctor_tracking(problems: list[str]) -> None:
    """What ``flamediff track`` and Match Photo / Track Video need: the tracking extra."""
    missing = [module for module in ("mediapipe", "av", "cv2") if importlib.util.find_spec(module) is None]
    if missing:
        problems.append(f"tracking (flamediff track, Match Photo, Track Video) needs {', '.join(missing)}: "
                        "pip install 'flamediff[tracking]'")
        return
    print(f"tracking        mediapipe {importlib.metadata.version('mediapipe')}, PyAV "
          f"{importlib.metadata.version('av')}")


def _doctor_checkpoint(problems: list[str]) -> None:
    """The shipped demo checkpoint every render falls back to."""
    from flamediff.assets import DEMO_CHECKPOINT, DEMO_NAME
    from flamediff.server.checkpoints import describe

    folder = DEMO_CHECKPOINT
    info = describe(folder, DEMO_NAME, "shipped")
    if info is None:
        problems.append(f"the shipped checkpoint {folder} is missing or damaged (config.json, model.safetensors): "
                        "restore the folder from the repository (git checkout backend/checkpoints), or reinstall")
        return
    print(f"checkpoint      demo ({info.resolution} px, trained on {info.training_domain or 'its own data'}) {folder}")


def _doctor_port(port: int, problems: list[str]) -> None:
    """The port ``flamediff serve`` and the add-on use: free, flamediff's, or another program's."""
    from flamediff.formats.ports import busy_port_message, free_port, port_is_free

    if port_is_free(port):
        print(f"port            {port} is free for flamediff serve")
        return
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as response:
            answer = response.status
    except urllib.error.HTTPError as exc:
        answer = exc.code
    except OSError:
        answer = None
    if answer == 401:   # flamediff's health route asks for the token
        print(f"port            {port}: a flamediff backend is running there")
        return
    problems.append(f"{busy_port_message(port)}: stop it, or serve on another port (flamediff serve --port "
                    f"{free_port()}) and set that port in the add-on's preferences")


def _doctor_asset(path: str | None, problems: list[str]) -> None:
    from flamediff.assets import ASSET_ENV, load_asset, resolve_asset_folder

    source = "--flame-asset" if path else (ASSET_ENV if os.environ.get(ASSET_ENV) else "procedural head (default)")
    try:
        asset = load_asset(path)
    except FlameAssetError as exc:
        problems.append(str(exc))
        print(f"FLAME           {resolve_asset_folder(path)}: unusable (see below)")
        return
    print(f"FLAME           {asset.name} [{source}] {asset.folder}")
    print(f"                {asset.num_vertices} vertices, {asset.num_shape} shape + {asset.num_expression} expression "
          f"components, hash {asset.content_hash[:16]}")
    if asset.name == "procedural-head":
        print(f"                to use the real FLAME model, register at {FLAME_SITE} and pass --flame-asset DIR")


def cmd_assets_procedural_head(args: argparse.Namespace) -> int:
    from flamediff.formats.flame_asset import load_flame_asset
    from flamediff.formats.procedural_head import ProceduralHeadSpec, write_procedural_head

    started = time.perf_counter()
    write_procedural_head(args.out, ProceduralHeadSpec(seed=args.seed))
    asset = load_flame_asset(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s: {asset.num_vertices} vertices, "
          f"hash {asset.content_hash[:16]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flamediff.assets import load_asset
    from flamediff.demo import run_demo

    asset = load_asset(args.flame_asset)
    print(f"FLAME asset: {asset.name} ({asset.folder})")
    if args.addon_zip:
        from flamediff.demo import run_product_demo
        run_product_demo(asset, args.out, os.path.abspath(args.addon_zip), num_frames=args.frames, steps=args.steps)
    else:
        run_demo(asset, args.out, num_frames=args.frames, resolution=args.resolution)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from flamediff.training.train import train

    train(_train_config(args.config), max_steps=args.max_steps)
    return 0


def _train_config(path: str):
    """The training config, or a one-line error whatever the file holds (binary, broken YAML,
    values of the wrong type): a typo in a config must not end in a traceback."""
    from flamediff.training.config import TrainConfig

    try:
        from yaml import YAMLError
    except ImportError:  # without PyYAML only .json configs load; a .yaml one fails with an ImportError
        YAMLError = ValueError  # noqa: N806
    try:
        config = TrainConfig.from_file(path)
    except FlamediffError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError, YAMLError) as exc:
        detail = " ".join(str(exc).split())  # YAML errors span lines
        raise FlamediffError(f"training config {path} cannot be used: {type(exc).__name__}: {detail}") from None
    for key in ("dataset", "output_dir"):  # TrainConfig.validate does not check their types (yet)
        if not isinstance(getattr(config, key), str):
            raise FlamediffError(f"training config {path}: '{key}' must be a folder path, "
                                 f"got {getattr(config, key)!r:.60}")
    return config


def cmd_convert(args: argparse.Namespace) -> int:
    """A tracker's files (or a flamediff file) -> one flamediff animation file, saying what was
    mapped, what was dropped and why."""
    from flamediff.formats.animation import save_animation
    from flamediff.formats.trackers import fps_in_file, read_animation_input

    if not args.output.endswith(".npz"):
        raise FlamediffError(f"the output {args.output} must end in .npz (flamediff's animation format)")
    result = read_animation_input(args.input, fps=args.fps, camera_index=args.camera_index,
                                  default_camera=args.default_camera)
    clip = result.clip
    for line in result.report.lines():
        print(line)
    save_animation(args.output, clip)
    timing = (f"{clip.fps:g} fps" if fps_in_file(clip) else
              "no frame rate (recorded as such: Blender keys one file frame per scene frame; pass --fps to set one)")
    print(f"wrote {args.output}: {clip.num_frames} frames {int(clip.frame[0])}..{int(clip.frame[-1])}, {timing}")
    return 0


def _render_reads_trackers(render: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``render --animation`` through the tracker layer: a tracker's file or folder (or a flamediff
    file without a camera) is converted first, with the default portrait camera when it has none,
    and the report is printed; a flamediff file with a camera goes to ``render`` untouched."""
    def run(args: argparse.Namespace) -> int:
        import tempfile

        from flamediff.formats.animation import save_animation
        from flamediff.formats.trackers import OWN_FILE, read_animation_input

        result = read_animation_input(args.animation)
        if result.report.tool == OWN_FILE and not result.default_camera:
            return render(args)
        for line in result.report.lines():
            print(f"flamediff render: {line}")
        with tempfile.TemporaryDirectory(prefix="flamediff-render-") as folder:
            path = os.path.join(folder, "animation.npz")
            save_animation(path, result.clip)
            return render(argparse.Namespace(**{**vars(args), "animation": path}))
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flamediff", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"flamediff {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="check what a render and a track need (Python, torch, CUDA/GPU, "
                                                "gsplat, the FLAME asset, the tracking extra, the shipped "
                                                "checkpoint, the port); say what is missing and how to fix it")
    _add_asset_argument(doctor)
    doctor.add_argument("--port", type=int, default=DEFAULT_PORT, help="the port flamediff serve will use "
                        f"(default {DEFAULT_PORT})")
    doctor.set_defaults(func=cmd_doctor)

    assets = commands.add_parser("assets", help="create FLAME assets")
    asset_commands = assets.add_subparsers(dest="asset_command", metavar="ASSET")
    head = asset_commands.add_parser("procedural-head", help="write the licence-free procedural head as a "
                                                             "FLAME-format asset folder (loads in smplx.FLAME)")
    head.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    head.add_argument("--seed", type=int, default=0, help="generator seed (default 0: the standard head)")
    head.set_defaults(func=cmd_assets_procedural_head)

    demo = commands.add_parser("demo", help="with --addon-zip: the whole product (the built add-on keys a rig in the bpy "
                                            "module, renders it through a backend subprocess, frames on the "
                                            "timeline of out/demo/demo.blend); without: pose the FLAME asset "
                                            "and write meshes and preview images")
    demo.add_argument("--out", default="out/demo", metavar="DIR", help="output folder (default out/demo)")
    demo.add_argument("--frames", type=int, default=24, help="number of frames (default 24)")
    demo.add_argument("--resolution", type=int, default=256, help="preview size in pixels (default 256)")
    demo.add_argument("--addon-zip", metavar="ZIP", default=None,
                      help="the built add-on (python build_addon.py): run the Blender round trip (needs bpy)")
    demo.add_argument("--steps", type=int, default=0,
                      help="denoising steps of the round trip (default 0: the demo checkpoint's own)")
    _add_asset_argument(demo)
    demo.set_defaults(func=cmd_demo)

    from flamediff.training.config import config_keys_help
    train = commands.add_parser(
        "train", help="train a model (stage 'vae', '1' or '2') from a JSON/YAML config; resumes from the newest "
                      "checkpoint in output_dir; several GPUs: 'accelerate launch --multi_gpu -m flamediff train ...', several CPU processes: 'torchrun --nproc_per_node N -m flamediff train ...'",
        description=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", required=True, metavar="FILE", help="training config (.json or .yaml)")
    train.add_argument("--max-steps", type=int, default=None, metavar="N",
                       help="stop after N more steps (a checkpoint is written; run again to continue)")
    train.set_defaults(func=cmd_train)

    convert = commands.add_parser(
        "convert", help="convert a face tracker's output (a file or a folder of per-frame files) to a flamediff "
                        "animation file, printing what was mapped and what was dropped",
        description="Reads VHAP, GaussianAvatars, SMIRK, DECA / SPECTRE, EMOCA (codedicts or --save_codes folders), "
                    "metrical-tracker / FlashAvatar (.frame), INSTA (flame/exp), EMOTE (flame_*.pkl), smplx keyword "
                    "and FLAME-native (pose[15], betas[400]) files. Torch and pickle files are read without running "
                    "any code from them. See docs/TRACKERS.md for what each tool maps.")
    convert.add_argument("input", metavar="IN", help="tracker file or folder (per-frame files sorted by the frame "
                                                     "number in their names)")
    convert.add_argument("output", metavar="OUT.npz", help="flamediff animation file to write")
    convert.add_argument("--fps", type=float, default=None,
                         help="the source's frame rate (tracker files carry none; default: record that there is none)")
    convert.add_argument("--camera-index", type=int, default=None, metavar="N",
                         help="which view of a multi-view export (VHAP transforms.json) to import (default: the first)")
    convert.add_argument("--default-camera", action="store_true",
                         help="when the source has no camera, add flamediff's default portrait camera (the server "
                              "and 'render' need one)")
    convert.set_defaults(func=cmd_convert)

    from flamediff.data.cli import register_cli as register_dataset_cli
    from flamediff.evaluation.cli import register_cli as register_eval_cli
    from flamediff.evaluation.results import register_cli as register_results_cli
    from flamediff.server.cli import register_cli as register_server_cli
    from flamediff.tracking.cli import register_cli as register_tracking_cli
    register_dataset_cli(commands)
    register_server_cli(commands)
    render = commands.choices["render"]
    render.set_defaults(func=_render_reads_trackers(render.get_default("func")))
    register_eval_cli(commands)
    register_results_cli(commands)
    register_tracking_cli(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except (FlameAssetError, AnimationFormatError, FlamediffError) as exc:
        print(f"flamediff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flamediff {args.command}: interrupted", file=sys.stderr)
        return 130
