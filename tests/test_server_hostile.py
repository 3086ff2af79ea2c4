"""Hostile uploads on the tracker surfaces (issue 27, first table): one test per probe, each
asserting the answer, that it comes within :data:`SECONDS` of wall time and that the server's
peak memory (tracemalloc over every thread of the in-process server, numpy's buffers included,
and the process's resident high-water mark, which sees torch's allocations too) stays within :data:`MEGABYTES` of what it held before the request. The server runs with ``serve``'s default
limits, so these are the answers a user's server gives."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hostile_inputs import (amplifier, billion_element_npz, billion_laughs, file_where_a_folder_is, folder_of_frames,
                            many_objects, outside_names, over_long_name, plant_outside_files, same_name_but_case,
                            same_name_twice, vhap_export, vhap_frame, zero_stride_torch)
from test_server_helpers import TOKEN, answered_within, assert_error, make_checkpoint, peak_memory, png_bytes

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
    few sends, see :func:`answered_within`), then again for the peak memory (:func:`peak_memory`,
    whose tracemalloc slows Python several times over); the first response, after checking both
    answers agree."""
    files = {"reference": ("r.png", reference), "animation": ("a.bin", animation)}

    def send():
        return client.post("/v1/jobs", files=files, data={"settings": "{}"}, headers=AUTH)

    response, seconds = answered_within(send, SECONDS)
    with peak_memory() as memory:
        again = send()
    peak = memory[0]
    print(f"{response.status_code} in {seconds:.3f} s wall, peak {peak:.1f} MB above idle")
    assert seconds <= SECONDS, (seconds, response.text)
    assert peak <= MEGABYTES, (peak, response.text)
    assert (again.status_code, again.text) == (response.status_code, response.text)
    return response


def test_transforms_json_naming_a_file_outside_the_upload_is_refused(client, reference, tmp_path):
    """Probes 1-3: an absolute path to a readable tracker file, to a text file, to a missing file:
    one identical 422, nothing outside read, no content quoted."""
    outside = tmp_path / "outside"
    outside.mkdir()
    plant_outside_files(str(outside))
    inside = "flame_param/00000.npz"
    answers = []
    for name in outside_names(str(outside)):
        response = bounded(client, reference, vhap_export([inside, name]))
        assert_error(response, 422, "points outside it")
        assert "hunter" not in response.text and str(tmp_path) not in response.text
        answers.append(response.json())
    assert all(answer == answers[0] for answer in answers), answers


def test_a_folder_of_frames_declaring_huge_arrays_is_refused_from_its_headers(client, reference):
    """Probe 4, the amplifier: 40 frames of 16 MiB of zeros each (10 kB zipped)."""
    assert_error(bounded(client, reference, amplifier()), 413, "would take", "past the limit")


def test_an_inner_npz_declaring_a_billion_elements_is_refused_unread(client, reference):
    """Probe 5: one frame of a zipped folder whose 'expr' header claims 1e9 float64 (the data is absent)."""
    assert_error(bounded(client, reference, billion_element_npz()), 413, "declares")


def test_a_pickle_of_a_hundred_million_objects_is_refused(client, reference):
    """Probe 6, a billion laughs of lists: 11 kB on disk, 1e8 values once its shared lists are walked."""
    laughs = billion_laughs()
    assert len(laughs) < 64 * 1024
    assert_error(bounded(client, reference, laughs), 413, "more than", "values")
    assert_error(bounded(client, reference, many_objects()), 413, "pickled objects")


def test_a_torch_file_with_zero_stride_storages_is_refused_before_allocating(client, reference):
    """Probe 7: a 1-element storage viewed as 20000 x 20000 (3.2 GB when copied)."""
    pytest.importorskip("torch")
    assert_error(bounded(client, reference, zero_stride_torch()), 413, "tensor of size [20000, 20000]")


def test_a_zipped_folder_of_19999_frames_is_refused_from_its_member_list(client, reference):
    """Probe 8: more frames than ``--max-folder-frames`` (10 000), refused before reading a member."""
    assert_error(bounded(client, reference, folder_of_frames(19_999)), 413, "19999 frames", "more than 10000")


def test_duplicate_and_over_long_member_names_are_a_422_about_the_archive(client, reference):
    """Probe 9: the same name twice, a name differing only in case, a file where a folder is
    needed, a 300-character name: 422 naming the archive, never 507 about disk space."""
    assert_error(bounded(client, reference, same_name_twice()), 422, "twice")
    assert_error(bounded(client, reference, same_name_but_case()), 422, "twice")
    assert_error(bounded(client, reference, file_where_a_folder_is()), 422, "twice")
    response = bounded(client, reference, over_long_name())
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


def test_the_memory_bound_sees_native_allocations():
    """The meter of every bound above counts what tracemalloc misses (torch's allocator): a
    100 MiB tensor touched inside the block reads as at least that."""
    torch = pytest.importorskip("torch")
    if not sys.platform.startswith("linux"):
        pytest.skip("the resident high-water mark is read from /proc")
    with peak_memory() as memory:
        tensor = torch.ones(100 << 18)  # 100 MiB of float32, every page written
        del tensor
    assert memory[0] >= 95, memory
