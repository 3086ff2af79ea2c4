"""The hostile inputs of the server's probe table, built once: the tests (test_server_hostile,
test_tracking_hostile) send them to the in-process server, benchmarks/probe_server.py to a real
``flamediff serve``. Each is small on disk and claims far more than it holds; no tests here."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np


def zipped(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def vhap_frame(expr_width: int = 100) -> bytes:
    rng = np.random.default_rng(1)
    return npz_bytes(rotation=rng.normal(0, 0.1, (1, 3)), translation=np.zeros((1, 3)), neck_pose=np.zeros((1, 3)),
                     jaw_pose=np.zeros((1, 3)), eyes_pose=np.zeros((1, 6)), shape=np.zeros(300),
                     expr=rng.normal(0, 0.5, (1, expr_width)))


def vhap_export(paths: list[str]) -> bytes:
    """A zipped VHAP export whose transforms.json names ``paths`` (one frame each)."""
    rows = [{"flame_param_path": path, "timestep_index": i, "camera_index": 0, "fl_x": 500.0, "fl_y": 500.0,
             "cx": 256.0, "cy": 256.0, "w": 512, "h": 512, "transform_matrix": np.eye(4).tolist()}
            for i, path in enumerate(paths)]
    files = {"export/transforms.json": json.dumps({"frames": rows}).encode()}
    files.update({f"export/flame_param/{i:05d}.npz": vhap_frame() for i in range(2)})
    return zipped(files)


def outside_names(outside: str) -> list[str]:
    """Names a VHAP export's transforms.json may give for files outside the upload, in a folder
    :func:`plant_outside_files` filled: a readable tracker file, a text file, a missing file, and
    two climbing out with ``..``."""
    return [f"{outside}/00000.npz", f"{outside}/secret.txt", f"{outside}/missing.npz",
            f"../../{outside}/secret.txt", "flame_param/../../../secret.txt"]


def plant_outside_files(outside: str) -> None:
    """A tracker frame and a secret text file the server's user can read, outside any upload."""
    with open(f"{outside}/00000.npz", "wb") as handle:
        handle.write(vhap_frame())
    with open(f"{outside}/secret.txt", "w", encoding="utf-8") as handle:
        handle.write("hunter2 is the password\n")


def amplifier(frames: int = 40) -> bytes:
    """A zipped per-frame folder whose frames hold 16 MiB of zeros each (10 kB zipped)."""
    frame = npz_bytes(rotation=np.zeros((1, 3)), eyes_pose=np.zeros((1, 6)), expr=np.zeros((1, 2 << 20)))
    return zipped({f"capture/flame_param/{i:05d}.npz": frame for i in range(frames)})


def billion_element_npz() -> bytes:
    """A zipped folder with one frame whose 'expr' header claims 1e9 float64 (the data is absent)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (1, 10 ** 9)})
    frame = zipped({"expr.npy": buffer.getvalue(), "rotation.npy": npy_bytes(np.zeros((1, 3))),
                     "eyes_pose.npy": npy_bytes(np.zeros((1, 6)))})
    return zipped({"capture/flame_param/00000.npz": frame, "capture/flame_param/00001.npz": vhap_frame()})


def billion_laughs() -> bytes:
    """A pickle of lists sharing lists: 11 kB on disk, 1e8 values once its shared lists are walked."""
    row = [0.5] * 1000
    return pickle.dumps({"expression_params": [[row] * 1000] * 100}, protocol=4)


def many_objects() -> bytes:
    """A pickle of 2e6 distinct objects."""
    return pickle.dumps({"expression_params": list(range(2_000_000))}, protocol=4)


def zero_stride_torch() -> bytes:
    """A torch file whose 1-element storage is viewed as 20000 x 20000 (3.2 GB when copied)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"expression_params": torch.zeros(1).expand(20000, 20000), "jaw_params": torch.zeros(20000, 3)},
               buffer)
    return buffer.getvalue()


def folder_of_frames(count: int = 19_999) -> bytes:
    """A zipped per-frame folder of ``count`` (empty) frames: only its member list is large."""
    return zipped({f"capture/flame_param/{i:05d}.npz": b"" for i in range(count)}, zipfile.ZIP_STORED)


def _two_frames() -> dict[str, bytes]:
    return {f"capture/flame_param/{i:05d}.npz": vhap_frame() for i in range(2)}


def same_name_twice() -> bytes:
    """A zip holding one member name twice."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in [*_two_frames().items(), ("capture/flame_param/00000.npz", vhap_frame())]:
            archive.writestr(name, data)
    return buffer.getvalue()


def same_name_but_case() -> bytes:
    return zipped({**_two_frames(), "capture/FLAME_PARAM/00000.npz": vhap_frame()})


def file_where_a_folder_is() -> bytes:
    return zipped({**_two_frames(), "capture": b"a file where a folder is"})


def over_long_name() -> bytes:
    """A member whose file name is 300 characters."""
    return zipped({**_two_frames(), f"capture/flame_param/{'9' * 300}.npz": vhap_frame()})


def image(format: str, size: tuple[int, int] = (64, 64), **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buffer, format=format, **options)
    return buffer.getvalue()


def animated_gif() -> bytes:
    from PIL import Image

    return image("GIF", save_all=True, append_images=[Image.new("RGB", (64, 64), (10, 200, 10))], duration=40)


def huge_gif_screen() -> bytes:
    """A GIF header declaring a 65535 x 65535 logical screen."""
    return b"GIF89a" + b"\xff\xff\xff\xff" + b"\0" * 32


def video(path: str, frames: int, container: str = "mp4") -> bytes:
    import av

    with av.open(path, "w", format=container) as output:
        stream = output.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), index * 3 % 255, np.uint8), format="rgb24")
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    with open(path, "rb") as handle:
        return handle.read()


def declaring_a_million_frames(path: str) -> bytes:
    """A 5-frame AVI (6 kB) whose headers declare 1,000,000 frames (its main header's total and its
    stream header's length): what a client can claim without sending the frames."""
    data = bytearray(video(path, 5, "avi"))
    struct.pack_into("<I", data, data.index(b"avih") + 8 + 16, 1_000_000)  # dwTotalFrames
    struct.pack_into("<I", data, data.index(b"strh") + 8 + 32, 1_000_000)  # dwLength
    return bytes(data)


def matroska(path: str, frames: int, seconds: float | None, side: int = 64, face: bool = False) -> bytes:
    """A Matroska file of ``frames`` frames (black, or a photographed face; no frame count:
    Matroska has none) whose segment declares ``seconds`` (its Duration element rewritten), or no
    length at all (the element overwritten by a Void element of the same size, as a live
    recording leaves it)."""
    import av

    if face:
        import skimage.data
        from PIL import Image

        pixels = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((side, side)))
    else:
        pixels = np.zeros((side, side, 3), np.uint8)
    with av.open(path, "w", format="matroska") as output:
        stream = output.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        picture = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        for _ in range(frames):
            output.mux(stream.encode(picture))
        output.mux(stream.encode())
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    duration = data.index(b"\x44\x89\x88")  # Duration, an 8-byte float in milliseconds
    if seconds is None:
        data[duration:duration + 11] = b"\xec\x89" + bytes(9)
    else:
        struct.pack_into(">d", data, duration + 3, seconds * 1000)
    with open(path, "wb") as handle:
        handle.write(data)
    return bytes(data)
