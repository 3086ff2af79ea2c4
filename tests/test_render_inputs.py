"""What a render job is built from, as plain Python (no Blender): the reference check, the identity
and job settings sent, the Render panel's state and the job. The add-on is the one installed from the
built zip (tests/conftest.py); the bpy tests (test_addon_render.py) run the operator that gathers the
scene's values for it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from extension_repo.flamediff.blender_addon import render_inputs
from extension_repo.flamediff.blender_addon.backend_client import BackendError, with_advice
from extension_repo.flamediff.blender_addon.render_inputs import JobInputError, RenderInputs

PANEL = {"steps": 12, "guidance": 2.5, "seed": 7, "preview": False, "framing": "head", "matte": "none",
         "checkpoint": ""}


def test_a_missing_or_refused_reference_is_named_with_its_fix(tmp_path) -> None:
    with pytest.raises(JobInputError) as empty:
        render_inputs.check_reference("")
    assert (empty.value.message, empty.value.advice) == ("no reference image",
                                                         "choose a portrait (PNG/JPEG) in the Render panel")
    with pytest.raises(JobInputError, match="no reference image at '.*nothing.png'"):
        render_inputs.check_reference(str(tmp_path / "nothing.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(JobInputError) as refused:
        render_inputs.check_reference(str(text))
    assert refused.value.advice == "choose a PNG, JPEG or WebP portrait in the Render panel"
    portrait = tmp_path / "portrait.png"
    Image.new("RGB", (8, 8)).save(portrait)
    render_inputs.check_reference(str(portrait))


def test_the_identity_settings_send_the_reference_shape_only_when_asked(tmp_path) -> None:
    np.save(tmp_path / "shape.npy", np.arange(4, dtype=np.float32).reshape(2, 2))
    absolute = lambda path: str(tmp_path / path.removeprefix("//"))   # noqa: E731 - Blender's // resolver
    assert render_inputs.identity_settings("animation", "//shape.npy", absolute) == {"shape_from": "animation"}
    assert render_inputs.identity_settings("reference", "  ", absolute) == {"shape_from": "reference"}
    assert render_inputs.identity_settings("reference", " //shape.npy ", absolute) == {
        "shape_from": "reference", "reference_shape": [0.0, 1.0, 2.0, 3.0]}
    with pytest.raises(ValueError, match="cannot read the reference shape file '//missing.npy'"):
        render_inputs.identity_settings("reference", "//missing.npy", absolute)


def test_the_job_settings_are_the_panels_with_the_identity_and_a_named_checkpoint() -> None:
    identity = {"shape_from": "animation"}
    sent = render_inputs.job_settings(PANEL.__getitem__, identity)
    assert sent == {name: PANEL[name] for name in render_inputs.PANEL_SETTINGS} | identity
    named = render_inputs.job_settings({**PANEL, "checkpoint": " demo "}.__getitem__, identity)
    assert named["checkpoint"] == "demo"


def test_the_panel_shows_a_refusal_and_a_start_and_the_job_gets_start_locally_only_when_chosen() -> None:
    assert render_inputs.refused_state("no reference image", "choose one") == {
        "error": "no reference image", "advice": "choose one", "status": "error", "message": "Render not started"}
    started = render_inputs.starting_state([3, 4, 5])
    assert started["frames_total"] == 3 and started["status"] == "connecting" and started["error"] == ""
    inputs = RenderInputs("ref.png", "anim.npz", {"steps": 2}, [3, 4, 5])
    local = {"mode": "LOCAL", "port": 8765}
    job = render_inputs.render_job(object(), object(), inputs, local)
    assert (job.reference, job.animation, job.settings, job.frames, job.local) == (*inputs, local)
    assert render_inputs.render_job(object(), object(), inputs, {"mode": "URL"}).local is None


def test_a_problem_and_its_fix_read_as_two_sentences() -> None:
    assert with_advice("the backend is down", "start it") == "the backend is down. Start it"
    assert with_advice("the backend is down", "") == "the backend is down"
    assert str(BackendError("refused", "start it")) == "refused. Start it"
