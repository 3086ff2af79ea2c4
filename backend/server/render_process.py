"""Rendering in a child process, so the HTTP server never shares a GIL (or a crash) with torch.

Measured on the 2-core CPU box: with the render in a thread of the server, GET /v1/jobs/{id}
latency under 20 polling clients rose several-fold because diffusers' Python-level dispatch
holds the GIL between kernels. A child process also means a CUDA abort or segfault fails one
job instead of killing the server, and ``release`` can end the child, which frees all GPU
memory including the CUDA context.

Protocol: JSON lines. Parent -> child on stdin: ``{"cmd": "render", "path": DIR}``,
``{"cmd": "cancel"}``. Child -> parent on a private copy of stdout: ``{"ready": true}`` and
``{"status": "done|failed|cancelled|busy", "loaded": NAME}``. The child exits when stdin
closes, which is also what happens when the server dies (even by SIGKILL), so no orphan keeps
writing frames of a job the restarted server resumes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable

from flamediff.server.jobs import JobFolder

if TYPE_CHECKING:
    from flamediff.formats.flame_asset import FlameAsset

log = logging.getLogger("flamediff.server")


class ChildProcessRenderer:
    """A :class:`~flamediff.server.renderers.Renderer` whose model lives in a long-lived child process
    (which runs an :class:`~flamediff.server.renderers.InProcessRenderer`)."""

    def __init__(self, device: str = "cpu", flame_asset: str | None = None, precision: str = "auto") -> None:
        self.device, self.flame_asset, self.precision = device, flame_asset, precision
        self.loaded_name: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._busy = False
        self._release_after_job = False

    def asset(self) -> "FlameAsset":
        from flamediff.assets import load_asset

        return load_asset(self.flame_asset)

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child (it imports torch while the server starts serving)."""
        with self._lock:
            if self._alive():
                return
            command = [sys.executable, "-m", "flamediff.server.render_process", "--device", self.device,
                       "--precision", self.precision]
            if self.flame_asset:
                command += ["--flame-asset", self.flame_asset]
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             text=True, bufsize=1)
            self._replies = queue.Queue()
            threading.Thread(target=self._read, args=(self._process.stdout, self._replies), daemon=True).start()
            self.loaded_name = None

    @staticmethod
    def _read(stream: IO[str], replies: "queue.Queue[dict[str, Any] | None]") -> None:
        for line in stream:
            try:
                replies.put(json.loads(line))
            except ValueError:
                log.warning("render process said: %s", line.rstrip())
        replies.put(None)  # end of stream: the child exited

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()

    def run_job(self, job: JobFolder, should_cancel: Callable[[], bool]) -> str:
        """Render ``job`` in the child; polls ``should_cancel`` and forwards a cancel at once."""
        self.start()
        with self._lock:
            self._busy = True
        try:
            self._send({"cmd": "render", "path": job.path})
            cancelled = False
            while True:
                if not cancelled and should_cancel():
                    self._send({"cmd": "cancel"})
                    cancelled = True
                try:
                    reply = self._replies.get(timeout=0.05)
                except queue.Empty:
                    continue
                if reply is None:
                    return self._died(job)
                if "status" in reply:
                    self.loaded_name = reply.get("loaded")
                    return str(reply["status"])
        except (BrokenPipeError, OSError):
            return self._died(job)
        finally:
            with self._lock:
                self._busy = False
                release = self._release_after_job
            if release:
                self.release()

    def _died(self, job: JobFolder) -> str:
        code = self._process.wait() if self._process else None
        self._process, self.loaded_name = None, None
        log.error("render process died (exit code %s) during job %s", code, os.path.basename(job.path))
        job.update(status="failed", phase="failed", eta_s=None, finished=time.time(),
                   frames_done=len(job.done_frames()),
                   error=f"the render process died (exit code {code}) - a crash in torch/CUDA or the system "
                         "killed it for memory",
                   advice="the server is still up; frames already rendered are kept; submit the same job again to "
                          "render the rest (use fewer frames_per_batch if memory is short)")
        return "failed"

    def release(self) -> bool:
        """End the child (freeing all its memory); when a job runs, right after that job."""
        with self._lock:
            if self._busy:
                self._release_after_job = True
                return False
            self._release_after_job = False
            had = self.loaded_name is not None
            process, self._process, self.loaded_name = self._process, None, None
        if process is not None and process.poll() is None:
            if process.stdin is not None:
                process.stdin.close()  # the child exits on end of input
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return had


def _child(device: str, flame_asset: str | None, precision: str) -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr, never into the protocol stream
    logging.basicConfig(level=logging.INFO, format="%(asctime)s render %(levelname)s %(message)s")
    from flamediff.server.jobs import CorruptManifest, JobBusy
    from flamediff.server.job_execution import render_job
    from flamediff.server.renderers import InProcessRenderer

    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancel = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("cmd") == "cancel":
                cancel.set()
            else:
                cancel.clear()  # here, in arrival order: a cancel sent right after this render is kept
                commands.put(message)
        os._exit(0)  # stdin closed: the server released us or died; stop now, mid-render or not

    threading.Thread(target=read_stdin, daemon=True).start()
    renderer = InProcessRenderer(device, flame_asset, precision)
    renderer.asset()
    protocol.write(json.dumps({"ready": True}) + "\n")
    while True:
        message = commands.get()
        if message is None or message.get("cmd") != "render":
            continue
        try:
            status = render_job(JobFolder(message["path"]), renderer, should_cancel=cancel.is_set)
        except JobBusy as exc:
            log.warning("%s", exc)
            status = "busy"
        except (CorruptManifest, OSError) as exc:  # the folder itself is broken: that job fails, we serve on
            log.error("%s", exc)
            status = "failed"
        protocol.write(json.dumps({"status": status, "loaded": renderer.loaded_name}) + "\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="flamediff render process (started by 'flamediff serve')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flame-asset", default=None)
    parser.add_argument("--precision", default="auto")
    arguments = parser.parse_args()
    raise SystemExit(_child(arguments.device, arguments.flame_asset, arguments.precision))
