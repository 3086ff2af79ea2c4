"""Probe a real ``flamediff serve`` as an attacker and a careless client would: every row of the
hardening probe table (hostile tracker archives, pickles and torch files, tracking uploads,
Host headers, half-open connections, a 57 MiB JSON body) and of its fault table (the server
killed while a tracking child runs, a disk that fills during a render, a restart on a full
disk, manifests of wrong types or another job's id, tracking uploads kept tidy, errors without
server paths). Each row: the answer, its wall time and the peak memory of the server and its
children above what they held before, then the verdict against the bounds (a 4xx, never a 500,
within 1 s and 300 MB).

    python benchmarks/probe_server.py [--json out.json] [--only hostile|faults] [--max-track-frames 30] [--quick]

The server is ``python -m flamediff.server serve`` on 127.0.0.1 with a token and a tiny
checkpoint in a temporary folder, serve's default limits except ``--max-track-frames`` (so the
row of a video without a frame count ends in seconds; the suite tests serve's default of 3000).
Memory is each process's kernel high-water mark (``VmHWM``, reset before each row through
``/proc/PID/clear_refs``), read every 10 ms while the row runs. The disk rows mount a 2 MiB tmpfs
for the jobs folder and need root (they are reported as skipped otherwise). The inputs are the
suite's (tests/hostile_inputs.py). Linux only. ``--quick`` probes the first table without its
tracked-video row (no tracking child starts) and skips the fault table: what the suite runs
(tests/test_server_probe.py) to keep this script working against a real server.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import hostile_inputs as hostile  # noqa: E402
from bench_server_load import prepare_inputs, start_server  # noqa: E402  (benchmarks/ is on sys.path as a script)
from test_server_helpers import huge_png_header  # noqa: E402

SECONDS, MEGABYTES = 1.0, 300.0


@dataclass
class Row:
    """One probe's outcome: what was sent, the answer, wall seconds, peak MB above idle, verdict."""

    table: str
    probe: str
    answer: str = ""
    seconds: float | None = None
    megabytes: float | None = None
    ok: bool = False
    note: str = ""


