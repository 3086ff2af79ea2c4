"""Tracking accuracy figures for docs/TRACKING.md (issue 17).

Usage: python benchmarks/tracking_figures.py [--identities 8] [--out docs/TRACKING.md]

1. Procedural renders with known parameters (``flamediff.tracking.evaluate``): ``--identities``
   identities x 11 yaws (0, +-15 ... +-75 deg; pitch +-10 deg; random expression, jaw, gaze),
   256 px, each fitted as a single photo with the procedural head's MediaPipe table and with the
   iBUG-51 mapping. Per |yaw| bucket: how often MediaPipe finds the face, then over the frames
   where it did: the fitted iBUG landmarks' reprojection error against their true projection (px),
   the vertex error with the head pose removed over the face and over the whole head (mm; beside
   each the rest head's, the do-nothing baseline) and the head-pose error (deg). The "clips" rows:
   ``--identities / 2`` continuous 25-frame clips (near-frontal, drifting camera), each fitted as
   one video (one shape, smooth motion).
2. scikit-image's ``astronaut`` photo through ``flamediff track``: the overlay picture
   (docs/tracking_astronaut.png) and the mean landmark error against MediaPipe's points.

Writes the tables into ``--out`` between the ``<!-- figures -->`` markers (the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAWS = [0.0, -15.0, 15.0, -30.0, 30.0, -45.0, 45.0, -60.0, 60.0, -75.0, 75.0]
CLIP_FRAMES = 25
BEGIN, END = "<!-- figures -->", "<!-- /figures -->"


def procedural_table(identities: int) -> str:
    from flamediff.assets import load_asset
    from flamediff.tracking.evaluate import (
        evaluate_cases,
        procedural_cases,
        procedural_clip,
    )
    from flamediff.tracking.fit import FitSettings

    asset = load_asset(None)
    cases = [case for identity in range(identities) for case in procedural_cases(asset, 100 + identity, YAWS)]
    clips = [procedural_clip(asset, 200 + identity, CLIP_FRAMES) for identity in range(identities // 2)]
    rows = [("| landmarks | abs(yaw) deg | face found | landmark error px | face vertex error mm (rest head) "
             "| all-vertex error mm (rest head) | pose error deg |"), "|---|---|---|---|---|---|---|"]
    for landmarks in ("auto", "ibug"):
        settings = FitSettings(landmarks=landmarks)
        errors = evaluate_cases(asset, cases, settings)
        buckets = defaultdict(list)
        for error in errors:
            buckets[str(round(abs(error.yaw)))].append(error)
        buckets["all"] = errors
        buckets["clips"] = [error for clip in clips for error in evaluate_cases(asset, clip, settings, clip=True)]
        name = "MediaPipe table" if landmarks == "auto" else "iBUG-51 mapping"
        for yaw, bucket in buckets.items():
            rows.append(f"| {name} | {yaw} | {_row(bucket)} |")
    return "\n".join(rows)


def _row(errors: list) -> str:
    found = [e for e in errors if e.found]
    if not found:
        return f"0/{len(errors)} | - | - | - | -"

    def mean(name: str) -> float:
        return float(np.mean([getattr(e, name) for e in found]))
    return (f"{len(found)}/{len(errors)} | {mean('landmark_px'):.2f} | {mean('face_mm'):.2f} ({mean('rest_face_mm'):.2f}) | "
            f"{mean('vertex_mm'):.2f} ({mean('rest_vertex_mm'):.2f}) | {mean('pose_degrees'):.1f}")


def astronaut(docs: str) -> str:
    import skimage.data
    from PIL import Image

    with tempfile.TemporaryDirectory() as work:
        photo = os.path.join(work, "astronaut.png")
        Image.fromarray(skimage.data.astronaut()).save(photo)
        out = os.path.join(work, "astronaut.npz")
        subprocess.run([sys.executable, "-m", "flamediff", "track", photo, "--out", out, "--quiet"], check=True)
        shutil.copy(os.path.join(work, "astronaut_overlay.png"), os.path.join(docs, "tracking_astronaut.png"))
        with open(os.path.join(work, "astronaut_track.json"), encoding="utf-8") as handle:
            report = json.load(handle)
    return (f"scikit-image `astronaut` (512 x 512): {report['embedding']} landmarks, mean landmark error "
            f"{report['mean_landmark_error_px']:.2f} px against MediaPipe's points, fitted focal length "
            f"{report['focal_px']:.0f} px, {report['seconds']['fit']:.1f} s to fit.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "TRACKING.md"))
    args = parser.parse_args()
    command = f"python benchmarks/tracking_figures.py --identities {args.identities}"
    body = "\n\n".join([f"Measured with `{command}`.", procedural_table(args.identities),
                        astronaut(os.path.dirname(args.out))])
    text = f"{BEGIN}\n{END}\n"
    if os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as handle:
            text = handle.read()
    head, rest = text.split(BEGIN, 1)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}")
    print(body)


if __name__ == "__main__":
    main()
