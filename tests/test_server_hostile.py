"""Hostile uploads on the tracker surfaces (issue 27, first table): one test per probe, each
asserting the answer, that it comes within :data:`SECONDS` of wall time and that the server's
peak memory (tracemalloc over every thread of the in-process server, numpy's buffers included)
stays within :data:`MEGABYTES` of what it held before the request. The server runs with ``serve``'s default
limits, so these are the answers a user's server gives."""

from __future__ import annotations

import io
import json
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest

from test_server_helpers import TOKEN, answered_within, assert_error, make_checkpoint, png_bytes

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECONDS = 1.0
MEGABYTES = 300


@pytest.fixture(scope="module")
def client(tmp_path_factory, head_asset, head_folder):
    base = tmp_path_factory.mktemp("hostile")
    make_checkpoint(str(base / "models" / "tiny"), head_asset)
    service = build_service(str(base / "jobs"), str(base / "models"), "cpu", shipped_dir=str(base / "none"))
    with TestClient(create_app(service, TOKEN, start_worker=False)) as test_client:
        test_client.post("/v1/jobs", headers=AUTH, files={"reference": ("r.png", png_bytes()),
                                                          "animation": ("a", b"x")})  # first-request costs
        yield test_client


@pytest.fixture(scope="module")
def reference() -> bytes:
    return png_bytes()


def bounded(client, reference: bytes, animation: bytes):
    """Submit ``animation``: its answer in at most :data:`SECONDS` of wall time (the fastest of a
    few sends, see :func:`answered_within`), then again under tracemalloc (which slows Python several
    times over) for the peak memory; the first response, after checking both answers agree."""
    files = {"reference": ("r.png", reference), "animation": ("a.bin", animation)}

    def send():
        return client.post("/v1/jobs", files=files, data={"settings": "{}"}, headers=AUTH)

    response, seconds = answered_within(send, SECONDS)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        again = send()
        peak = (tracemalloc.get_traced_memory()[1] - before) / 2 ** 20
    finally:
        tracemalloc.stop()
    print(f"{response.status_code} in {seconds:.3f} s wall, peak {peak:.1f} MB above idle")
    assert seconds <= SECONDS, (seconds, response.text)
    assert peak <= MEGABYTES, (peak, response.text)
    assert (again.status_code, again.text) == (response.status_code, response.text)
    return response


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


def test_transforms_json_naming_a_file_outside_the_upload_is_refused(client, reference, tmp_path):
    """Probes 1-3: an absolute path to a readable tracker file, to a text file, to a missing file:
    one identical 422, nothing outside read, no content quoted."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00000.npz").write_bytes(vhap_frame())
    (outside / "secret.txt").write_text("hunter2 is the password\n")
    inside = "flame_param/00000.npz"
    answers = []
    for name in (str(outside / "00000.npz"), str(outside / "secret.txt"), str(outside / "missing.npz"),
                 "../../" + str(outside / "secret.txt"), "flame_param/../../../secret.txt"):
        response = bounded(client, reference, vhap_export([inside, name]))
        assert_error(response, 422, "points outside it")
        assert "hunter" not in response.text and str(tmp_path) not in response.text
        answers.append(response.json())
    assert all(answer == answers[0] for answer in answers), answers


def test_a_folder_of_frames_declaring_huge_arrays_is_refused_from_its_headers(client, reference):
    """Probe 4, the amplifier: 40 frames of 16 MiB of zeros each (10 kB zipped)."""
    frame = npz_bytes(rotation=np.zeros((1, 3)), eyes_pose=np.zeros((1, 6)), expr=np.zeros((1, 2 << 20)))
    files = {f"capture/flame_param/{i:05d}.npz": frame for i in range(40)}
    assert_error(bounded(client, reference, zipped(files)), 413, "declares", "past the limit")


def test_an_inner_npz_declaring_a_billion_elements_is_refused_unread(client, reference):
    """Probe 5: one frame of a zipped folder whose 'expr' header claims 1e9 float64 (the data is absent)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (1, 10 ** 9)})
    frame = zipped({"expr.npy": buffer.getvalue(), "rotation.npy": _npy(np.zeros((1, 3))),
                     "eyes_pose.npy": _npy(np.zeros((1, 6)))})
    files = {"capture/flame_param/00000.npz": frame, "capture/flame_param/00001.npz": vhap_frame()}
    assert_error(bounded(client, reference, zipped(files)), 413, "declares")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_pickle_of_a_hundred_million_objects_is_refused(client, reference):
    """Probe 6, a billion laughs of lists: 11 kB on disk, 1e8 values once its shared lists are walked."""
    row = [0.5] * 1000
    laughs = pickle.dumps({"expression_params": [[row] * 1000] * 100}, protocol=4)
    assert len(laughs) < 64 * 1024
    assert_error(bounded(client, reference, laughs), 413, "more than", "values")
    many = pickle.dumps({"expression_params": list(range(2_000_000))}, protocol=4)  # 2e6 distinct objects
    assert_error(bounded(client, reference, many), 413, "pickled objects")


