"""The flamediff command line: help, doctor, asset generation, demo, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

from flamediff.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for command in ("doctor", "assets", "demo"):
        assert command in out


def test_python_dash_m_backend():
    result = subprocess.run([sys.executable, "-m", "flamediff", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("flamediff ")


def test_doctor_reports_environment_and_asset(capsys, head_folder):
    from flamediff.formats.ports import free_port

    port = free_port()
    assert main(["doctor", "--port", str(port)]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "procedural-head" in out and "gsplat" in out and "cuda" in out
    assert "tracking        mediapipe" in out and "checkpoint      demo (128 px" in out
    assert f"port            {port} is free" in out


def test_doctor_names_a_port_another_program_holds(capsys):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["doctor", "--port", str(port)]) == 1
    out = capsys.readouterr().out
    assert f"port {port} is used by another program" in out and "flamediff serve --port" in out


def test_doctor_names_a_missing_tracking_extra_and_checkpoint_with_their_fixes(capsys, tmp_path, monkeypatch):
    """Not "all good" when Match Photo could not track or a render had no shipped checkpoint."""
    import importlib.util

    import flamediff.assets

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "mediapipe" else
                        find_spec(name, *rest))
    monkeypatch.setattr(flamediff.assets, "DEMO_CHECKPOINT", str(tmp_path / "demo"))
    assert main(["doctor", "--port", "0"]) == 1
    out = capsys.readouterr().out
    assert "all good" not in out
    assert "tracking (flamediff track, Match Photo, Track Video) needs mediapipe: pip install 'flamediff[tracking]'" \
        in out
    assert f"the shipped checkpoint {tmp_path / 'demo'} is missing or damaged" in out and "git checkout" in out


def test_doctor_explains_a_bad_asset(capsys, tmp_path):
    assert main(["doctor", "--flame-asset", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "holds no FLAME model file" in out and "flame.is.tue.mpg.de" in out


def test_assets_procedural_head(tmp_path, capsys):
    out_dir = tmp_path / "head"
    assert main(["assets", "procedural-head", "--out", str(out_dir)]) == 0
    assert (out_dir / "FLAME_NEUTRAL.pkl").is_file() and (out_dir / "head_template.obj").is_file()
    assert "hash" in capsys.readouterr().out


def test_demo_writes_meshes_and_previews(tmp_path, head_folder):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--frames", "4", "--resolution", "64"]) == 0
    assert sorted(os.listdir(out_dir / "frames")) == [f"frame_{i:04d}.png" for i in range(1, 5)]
    assert len(os.listdir(out_dir / "meshes")) == 4
    assert (out_dir / "animation.npz").is_file() and (out_dir / "preview.gif").is_file()


def test_errors_are_messages_not_tracebacks(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flamediff", "demo", "--flame-asset", str(tmp_path / "nope"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr


def test_formats_package_needs_neither_torch_nor_scipy():
    """The add-on ships backend/formats: it must import with numpy and stdlib only."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['scipy'] = None\n"
            "import flamediff.formats.animation, flamediff.formats.conventions, flamediff.formats.flame_asset, "
            "flamediff.formats.procedural_head\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
