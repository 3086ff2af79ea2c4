"""``flamediff serve`` and ``flamediff render``: the job service over HTTP, or in-process.

``render`` runs the same checks, job folder and worker code as the server, without a socket,
for TDs and render farms; rerunning it into the same ``--out`` renders only missing frames.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from typing import Any, TextIO

from flamediff.assets import cache_dir
from flamediff.errors import FlamediffError
from flamediff.formats.animation import ReadLimits
from flamediff.formats.ports import busy_port_message, free_port
from flamediff.formats.protocol import DEFAULT_PORT, setting
from flamediff.server.inputs import InputLimits, TrackingLimits
from flamediff.server.security import ConnectionLimits
from flamediff.devices import DEVICES, PRECISIONS
from flamediff.server.progress import Progress

#: The job settings ``render`` takes as options (``--checkpoint`` and ``--reference-shape`` name files).
RENDER_SETTINGS = ("steps", "guidance", "seed", "frames", "shape_from", "framing", "matte", "frames_per_batch",
                   "preview")


def _models_dir(path: str | None) -> str:
    return os.path.abspath(os.path.expanduser(path or os.path.join(cache_dir(), "models")))


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """``--name`` for the protocol's job setting ``name``: its type, default, choices and description."""
    entry = setting(name)
    option = "--" + name.replace("_", "-")
    if entry.kind == "bool":
        parser.add_argument(option, action="store_true", help=entry.description)
        return
    types = {"int": int, "float": float}
    parser.add_argument(option, type=types.get(entry.kind, str), default=entry.default, choices=entry.values or None,
                        help=f"{entry.description} (default {entry.default})" if entry.default is not None
                        else entry.description)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to render (default auto: CUDA when available, else an Apple GPU (mps), else CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="precision of the U-Nets (the VAE decodes in fp32): auto (default) = bf16 on CUDA, "
                             "fp32 on CPU; bf16 on a CPU without bf16 instructions is slower than fp32")
    parser.add_argument("--models-dir", metavar="DIR", default=None,
                        help="folder of checkpoint folders (default <cache>/models); shipped checkpoints and "
                             "hub ids already in the Hugging Face cache are listed too")
    parser.add_argument("--flame-asset", metavar="DIR", default=None,
                        help="FLAME asset folder; default: $FLAMEDIFF_FLAME_ASSET or the procedural head")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``render`` to flamediff's command line."""
    serve = subparsers.add_parser("serve", help="run the render backend (HTTP, token auth, job queue)",
                                  description="Serve the job API (/v1, OpenAPI at /docs) on loopback. A fresh "
                                              "token is written to --token-file (mode 0600); clients send it as "
                                              "'Authorization: Bearer <token>'. Unfinished jobs resume on start.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--jobs-dir", metavar="DIR", default=None, help="job folders (default <cache>/jobs)")
    serve.add_argument("--token-file", metavar="FILE", default=None,
                       help="where to write the access token (default <cache>/server/token)")
    serve.add_argument("--render-in", choices=("process", "thread"), default="process",
                       help="render in a child process (default: polling stays fast and a CUDA crash fails one "
                            "job, not the server) or in a thread of the server")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow binding a non-loopback address and any Host header (anyone with the token can "
                            "then render)")
    serve.add_argument("--allow-path", metavar="DIR", action="append", default=[],
                       help="a folder whose files clients may name by path (reference_path, animation_path, a "
                            "checkpoint folder); repeatable. Without it clients must upload")
    limits = InputLimits()
    serve.add_argument("--max-frames-per-job", type=_positive, default=limits.max_frames_per_job, metavar="N",
                       help=f"frames one job may render (default {limits.max_frames_per_job})")
    serve.add_argument("--max-frames-per-file", type=_positive, default=limits.animation.max_frames, metavar="N",
                       help=f"frames an animation file may hold (default {limits.animation.max_frames})")
    serve.add_argument("--max-animation-mb", type=_positive, default=limits.animation.max_bytes >> 20, metavar="MB",
                       help="decompressed size an animation file may have, checked from its array headers "
                            f"before reading (default {limits.animation.max_bytes >> 20})")
    serve.add_argument("--max-folder-frames", type=_positive, default=limits.max_folder_frames, metavar="N",
                       help="frames a zipped per-frame tracker folder may hold, counted from its member list "
                            f"before reading (default {limits.max_folder_frames})")
    connections = ConnectionLimits()
    serve.add_argument("--header-timeout", type=float, default=connections.header_timeout, metavar="S",
                       help="seconds a connection may take to send a request's headers before it is closed "
                            f"(default {connections.header_timeout:g})")
    serve.add_argument("--body-timeout", type=float, default=connections.body_timeout, metavar="S",
                       help=f"seconds a request body may take to arrive, else 408 (default {connections.body_timeout:g})")
    serve.add_argument("--max-connections", type=_positive, default=connections.max_connections, metavar="N",
                       help="open connections kept; past them the oldest one still sending its headers is closed "
                            f"(default {connections.max_connections})")
    tracking = TrackingLimits()
    serve.add_argument("--max-track-frames", type=_positive, default=tracking.max_frames, metavar="N",
                       help=f"video frames a tracking upload may hold (default {tracking.max_frames})")
    serve.add_argument("--max-track-seconds", type=float, default=tracking.max_seconds_of_video, metavar="S",
                       help=f"seconds a tracking video may last (default {tracking.max_seconds_of_video:g})")
    serve.add_argument("--track-time-budget", type=float, default=tracking.time_budget_s, metavar="S",
                       help=f"seconds a tracking task may run before it is stopped (default {tracking.time_budget_s:g})")
    serve.add_argument("--keep-tracks-hours", type=float, default=tracking.keep_hours, metavar="H",
                       help="hours finished and failed tracking tasks (uploads included) are kept before they are "
                            f"deleted (default {tracking.keep_hours:g})")
    _common(serve)
    serve.set_defaults(func=cmd_serve)

    render = subparsers.add_parser("render", help="render an animation without a server (resumable)",
                                   description="Render REF + ANIM into --out as frame_NNNN.png (Blender frame "
                                               "numbers) with control previews in --out/control. Rerun the same "
                                               "command to render only missing frames.")
    render.add_argument("--reference", required=True, metavar="IMAGE", help="reference portrait (PNG/JPEG)")
    render.add_argument("--animation", required=True, metavar="NPZ", help="animation file exported from Blender")
    render.add_argument("--out", required=True, metavar="DIR", help="output folder (one job per folder)")
    render.add_argument("--checkpoint", default=None, help="checkpoint name (see --models-dir) or folder")
    for name in RENDER_SETTINGS:
        _add_setting(render, name)
    render.add_argument("--reference-shape", metavar="NPY", default=None,
                        help=".npy of the reference identity's FLAME shape coefficients (for --shape-from reference; "
                             "without it the reference photo's shape is fitted as 'flamediff track' does)")
    _common(render)
    render.set_defaults(func=cmd_render)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from flamediff.server.app import create_app
    from flamediff.formats.protocol import default_token_file, is_loopback_host
    from flamediff.server.security import loopback_hosts, write_token_file
    from flamediff.server.service import build_service
    from flamediff.devices import pick_device

    if not is_loopback_host(args.host) and not args.allow_remote:
        raise FlamediffError(f"refusing to bind {args.host}: it is not a loopback address. Pass --allow-remote "
                             "to serve other machines (they need the token), or use --host 127.0.0.1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = pick_device(args.device)
    jobs_dir = os.path.abspath(os.path.expanduser(args.jobs_dir or os.path.join(cache_dir(), "jobs")))
    token_file = os.path.abspath(os.path.expanduser(args.token_file or default_token_file()))
    listening = bind_socket(args.host, args.port)  # before the token: a second start must not replace it
    token = write_token_file(token_file)
    limits = InputLimits(args.max_frames_per_job, ReadLimits(max_bytes=args.max_animation_mb << 20,
                                                             max_frames=args.max_frames_per_file),
                         max_folder_frames=args.max_folder_frames)
    service = build_service(jobs_dir, _models_dir(args.models_dir), device, args.flame_asset,
                            render_in=args.render_in, precision=args.precision, limits=limits,
                            allow_paths=[os.path.abspath(os.path.expanduser(p)) for p in args.allow_path])
    connections = ConnectionLimits(args.header_timeout, args.body_timeout, args.max_connections)
    app = create_app(service, token, allowed_hosts=None if args.allow_remote else loopback_hosts(args.host),
                     body_timeout=connections.body_timeout,
                     tracking=TrackingLimits(args.max_track_frames, args.max_track_seconds, args.track_time_budget,
                                             args.keep_tracks_hours))
    print(f"flamediff serve: http://{args.host}:{args.port} (device {device}, precision {args.precision}, "
          f"jobs in {jobs_dir})", flush=True)
    print(f"flamediff serve: token file {token_file} (readable only by you)", flush=True)
    print(f"flamediff serve: local paths {'under ' + ', '.join(args.allow_path) if args.allow_path else 'off'} "
          "(--allow-path)", flush=True)
    uvicorn.Server(uvicorn.Config(app, **server_options(connections))).run(sockets=[listening])
    return 0


def server_options(limits: "ConnectionLimits") -> dict[str, Any]:
    """``uvicorn.run``/``uvicorn.Config`` keywords of ``serve``: the guarded h11 protocol (header
    deadline, connection cap), 64 KiB of headers at most, 5 s keep-alive."""
    from flamediff.server.connections import guarded_protocol

    return {"http": guarded_protocol(limits), "h11_max_incomplete_event_size": 64 * 1024, "timeout_keep_alive": 5,
            "log_level": "warning", "access_log": False}


def bind_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts: when a backend already listens on
    ``port`` (another Blender on this machine started it), this one stops with a one-line error and
    leaves that backend's token file alone, so its clients keep working."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    listening = socket.socket(family, kind, proto)
    if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share the port
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(address)
    except OSError as exc:
        listening.close()
        raise FlamediffError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): {busy_port_message(port)} "
                             f"(another flamediff backend, or another program); use it, or start this one with another "
                             f"--port (e.g. --port {free_port()}, and the same port in the add-on's preferences)"
                             ) from None
    return listening


