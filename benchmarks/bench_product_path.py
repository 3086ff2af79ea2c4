"""What a render costs through the product's paths, against the pipeline call it wraps.

    python benchmarks/bench_product_path.py [--frames 8] [--steps 12] [--framing head] [--repeats 3]
                                            [--json OUT]

The shipped demo checkpoint renders the demo animation (a 480x270 shot) with the same settings
through each path; rows (best of ``--repeats`` unless marked once):
- ``pipeline``: ``FlameDiffPipeline.stream`` with the model loaded, frames consumed, nothing written;
- ``cli job (warm)``: ``render_job`` on a new job folder with the model already loaded (what
  ``flamediff render`` and a warm server's worker do once a job starts), timed around the call;
- ``cli job (cold)``, once: the same with a fresh renderer (loads the model);
- ``flamediff render process``, once: the whole command as a user runs it (Python start, imports);
- ``server job (cold)`` once and ``(warm)``: ``flamediff serve`` in a subprocess (the model in
  its child render process); in-job time from the manifest (``finished - started``) and wall time
  from POST to done as a client sees it.
The ratio ``in-job / pipeline`` is the product's overhead (target <= 1.2 for a warm server).
``--profile`` prints where a warm CLI job spends its time beyond the pipeline (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

from bench_server_load import start_server   # benchmarks/ is on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best(times: list[float]) -> float:
    return min(times)


def make_inputs(folder: str, frames: int) -> tuple[bytes, bytes]:
    from flamediff.assets import load_asset
    from flamediff.demo import DEMO_CHECKPOINT, demo_animation
    from flamediff.formats.animation import save_animation

    path = os.path.join(folder, "anim.npz")
    save_animation(path, demo_animation(load_asset(), frames, resolution=270, aspect=16 / 9))
    with open(os.path.join(DEMO_CHECKPOINT, "reference.png"), "rb") as handle:
        reference = handle.read()
    with open(os.path.join(folder, "ref.png"), "wb") as handle:
        handle.write(reference)
    with open(path, "rb") as handle:
        return reference, handle.read()


def time_pipeline(pipeline, reference: bytes, animation: bytes, settings: dict, repeats: int) -> float:
    from flamediff.server.inputs import parse_settings, read_animation, read_reference_image
    from flamediff.server.job_execution import pipeline_settings

    image = read_reference_image(reference).pixels
    clip, _ = read_animation(animation)
    job_settings = parse_settings(settings)
    render_settings = pipeline_settings(job_settings, pipeline.resolved_steps(job_settings.steps),
                                        job_settings.frames_per_batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _piece in pipeline.stream(image, clip, render_settings):
            pass
        times.append(time.perf_counter() - started)
    return best(times)


def cli_job(renderer, folder: str, reference: bytes, animation: bytes, settings: dict) -> tuple[float, dict]:
    """(seconds inside render_job, the job's checkpoint record)."""
    from flamediff.server.checkpoints import CheckpointRegistry
    from flamediff.server.jobs import JobFolder
    from flamediff.server.service import check_request
    from flamediff.server.job_execution import render_job

    checked = check_request(reference, animation, settings, CheckpointRegistry(os.path.join(folder, "models")),
                            renderer)
    job = JobFolder(os.path.join(folder, uuid.uuid4().hex))
    job.create_or_reuse(checked)
    started = time.perf_counter()
    status = render_job(job, renderer)
    elapsed = time.perf_counter() - started
    if status != "done":
        raise SystemExit(f"cli job {status}: {job.read().get('error')}")
    return elapsed, checked.checkpoint


def cli_process(folder: str, settings: dict) -> float:
    """Wall seconds of a whole ``flamediff render`` process (interpreter, imports, model load, job)."""
    command = [sys.executable, "-m", "flamediff", "render", "--reference", os.path.join(folder, "ref.png"),
               "--animation", os.path.join(folder, "anim.npz"), "--out", os.path.join(folder, uuid.uuid4().hex),
               "--device", "cpu", "--models-dir", os.path.join(folder, "models")]
    for name, value in settings.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    return time.perf_counter() - started


def _request(url: str, token: str | None, body: bytes | None = None, content_type: str | None = None) -> dict:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, (filename, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def server_job(url: str, token: str, reference: bytes, animation: bytes, settings: dict) -> tuple[float, float]:
    """(in-job seconds from the manifest, wall seconds from POST to done)."""
    body, content_type = _multipart({"reference": ("ref.png", reference), "animation": ("anim.npz", animation),
                                     "settings": ("", json.dumps(settings).encode())})
    started = time.perf_counter()
    job = _request(f"{url}/v1/jobs", token, body, content_type)
    while True:
        view = _request(f"{url}/v1/jobs/{job['id']}", token)
        if view["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.02)
    wall = time.perf_counter() - started
    if view["status"] != "done":
        raise SystemExit(f"server job {view['status']}: {view.get('error')}")
    return view["finished"] - view["started"], wall


def wait_up(url: str, process: subprocess.Popen) -> None:
    for _ in range(1200):
        if process.poll() is not None:
            raise SystemExit("the server exited; see its log")
        try:
            _request(f"{url}/v1/health", None)
            return
        except urllib.error.HTTPError:
            return   # 401 without a token: it answers
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not answer in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--framing", default="head", choices=("head", "camera"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    from flamediff.server.renderers import InProcessRenderer

    folder = tempfile.mkdtemp(prefix="flamediff-product-")
    os.environ.setdefault("FLAMEDIFF_CACHE", os.path.join(folder, "cache"))
    reference, animation = make_inputs(folder, args.frames)
    settings = {"steps": args.steps, "framing": args.framing, "frames_per_batch": args.frames, "checkpoint": "demo"}
    rows: dict[str, float] = {}

    started = time.perf_counter()
    cold = InProcessRenderer("cpu")
    rows["cli job (cold, once)"], checkpoint = cli_job(cold, folder, reference, animation, {**settings, "seed": 100})
    rows["pipeline"] = time_pipeline(cold.pipeline(checkpoint), reference, animation, {**settings, "seed": 0},
                                     args.repeats)
    warm = [cli_job(cold, folder, reference, animation, {**settings, "seed": 1 + i})[0] for i in range(args.repeats)]
    rows["cli job (warm)"] = best(warm)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(cli_job, cold, folder, reference, animation, {**settings, "seed": 50})
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)

    rows["flamediff render process (once): wall"] = cli_process(folder, {**settings, "seed": 300})
    process, url, token_file = start_server(folder, os.path.join(folder, "models"), device="cpu")
    try:
        wait_up(url, process)
        with open(token_file) as handle:
            token = handle.read().strip()
        in_job, wall = server_job(url, token, reference, animation, {**settings, "seed": 200})
        rows["server job (cold, once): in-job"], rows["server job (cold, once): wall"] = in_job, wall
        warm_runs = [server_job(url, token, reference, animation, {**settings, "seed": 201 + i})
                     for i in range(args.repeats)]
        rows["server job (warm): in-job"] = best([r[0] for r in warm_runs])
        rows["server job (warm): wall"] = best([r[1] for r in warm_runs])
    finally:
        process.terminate()
        process.wait(timeout=30)
    pipeline = rows["pipeline"]
    print(f"\n{args.frames} frames x {args.steps} steps, demo checkpoint, framing {args.framing}, CPU "
          f"({time.perf_counter() - started:.0f} s in all)")
    print(f"{'path':36s} {'seconds':>8s} {'/ pipeline':>11s}")
    for name, seconds in rows.items():
        print(f"{name:36s} {seconds:8.2f} {seconds / pipeline:11.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"frames": args.frames, "steps": args.steps, "framing": args.framing, "seconds": rows,
                       "ratio_warm_server_in_job": rows["server job (warm): in-job"] / pipeline,
                       "ratio_warm_cli_job": rows["cli job (warm)"] / pipeline}, handle, indent=1)


if __name__ == "__main__":
    main()
