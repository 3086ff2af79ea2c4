"""Export speed of the Blender add-on: F-curve fast path vs the naive frame_set-per-frame loop.

Usage: python benchmarks/bench_export.py [--frames N] [--quick] [--json OUT]

Builds the extension zip, installs it into the ``bpy`` module in a private user folder, adds a rig
of the procedural head with 100 shape + 50 expression coefficients, keys every one of N frames
(all coefficients, all joint rotations, translation; static scene camera) and times, in one run,
``flamediff.export_animation`` with the fast path (``method="AUTO"``, which picks it) and with
``method="FULL"`` (``frame_set`` per frame). Prints both times, their ratio and the largest
difference between the two files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "bl_ext.user_default.flamediff"


def parent(args: argparse.Namespace) -> None:
    """Outside bpy: build the zip and the asset, then re-run this file with bpy's user folder set."""
    sys.path.insert(0, ROOT)
    from flamediff.assets import resolve_asset_folder
    from build_addon import build

    work = tempfile.mkdtemp(prefix="flamediff-bench-")
    zip_path = build(os.path.join(work, "dist"))
    env = dict(os.environ, BLENDER_USER_RESOURCES=os.path.join(work, "user"), FLAMEDIFF_BENCH_CHILD="1")
    command = [sys.executable, __file__, "--frames", str(args.frames), "--zip", zip_path,
               "--asset", resolve_asset_folder(), "--work", work]
    subprocess.run(command + (["--json", args.json] if args.json else []), env=env, check=True)


def child(args: argparse.Namespace) -> None:
    import bpy
    import numpy as np

    sys.path.insert(0, ROOT)
    from flamediff.formats.animation import load_animation, make_clip, save_animation

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=args.zip, repo="user_default", enable_on_install=True)
    bpy.context.preferences.addons[MODULE].preferences.asset_folder = args.asset
    scene = bpy.context.scene
    scene.render.fps = 25
    bpy.ops.flamediff.add_rig()
    rig = bpy.context.active_object
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(camera)
    camera.location, camera.rotation_euler = (0.0, -0.8, 0.0), (np.pi / 2, 0.0, 0.0)
    scene.camera = camera

    rng = np.random.default_rng(0)
    n = args.frames
    clip = make_clip(n, num_shape=100, num_expression=50, flame_asset=dict(rig_identity(rig)),
                     shape=rng.normal(0, 1, (n, 100)), expression=rng.normal(0, 1, (n, 50)),
                     **{name: rng.normal(0, 0.2, (n, 3)) for name in
                        ("global_pose", "neck_pose", "jaw_pose", "left_eye_pose", "right_eye_pose", "translation")})
    source = os.path.join(args.work, "source.npz")
    save_animation(source, clip)
    started = time.perf_counter()
    bpy.ops.flamediff.import_animation(filepath=source)
    import_s = time.perf_counter() - started

    times, files = {}, {}
    for method in ("AUTO", "FULL"):
        files[method] = os.path.join(args.work, f"export_{method}.npz")
        started = time.perf_counter()
        bpy.ops.flamediff.export_animation(filepath=files[method], frame_start=1, frame_end=n, method=method)
        times[method] = time.perf_counter() - started
    fast, full = load_animation(files["AUTO"]), load_animation(files["FULL"])
    diff = max(float(np.abs(getattr(fast, k) - getattr(full, k)).max()) for k in
               ("shape", "expression", "global_pose", "jaw_pose", "translation", "K", "R", "t"))
    report = {"frames": n, "import_s": import_s, "fast_s": times["AUTO"], "frame_set_s": times["FULL"],
              "ratio": times["FULL"] / times["AUTO"], "max_abs_difference": diff,
              "fast_ms_per_frame": 1000 * times["AUTO"] / n, "frame_set_ms_per_frame": 1000 * times["FULL"] / n}
    print(f"{n} keyed frames, 100 shape + 50 expression coefficients, static camera")
    print(f"  import (keying)        {import_s:8.3f} s")
    print(f"  export fast path       {times['AUTO']:8.3f} s  ({report['fast_ms_per_frame']:.3f} ms/frame)")
    print(f"  export frame_set loop  {times['FULL']:8.3f} s  ({report['frame_set_ms_per_frame']:.3f} ms/frame)")
    print(f"  ratio                  {report['ratio']:8.1f} x   max |fast - frame_set| = {diff:.2e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)


def rig_identity(rig) -> dict:
    return {"name": rig["flamediff_asset_name"], "hash": rig["flamediff_asset_hash"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 frames")
    parser.add_argument("--json", default="")
    parser.add_argument("--zip", help=argparse.SUPPRESS)
    parser.add_argument("--asset", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.frames = 100
    child(args) if os.environ.get("FLAMEDIFF_BENCH_CHILD") else parent(args)


if __name__ == "__main__":
    main()