def test_a_torch_file_with_zero_stride_storages_is_refused_before_allocating(client, reference):
    """Probe 7: a 1-element storage viewed as 20000 x 20000 (3.2 GB when copied)."""
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"expression_params": torch.zeros(1).expand(20000, 20000), "jaw_params": torch.zeros(20000, 3)},
               buffer)
    assert_error(bounded(client, reference, buffer.getvalue()), 413, "tensor of size [20000, 20000]")


def test_a_zipped_folder_of_19999_frames_is_refused_from_its_member_list(client, reference):
    """Probe 8: more frames than ``--max-folder-frames`` (10 000), refused before reading a member."""
    files = {f"capture/flame_param/{i:05d}.npz": b"" for i in range(19_999)}
    assert_error(bounded(client, reference, zipped(files, zipfile.ZIP_STORED)), 413, "19999 frames",
                 "more than 10000")


def test_duplicate_and_over_long_member_names_are_a_422_about_the_archive(client, reference):
    """Probe 9: the same name twice, a name differing only in case, a file where a folder is
    needed, a 300-character name: 422 naming the archive, never 507 about disk space."""
    frames = {f"capture/flame_param/{i:05d}.npz": vhap_frame() for i in range(2)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in [*frames.items(), ("capture/flame_param/00000.npz", vhap_frame())]:
            archive.writestr(name, data)
    assert_error(bounded(client, reference, buffer.getvalue()), 422, "twice")
    upper = {**frames, "capture/FLAME_PARAM/00000.npz": vhap_frame()}
    assert_error(bounded(client, reference, zipped(upper)), 422, "twice")
    shadowed = {**frames, "capture": b"a file where a folder is"}
    assert_error(bounded(client, reference, zipped(shadowed)), 422, "twice")
    long = {**frames, f"capture/flame_param/{'9' * 300}.npz": vhap_frame()}
    response = bounded(client, reference, zipped(long))
    assert_error(response, 422, "longer than 255")
    assert "9" * 100 not in response.text


def test_the_shared_name_rule_holds_for_local_folders_too(tmp_path):
    """The add-on and ``convert`` read a local VHAP export through the same rule."""
    from flamediff.formats.trackers import TrackerFormatError, member_parts, read_tracker

    (tmp_path / "flame_param").mkdir()
    (tmp_path / "flame_param" / "00000.npz").write_bytes(vhap_frame())
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [
        {"flame_param_path": "/etc/hostname", "timestep_index": 0, "fl_x": 1, "fl_y": 1, "cx": 0, "cy": 0, "w": 1,
         "h": 1, "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(TrackerFormatError, match="points outside it"):
        read_tracker(tmp_path)
    assert member_parts("a/./b//c.npz") == ("a", "b", "c.npz")
    for name in ("/a", "C:/a", "a/../../b", "..", "a\\..\\..\\b", ""):
        with pytest.raises(TrackerFormatError):
            member_parts(name)
