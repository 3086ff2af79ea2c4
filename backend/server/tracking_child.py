"""``flamediff track`` as the server's child: it dies with the server.

The server starts ``python -m flamediff.server.tracking_child <server pid> <track arguments>``. A
watchdog thread ends the child within half a second of the server's death (its parent id
changes when the server is gone, however it died: SIGKILL included), so a restarted server never
finds an orphan still tracking. Files the child writes are private (umask 077), like job files.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

#: Exit status of a child whose server died.
ORPHANED = 75


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(ORPHANED)
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    """Watch the server, then run ``flamediff track`` with ``argv[1:]``; errors as one
    ``flamediff track: error:`` line, as the command prints them."""
    parent, arguments = int(argv[0]), argv[1:]
    os.umask(0o077)
    threading.Thread(target=_watch, args=(parent,), name="server-watchdog", daemon=True).start()
    from flamediff.tracking.cli import register_cli

    parser = argparse.ArgumentParser(prog="flamediff")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["track", *arguments])
    try:
        return int(args.func(args))
    except ValueError as exc:  # flamediff's own errors (and the format and asset errors) are ValueErrors
        print(f"flamediff track: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
