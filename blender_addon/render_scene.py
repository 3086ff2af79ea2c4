"""A render job in Blender: the Render panel's properties, the VSE strip, timers and handlers.

The job itself is :class:`~.render_job.RenderJob` and what it is built from is decided in
:mod:`.render_inputs` (plain Python); :func:`job_inputs` reads the scene for it and
:class:`SceneHost` is how the job shows itself in a scene. The settings a job sends are the protocol's
(:data:`~.formats.protocol.JOB_SETTINGS`): :func:`setting_property` gives the panel and the
render operator the same labels, defaults and bounds as the server's request model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import animation_io, assets, backend_job
from ..backend.formats.animation import AnimationFormatError, save_animation
from ..backend.formats.flame_asset import FlameAssetError
from ..backend.formats.protocol import setting
from .render_inputs import JobInputError, RenderInputs, check_reference, identity_settings, job_settings
from .render_job import frame_path

STRIP_NAME = "flamediff"
#: The option of path properties that hold ``//`` (blend-relative) paths: Blender 5 warns at every
#: such assignment to a path property without it; older Blender has no such option.
BLEND_RELATIVE = ({"PATH_SUPPORTS_BLEND_RELATIVE"} if "is_path_supports_blend_relative" in
                  bpy.types.Property.bl_rna.properties else set())


def setting_property(name: str, note: str = "", description: str = "", **options: Any) -> Any:
    """A bpy property for the protocol's job setting ``name``: its label, default and bounds.
    ``description`` replaces the protocol's text, ``note`` is appended to it."""
    entry = setting(name)
    text = description or entry.description[:1].upper() + entry.description[1:]
    common = {"name": entry.label, "description": f"{text}. {note}" if note else text, **options}
    if entry.kind == "int":
        return IntProperty(default=int(entry.default or 0), min=int(entry.minimum or 0),
                           max=int(entry.maximum or 2**31 - 1), **common)
    if entry.kind == "float":
        return FloatProperty(default=float(entry.default or 0.0), min=float(entry.minimum or 0.0),
                             max=float(entry.maximum or 1e9), **common)
    if entry.kind == "bool":
        return BoolProperty(default=bool(entry.default), **common)
    if entry.kind == "choice":
        return EnumProperty(items=entry.choices, default=str(entry.default), **common)
    if entry.kind == "text":
        return StringProperty(default=str(entry.default or ""), maxlen=int(entry.maximum or 0), **common)
    raise ValueError(f"the job setting {name!r} ({entry.kind}) has no Blender property")


