"""``python -m flamediff.server serve|render ...``: the same commands as ``flamediff serve|render``,
usable before (or without) their wiring into ``backend/cli.py``."""

from __future__ import annotations

import argparse
import sys

from flamediff.errors import FlamediffError
from flamediff.formats.animation import AnimationFormatError
from flamediff.formats.flame_asset import FlameAssetError
from flamediff.server.cli import register_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flamediff.server")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_cli(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (FlameAssetError, AnimationFormatError, FlamediffError) as exc:
        print(f"flamediff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