class Meter:
    """Peak resident memory of a process and its descendants over a ``with`` block, above their
    resident memory at its start: each process's ``VmHWM`` is reset, then sampled every 10 ms,
    and the peaks added up by what the process is (:func:`_name`; :attr:`processes`). A process
    forked to start another program reads as its parent (its command line, its pages shared
    until it execs), so each of the server, its render process and a tracking child counts once."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.processes: dict[str, tuple[float, float]] = {}  # the last block's: what -> (MB at start, peak MB)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def settle(self, timeout: float = 120) -> None:
        """Wait until the tree's resident memory holds still for a second (the render process
        imports torch after the server answers), so no row is charged with that."""
        deadline, last = time.monotonic() + timeout, -1.0
        while time.monotonic() < deadline:
            now = sum(_status_mb(process.pid, "VmRSS:") for process in self._tree())
            if abs(now - last) < 2:
                return
            last = now
            time.sleep(1)

    @contextmanager
    def measure(self) -> Iterator[list[float]]:
        peaks: dict[int, float] = {}
        starts: dict[int, float] = {}
        names: dict[int, str] = {}
        for process in self._tree():
            _reset_peak(process.pid)
            starts[process.pid] = _status_mb(process.pid, "VmRSS:")
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for process in self._tree():
                    peaks[process.pid] = max(peaks.get(process.pid, 0.0), _status_mb(process.pid, "VmHWM:"))
                    if process.pid not in names:
                        names[process.pid] = _name(process)
                done.wait(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result: list[float] = []
        try:
            yield result
        finally:
            done.set()
            sampler.join()
            self.processes = {}
            for pid, peak in peaks.items():
                name = names.get(pid, "other")
                start, top = self.processes.get(name, (0.0, 0.0))
                if name == "other":  # programs of their own (the tools MediaPipe's imports run)
                    self.processes[name] = (start + starts.get(pid, 0.0), top + peak)
                else:  # one of each; a copy forked to start a program shares its pages until it execs
                    self.processes[name] = (max(start, starts.get(pid, 0.0)), max(top, peak))
            result.append(max(0.0, sum(top - start for start, top in self.processes.values())))


def _name(process: psutil.Process) -> str:
    """What a process of the server's tree is: the server, its render process, a tracking child or
    another program (the tools MediaPipe's imports start)."""
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    for word, name in (("render_process", "render process"), ("tracking_child", "tracking child"),
                       ("flamediff.server serve", "server")):
        if word in command:
            return name
    return "other"


def _reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _status_mb(pid: int, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Server:
    """A ``flamediff serve`` process over one jobs folder; restartable, as a user restarts it."""

    def __init__(self, folder: str, models: str, jobs: str, options: tuple[str, ...]) -> None:
        self.folder, self.models, self.jobs, self.options = folder, models, jobs, options
        self.process: subprocess.Popen | None = None

    def start(self, options: tuple[str, ...] = ()) -> Server:
        self.process, self.url, token_file = start_server(self.folder, self.models, "process", "cpu", self.jobs,
                                                          self.options + options)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}; see "
                                   f"{self.folder}/server.log")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer in 120 s")
            time.sleep(0.1)
        with open(token_file) as handle:
            self.client = httpx.Client(base_url=self.url, timeout=60,
                                       headers={"Authorization": f"Bearer {handle.read().strip()}"})
        self.meter = Meter(self.process.pid)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.meter.settle()
        return self

    def stop(self, how: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(30)
        self.client.close()

    def post_job(self, animation: bytes, reference: bytes, settings: dict | None = None) -> httpx.Response:
        return self.client.post("/v1/jobs", files={"reference": ("r.png", reference), "animation": ("a.bin", animation)},
                                data={"settings": json.dumps(settings or {})})

    def post_track(self, media: bytes) -> httpx.Response:
        return self.client.post("/v1/tracks", files={"media": ("upload", media)})

    def wait_for(self, path: str, done: Callable[[dict], bool], timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = self.client.get(path).json()
            if done(view) or time.monotonic() > deadline:
                return view
            time.sleep(0.2)


def timed(server: Server, send: Callable[[], httpx.Response], tries: int = 3) -> tuple[httpx.Response, float, float]:
    """The answer, its fastest wall time of up to ``tries`` sends (stopping within the bound; a
    neighbour's burst on a shared machine stalls one send, not all) and the peak MB of the first."""
    with server.meter.measure() as memory:
        started = time.perf_counter()
        response = send()
        timings = [time.perf_counter() - started]
    for _ in range(tries - 1):
        if timings[-1] <= SECONDS:
            break
        started = time.perf_counter()
        send()
        timings.append(time.perf_counter() - started)
    return response, min(timings), memory[0]


def refusal(table: list[Row], server: Server, probe: str, send: Callable[[], httpx.Response], status: int,
            *words: str, absent: tuple[str, ...] = ()) -> httpx.Response:
    """A row whose answer must be ``status`` naming ``words`` and quoting none of ``absent``."""
    response, seconds, megabytes = timed(server, send)
    text = response.text
    body = _error(response)
    ok = (response.status_code == status and all(word in text for word in words)
          and not any(word in text for word in absent) and seconds <= SECONDS and megabytes <= MEGABYTES)
    table.append(Row("probe", probe, f"{response.status_code} {body}", seconds, megabytes, ok))
    return response


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:110]
    except ValueError:
        return response.text[:110]


def hostile_uploads(rows: list[Row], server: Server, reference: bytes, folder: str, quick: bool = False) -> None:
    """The first table's archive, pickle and torch rows (POST /v1/jobs) and tracking rows."""
    outside = os.path.join(folder, "outside")
    os.makedirs(outside, exist_ok=True)
    hostile.plant_outside_files(outside)
    answers = []
    for name, probe in zip(hostile.outside_names(outside), ("VHAP transforms.json naming a readable tracker file "
                           "outside the upload", "... naming a text file outside", "... naming a missing file",
                           "... climbing out with ../ (absolute)", "... climbing out with ../ (relative)")):
        export = hostile.vhap_export(["flame_param/00000.npz", name])
        response = refusal(rows, server, probe, lambda e=export: server.post_job(e, reference), 422, "points outside it",
                           absent=("hunter", folder))
        answers.append(response.text)
    rows.append(Row("probe", "missing vs existing outside file: one message", "same" if len(set(answers)) == 1 else
                    "differ", ok=len(set(answers)) == 1))
    for probe, animation, status, word in [
            ("zipped per-frame folder of 40 x 16 MiB expr arrays (amplifier)", hostile.amplifier(), 413, "would take"),
            ("zipped folder, inner npz declaring 1e9 elements", hostile.billion_element_npz(), 413, "declares"),
            ("pickle of 1e8 values through shared lists (billion laughs)", hostile.billion_laughs(), 413, "values"),
            ("pickle of 2e6 distinct objects", hostile.many_objects(), 413, "pickled objects"),
            ("torch .pth, zero-stride storage viewed as 20000 x 20000", hostile.zero_stride_torch(), 413, "20000"),
            ("zipped folder of 19,999 frames", hostile.folder_of_frames(19_999), 413, "19999 frames"),
            ("zip with one member name twice", hostile.same_name_twice(), 422, "twice"),
            ("zip with names differing only in case", hostile.same_name_but_case(), 422, "twice"),
            ("zip with a file where a folder is", hostile.file_where_a_folder_is(), 422, "twice"),
            ("zip with a 300-character member name", hostile.over_long_name(), 422, "longer than 255")]:
        refusal(rows, server, probe, lambda a=animation: server.post_job(a, reference), status, word)
    avi = hostile.declaring_a_million_frames(os.path.join(folder, "million.avi"))
    hours = hostile.matroska(os.path.join(folder, "hours.mkv"), 5, 40_000.0)
    for probe, media, status, word in [
            ("POST /v1/tracks, PNG declaring 30000 x 30000", huge_png_header(30000, 30000), 413, "pixels"),
            ("POST /v1/tracks, GIF declaring a 65535 x 65535 screen", hostile.huge_gif_screen(), 415, "GIF"),
            ("POST /v1/tracks, 169-megapixel PNG", huge_png_header(13000, 13000), 413, "pixels"),
            (f"POST /v1/tracks, AVI ({len(avi):,} bytes) declaring 1,000,000 frames", avi, 413, "1000000 frames"),
            (f"POST /v1/tracks, Matroska ({len(hours):,} bytes) declaring 40,000 s", hours, 413, "40000 s"),
            ("POST /v1/tracks, TIFF", hostile.image("TIFF"), 415, "TIFF"),
            ("POST /v1/tracks, animated GIF", hostile.animated_gif(), 415, "GIF")]:
        refusal(rows, server, probe, lambda m=media: server.post_track(m), status, word)
    if not quick:
        undeclared_length(rows, server, folder)


def undeclared_length(rows: list[Row], server: Server, folder: str) -> None:
    """A face video that declares neither frames nor length: accepted, then stopped at the frame
    cap while decoding, the frames done kept."""
    cap = int(server.options[server.options.index("--max-track-frames") + 1])
    media = hostile.matroska(os.path.join(folder, "live.mkv"), cap + 20, None, side=256, face=True)
    with server.meter.measure() as memory:
        started = time.perf_counter()
        task = server.post_track(media)
        accepted = time.perf_counter() - started
        view = server.wait_for(f"/v1/tracks/{task.json().get('id')}", lambda v: v.get("status") != "running")
        seconds = time.perf_counter() - started
    kept = server.client.get(f"/v1/tracks/{view.get('id')}/animation")
    idle = _idle_child_mb()
    ok = task.status_code == 201 and view.get("kept") == cap and kept.status_code == 200 and memory[0] <= MEGABYTES + idle
    parts = ", ".join(f"{name} {top - start:+.0f}" for name, (start, top) in server.meter.processes.items())
    rows.append(Row("probe", f"POST /v1/tracks, Matroska of {cap + 20} frames declaring no length (cap {cap})",
                    f"{task.status_code} in {accepted:.3f} s, then {view.get('status')}: {view.get('error')}",
                    seconds, memory[0], ok, f"MB: {parts}; an idle tracking child holds {idle:.0f} MB"))


def _idle_child_mb() -> float:
    """What a tracking child holds before its first frame (MediaPipe, torch, the FLAME asset)."""
    code = ("import av, cv2\nfrom flamediff.tracking import cli, media, track\nfrom flamediff.assets import load_asset\n"
            "from flamediff.tracking.landmarks import LandmarkDetector\nload_asset(None)\n"
            "LandmarkDetector(video=True).close()\nprint(open('/proc/self/status').read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout
    return next((int(line.split()[1]) / 1024 for line in out.splitlines() if line.startswith("VmHWM:")), 0.0)


def slow_and_heavy_clients(rows: list[Row], server: Server) -> None:
    """Host header, 300 half-open requests without a token, a 57 MiB JSON body."""
    for host in ("127.0.0.1:1@evil.example", "evil.example"):
        def send(host=host) -> httpx.Response:
            return server.client.get("/v1/health", headers={"Host": host})
        refusal(rows, server, f"Host: {host}", send, 400)

    def health() -> float:
        started = time.perf_counter()
        server.client.get("/v1/health").raise_for_status()
        return time.perf_counter() - started

    with server.meter.measure() as memory:
        sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        for sock in sockets:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slowest = max(health() for _ in range(3))
        descriptors = psutil.Process(server.process.pid).num_fds()
    for sock in sockets:
        sock.close()
    rows.append(Row("probe", "300 half-open requests without a token", f"health 200 meanwhile, server holds "
                    f"{descriptors} file descriptors", slowest, memory[0], slowest <= SECONDS and memory[0] <= MEGABYTES))
    timings: list[float] = []
    poller = threading.Thread(target=lambda: timings.extend(health() for _ in range(5)))
    with server.meter.measure() as memory:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        started = time.perf_counter()
        poller.start()
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{_auth(server)}\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {57 << 20}\r\n\r\n".encode() + b"[" * 65536)
        reply = b""
        while b"larger than" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
        seconds = time.perf_counter() - started
        poller.join(30)
    sock.close()
    status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1") else "closed"
    ok = status == "413" and seconds <= SECONDS and max(timings) <= SECONDS and memory[0] <= MEGABYTES
    rows.append(Row("probe", "a 57 MiB JSON body", f"{status}; health meanwhile within {max(timings):.2f} s", seconds,
                    memory[0], ok))


def _auth(server: Server) -> str:
    return f"Authorization: {server.client.headers['Authorization']}"


def killed_while_tracking(rows: list[Row], server: Server, face: bytes) -> None:
    """SIGKILL and SIGTERM of the server while a tracking child runs, then a restart."""
    for how in (signal.SIGKILL, signal.SIGTERM):
        task = server.post_track(face)
        second = server.post_track(face)
        children = psutil.Process(server.process.pid).children(recursive=True)
        tracker = [p for p in children if "tracking_child" in " ".join(p.cmdline())]
        server.stop(how)
        started = time.perf_counter()
        _, alive = psutil.wait_procs(tracker, timeout=5)
        died = time.perf_counter() - started
        server.start()
        view = server.client.get(f"/v1/tracks/{task.json()['id']}").json()
        deleted = server.client.delete(f"/v1/tracks/{task.json()['id']}").json()
        ok = (task.status_code == 201 and second.status_code == 409 and len(tracker) == 1 and not alive
              and view.get("status") == "failed" and "server stopped" in str(view.get("error"))
              and deleted.get("deleted") is True)
        rows.append(Row("fault", f"{signal.Signals(how).name} of the server while a tracking child runs, restart",
                        f"second task {second.status_code}; child gone {died:.2f} s after the server; task "
                        f"{view.get('status')}: {view.get('error')}; DELETE deleted={deleted.get('deleted')}",
                        died, ok=ok))


def tracking_tidy(rows: list[Row], server: Server, grey: bytes) -> None:
    """A failed task's error and files (no server path, 0600, inside the jobs folder), refused
    uploads leaving nothing, and retention (a restart with a one-second retention)."""
    task = server.post_track(grey)
    view = server.wait_for(f"/v1/tracks/{task.json()['id']}", lambda v: v.get("status") != "running")
    folder = os.path.join(server.jobs, "tracks", task.json()["id"])
    modes = {name: oct(os.stat(os.path.join(folder, name)).st_mode & 0o777) for name in os.listdir(folder)}
    private = all(mode == "0o600" for mode in modes.values())
    rows.append(Row("fault", "a failed tracking task's error", f"{view.get('status')}: {view.get('error')}",
                    ok=view.get("status") == "failed" and server.jobs not in json.dumps(view)
                    and server.folder not in json.dumps(view)))
    rows.append(Row("fault", "tracking files: mode, place", f"{len(modes)} files {'all 0600' if private else modes} "
                    f"in <jobs>/tracks/<id>", ok=private and os.path.isdir(folder)))
    kept = set(os.listdir(os.path.join(server.jobs, "tracks")))  # this task's, and earlier rows' ended tasks
    for _ in range(10):
        server.post_track(b"\0" * (5 << 20))
    left = set(os.listdir(os.path.join(server.jobs, "tracks")))
    server.stop()
    time.sleep(1.5)
    server.start(("--keep-tracks-hours", str(1 / 3600)))
    after = os.listdir(os.path.join(server.jobs, "tracks"))
    rows.append(Row("fault", "tracking uploads over time (10 refused 5 MiB uploads, a 1 s retention, restart)",
                    f"{len(left - kept)} new task folders after the refusals ({len(kept)} ended tasks before), "
                    f"{len(after)} after the restart", ok=left == kept and task.json()["id"] in kept and not after))


def manifest_faults(rows: list[Row], server: Server, reference: bytes, animation: bytes) -> None:
    """Manifests of valid JSON but wrong types, and one whose id is not its folder's, then a restart."""
    job = server.post_job(animation, reference, {"steps": 1, "frames": "1", "frames_per_batch": 1}).json()
    server.wait_for(f"/v1/jobs/{job['id']}", lambda v: v.get("status") in ("done", "failed"))
    server.stop()
    source = os.path.join(server.jobs, job["id"])
    with open(os.path.join(source, "manifest.json")) as handle:
        manifest = json.load(handle)
    broken: dict[str, str] = {}
    for change in ({"frames": None}, {"frames": ["a"]}, {"frames_total": "x"}, {"frames": {"1": 1}}, {"id": None}):
        fake = secrets.token_hex(8)
        shutil.copytree(source, os.path.join(server.jobs, fake))
        edited = {**manifest, "id": fake, **change} if "id" not in change else manifest  # id: another job's
        with open(os.path.join(server.jobs, fake, "manifest.json"), "w") as handle:
            json.dump(edited, handle)
        broken[fake] = json.dumps(change) if "id" not in change else f"id {job['id']} in folder {fake}"
    with open(os.path.join(source, "manifest.json"), "w") as handle:
        json.dump({**manifest, "checkpoint": "s"}, handle)
    broken[job["id"]] = '{"checkpoint": "s"}'
    started = time.perf_counter()
    server.start()
    seconds = time.perf_counter() - started
    listed = server.client.get("/v1/jobs")
    for job_id, change in broken.items():
        view = server.client.get(f"/v1/jobs/{job_id}")
        body = view.json()
        rows.append(Row("fault", f"manifest {change}", f"restart in {seconds:.1f} s; list {listed.status_code}; "
                        f"status {view.status_code} {body.get('status')}: {str(body.get('error'))[:90]}",
                        ok=listed.status_code == 200 and view.status_code == 200 and body.get("status") == "failed"
                        and bool(body.get("advice"))))
    again = server.post_job(animation, reference, {"steps": 1, "frames": "1", "frames_per_batch": 1})
    rows.append(Row("fault", "resubmitting the job whose manifest names a string checkpoint",
                    f"{again.status_code} {again.json().get('status')}", ok=again.status_code in (200, 201)))


@contextmanager
def small_disk(folder: str, size: str = "2m") -> Iterator[str | None]:
    path = os.path.join(folder, "small-disk")
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                                           capture_output=True).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path])