class FlamediffRenderProps(bpy.types.PropertyGroup):
    """``scene.flamediff_render``: the Render panel's inputs and the current job's state."""

    reference_image: StringProperty(name="Reference image", subtype="FILE_PATH", default="", options=BLEND_RELATIVE,
                                    description="Portrait (PNG/JPEG/WebP) whose appearance the frames take")
    steps: setting_property("steps", "Small models need fewer")
    guidance: setting_property("guidance")
    seed: setting_property("seed")
    checkpoint: setting_property("checkpoint", description="Model name from the backend (Test connection lists "
                                                           "them); empty = the backend's default")
    preview: setting_property("preview", "Its own job and folder: the full render is not touched")
    framing: setting_property("framing")
    matte: setting_property("matte")
    # state (written by the add-on)
    job_id: StringProperty(name="Job", default="")
    status: StringProperty(name="Status", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    frames_done: IntProperty(default=0)
    frames_total: IntProperty(default=0)
    message: StringProperty(name="Progress", default="")
    error: StringProperty(name="Error", default="")
    advice: StringProperty(name="Advice", default="")
    notes: StringProperty(name="Notes", default="", description="The backend's notes on the last job, one per line "
                          "(reference warnings, what a tracker import dropped)")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", default="", options=BLEND_RELATIVE)


class FlamediffRigSettings(bpy.types.PropertyGroup):
    """``rig.flamediff_rig_settings``: per rig, because each rig is one identity to drive."""

    shape_from: setting_property("shape_from", description="Whose FLAME shape the render uses with this rig's motion")
    reference_shape: StringProperty(name="Reference shape", subtype="FILE_PATH", default="", options=BLEND_RELATIVE,
                                    description=".npy of the reference person's FLAME shape coefficients (e.g. "
                                                "DECA, EMOCA or SMIRK run on the reference image); used when "
                                                "Identity shape is Reference. Empty: the backend fits the "
                                                "reference photo's shape (as flamediff track does)")


def _from_props(props: Any, name: str) -> Any:
    return getattr(props, name)


def job_inputs(context: Any, rig: bpy.types.Object, start: int, end: int,
               value: Callable[[Any, str], Any] = _from_props) -> RenderInputs:
    """What a render of ``rig`` over ``start..end`` sends: the Render panel's settings (``value(props,
    name)`` reads them; an operator's arguments win there), the rig's identity settings and the
    animation exported to a temporary file (the caller's to remove). Raises :class:`JobInputError`."""
    scene = context.scene
    props = scene.flamediff_render
    reference = bpy.path.abspath(value(props, "reference_image").strip())
    check_reference(reference)
    if props.reference_image != value(props, "reference_image"):   # a script's reference is the panel's now
        props.reference_image = value(props, "reference_image")
    if scene.camera is None or scene.camera.type != "CAMERA":
        raise JobInputError("the scene has no camera", "add a camera and make it the scene camera")
    rig_settings = rig.flamediff_rig_settings
    try:
        identity = identity_settings(value(rig_settings, "shape_from"), value(rig_settings, "reference_shape"),
                                     bpy.path.abspath)
    except ValueError as exc:
        raise JobInputError(str(exc), "choose a .npy of FLAME shape coefficients in the Render panel (Reference "
                                      "shape), or set Identity shape to Animation") from None
    fd, animation = tempfile.mkstemp(prefix="flamediff-render-", suffix=".npz")
    os.close(fd)
    try:
        animation_io.check_rig_asset(rig, assets.current(context)[1])
        clip, _ = animation_io.read_clip(context, rig, start, end, scene.camera)
        save_animation(animation, clip)
    except (AnimationFormatError, animation_io.ExportError, FlameAssetError, OSError) as exc:
        os.remove(animation)
        raise JobInputError(f"export failed: {exc}") from None
    settings = job_settings(lambda name: value(props, name), identity)
    return RenderInputs(reference, animation, settings, [int(f) for f in clip.frame])


def output_folder(job_id: str, unsaved_root: str) -> str:
    """``//flamediff/<job id>`` next to the .blend (absolute), or ``<unsaved_root>/<job id>`` while the
    file is unsaved (the preference "Renders of unsaved files", default ``~/flamediff_renders``)."""
    if bpy.data.filepath:
        return os.path.join(bpy.path.abspath("//flamediff"), job_id)
    return os.path.join(unsaved_root, job_id)


def blend_relative(path: str) -> str:
    """``path`` as ``//...`` when the .blend is saved, so moving the .blend with its folder keeps the
    strip working; absolute otherwise (unsaved, or on another Windows drive)."""
    if not bpy.data.filepath:
        return path
    try:
        return bpy.path.relpath(path)
    except ValueError:
        return path


def set_status_bar(text: str | None) -> None:
    """Status bar text in every window (none in background mode); ``None`` clears it."""
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm else []):
        try:
            window.workspace.status_text_set(text)
        except (AttributeError, RuntimeError, TypeError):
            pass
        for area in (window.screen.areas if window.screen else []):
            if area.type in ("VIEW_3D", "SEQUENCE_EDITOR", "IMAGE_EDITOR", "STATUSBAR"):
                area.tag_redraw()


def update_strip(scene: bpy.types.Scene, folder: str, frames: list[int]) -> bpy.types.Strip:
    """ONE image-sequence strip named ``flamediff`` starting at the first Blender frame; a re-render
    replaces it on the same channel (the files may land later: Blender shows them as they do).
    The strip's folder is ``//``-relative when the .blend is saved."""
    folder = blend_relative(folder)
    editor = scene.sequence_editor or scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    channel = 1
    old = strips.get(STRIP_NAME)
    if old is not None:
        if (old.get("flamediff_folder") == folder and old.frame_start == frames[0]
                and len(old.elements) == len(frames)):
            try:
                old.invalidate_cache("RAW")  # frames that were missing when last drawn have landed
            except (RuntimeError, TypeError):
                pass
            return old
        channel = old.channel
        strips.remove(old)
    # head framing (the default) gives frames of the scene's size, transparent around the head's
    # square: alpha over whatever lies below; FIT scales 'camera' framing's model-size frames up
    strip = strips.new_image(STRIP_NAME, frame_path(folder, frames[0]), channel, frames[0], fit_method="FIT")
    strip.blend_type = "ALPHA_OVER"
    for frame in frames[1:]:
        strip.elements.append(os.path.basename(frame_path(folder, frame)))
    strip["flamediff_folder"] = folder
    strip["flamediff_job"] = os.path.basename(folder)
    return strip


def show_latest(path: str) -> None:
    """The newest frame in one image datablock (``flamediff latest``), shown in any Image Editor."""
    image = bpy.data.images.get("flamediff latest")
    if image is None:
        image = bpy.data.images.load(path)
        image.name = "flamediff latest"
        image.use_fake_user = True   # no user shows it while no Image Editor does: kept with the .blend anyway
    else:
        image.filepath = path
        image.reload()
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm else []):
        for area in (window.screen.areas if window.screen else []):
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image


