"""Speed of ``flamediff track`` on a 10 s, 25 fps video (250 frames), CPU.

Usage: python benchmarks/bench_tracking.py [--frames 250] [--resolution 512] [--work DIR] [--json OUT]

Makes the video once (cached in ``--work``): a continuous procedural clip (the dataset's "real"
sequences: smooth expression, jaw, gaze, blinks, head motion, a slowly drifting near-frontal
camera) encoded as H.264 by PyAV. Then times the whole ``flamediff track VIDEO --out ...`` command
in a subprocess (start-up and file writing included) and prints the split its report records:
MediaPipe landmarks (decoding included), the fit, the overlay video.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_video(path: str, frames: int, resolution: int) -> None:
    """A procedural clip of ``frames`` frames as an MP4 at 25 fps."""
    from flamediff.assets import load_asset
    from flamediff.tracking.evaluate import procedural_clip
    from flamediff.tracking.media import FrameWriter

    writer = FrameWriter(path, fps=25.0, size=(resolution, resolution), single=False)
    for case in procedural_clip(load_asset(None), identity=2, frames=frames, resolution=resolution):
        writer.write(case.image)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--work", default=os.path.join(ROOT, "out", "bench_tracking"))
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    video = os.path.join(args.work, f"procedural_{args.frames}f_{args.resolution}px.mp4")
    if not os.path.isfile(video):
        print(f"rendering {args.frames} procedural frames into {video} ...", flush=True)
        make_video(video, args.frames, args.resolution)
    out = os.path.join(args.work, "anim.npz")
    command = [sys.executable, "-m", "flamediff", "track", video, "--out", out, "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    total = time.perf_counter() - start
    with open(os.path.join(args.work, "anim_track.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    result = {"frames": report["frames"], "resolution": args.resolution, "total_s": round(total, 1),
              **{f"{name}_s": value for name, value in report["seconds"].items()},
              "mean_landmark_error_px": round(report["mean_landmark_error_px"], 2),
              "frames_without_face": len(report["frames_without_face"]), "cpu_threads": os.cpu_count()}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