def fill(folder: str) -> None:
    """Fill the file system of ``folder`` with a file of zeros (a write past it fails: full)."""
    try:
        with open(os.path.join(folder, "filler"), "ab") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass


def disk_faults(rows: list[Row], folder: str, models: str, reference: bytes, animation: bytes) -> None:
    """A disk that fills during a render; a restart with an unfinished job on a full disk."""
    with small_disk(folder) as disk:
        if disk is None:
            rows.append(Row("fault", "disk rows", "skipped: mounting a tmpfs needs root", note="skipped"))
            return
        server = Server(folder, models, os.path.join(disk, "jobs"), ())
        try:
            _disk_rows(rows, server.start(), disk, reference, animation)
        finally:
            server.stop(signal.SIGKILL)


def _disk_rows(rows: list[Row], server: Server, disk: str, reference: bytes, animation: bytes) -> None:
    settings = {"steps": 1, "frames_per_batch": 1, "seed": 1}
    job = server.post_job(animation, reference, settings).json()
    first = os.path.join(server.jobs, job["id"], "frame_0001.png")
    _wait_file(first)
    free = shutil.disk_usage(disk).free
    fill(disk)
    view = server.wait_for(f"/v1/jobs/{job['id']}", lambda v: v.get("status") not in ("queued", "running"))
    health = server.client.get("/v1/health").json()
    frame = server.client.get(f"/v1/jobs/{job['id']}/frames/1")
    rows.append(Row("fault", "the disk fills during a render (2 MiB tmpfs)",
                    f"filled with {free >> 10} KiB free after frame 1; {view.get('status')} after {view.get('frames_done')} frames: {view.get('error')}; queue "
                    f"{health.get('queue_length')}; frame 1 {frame.status_code}",
                    ok=view.get("status") == "failed" and health.get("queue_length") == 0
                    and frame.status_code == 200))
    os.remove(os.path.join(disk, "filler"))
    shutil.rmtree(os.path.join(server.jobs, job["id"]))
    job = server.post_job(animation, reference, {**settings, "seed": 2}).json()
    _wait_file(os.path.join(server.jobs, job["id"], "frame_0001.png"))
    server.stop(signal.SIGKILL)
    time.sleep(1)
    fill(disk)
    try:
        started = time.perf_counter()
        server.start()
        view = server.client.get(f"/v1/jobs/{job['id']}").json()
        frame = server.client.get(f"/v1/jobs/{job['id']}/frames/1")
        answer = (f"started in {time.perf_counter() - started:.1f} s; job {view.get('status')}: "
                  f"{view.get('error')}; frame 1 {frame.status_code}")
        ok = view.get("status") == "failed" and frame.status_code == 200
    except RuntimeError as exc:
        answer, ok = str(exc), False
    rows.append(Row("fault", "restart with an unfinished job on a full disk", answer, ok=ok))


