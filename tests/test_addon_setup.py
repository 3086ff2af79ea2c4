"""The add-on's first-run logic outside Blender: cache and token paths, where the backend's Python is
looked for on each OS, the set-up command, and word-boundary wrapping of panel messages."""

from __future__ import annotations

import importlib.util
import os

from flamediff import assets
from flamediff.formats import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_dir_rules_are_shared_by_the_backend_and_the_add_on(tmp_path):
    home = str(tmp_path)
    assert paths.cache_dir({}, home) == os.path.join(home, ".cache", "flamediff")
    assert paths.cache_dir({"XDG_CACHE_HOME": "/xdg"}, home) == os.path.join("/xdg", "flamediff")
    assert paths.cache_dir({"FLAMEDIFF_CACHE": "/fd", "XDG_CACHE_HOME": "/xdg"}, home) == "/fd"
    assert paths.default_token_file({"XDG_CACHE_HOME": "/xdg"}, home) == os.path.join("/xdg", "flamediff", "server",
                                                                                       "token")
    assert assets.cache_dir is paths.cache_dir  # one rule, not two
    assert paths.default_token_file() == os.path.join(os.environ["FLAMEDIFF_CACHE"], "server", "token")


def test_default_venv_and_its_python_on_each_os():
    assert paths.default_venv("posix", {}, "/home/ann") == "/home/ann/.local/share/flamediff/venv"
    assert paths.default_venv("posix", {"XDG_DATA_HOME": "/data"}, "/home/ann") == "/data/flamediff/venv"
    assert paths.venv_python("/v", "posix") == "/v/bin/python"
    windows = paths.default_venv("nt", {"LOCALAPPDATA": "C:\\Users\\ann\\AppData\\Local"}, "C:\\Users\\ann")
    assert windows == "C:\\Users\\ann\\AppData\\Local\\flamediff\\venv"
    assert paths.venv_python(windows, "nt") == "C:\\Users\\ann\\AppData\\Local\\flamediff\\venv\\Scripts\\python.exe"
    assert paths.default_venv("nt", {}, "C:\\Users\\ann") == "C:\\Users\\ann\\AppData\\Local\\flamediff\\venv"


def test_python_is_looked_for_in_the_documented_order():
    found = paths.python_candidates("/pref/python", ("/src/flamediff",), "posix", {"FLAMEDIFF_PYTHON": "/env/python"},
                                    "/home/ann", which=lambda name: "/opt/fd/bin/flamediff")
    assert [c.path for c in found] == [
        "/pref/python", "/env/python", "/src/flamediff/.venv/bin/python",
        "/home/ann/.local/share/flamediff/venv/bin/python", "/opt/fd/bin/python",
        "/home/ann/miniconda3/envs/flamediff/bin/python", "/home/ann/anaconda3/envs/flamediff/bin/python",
        "/home/ann/miniforge3/envs/flamediff/bin/python"]
    assert found[0].origin == "the 'Backend Python' preference" and found[1].origin == "$FLAMEDIFF_PYTHON"
    windows = paths.python_candidates("", ("C:\\src\\flamediff",), "nt", {"LOCALAPPDATA": "C:\\L"}, "C:\\Users\\ann",
                                      which=lambda name: None)
    assert [c.path for c in windows[:2]] == ["C:\\src\\flamediff\\.venv\\Scripts\\python.exe",
                                             "C:\\L\\flamediff\\venv\\Scripts\\python.exe"]
    assert windows[2].path == "C:\\Users\\ann\\miniconda3\\envs\\flamediff\\python.exe"


def test_the_first_existing_python_wins_but_an_explicit_choice_is_never_skipped(tmp_path):
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    candidates = paths.python_candidates("", (), "posix", {"XDG_DATA_HOME": "/nowhere"}, str(tmp_path),
                                         which=lambda name: None)
    assert paths.find_backend_python(candidates) is None
    checkout = paths.python_candidates("", (str(tmp_path / "nope"), str(tmp_path)), "posix", {}, str(tmp_path),
                                       which=lambda name: None)
    os.rename(tmp_path / "venv", tmp_path / ".venv")
    chosen = paths.find_backend_python(checkout)
    assert chosen is not None and os.path.samefile(chosen.path, tmp_path / ".venv" / "bin" / "python")
    assert "source checkout" in chosen.origin
    typo = paths.python_candidates("/typo/python", (str(tmp_path),), "posix", {}, str(tmp_path),
                                   which=lambda name: None)
    assert paths.find_backend_python(typo).path == "/typo/python"  # reported as missing, not silently replaced


def test_setup_command_names_real_paths_on_each_os():
    linux = paths.setup_command("/src/flamediff", "posix", {}, "/home/ann")
    assert linux == ('python3.11 -m venv "/home/ann/.local/share/flamediff/venv" && '
                     '"/home/ann/.local/share/flamediff/venv/bin/python" -m pip install -e "/src/flamediff"')
    windows = paths.setup_command("", "nt", {"LOCALAPPDATA": "C:\\L"}, "C:\\Users\\ann")
    assert windows.startswith('py -3.11 -m venv "C:\\L\\flamediff\\venv" && "C:\\L\\flamediff\\venv\\Scripts\\python.exe"')
    assert "path\\to\\flamediff" in windows  # no checkout known: a placeholder docs/ADDON.md explains


def load_text():
    spec = importlib.util.spec_from_file_location("flamediff_ui_text", os.path.join(ROOT, "ui_panels", "text.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_panel_text_wraps_at_words_to_the_region_width():
    text = load_text()
    advice = ("start it with 'flamediff serve' (or 'python -m flamediff serve' in the backend's venv), or choose "
              "'Start locally' in the flamediff add-on preferences")
    lines = text.wrap(advice, 40)
    assert " ".join(lines) == advice and all(len(line) <= 40 for line in lines)
    words = set(advice.split())
    assert all(set(line.split()) <= words for line in lines)  # no word is cut
    path = "/home/ann/some/very/long/folder/name/flamediff/renders/job_0123456789abcdef"
    cut = text.wrap(f"Frames: {path}", 30)
    assert "".join(cut).replace("Frames:", "Frames: ", 1) == f"Frames: {path}" and all(len(x) <= 30 for x in cut)
    assert all(line.endswith("/") for line in cut[1:-1])  # a long path breaks after a separator
    assert text.chars_per_line(600) > text.chars_per_line(300) > text.chars_per_line(300, ui_scale=2.0)
    assert text.chars_per_line(10) == 16
