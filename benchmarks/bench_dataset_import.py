"""How fast ``flamediff dataset import`` turns a VHAP export into training frames.

Writes one subject of a VHAP export at NeRSemble's DS4 frame size (550 x 802, 4 cameras x 12
timesteps, the test suite's fixture writer: the procedural head rendered on white, fg masks,
flame_param files, transforms.json) and times the import at 128 and 512 px.

    python benchmarks/bench_dataset_import.py [--timesteps 12] [--cameras 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=12)
    parser.add_argument("--cameras", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_dataset_import import write_vhap_export

    from flamediff.assets import load_asset
    from flamediff.data.importing import import_dataset

    asset = load_asset()
    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / "074_EMO-1_v16_DS4"
        write_vhap_export(export, asset, 0, cameras=args.cameras, timesteps=args.timesteps, size=(550, 802))
        for resolution in (128, 512):
            start = time.perf_counter()
            index = import_dataset([str(export)], os.path.join(folder, f"out{resolution}"), asset,
                                   resolution=resolution, log=lambda message: None)
            took = time.perf_counter() - start
            print(f"{len(index)} frames of 550 x 802 -> {resolution} px: {took:.2f} s, "
                  f"{1000 * took / len(index):.0f} ms/frame")


if __name__ == "__main__":
    main()
