"""The flamediff render engine from the built zip in ``bpy``, against a real ``flamediff serve``
subprocess with the shipped demo checkpoint (1 step, 120x80 px frames).

Each Blender "process" (tests/addon_engine_driver.py) installs the zip and opens the saved
shot.blend, as ``blender -b shot.blend -s S -e E -a`` on a farm worker would: two chunks run at
once against one backend (the busy backend queues the second) and give the pixels of one full
render; F12 fills the Render Result; a missing backend fails the render with a one-line error and
a non-zero exit; a frame's metadata is enough to render it again, pixel for pixel, with
``flamediff render``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("bpy")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_server_process import Server, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "backend", "checkpoints", "demo", "reference.png")
SIZE = (120, 80)   # 240x160 at 50 %


class Drivers:
    def __init__(self, work: str, zip_path: str, asset: str, port: int, token_file: str) -> None:
        self.work, self.zip_path, self.asset, self.port, self.token_file = work, zip_path, asset, port, token_file
        self.env = dict(os.environ, HOME=os.path.join(work, "home"), OMP_NUM_THREADS="1",
                        PYTHONPATH=os.path.join(ROOT, "tests"))

    def start(self, mode: str, *args: str, port: int | None = None, worker: str = "a") -> subprocess.Popen:
        """One Blender; ``worker`` names its user folder (the add-on installed there, as on a farm machine)."""
        command = [sys.executable, os.path.join(ROOT, "tests", "addon_engine_driver.py"), mode, self.work,
                   self.zip_path, self.asset, str(port or self.port), self.token_file, *args]
        env = dict(self.env, BLENDER_USER_RESOURCES=os.path.join(self.work, f"blender_user_{worker}"))
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = 600) -> dict:
        out, err = process.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("results: ")]
        results: dict = {"rc": process.returncode, "stderr": err, "stdout": out}
        if lines:
            with open(lines[-1][len("results: "):], encoding="utf-8") as handle:
                results.update(json.load(handle))
        return results

    def run(self, mode: str, *args: str, port: int | None = None) -> dict:
        return self.finish(self.start(mode, *args, port=port))


@pytest.fixture(scope="module")
def shot(tmp_path_factory: pytest.TempPathFactory, head_folder) -> dict:
    sys.path.insert(0, ROOT)
    from build_addon import build

    work = str(tmp_path_factory.mktemp("engine"))
    os.makedirs(os.path.join(work, "models"))
    zip_path = build(os.path.join(work, "dist"))
    server = Server(work, os.path.join(work, "models")).start()   # the shipped demo checkpoint
    out = {name: os.path.join(work, "out", name, "f_####") for name in ("chunks", "full", "exr", "listed")}
    try:
        drivers = Drivers(work, zip_path, head_folder, server.port, server.token_file)
        runs = {"setup": drivers.run("setup", REFERENCE)}
        assert runs["setup"]["rc"] == 0, runs["setup"]["stderr"][-3000:]
        started = time.perf_counter()
        chunks = [drivers.start("animation", "1", "6", "PNG", "8", out["chunks"]),
                  drivers.start("animation", "7", "12", "PNG", "8", out["chunks"], worker="b")]
        runs["chunk_1_6"], runs["chunk_7_12"] = (drivers.finish(process) for process in chunks)
        runs["chunks_s"] = time.perf_counter() - started
        runs["full"] = drivers.run("animation", "1", "12", "PNG", "8", out["full"])
        runs["exr"] = drivers.run("animation", "1", "12", "OPEN_EXR", "16", out["exr"])
        runs["still"] = drivers.run("still", "5", os.path.join(work, "out", "still.png"))
        runs["listed"] = drivers.run("listed", out["listed"])
        down = free_port()
        runs["down"] = drivers.run("down", port=down)
        runs["down_cli"] = drivers.run("down-cli", port=down)
    finally:
        server.kill()
    return {"work": work, "runs": runs, "out": out}


def frame_file(pattern: str, frame: int, ext: str = ".png") -> str:
    return pattern.replace("####", f"{frame:04d}") + ext


def read_png(path: str) -> tuple[np.ndarray, dict]:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA")), dict(image.info) | {"mode": image.mode, "size": image.size}


def exr_header(path: str) -> dict[str, tuple[str, bytes]]:
    """An OpenEXR file's header attributes: name -> (type, raw value) (the format's simple layout:
    magic, version, then name\\0 type\\0 size value ... up to an empty name)."""
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    assert data[:4] == b"\x76\x2f\x31\x01", "not an OpenEXR file"
    attributes, at = {}, 8
    while data[at] != 0:
        name_end = data.index(b"\0", at)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        value = data[type_end + 5:type_end + 5 + size]
        attributes[data[at:name_end].decode()] = (data[name_end + 1:type_end].decode(), value)
        at = type_end + 5 + size
    return attributes


def ok(run: dict) -> None:
    assert run["rc"] == 0 and run.get("outcome") == ["FINISHED"], (run.get("error"), run["stderr"][-3000:])


def test_render_animation_writes_the_scene_range_through_blenders_output(shot):
    runs, out = shot["runs"], shot["out"]
    assert runs["setup"]["engine"] == "FLAMEDIFF"
    ok(runs["full"])
    folder = os.path.dirname(out["full"])
    assert sorted(os.listdir(folder)) == [f"f_{f:04d}.png" for f in range(1, 13)]   # the # padding, frames 1..12
    for frame in range(1, 13):
        pixels, info = read_png(frame_file(out["full"], frame))
        assert info["mode"] == "RGBA" and info["size"] == SIZE
        alpha = pixels[..., 3]
        assert 0 < (alpha > 0).mean() < 1   # head framing with film transparency: alpha outside the head square
    progress = [line for line in runs["full"]["stderr"].splitlines() if line.startswith("flamediff: frame ")]
    assert progress and progress[-1].startswith("flamediff: frame 12 of 12")
    ok(runs["exr"])
    exr_folder = os.path.dirname(out["exr"])
    assert sorted(os.listdir(exr_folder)) == [f"f_{f:04d}.exr" for f in range(1, 13)]
    header = exr_header(frame_file(out["exr"], 3, ".exr"))
    box = struct.unpack("<4i", header["dataWindow"][1])
    assert (box[2] - box[0] + 1, box[3] - box[1] + 1) == SIZE
    assert {b"R", b"G", b"B", b"A"} <= set(header["channels"][1].split(b"\0"))
    print(f"full 12-frame render {runs['full']['seconds']:.1f} s; EXR re-render of the same job "
          f"{runs['exr']['seconds']:.1f} s; two chunks at once {runs['chunks_s']:.1f} s (wall, with process starts)")


def test_two_chunk_processes_give_the_pixels_of_one_full_render(shot):
    runs, out = shot["runs"], shot["out"]
    ok(runs["chunk_1_6"])
    ok(runs["chunk_7_12"])
    assert sorted(os.listdir(os.path.dirname(out["chunks"]))) == [f"f_{f:04d}.png" for f in range(1, 13)]
    for frame in range(1, 13):
        chunk, _ = read_png(frame_file(out["chunks"], frame))
        full, _ = read_png(frame_file(out["full"], frame))
        assert np.array_equal(chunk, full), f"frame {frame} differs"
    # one backend for both Blenders: it ran one chunk's job, then the other's (queued, not refused)
    manifests = []
    for job in os.listdir(os.path.join(shot["work"], "jobs")):
        with open(os.path.join(shot["work"], "jobs", job, "manifest.json"), encoding="utf-8") as handle:
            manifests.append(json.load(handle))
    first, second = sorted((m for m in manifests if m["frames"] in (list(range(1, 7)), list(range(7, 13)))),
                           key=lambda m: m["started"])
    assert second["created"] < first["finished"] <= second["started"]
    # the frames differ from each other (the jaw moves): equality is not a constant image
    assert not np.array_equal(read_png(frame_file(out["full"], 1))[0], read_png(frame_file(out["full"], 12))[0])


def test_f12_fills_the_render_result(shot):
    still = shot["runs"]["still"]
    ok(still)
    assert still["saved"]
    pixels, info = read_png(os.path.join(shot["work"], "out", "still.png"))
    assert info["size"] == SIZE
    full, _ = read_png(frame_file(shot["out"]["full"], 5))
    assert np.array_equal(pixels, full)   # frame 5 alone renders as it does inside the range
    opaque, _ = read_png(os.path.join(shot["work"], "out", "still_opaque.png"))   # film transparency off
    # over black: the opaque pixels as they are, the transparent ones black, the matte's feathered
    # edge in between (Blender composites it in linear light, so not by the sRGB value times alpha)
    alpha, rgb, flat = pixels[..., 3], pixels[..., :3].astype(int), opaque[..., :3].astype(int)
    assert (opaque[..., 3] == 255).all()
    assert np.abs(flat[alpha == 255] - rgb[alpha == 255]).max(initial=0) <= 1 and flat[alpha == 0].max(initial=0) <= 1
    edge = (alpha > 0) & (alpha < 255)
    assert (flat[edge] <= rgb[edge] + 1).all()
    camera, info = read_png(os.path.join(shot["work"], "out", "still_camera.png"))   # 128x85 scaled to 120x80
    assert info["size"] == SIZE and camera[..., :3].std() > 5


def test_render_frame_list_is_one_job_with_the_full_renders_pixels(shot):
    listed = shot["runs"]["listed"]   # blender -b shot.blend -f 3..4
    ok(listed)
    assert sorted(os.listdir(os.path.dirname(shot["out"]["listed"]))) == ["f_0003.png", "f_0004.png"]
    for frame in (3, 4):
        assert np.array_equal(read_png(frame_file(shot["out"]["listed"], frame))[0],
                              read_png(frame_file(shot["out"]["full"], frame))[0])
    jobs = {line.rsplit("(job ", 1)[1].split(",")[0] for line in listed["stderr"].splitlines()
            if line.startswith("flamediff: frame ") and "(job " in line and "connecting" not in line}
    assert len(jobs) == 1, jobs   # the second frame's render waited for the same job
    assert any("frame 2 of 2" in line for line in listed["stderr"].splitlines())


def test_backend_down_fails_with_one_line_and_a_non_zero_exit(shot):
    down, cli = shot["runs"]["down"], shot["runs"]["down_cli"]
    # a render script: bpy.ops.render.render raises with the engine's one-line error; the script exits 1
    assert down["rc"] == 1 and down["outcome"] is None
    assert "flamediff: the flamediff backend is not running at" in down["error"]
    assert "Start it with 'flamediff serve'" in down["error"] and "\n" not in down["error"].strip()
    # blender -b shot.blend -a: Blender would exit 0 after a failed render; the engine exits 1 itself
    assert cli["rc"] == 1 and "outcome" not in cli
    errors = [line for line in cli["stderr"].splitlines() if line.startswith("flamediff: the flamediff backend")]
    assert len(errors) == 1 and "Start it with" in errors[0]
    assert not os.path.exists(os.path.join(shot["work"], "down"))   # no frame written


def test_frame_metadata_reproduces_the_frame(shot, head_folder):
    from flamediff import __version__
    from flamediff.formats.provenance import read_recipe

    pixels, info = read_png(frame_file(shot["out"]["full"], 8))
    recipe = read_recipe(info)
    assert recipe["version"] == __version__ and recipe["frame"] == "8" and recipe["checkpoint"] == "demo"
    assert recipe["steps"] == "1" and recipe["seed"] == "5" and len(recipe["checkpoint_sha256"]) == 64
    header = exr_header(frame_file(shot["out"]["exr"], 8, ".exr"))
    exr_recipe = read_recipe({name: value.decode() for name, (kind, value) in header.items() if kind == "string"})
    assert exr_recipe == recipe   # the EXR header carries the same recipe
    # months later: the job's inputs (named by the recipe's job id) + the recipe -> the same pixels
    inputs = os.path.join(shot["work"], "jobs", recipe["job"], "inputs")
    reference = next(os.path.join(inputs, n) for n in os.listdir(inputs) if n.startswith("reference."))
    again = os.path.join(shot["work"], "again")
    command = [sys.executable, "-m", "flamediff", "render", "--reference", reference, "--animation",
               os.path.join(inputs, "animation.npz"), "--out", again, "--frames", recipe["frame"],
               "--checkpoint", recipe["checkpoint"], "--seed", recipe["seed"], "--steps", recipe["steps"],
               "--guidance", recipe["guidance"], "--framing", recipe["framing"], "--device", "cpu",
               "--flame-asset", head_folder]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    rerendered, again_info = read_png(os.path.join(again, "frame_0008.png"))
    assert np.array_equal(rerendered, pixels)
    again_recipe = read_recipe(again_info)   # flamediff render writes the same recipe
    assert {k: v for k, v in again_recipe.items() if k != "job"} == {k: v for k, v in recipe.items() if k != "job"}
