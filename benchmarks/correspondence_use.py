"""How much of the reference correspondence a checkpoint uses: its head colour error where the
correspondence knows the reference's colour and where it does not, against pasting that colour.

``python benchmarks/correspondence_use.py CHECKPOINT DATA [--identities 16] [--frames 4]``
renders each held-out identity's frames from its first clean frame (one step, guidance 1, the
dataset's annotated reference pose) and prints, per region of the head (the splatted field's
coverage), the mean over frames of the mean-colour error in 0-255 levels: the output where the
correspondence is known, where it is not, and the correspondence's own colour where known
("paste": what copying it onto the frame would score there).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from flamediff.assets import load_asset
from flamediff.data.dataset import read_dataset
from flamediff.data.splits import read_splits
from flamediff.evaluation.selection import reference_row, spread
from flamediff.flame.model import FlameModel
from flamediff.models import FlameDiffModel
from flamediff.models.correspondence import CORRESPONDENCE_CHANNELS
from flamediff.pipelines.render import FlameDiffPipeline, RenderSettings, image_to_tensor


def colour_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a[mask].mean(0) - b[mask].mean(0)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("data", help="a training dataset (its held-out split is used)")
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    asset = load_asset()
    pipeline = FlameDiffPipeline(FlameDiffModel.from_pretrained(args.checkpoint, asset=asset), FlameModel(asset),
                                 dtype=torch.float32)
    model = pipeline.model
    if not model.config.correspondence:
        raise SystemExit(f"{args.checkpoint} has no reference correspondence")
    index, resolution = read_dataset(args.data), model.config.resolution
    errors: dict[str, list[float]] = {"output, known": [], "output, unknown": [], "paste, known": []}
    known_area = unknown_area = 0
    for identity in read_splits(args.data)["heldout"][:args.identities]:
        reference = reference_row(index, identity)
        rows = spread(np.setdiff1d(index.samples_of_identity(identity), [reference]), args.frames)
        clip, pose = index.annotations.take_rows(rows), index.annotations.take_rows(np.array([reference]))
        frames = pipeline(index.load_frame(reference), clip, RenderSettings(steps=1, guidance=1.0, framing="camera"),
                          reference_pose=pose).frames
        view = pipeline.reference_view(image_to_tensor(index.load_frame(reference), resolution), pose)
        with torch.no_grad():
            maps = pipeline.control_maps(clip, resolution, None, view).numpy()
        for i, row in enumerate(rows):
            truth, output = index.load_frame(int(row)).astype(np.float64), frames[i][..., :3].astype(np.float64)
            head = np.abs(maps[i, ..., :model.control_channels]).sum(-1) > 0
            known = head & (maps[i, ..., -1] > 0)
            unknown = head & ~known
            known_area, unknown_area = known_area + known.sum(), unknown_area + unknown.sum()
            paste = (maps[i, ..., -CORRESPONDENCE_CHANNELS:-1] + 1.0) * 127.5
            for name, image, mask in (("output, known", output, known), ("output, unknown", output, unknown),
                                      ("paste, known", paste, known)):
                if mask.sum() > 20:
                    errors[name].append(colour_error(image, truth, mask))
    for name, values in errors.items():
        print(f"{name}: {np.mean(values):.2f} levels over {len(values)} frames")
    print(f"unknown share of the head: {unknown_area / (known_area + unknown_area):.0%}")


if __name__ == "__main__":
    main()
