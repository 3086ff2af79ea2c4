"""The render engine's plain-Python side (no Blender): which frames a chunk exports and submits,
waiting for frames with progress and Esc, how failures end a command-line render, the frames'
recipe, and two backends on one port (a farm machine's second Blender)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from test_addon_render_job import REFUSED, FakeProcess, ScriptedClient, make_job, run

from extension_repo.flamediff.blender_addon import engine_job
from flamediff.formats.provenance import frame_recipe, read_recipe
from flamediff.formats.windows import context_frames, frames_for_exact_subset


def test_chunks_export_whole_anchored_windows():
    # windows of 16 frames overlapping by 4 start at frames -3, 9, 21, ...: frames 1-6 lie in the first
    assert engine_job.export_range(range(1, 7)) == (-3, 12)
    assert engine_job.export_range(range(7, 13)) == (-3, 24)   # 9-12 are also in the second window
    assert engine_job.export_range(range(1, 13)) == (-3, 24)   # the full render sees the same windows
    assert engine_job.export_range([30]) == (21, 36)
    assert context_frames([2]) == list(range(-3, 13))
    assert frames_for_exact_subset([30], range(1, 100)) == list(range(21, 37))


def test_rendered_frames_follow_the_scene_range_step_or_the_current_frame():
    assert engine_job.rendered_frames(1, 12, 1, 5, animation=True) == list(range(1, 13))
    assert engine_job.rendered_frames(1, 12, 4, 5, animation=True) == [1, 5, 9]
    assert engine_job.rendered_frames(1, 12, 1, 5, animation=False) == [5]


def test_blenders_frame_lists_are_one_chunk():
    argv = ["blender", "-b", "shot.blend", "-f", "1,3,5..7", "--render-frame", "+1", "-f", "-1", "--", "-f", "99"]
    assert engine_job.listed_frames(argv, 10, 20) == [1, 3, 5, 6, 7, 11, 19]
    assert engine_job.rendered_frames(10, 20, 1, 6, True, [7, 5, 6]) == [5, 6, 7]   # each -f frame is a render
    assert engine_job.rendered_frames(10, 20, 1, 12, True, [5, 6]) == list(range(10, 21))   # not a listed frame
    assert engine_job.listed_frames(["blender", "-b", "shot.blend", "-f", "x"], 1, 9) == []


def test_only_blenders_own_render_flags_end_the_process():
    assert engine_job.command_line_render(["blender", "-b", "shot.blend", "-s", "7", "-e", "12", "-a"], True)
    assert engine_job.command_line_render(["blender", "-b", "shot.blend", "-f", "7"], True)
    assert not engine_job.command_line_render(["blender", "-b", "shot.blend", "-a"], False)   # the GUI
    assert not engine_job.command_line_render(["blender", "-b", "-P", "r.py", "--", "-a"], True)   # a script's
    assert not engine_job.command_line_render(["python", "render.py"], True)   # the bpy module


def chunk(tmp_path, client, frames=(1, 2, 3), **kwargs):
    job, host = make_job(tmp_path, client, frames=frames, **kwargs)
    lines: list[str] = []
    return engine_job.ChunkRender(job, engine_job.EngineHost("Scene"), log=lines.append), lines


def test_a_chunk_hands_each_frame_over_as_it_lands_with_progress_lines(tmp_path):
    client = ScriptedClient([{"status": "running", "frames_done": 1, "rendered": [1], "progress": 0.4, "eta_s": 61},
                             {"status": "done", "frames_done": 3, "rendered": [1, 2, 3], "progress": 1.0}])
    render, lines = chunk(tmp_path, client)
    seen: list[str] = []
    assert os.path.basename(render.wait_for(1, lambda: False, lambda f, text: seen.append(text))) == "frame_0001.png"
    assert client.submitted["steps"] == 2 and client.calls.count("submit") == 1
    assert render.wait_for(2, lambda: False).endswith("frame_0002.png")
    assert render.wait_for(3, lambda: False).endswith("frame_0003.png")
    assert client.calls.count("submit") == 1   # one job for the chunk
    assert "flamediff: frame 2 of 3, 40%, ETA 1:01 (job 0123456789abcdef, running)" in lines
    assert seen and seen[-1].startswith("flamediff: frame 2 of 3")
    render.close()
    assert "cancel" not in client.calls   # a finished chunk is not cancelled


def test_esc_cancels_the_job_and_keeps_the_frames_written(tmp_path):
    client = ScriptedClient([{"status": "running", "frames_done": 1, "rendered": [1], "progress": 0.3}])
    render, _ = chunk(tmp_path, client)
    render.wait_for(1, lambda: False)
    with pytest.raises(engine_job.RenderCancelled, match="1 of 3 frames"):
        render.wait_for(2, lambda: True)
    assert "cancel" in client.calls
    assert os.path.exists(os.path.join(render.job.folder, "frame_0001.png"))


def test_a_backend_that_is_down_is_a_one_line_engine_error(tmp_path):
    render, _ = chunk(tmp_path, ScriptedClient(health_errors=[REFUSED]))
    with pytest.raises(engine_job.EngineError) as caught:
        render.wait_for(1, lambda: False)
    assert str(caught.value) == ("flamediff: the flamediff backend is not running at http://127.0.0.1:1 "
                                 "(connection refused). Start it with 'flamediff serve'")


def test_a_failed_job_names_the_backends_error(tmp_path):
    client = ScriptedClient([{"status": "failed", "error": "unknown checkpoint 'x'", "advice": "see GET /v1/models"}])
    render, _ = chunk(tmp_path, client)
    with pytest.raises(engine_job.EngineError, match="unknown checkpoint 'x'. See GET /v1/models"):
        render.wait_for(1, lambda: False)


def test_a_backend_another_blender_is_starting_on_the_port_is_waited_for(tmp_path):
    local = {"python": "", "port": 1, "device": "cpu", "token_file": "t"}
    client = ScriptedClient([{"status": "done", "rendered": [1]}], health_errors=[REFUSED, REFUSED])
    job, _ = make_job(tmp_path, client, frames=(1,), local=local, process=FakeProcess(lives=0, port_answers=True))
    assert run(job) == 3 and job.outcome == "done"   # ours found the port taken; the other one answered


def test_the_recipe_round_trips_through_text_fields():
    view = {"id": "0123456789abcdef", "flamediff_version": "0.1.0", "steps": 1, "guidance": 1.0,
            "checkpoint": {"name": "demo"}, "checkpoint_sha256": "ab" * 32, "resolution": 128,
            "settings": {"seed": 5, "framing": "head", "preview": False, "shape_from": "animation"}}
    recipe = frame_recipe(view, 8)
    assert recipe["flamediff.frame"] == "8" and recipe["flamediff.preview"] == "false"
    assert "flamediff.reference_sha256" not in recipe   # unknown fields are left out, not "None"
    back = read_recipe({**recipe, "Software": "Blender", "flamediff.other": "x"})
    assert back == {key[len("flamediff."):]: value for key, value in recipe.items()}


def test_a_second_backend_on_a_taken_port_leaves_the_first_ones_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("the running backend's token")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run([sys.executable, "-m", "flamediff", "serve", "--port", str(port), "--token-file",
                                    str(token), "--jobs-dir", str(tmp_path / "jobs"), "--device", "cpu"],
                                   capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in completed.stderr and "Traceback" not in completed.stderr
    assert token.read_text() == "the running backend's token"
