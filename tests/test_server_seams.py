"""The seams of the server: one declared ``Renderer`` interface for the in-process and the
child-process renderer; one protocol module (version, job settings, loopback rule, frame names)
for the server, its command line and the add-on; typed settings in the job manifest."""

from __future__ import annotations

import inspect
import json
import os

import pytest

from flamediff.formats.protocol import JOB_SETTINGS, frame_file, is_loopback_host, is_loopback_url, setting
from flamediff.server.inputs import JobSettings, parse_settings
from flamediff.server.jobs import CorruptManifest, JobFolder
from flamediff.server.render_process import ChildProcessRenderer
from flamediff.server.renderers import InProcessRenderer, Renderer


def test_both_renderers_implement_the_renderer_protocol_with_its_signatures() -> None:
    methods = {name: inspect.signature(value) for name, value in vars(Renderer).items()
               if inspect.isfunction(value) and not name.startswith("_")}
    assert set(methods) == {"asset", "start", "run_job", "release"}
    assert set(Renderer.__annotations__) == {"device", "loaded_name"}
    for kind in (InProcessRenderer, ChildProcessRenderer):
        renderer = kind("cpu")
        assert isinstance(renderer, Renderer)
        for name, signature in methods.items():
            assert list(inspect.signature(getattr(kind, name)).parameters) == list(signature.parameters), name
        assert renderer.release() is False and renderer.loaded_name is None  # nothing loaded, no child started


# -- one protocol: version, settings schema, loopback rule ------------------------------------------

def test_the_protocol_rules_are_defined_once() -> None:
    """Server and add-on take the version, the loopback rule and the cache / token paths from
    formats/; no other file assigns a PROTOCOL_VERSION or defines those functions again."""
    import ast

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = {"PROTOCOL_VERSION", "is_loopback", "is_loopback_host", "is_loopback_url", "cache_dir",
              "default_token_file"}
    defined = []
    for folder in ("backend", "blender_addon", "operators", "ui_panels"):
        for base, _, names in os.walk(os.path.join(root, folder)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
                for node in tree.body:  # module level: a local variable may share a name
                    targets = [getattr(t, "id", None) for t in node.targets] if isinstance(node, ast.Assign) else [
                        node.name] if isinstance(node, ast.FunctionDef) else []
                    defined += [(os.path.relpath(path, root), t) for t in targets if t in shared]
    protocol, paths = os.path.join("backend", "formats", "protocol.py"), os.path.join("backend", "formats", "paths.py")
    assert sorted(defined) == [(paths, "cache_dir"), (paths, "default_token_file"), (protocol, "PROTOCOL_VERSION"),
                               (protocol, "is_loopback_host"), (protocol, "is_loopback_url")]


def test_the_request_model_is_the_protocol_settings_schema() -> None:
    """Every protocol setting is a JobSettings field with its default, bounds, choices and text."""
    schema = JobSettings.model_json_schema()["properties"]
    assert list(JobSettings.model_fields) == [entry.name for entry in JOB_SETTINGS]
    for entry in JOB_SETTINGS:
        field, prop = JobSettings.model_fields[entry.name], schema[entry.name]
        assert (field.default, field.description) == (entry.default, entry.description), entry.name
        limits = {"int": ("minimum", "maximum"), "float": ("minimum", "maximum"),
                  "floats": ("minItems", "maxItems"), "text": (None, "maxLength")}.get(entry.kind, (None, None))
        numeric = prop.get("anyOf", [prop])[0]
        for key, bound in zip(limits, (entry.minimum, entry.maximum)):
            if key is not None and bound is not None:
                assert numeric[key] == bound, (entry.name, key)
        if entry.kind == "choice":
            assert tuple(prop["enum"]) == entry.values
    assert set(JobSettings().hashed()) == {
        entry.name for entry in JOB_SETTINGS if entry.hashed} - {"preview"}  # preview False keeps old ids
    tile = JobSettings(matte="tile").hashed()
    assert "matte" not in tile and "matte" not in JobSettings(framing="camera").hashed()   # ids from before mattes


def test_the_render_command_takes_its_options_from_the_protocol() -> None:
    import argparse

    from flamediff.server.cli import RENDER_SETTINGS, register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["render", "--reference", "r.png", "--animation", "a.npz", "--out", "o"])
    assert {name: getattr(args, name) for name in RENDER_SETTINGS} == {name: setting(name).default
                                                                       for name in RENDER_SETTINGS}
    with pytest.raises(SystemExit):
        parser.parse_args(["render", "--reference", "r", "--animation", "a", "--out", "o", "--shape-from", "mesh"])


@pytest.mark.parametrize("host, loopback", [("localhost", True), ("LocalHost", True), ("127.0.0.1", True),
                                            ("127.8.0.1", True), ("::1", True), ("[::1]", True),
                                            ("0.0.0.0", False), ("10.0.0.1", False), ("localhost.evil.com", False),
                                            ("127.0.0.1.evil.com", False), ("", False)])