def _wait_file(path: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{os.path.basename(path)} was not rendered in {timeout:g} s")
        time.sleep(0.05)


def phase(rows: list[Row], probe: Callable[..., None], *args) -> None:
    """Run one group of rows; one that breaks is a row saying how, and the others still run."""
    try:
        probe(rows, *args)
    except Exception as exc:  # the probe reports, it does not stop at the first surprise
        rows.append(Row("fault" if "fault" in (probe.__doc__ or "") else "probe", probe.__name__,
                        f"the probe broke: {type(exc).__name__}: {exc}"[:300]))


def print_table(rows: list[Row]) -> None:
    for table in ("probe", "fault"):
        print(f"\n| {table} | answer | time | server + children, peak above idle | bounds |\n|---|---|---|---|---|")
        for row in (r for r in rows if r.table == table):
            seconds = "" if row.seconds is None else f"{row.seconds:.3f} s"
            megabytes = "" if row.megabytes is None else f"{row.megabytes:.0f} MB"
            verdict = row.note if row.note == "skipped" else ("ok" if row.ok else "**NOT MET**")
            answer = row.answer.replace("|", "/") + (f" ({row.note})" if row.note and row.note != "skipped" else "")
            print(f"| {row.probe} | {answer} | {seconds} | {megabytes} | {verdict} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("hostile", "faults"), default=None, help="one table only")
    parser.add_argument("--max-track-frames", type=int, default=30,
                        help="serve's frame cap for the probe's server (default 30; serve's own default is 3000)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true",
                        help="the first table without its tracked-video row, no fault table (the suite's smoke run)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="flamediff-probe-")
    os.environ["FLAMEDIFF_CACHE"] = os.path.join(folder, "cache")
    reference, animation, models = prepare_inputs(folder)
    photo = _face_photo()
    rows: list[Row] = []
    server = Server(folder, models, os.path.join(folder, "jobs"), ("--max-track-frames", str(args.max_track_frames)))
    server.start()
    started = time.perf_counter()
    try:
        server.post_job(b"x", reference)  # the first request's start-up costs are not a probe's
        if args.only != "faults":
            phase(rows, hostile_uploads, server, reference, folder, args.quick)
            phase(rows, slow_and_heavy_clients, server)
        if args.only != "hostile" and not args.quick:
            phase(rows, killed_while_tracking, server, photo)
            phase(rows, tracking_tidy, server, hostile.image("PNG", (256, 256)))
            phase(rows, manifest_faults, server, reference, animation)
    finally:
        server.stop(signal.SIGKILL)
    if args.only != "hostile" and not args.quick:
        phase(rows, disk_faults, folder, models, reference, animation)
    print_table(rows)
    print(f"\n{sum(r.ok for r in rows)} of {len(rows)} rows within their bounds; {time.perf_counter() - started:.0f} s; "
          f"{os.cpu_count()} cores, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([vars(row) for row in rows], handle, indent=1)
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if all(r.ok or r.note == "skipped" for r in rows) else 1


def _face_photo() -> bytes:
    import io

    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, "PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
