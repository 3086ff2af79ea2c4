"""The "flamediff" render engine: F12, Render Animation, ``blender -b -a`` / ``-f N`` render through
the backend, into Blender's own result buffer (so output path, file format, compositor, stamps and
the Render Result work as with any engine).

Thin over the render job: the first ``render`` call of a render submits one job for every frame
Blender will ask for (:mod:`.engine_job`), the following calls wait for their frame. The settings
are the Render panel's (``scene.flamediff_render``, the protocol's job settings).
"""

from __future__ import annotations

import sys
import types
from typing import Any

import bpy
import numpy as np

from . import animation_io, engine_job, local_backend, render_scene
from . import rig as rigmod
from ..backend.formats.images import check_image_file
from ..backend.formats.provenance import frame_recipe
from .preferences import backend_settings, make_client
from .backend_job import local_settings
from .render_inputs import JobInputError, render_job

ENGINE_ID = "FLAMEDIFF"
#: scene name -> the chunk a render of that scene follows (set at its first frame, dropped at its end)
_CHUNKS: dict[str, engine_job.ChunkRender] = {}


def scene_rig(scene: bpy.types.Scene, active: bpy.types.Object | None) -> bpy.types.Object:
    """The rig a render shows: the scene's only rig, else the active object's; raises EngineError."""
    rigs = [obj for obj in scene.objects if obj.get("flamediff_rig")]
    chosen = rigmod.find_rig(active)
    if chosen is not None and chosen in rigs:
        return chosen
    if len(rigs) == 1:
        return rigs[0]
    raise engine_job.EngineError("no flamediff rig in the scene" if not rigs else
                                 f"{len(rigs)} flamediff rigs in the scene and none is active",
                                 "add one with Add > FLAME Rig" if not rigs else "select the rig to render")


def _start_chunk(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph, frames: list[int]) -> engine_job.ChunkRender:
    """Export the rig over the frames' context windows and submit one job for ``frames``."""
    rig = scene_rig(scene, depsgraph.view_layer.objects.active)
    blockers = animation_io.fast_path_blockers(scene, rig, scene.camera) if scene.camera else []
    if blockers:  # the evaluated-scene export steps through frames, which a render must not do
        raise engine_job.EngineError(f"the engine reads keyframes only, and this rig or camera has {blockers[0]}",
                                     "bake it (Object > Animation > Bake Action), or render with Render > "
                                     "flamediff > Render (the VSE operator)")
    # read_clip's fast path reads F-curves, and the render's depsgraph for what has none
    context = types.SimpleNamespace(scene=scene, evaluated_depsgraph_get=lambda: depsgraph,
                                    preferences=bpy.context.preferences)
    first, last = engine_job.export_range(frames)
    try:
        inputs = render_scene.job_inputs(context, rig, first, last)
    except JobInputError as exc:
        raise engine_job.EngineError(exc.message, exc.advice) from None
    backend = backend_settings(context)
    if local_settings(backend) is not None and bpy.app.background:
        local_backend.keep_running()  # the next chunk on this machine finds it warm
    host = engine_job.EngineHost(scene.name)
    job = render_job(host, make_client(context), inputs._replace(settings={**inputs.settings, "frames": frames},
                                                                 frames=frames), backend)
    return engine_job.ChunkRender(job, host)