def test_one_loopback_rule_for_hosts_and_urls(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    url = f"http://{'[' + host + ']' if host == '::1' else host}:8765/v1"
    assert is_loopback_url(url) is loopback
    assert frame_file(7) == "frame_0007.png"


# -- the manifest stores typed settings and reads them back -------------------------------------------

def _job_folder(tmp_path, settings: dict) -> JobFolder:
    folder = JobFolder(str(tmp_path / "job"))
    os.makedirs(folder.path, exist_ok=True)
    manifest = {"id": "0" * 16, "status": "queued", "frames": [1, 2], "frames_total": 2, "settings": settings,
                "checkpoint": {"name": "tiny"}, "request_hash": "0" * 64}
    with open(folder.manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    return folder


def test_manifest_settings_read_back_as_job_settings(tmp_path) -> None:
    settings = parse_settings({"steps": 3, "guidance": 1.5, "seed": 9, "frames": "1-2", "shape_from": "reference",
                               "reference_shape": [0.5, -1], "preview": True, "frames_per_batch": 2})
    folder = _job_folder(tmp_path, settings.to_dict())
    assert folder.settings() == settings and isinstance(folder.settings(), JobSettings)


def test_manifests_of_the_version_before_previews_still_read(tmp_path) -> None:
    """What the first server wrote: every field but ``preview`` and ``framing``; its frames were
    rendered with the camera's whole view, so a resumed job keeps rendering them so."""
    old = {"checkpoint": "tiny", "steps": 25, "guidance": 2.0, "seed": 0, "frames": [1, 2], "shape_from": "animation",
           "reference_shape": None, "resolution": None, "frames_per_batch": 4}
    settings = _job_folder(tmp_path, old).settings()
    assert settings.preview is False and settings.steps == 25 and settings.frames == [1, 2]
    assert settings.framing == "camera" and parse_settings({}).framing == "head"
    assert settings.matte == "tile" and parse_settings({}).matte == "head"   # stored jobs keep their square tiles


def test_unreadable_stored_settings_fail_the_job_with_advice(tmp_path) -> None:
    folder = _job_folder(tmp_path, {"steps": "many", "guidance": 2.0})
    with pytest.raises(CorruptManifest, match="settings this flamediff cannot read.*'steps'"):
        folder.settings()
    view = folder.read_or_failed()
    assert view["status"] == "failed" and "starts over" in view["advice"]


def test_the_pipeline_settings_are_the_job_settings_it_shares() -> None:
    from flamediff.pipelines.render import RenderSettings
    from flamediff.server.job_execution import pipeline_settings

    settings = parse_settings({"steps": 0, "guidance": 3.5, "seed": 11, "shape_from": "reference",
                               "reference_shape": [0.1], "preview": True, "frames_per_batch": 8})
    assert pipeline_settings(settings, steps=4, frames_per_batch=2) == RenderSettings(
        steps=4, guidance=3.5, seed=11, frames_per_batch=2, shape_from="reference", preview=True, framing="head")


def test_every_job_setting_is_a_pipeline_field_or_excluded_with_one_set_of_defaults() -> None:
    """A job setting renamed on either side, or added without a decision, fails here instead of
    silently rendering with the pipeline's own value; a pipeline field a job sets defaults as the
    protocol does."""
    from dataclasses import fields

    from flamediff.pipelines.render import RenderSettings
    from flamediff.server.inputs import JobSettings
    from flamediff.server.job_execution import NOT_PIPELINE_SETTINGS, PIPELINE_FIELDS, PIPELINE_ONLY_FIELDS

    names = sorted(entry.name for entry in JOB_SETTINGS)
    assert sorted([*PIPELINE_FIELDS, *NOT_PIPELINE_SETTINGS]) == names == sorted(JobSettings.model_fields)
    render_fields = {entry.name: entry for entry in fields(RenderSettings)}
    assert sorted([*PIPELINE_FIELDS.values(), *PIPELINE_ONLY_FIELDS]) == sorted(render_fields)
    assert {name: render_fields[field].default for name, field in PIPELINE_FIELDS.items()} == \
        {name: setting(name).default for name in PIPELINE_FIELDS}


def test_the_progress_bar_counts_frames_with_its_percentage_and_writes_lines_to_logs() -> None:
    """37.5 % of 24 frames is frame 9/24, not 0/24; a log file gets plain lines (one per 10 %), a
    terminal the bar redrawn with carriage returns."""
    import io

    from flamediff.server.cli import ProgressBar
    from flamediff.server.progress import Progress

    log = io.StringIO()
    bar = ProgressBar(log)
    for done in range(0, 25):
        bar(Progress("rendering", 0 if done < 24 else 24, 24, done / 24, 3.0))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 11
    import re

    for line in lines:   # every line's frame count is its percentage of the 24 frames
        percent, frames = re.search(r"([\d.]+)% frame (\d+)/24", line).groups()
        assert -0.05 < float(percent) / 100 * 24 - int(frames) < 1, line   # the percentage shows 1 decimal
    assert "33.3% frame 8/24 (0 written)" in lines[3]
    assert lines[-1].startswith("flamediff render: 100.0% frame 24/24 (24 written)")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    ProgressBar(screen)(Progress("rendering", 0, 24, 0.375, None))
    assert screen.getvalue().startswith("\r[###########") and "frame 9/24" in screen.getvalue()
