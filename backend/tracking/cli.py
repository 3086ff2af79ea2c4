"""``flamediff track IMAGE|VIDEO|FOLDER --out anim.npz``: a photo or a performance onto the FLAME rig."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import numpy as np

from flamediff.tracking.fit import FitSettings

#: Exit status of a run stopped by --max-frames or --time-budget (its first frames are written).
STOPPED = 3

DESCRIPTION = """\
Fits the FLAME rig to a photo, a video or a folder of frames (sorted by the number in their names):
MediaPipe's face mesh finds 478 landmarks per frame (its models ship inside the mediapipe wheel;
nothing is downloaded), then one shape for the whole input and per-frame expression, global / neck
/ jaw / eye poses, translation and one focal length are fitted by optimisation, with priors on the
coefficients and smooth motion between frames. Writes:

  OUT.npz                 the standard animation file, camera included (still camera, moving head)
  OUT_overlay.png|.mp4    the fitted mesh and landmarks (green: MediaPipe, red: fit) over the input
  OUT_track.json          the landmark error per frame (pixels), frames without a face, timings

With --max-frames or --time-budget a long input is stopped early: the frames done by then are
fitted and written (no overlay), and the command exits with status 3 saying why.

Needs the tracking extra: pip install 'flamediff[tracking]'. Frames where MediaPipe finds no face
(e.g. profiles) are listed and their parameters are interpolated by the smoothness term.
"""


def cmd_track(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flamediff.assets import load_asset
    from flamediff.formats.animation import save_animation
    from flamediff.tracking.media import open_footage
    from flamediff.tracking.track import StopRule, track_footage, write_overlay, write_report

    stop = StopRule(args.max_frames, args.time_budget)
    footage = open_footage(args.input, args.fps, count_frames=args.max_frames is None)
    asset = load_asset(args.flame_asset)
    stem = os.path.splitext(args.out)[0]
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if args.progress_file:
            _write_progress(args.progress_file, stage, done, total)
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="frame" if stage != "fit" else "clip",
                                     disable=args.quiet)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    settings = FitSettings(fov_y_degrees=args.fov, steps=args.steps)
    tracked = track_footage(footage, asset, settings, progress, first_frame=args.first_frame, stop=stop)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_animation(args.out, tracked.clip)
    overlay = None
    if not args.no_overlay and not tracked.stopped:
        overlay = f"{stem}_overlay{'.png' if footage.kind == 'image' else '.mp4'}"
        write_overlay(tracked, asset, overlay, progress)
    write_report(tracked, f"{stem}_track.json")
    if tracked.stopped:
        print(f"flamediff track: error: {tracked.stopped}: stopped after its first {tracked.footage.count} "
              f"frame(s), which are fitted and written to {args.out}", file=sys.stderr)
        return STOPPED
    for note in footage.notes:
        print(f"flamediff track: {note}")
    missing = tracked.missing_frames
    if missing:
        print(f"flamediff track: no face found in {len(missing)} of {tracked.footage.count} frames ({_ranges(missing)}): "
              "their parameters are interpolated from the neighbouring frames")
    error = tracked.fit.error_px
    seconds = ", ".join(f"{name} {value:.1f} s" for name, value in tracked.seconds.items())
    print(f"flamediff track: {tracked.footage.count} frame(s) of {args.input} -> {args.out} "
          f"({tracked.fit.embedding_kind} landmarks, mean error {float(np.nanmean(error)):.2f} px; "
          f"{seconds})" + (f"; overlay {overlay}" if overlay else ""))
    return 0


def _write_progress(path: str, stage: str, done: int, total: int) -> None:
    """``{stage, done, total}`` as JSON, replaced atomically (the server polls it)."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump({"stage": stage, "done": done, "total": total}, handle)
    os.replace(partial, path)


def _above_zero(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` above 0."""
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value
    return parse


def _ranges(frames: list[int]) -> str:
    """``[2, 3, 4, 9]`` -> ``"2-4, 9"``."""
    runs: list[list[int]] = []
    for frame in frames:
        if runs and frame == runs[-1][-1] + 1:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``track`` to an argparse subparsers object."""
    track = subparsers.add_parser("track", help="fit the FLAME rig to a photo, a video or a folder of frames "
                                                "(MediaPipe landmarks + optimisation) and write an animation file",
                                  description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    track.add_argument("input", metavar="IMAGE|VIDEO|FOLDER", help="a photo, a video or a folder of frames")
    track.add_argument("--out", required=True, metavar="OUT.npz", help="animation file to write")
    track.add_argument("--flame-asset", default=None, metavar="DIR",
                       help="FLAME asset folder (default: $FLAMEDIFF_FLAME_ASSET, else the procedural head)")
    track.add_argument("--fps", type=float, default=None,
                       help="frame rate of the animation (default: the video's; 25 for photos and folders)")
    track.add_argument("--first-frame", type=int, default=1, help="frame number of the first frame (default 1)")
    track.add_argument("--fov", type=float, default=FitSettings.fov_y_degrees, metavar="DEGREES",
                       help=f"initial vertical field of view; the focal length is then fitted "
                            f"(default {FitSettings.fov_y_degrees:g})")
    track.add_argument("--steps", type=int, default=FitSettings.steps,
                       help=f"optimisation steps after the rigid alignment (default {FitSettings.steps})")
    track.add_argument("--max-frames", type=_above_zero(int), default=None, metavar="N",
                       help="stop after N frames, keeping them (exit status 3 when the input holds more)")
    track.add_argument("--time-budget", type=_above_zero(float), default=None, metavar="SECONDS",
                       help="stop taking new frames after SECONDS, keeping those done (exit status 3)")
    track.add_argument("--no-overlay", action="store_true", help="skip the overlay picture / video")
    track.add_argument("--quiet", action="store_true", help="no progress bars")
    track.add_argument("--progress-file", default=None, metavar="JSON",
                       help="keep {stage, done, total} in this file while running (what 'serve' polls)")
    track.set_defaults(func=cmd_track)
    return track