class FlamediffRenderEngine(bpy.types.RenderEngine):
    """Render Properties > Render Engine > flamediff."""

    bl_idname = ENGINE_ID
    bl_label = "flamediff"
    bl_use_preview = False          # material previews: nothing to show
    bl_use_postprocess = True       # compositor and sequencer run on the result
    bl_use_eevee_viewport = True    # the 3D view's Material Preview / Rendered shading use Eevee

    def render(self, depsgraph: bpy.types.Depsgraph) -> None:
        scene = bpy.data.scenes.get(depsgraph.scene.name) or depsgraph.scene
        frame = scene.frame_current
        try:
            chunk = self._chunk(scene, depsgraph, frame)
            path = chunk.wait_for(frame, self.test_break, self._progress)
        except engine_job.RenderCancelled as exc:
            self.report({"WARNING"}, f"flamediff: {exc}")
            drop_chunk(scene.name)
            return
        except engine_job.EngineError as exc:
            drop_chunk(scene.name)
            self._fail(exc)
            return
        self._deliver(scene, path, frame_recipe(chunk.job.view, frame))

    def _chunk(self, scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph, frame: int) -> engine_job.ChunkRender:
        chunk = _CHUNKS.get(scene.name)
        if chunk is None or frame not in chunk.frames:
            drop_chunk(scene.name)
            listed = engine_job.listed_frames(sys.argv, scene.frame_start, scene.frame_end) if \
                engine_job.command_line_render(sys.argv, bpy.app.background) else []
            frames = engine_job.rendered_frames(scene.frame_start, scene.frame_end, scene.frame_step, frame,
                                                self.is_animation, listed)
            chunk = _CHUNKS[scene.name] = _start_chunk(scene, depsgraph, frames)
        return chunk

    def _progress(self, fraction: float, text: str) -> None:
        self.update_progress(fraction)
        self.update_stats("", text)

    def _deliver(self, scene: bpy.types.Scene, path: str, recipe: dict[str, str]) -> None:
        """The frame into the result (and its recipe into the stamp metadata Blender writes)."""
        result = self.begin_result(0, 0, self.resolution_x, self.resolution_y)
        try:
            result.layers[0].load_from_file(fitted(path, self.resolution_x, self.resolution_y))
            if not scene.render.film_transparent:   # over black, as other engines without transparency
                combined = result.layers[0].passes["Combined"]
                pixels = np.empty(len(combined.rect) * 4, dtype=np.float32)
                combined.rect.foreach_get(pixels)
                pixels[3::4] = 1.0   # the result is premultiplied: RGB already is the head over black
                combined.rect.foreach_set(pixels)
        finally:
            self.end_result(result)
        full = self.get_result()
        for key, value in recipe.items():
            full.stamp_data_add_field(key, value)

    def _fail(self, exc: engine_job.EngineError) -> None:
        """A one-line error, said once. ``blender -b ... -a`` gets it on stderr and exits non-zero (it
        would ignore the error and exit 0); not also as a report, which a command-line render prints
        to stdout at once (the same line twice)."""
        if engine_job.command_line_render(sys.argv, bpy.app.background):
            print(str(exc), file=sys.stderr, flush=True)
            raise SystemExit(1)
        self._report_error(str(exc))

    def _report_error(self, text: str) -> None:
        """An ERROR report: the render's error in Blender's status bar, and what a script's render
        operator raises."""
        self.report({"ERROR"}, text)


def fitted(path: str, width: int, height: int) -> str:
    """``path``, or a copy scaled to ``width`` x ``height`` beside it: 'camera' framing renders frames
    of the camera's aspect at the model's resolution, and a render result takes only its own size."""
    header = check_image_file(path, "the rendered frame")
    if (header.width, header.height) == (width, height):
        return path
    image = bpy.data.images.load(path)
    try:
        image.scale(width, height)
        image.filepath_raw = scaled = path.replace(".png", f"_{width}x{height}.png")
        image.file_format = "PNG"
        image.save()
    finally:
        bpy.data.images.remove(image)
    return scaled


def drop_chunk(scene_name: str) -> None:
    chunk = _CHUNKS.pop(scene_name, None)
    if chunk is not None:
        chunk.close()


@bpy.app.handlers.persistent
def _render_complete(scene: Any, *_args: Any) -> None:
    """A render ended: forget its chunk once every frame was rendered (``blender -f 1..12`` renders
    its frames as renders of their own: the chunk lives on for the next one)."""
    chunk = _CHUNKS.get(getattr(scene, "name", ""))
    if chunk is not None and chunk.handed_out:
        drop_chunk(scene.name)


@bpy.app.handlers.persistent
def _render_cancel(scene: Any, *_args: Any) -> None:
    drop_chunk(getattr(scene, "name", ""))


_HANDLERS = ((bpy.app.handlers.render_complete, _render_complete), (bpy.app.handlers.render_cancel, _render_cancel))


def register_handlers() -> None:
    for handlers, handler in _HANDLERS:
        if handler not in handlers:
            handlers.append(handler)


def unregister_handlers() -> None:
    for handlers, handler in _HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    for name in list(_CHUNKS):
        drop_chunk(name)


classes = (FlamediffRenderEngine,)
