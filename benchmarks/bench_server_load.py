"""Load test of the job server on loopback: N clients poll GET /v1/jobs/{id} and submit small
jobs for a bounded time while a long render runs; reports latency percentiles and checks that
every accepted job is still known to the server (nothing lost).

    python benchmarks/bench_server_load.py [--clients 20] [--duration 20] [--json out.json]

By default it starts ``python -m flamediff.server serve`` on 127.0.0.1 with a tiny checkpoint in a
temporary folder (no shipped checkpoint is needed). ``--url`` + ``--token-file`` target a running
server instead; only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] * 1000, 2)

    return {"n": len(values), "p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99),
            "max_ms": round(ordered[-1] * 1000, 2)}


def prepare_inputs(folder: str) -> tuple[bytes, bytes, str]:
    """A reference image, a 16-frame demo animation and a tiny checkpoint folder."""
    import numpy as np
    import torch
    from PIL import Image

    from flamediff.assets import load_asset
    from flamediff.demo import demo_animation
    from flamediff.formats.animation import save_animation
    from flamediff.models import FlameDiffConfig, FlameDiffModel

    asset = load_asset()
    torch.manual_seed(0)
    model = FlameDiffModel(FlameDiffConfig.preset_named("tiny", flame_asset=asset.identity()))
    model.attach_gaussian_field(asset)
    model.save_pretrained(os.path.join(folder, "models", "tiny"))
    save_animation(os.path.join(folder, "anim.npz"), demo_animation(asset, num_frames=16, resolution=48))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    with open(os.path.join(folder, "anim.npz"), "rb") as handle:
        return buffer.getvalue(), handle.read(), os.path.join(folder, "models")


def start_server(folder: str, models_dir: str, render_in: str = "process", device: str = "auto",
                 jobs_dir: str | None = None, options: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str, str]:
    """``flamediff serve`` on a free loopback port, its token, log and (unless ``jobs_dir``) jobs
    under ``folder``, with more serve ``options``; returns (process, url, token file)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token_file = os.path.join(folder, "token")
    log = open(os.path.join(folder, "server.log"), "ab")
    process = subprocess.Popen([sys.executable, "-m", "flamediff.server", "serve", "--port", str(port), "--device",
                                device, "--jobs-dir", jobs_dir or os.path.join(folder, "jobs"), "--models-dir",
                                models_dir, "--token-file", token_file, "--render-in", render_in, *options],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", token_file


async def wait_up(client, url: str, process: subprocess.Popen | None) -> None:
    """Until the server answers (401 without a token is an answer: the token is read after)."""
    import httpx

    for _ in range(600):
        if process is not None and process.poll() is not None:
            raise SystemExit("the server exited; see its log")
        try:
            response = await client.get(f"{url}/v1/health")
            if response.status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not answer /v1/health in 60 s")


async def run(args: argparse.Namespace) -> dict:
    import httpx

    folder = tempfile.mkdtemp(prefix="flamediff-load-")
    if args.isolated_cache:
        os.environ["FLAMEDIFF_CACHE"] = os.path.join(folder, "cache")
    reference, animation, models_dir = prepare_inputs(folder)
    process = None
    if args.url:
        url, token_file = args.url.rstrip("/"), args.token_file
        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("this benchmark only targets loopback servers")
    else:
        process, url, token_file = start_server(folder, models_dir, args.render_in)
    limits = httpx.Limits(max_connections=args.clients + 4)
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as bare:
            await wait_up(bare, url, process)
        with open(token_file) as handle:
            headers = {"Authorization": f"Bearer {handle.read().strip()}"}
        async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
            files = {"reference": ("ref.png", reference), "animation": ("anim.npz", animation)}
            long_job = (await client.post(f"{url}/v1/jobs", files=files, data={"settings": json.dumps(
                {"steps": 1 if args.idle else args.long_steps, "frames_per_batch": 1, "seed": 1,
                 "frames": "1" if args.idle else None})})).json()
            accepted: dict[str, float] = {long_job["id"]: time.monotonic()}
            if args.idle:  # baseline: the worker is idle during the load, clients only poll
                while (await client.get(f"{url}/v1/jobs/{long_job['id']}")).json()["status"] != "done":
                    await asyncio.sleep(0.2)
                args.submit_every = float("inf")
            latencies: dict[str, list[float]] = {"poll": [], "submit": []}
            errors: list[str] = []
            deadline = time.monotonic() + args.duration
            seeds = iter(range(1000, 10**6))

            async def one_client(index: int) -> None:
                rng = random.Random(index)
                next_submit = time.monotonic() + rng.uniform(0, args.submit_every)
                while time.monotonic() < deadline:
                    if time.monotonic() >= next_submit:
                        settings = {"steps": 1, "frames": str(1 + rng.randrange(16)), "seed": next(seeds)}
                        started = time.perf_counter()
                        response = await client.post(f"{url}/v1/jobs", files=files,
                                                     data={"settings": json.dumps(settings)})
                        latencies["submit"].append(time.perf_counter() - started)
                        if response.status_code in (200, 201):
                            accepted[response.json()["id"]] = time.monotonic()
                        else:
                            errors.append(f"submit {response.status_code}: {response.text[:200]}")
                        next_submit = time.monotonic() + args.submit_every
                    job_id = rng.choice(list(accepted))
                    started = time.perf_counter()
                    response = await client.get(f"{url}/v1/jobs/{job_id}")
                    latencies["poll"].append(time.perf_counter() - started)
                    if response.status_code != 200:
                        errors.append(f"poll {job_id} {response.status_code}")
                    await asyncio.sleep(args.poll_interval)

            wall = time.monotonic()
            await asyncio.gather(*(one_client(i) for i in range(args.clients)))
            wall = time.monotonic() - wall
            long_view = (await client.get(f"{url}/v1/jobs/{long_job['id']}")).json()
            if not args.idle:  # the background render only had to outlast the load; cancel it
                started = time.perf_counter()
                await client.delete(f"{url}/v1/jobs/{long_job['id']}")
                while (await client.get(f"{url}/v1/jobs/{long_job['id']}")).json()["status"] == "running":
                    await asyncio.sleep(0.02)
                cancel_s = time.perf_counter() - started

            drain_deadline = time.monotonic() + args.drain
            while time.monotonic() < drain_deadline:
                health = (await client.get(f"{url}/v1/health")).json()
                if health["queue_length"] == 0:
                    break
                await asyncio.sleep(0.5)
            listed = {job["id"]: job["status"] for job in (await client.get(f"{url}/v1/jobs")).json()["jobs"]}
            lost = sorted(set(accepted) - set(listed))
            statuses: dict[str, int] = {}
            for job_id in accepted:
                statuses[listed.get(job_id, "missing")] = statuses.get(listed.get(job_id, "missing"), 0) + 1
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
    return {
        "clients": args.clients, "render_in": None if args.url else args.render_in, "idle": args.idle,
        "cpu_cores": os.cpu_count(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "duration_s": round(wall, 1), "device": health.get("device"),
        "requests_per_s": round((len(latencies["poll"]) + len(latencies["submit"])) / wall, 1),
        "poll_GET_jobs_id": percentiles(latencies["poll"]), "submit_POST_jobs": percentiles(latencies["submit"]),
        "render_running_during_load": long_view["status"] == "running" and long_view["progress"] < 1.0,
        "cancel_of_background_render_s": None if args.idle else round(cancel_s, 2),
        "long_job_progress_at_end": long_view["progress"],
        "jobs_accepted": len(accepted), "jobs_lost": lost, "job_statuses_after_drain": statuses,
        "http_errors": errors[:10], "http_error_count": len(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="pause between a client's polls (s)")
    parser.add_argument("--submit-every", type=float, default=5.0, help="seconds between a client's submits")
    parser.add_argument("--long-steps", type=int, default=40, help="denoising steps of the background render")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the queue to empty")
    parser.add_argument("--render-in", choices=("process", "thread"), default="process",
                        help="the started server's renderer (default process, as 'flamediff serve')")
    parser.add_argument("--idle", action="store_true", help="baseline: poll only, with no render running")
    parser.add_argument("--url", default=None, help="a running loopback server (default: start one)")
    parser.add_argument("--token-file", default=None, help="its token file (with --url)")
    parser.add_argument("--isolated-cache", action="store_true", help="use a fresh FLAMEDIFF_CACHE")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 1 if result["jobs_lost"] or result["http_error_count"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