class ScenePropsHost:
    """A job's host in a scene, found again by name (it may be renamed away or deleted while the job
    runs): the job's state goes into the scene's property group ``props``, progress into the status bar."""

    props = ""

    def __init__(self, scene: bpy.types.Scene) -> None:
        self.key = scene.name

    @property
    def scene(self) -> bpy.types.Scene | None:
        return bpy.data.scenes.get(self.key)

    def alive(self) -> bool:
        return self.scene is not None

    def show(self, **state: Any) -> None:
        scene = self.scene
        if scene is not None:
            for key, value in state.items():
                setattr(getattr(scene, self.props), key, value)

    def status_bar(self, text: str | None) -> None:
        set_status_bar(text)


class SceneHost(ScenePropsHost):
    """The :class:`~.render_job.RenderHost` of a scene: ``scene.flamediff_render``, its VSE strip,
    the newest frame in an Image Editor and the status bar."""

    props = "flamediff_render"

    def __init__(self, scene: bpy.types.Scene, unsaved_root: str) -> None:
        super().__init__(scene)
        self.unsaved_root = unsaved_root

    def output_folder(self, job_id: str) -> str:
        return output_folder(job_id, self.unsaved_root)

    def display_path(self, path: str) -> str:
        return blend_relative(path)

    def frames_landed(self, folder: str, frames: list[int], latest: str | None) -> None:
        update_strip(self.scene, folder, frames)
        if latest is not None:
            try:
                show_latest(latest)
            except RuntimeError:
                pass


def follow_in_background(job: backend_job.BackendJob) -> None:
    """Poll with ``bpy.app.timers`` (every 0.5 s) until the job ends."""
    def tick() -> float | None:
        return backend_job.POLL_INTERVAL if job.step() else None

    bpy.app.timers.register(tick, first_interval=backend_job.POLL_INTERVAL)


@bpy.app.handlers.persistent
def forget_on_load(*_args: Any) -> None:
    """Opening another file stops following running jobs (they keep rendering on the backend), so
    no strip lands in the wrong file."""
    backend_job.forget_all()
    set_status_bar(None)


def _move_job_folder(folder: str, target: str) -> None:
    """Move a job's folder to ``target``; when the same job was rendered there before (a job id
    names its inputs and settings), its files are replaced by these newer ones."""
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(folder, target)
        return
    for name in os.listdir(folder):
        shutil.move(os.path.join(folder, name), os.path.join(target, name))
    os.rmdir(folder)


def move_unsaved_renders(blend_path: str, unsaved_root: str) -> list[str]:
    """Renders of the still-unsaved file (strips whose frames are in ``unsaved_root``) move into
    ``flamediff/<job id>`` beside ``blend_path`` and their strips point there ``//``-relative, so
    the project moves with its renders; a render still arriving stays, and says so. What was done."""
    lines = []
    root = os.path.realpath(unsaved_root)
    for scene in bpy.data.scenes:
        editor = scene.sequence_editor
        strip = editor.strips.get(STRIP_NAME) if editor is not None else None
        if strip is None:
            continue
        folder = os.path.realpath(bpy.path.abspath(strip.directory))
        if os.path.dirname(folder) != root or not os.path.isdir(folder):
            continue
        if backend_job.active_job(scene.name) is not None:
            lines.append(f"{scene.name}: the render still arriving in {folder} stays there; render again after "
                         "saving to have it beside the .blend")
            continue
        target = os.path.join(os.path.dirname(os.path.abspath(blend_path)), "flamediff", os.path.basename(folder))
        _move_job_folder(folder, target)
        relative = "//" + os.path.relpath(target, os.path.dirname(os.path.abspath(blend_path))).replace(os.sep, "/")
        strip.directory = relative + "/"
        strip["flamediff_folder"] = relative
        if scene.flamediff_render.output_dir:
            scene.flamediff_render.output_dir = relative
        lines.append(f"{scene.name}: moved the render {os.path.basename(folder)} to {relative}")
    return lines


@bpy.app.handlers.persistent
def renders_move_with_the_file(filepath: str = "", *_args: Any) -> None:
    """Before a save: renders made while the file was unsaved go beside it (:func:`move_unsaved_renders`)."""
    from .preferences import unsaved_output_root

    if not isinstance(filepath, str) or not filepath:
        return
    for line in move_unsaved_renders(filepath, unsaved_output_root(bpy.context)):
        print(f"flamediff: {line}")


def register_handlers() -> None:
    if forget_on_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(forget_on_load)
    if renders_move_with_the_file not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(renders_move_with_the_file)


def unregister_handlers() -> None:
    if forget_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(forget_on_load)
    if renders_move_with_the_file in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(renders_move_with_the_file)


classes = (FlamediffRenderProps, FlamediffRigSettings)