class ProgressBar:
    """Render progress on stderr (no dependency): a bar redrawn in place on a terminal (at most 10
    times a second), plain lines elsewhere (a log file gets one line per 10 %, never ``\r``).
    The frame count follows the percentage: frames denoised so far (``progress`` x frames; a
    batch is denoised together, so frames are written in bursts), with the written ones beside."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        # resolved now, not at import: sys.stderr may have been replaced since (pytest, IDEs)
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width, self._last, self.drawn = width, 0.0, False
        self._decile = -1

    def __call__(self, progress: Progress) -> None:
        total = progress.frames_total
        frames = min(total, int(progress.progress * total + 1e-9))
        eta = f"ETA {progress.eta_s:5.0f} s" if progress.eta_s is not None else "ETA     ? s"
        text = (f"{progress.progress * 100:5.1f}% frame {frames}/{total} ({progress.frames_done} written) "
                f"{eta}")
        if not self.terminal:
            decile = int(progress.progress * 10 + 1e-9)
            if decile > self._decile:
                self._decile = decile
                self.stream.write(f"flamediff render: {text.strip()}\n")
                self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last < 0.1 and progress.progress < 1.0:
            return
        self._last, self.drawn = now, True
        filled = int(round(progress.progress * self.width))
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {text}")
        self.stream.flush()


def _reference_shape(path: str) -> list[float]:
    """FLAME shape coefficients from a ``.npy`` (no pickles); a one-line error otherwise."""
    import numpy as np

    try:
        values = np.load(os.path.expanduser(path), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FlamediffError(f"--reference-shape {path}: not a readable .npy of shape coefficients "
                             f"({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})") from None
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "iuf":
        raise FlamediffError(f"--reference-shape {path}: holds {getattr(values, 'dtype', 'no array')}, not numbers")
    return [float(v) for v in values.reshape(-1)]


def cmd_render(args: argparse.Namespace) -> int:
    """``flamediff render``; file-system failures become one-line errors naming the path."""
    try:
        return _render(args)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise FlamediffError(f"cannot use{where}: {exc.strerror or exc} (check --out and the input paths)") from None
    except MemoryError:
        raise FlamediffError("out of memory reading the inputs; use a shorter animation") from None


def _render(args: argparse.Namespace) -> int:
    from flamediff.server.checkpoints import CheckpointRegistry
    from flamediff.server.jobs import JobFolder
    from flamediff.server.security import AllowedRoots
    from flamediff.server.service import check_request, read_local
    from flamediff.devices import pick_device
    from flamediff.server.job_execution import render_job
    from flamediff.server.renderers import InProcessRenderer

    settings = {name: getattr(args, name) for name in RENDER_SETTINGS}
    if args.checkpoint:
        folder = os.path.expanduser(args.checkpoint)
        settings["checkpoint"] = os.path.abspath(folder) if os.path.isdir(folder) else args.checkpoint
    if args.reference_shape:
        settings["reference_shape"] = _reference_shape(args.reference_shape)
    anywhere = AllowedRoots(None)  # the CLI's user names their own files
    reference = read_local(os.path.abspath(args.reference), "reference", anywhere)
    animation = read_local(os.path.abspath(args.animation), "animation", anywhere)
    renderer = InProcessRenderer(pick_device(args.device), args.flame_asset, args.precision)
    checked = check_request(reference, animation, settings, CheckpointRegistry(_models_dir(args.models_dir)), renderer)
    job = JobFolder(args.out)
    manifest, created = job.create_or_reuse(checked)
    job.clean_temporaries()
    for note in checked.notes:
        print(f"flamediff render: note: {note}", file=sys.stderr)
    missing = job.missing_frames()
    total = manifest["frames_total"]
    print(f"flamediff render: {args.out}: {total - len(missing)} of {total} frames already rendered, "
          f"{len(missing)} to render (checkpoint {checked.checkpoint['name']}, seed {checked.settings.seed})")
    job.requeue()
    started, bar = time.perf_counter(), ProgressBar()
    try:
        status = render_job(job, renderer, on_progress=bar)
    except KeyboardInterrupt:
        job.update(status="cancelled", phase="cancelled", frames_done=len(job.done_frames()))
        print("\nflamediff render: interrupted; frames already rendered are kept, rerun to finish", file=sys.stderr)
        return 130
    manifest = job.read()
    if bar.drawn:
        sys.stderr.write("\n")
    print(f"flamediff render: {status}: {manifest['frames_done']}/{total} frames in {args.out} "
          f"({len(missing)} rendered in {time.perf_counter() - started:.1f} s)")
    if status != "done":
        raise FlamediffError(f"{manifest.get('error') or status}; {manifest.get('advice') or ''}".strip("; "))
    return 0
