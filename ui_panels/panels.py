"""Sidebar panels: rig (add, asset, coefficient sliders with a filter), animation (with tracking),
camera, render; and the flamediff engine's panel in Render Properties."""

from __future__ import annotations

import bpy

from ..blender_addon import rig as rigmod
from ..blender_addon.preferences import unsaved_output_root
from .text import wrapped_label


class FLAMEDIFF_UL_coefficients(bpy.types.UIList):
    """Shape-key sliders; the list's own filter box searches names (e.g. "Expr", "Shape01")."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        layout.prop(item, "value", text=item.name, slider=True)

    def filter_items(self, context, data, propname):
        blocks = getattr(data, propname)
        kind = context.scene.flamediff_coefficient_kind
        wanted = self.filter_name.lower()
        flags = [self.bitflag_filter_item if (b.name.startswith(kind) and wanted in b.name.lower()) else 0
                 for b in blocks]
        return flags, []


class _FlamediffPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "flamediff"


def _explain_no_rig(layout: bpy.types.UILayout) -> None:
    layout.label(text="No flamediff rig selected.", icon="INFO")
    layout.label(text="Select a rig or its head mesh, or add one:")


class FLAMEDIFF_PT_rig(_FlamediffPanel, bpy.types.Panel):
    bl_label = "FLAME Rig"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        rig = rigmod.find_rig(context.active_object)
        layout.operator("flamediff.add_rig", icon="ARMATURE_DATA")
        if rig is None:
            _explain_no_rig(layout)
            return
        identity = rigmod.rig_identity(rig)
        num_shape, num_expression = rigmod.coefficient_counts(rig)
        box = layout.box()
        box.label(text=f"Rig: {rig.name}")
        box.label(text=f"Asset: {identity['name']} ({identity['hash'][:10]})")
        box.label(text=f"{num_shape} shape, {num_expression} expression coefficients")
        head = rigmod.rig_head(rig)
        layout.prop(context.scene, "flamediff_coefficient_kind", expand=True)
        layout.template_list("FLAMEDIFF_UL_coefficients", "", head.data.shape_keys, "key_blocks",
                             head, "active_shape_key_index", rows=8)
        row = layout.row(align=True)
        row.operator("flamediff.reset_coefficients", text="Reset", icon="LOOP_BACK")
        row.operator("flamediff.randomize_coefficients", text="Randomise", icon="MOD_NOISE")


class FLAMEDIFF_PT_animation(_FlamediffPanel, bpy.types.Panel):
    bl_label = "Animation"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return rigmod.find_rig(context.active_object) is not None

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("flamediff.import_animation", icon="IMPORT")
        layout.operator("flamediff.export_animation", icon="EXPORT")
        layout.label(text="Key bones and shape keys with I; the graph editor and NLA work as usual.")
        _draw_tracking(layout, context)


def _draw_tracking(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """Match to a photo / track a video, with the running task's progress, cancel and outcome."""
    from ..blender_addon import backend_job

    box = layout.box()
    box.label(text="From a photo or a video (the backend's tracker)", icon="TRACKER")
    running = backend_job.active_job(context.scene.name, "track") is not None
    row = box.row(align=True)
    row.enabled = not running
    row.operator("flamediff.match_photo", text="Match to Photo", icon="IMAGE_DATA")
    row.operator("flamediff.track_video", text="Track Video", icon="FILE_MOVIE")
    props = context.scene.flamediff_track
    if running:
        box.prop(props, "progress", slider=True)
        box.operator("flamediff.track_cancel", text="Cancel", icon="CANCEL")
    if props.message:
        wrapped_label(box, context, props.message, icon="INFO")
    if props.error:
        wrapped_label(box, context, props.error, icon="ERROR")
        if props.advice:
            wrapped_label(box, context, props.advice)


class FLAMEDIFF_PT_camera(_FlamediffPanel, bpy.types.Panel):
    bl_label = "Camera"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = context.scene
        layout.prop(scene, "camera")
        if scene.camera is None:
            layout.label(text="No scene camera: exports carry no K, R|t.", icon="INFO")
            return
        data = scene.camera.data
        layout.prop(data, "lens")
        layout.prop(data, "sensor_fit")
        row = layout.row(align=True)
        row.prop(data, "shift_x")
        row.prop(data, "shift_y")
        row = layout.row(align=True)
        row.prop(scene.render, "resolution_x")
        row.prop(scene.render, "resolution_y")


def framing_summary(framing: str, render: bpy.types.RenderSettings, matte: str = "head") -> str:
    """What a render will hand back, said before it starts."""
    scale = render.resolution_percentage / 100.0
    width, height = int(render.resolution_x * scale), int(render.resolution_y * scale)
    if framing == "head":
        shown = {"head": "the head (its feathered silhouette)", "head_neck": "the head and neck",
                 "tile": "the whole square"}[matte]
        return (f"Frames: {width}x{height} with alpha; the square around the head is rendered at the model's "
                f"resolution and scaled into place, and {shown} is opaque, the rest transparent")
    return (f"Frames: the camera's whole {width}x{height} view fitted into the model's square, at the model's "
            f"resolution with the camera's aspect, no transparency")


def draw_job_settings(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The scene's job settings (``scene.flamediff_render``) and the active rig's identity: the
    sidebar's Render panel and the render engine's Render Properties show the same ones."""
    props = context.scene.flamediff_render
    layout.prop(props, "reference_image")
    row = layout.row(align=True)
    row.prop(props, "steps")
    row.prop(props, "guidance")
    row = layout.row(align=True)
    row.prop(props, "seed")
    row.prop(props, "checkpoint", text="Model")
    layout.prop(props, "preview")
    layout.prop(props, "framing")
    if props.framing == "head":
        layout.prop(props, "matte")
    wrapped_label(layout, context, framing_summary(props.framing, context.scene.render, props.matte),
                  icon="IMAGE_DATA")
    rig = rigmod.find_rig(context.active_object)
    if rig is not None:
        layout.prop(rig.flamediff_rig_settings, "shape_from")
        if rig.flamediff_rig_settings.shape_from == "reference":
            layout.prop(rig.flamediff_rig_settings, "reference_shape")


class FLAMEDIFF_PT_engine(bpy.types.Panel):
    """Render Properties with the flamediff engine: what F12, Render Animation and ``blender -b`` use."""

    bl_label = "flamediff"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {"FLAMEDIFF"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.engine in cls.COMPAT_ENGINES

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        draw_job_settings(layout, context)
        layout.prop(context.scene.render, "film_transparent", text="Transparent around the head")
        view = context.scene.view_settings
        if view.view_transform != "Standard" or view.look != "None" or view.exposure or view.gamma != 1.0:
            wrapped_label(layout, context, "The view transform changes flamediff's colours in saved PNG/JPEG: "
                                           "set Color Management > View Transform to Standard", icon="ERROR")


class FLAMEDIFF_PT_render(_FlamediffPanel, bpy.types.Panel):
    bl_label = "Render"

    def draw(self, context: bpy.types.Context) -> None:
        from ..blender_addon import backend_job

        layout = self.layout
        props = context.scene.flamediff_render
        draw_job_settings(layout, context)
        running = backend_job.active_job(context.scene.name) is not None
        row = layout.row(align=True)
        row.enabled = not running
        row.operator("flamediff.render", text="Preview" if props.preview else "Render", icon="RENDER_ANIMATION")
        if running:
            layout.operator("flamediff.render_cancel", text="Cancel", icon="CANCEL")
            layout.prop(props, "progress", slider=True)
        if props.message:
            wrapped_label(layout, context, props.message, icon="INFO")
        if props.output_dir:
            wrapped_label(layout, context, f"Frames: {props.output_dir}")
        if not bpy.data.filepath:
            wrapped_label(layout, context, f"Unsaved file: frames go to {unsaved_output_root(context)}. Save the "
                                           f".blend to render into //flamediff beside it.", icon="FILE_FOLDER")
        if props.notes:
            box = layout.box()
            for note in props.notes.splitlines():
                wrapped_label(box, context, note, icon="INFO")
        if props.error:
            box = layout.box()
            wrapped_label(box, context, props.error, icon="ERROR")
            if props.advice:
                wrapped_label(box, context, props.advice)
        layout.operator("flamediff.test_connection", text="Test connection", icon="LINKED")


_KINDS = [("Shape", "Shape", "Identity coefficients"), ("Expression", "Expression", "Expression coefficients"),
          ("Pose", "Pose", "Pose correctives (driven by the bones; read only)")]


def register_properties() -> None:
    bpy.types.Scene.flamediff_coefficient_kind = bpy.props.EnumProperty(
        name="Coefficients", items=_KINDS, default="Shape")
    from ..blender_addon.render_scene import FlamediffRenderProps, FlamediffRigSettings
    from ..blender_addon.track_scene import FlamediffTrackProps

    bpy.types.Scene.flamediff_render = bpy.props.PointerProperty(type=FlamediffRenderProps)
    bpy.types.Scene.flamediff_track = bpy.props.PointerProperty(type=FlamediffTrackProps)
    bpy.types.Object.flamediff_rig_settings = bpy.props.PointerProperty(type=FlamediffRigSettings)


def unregister_properties() -> None:
    del bpy.types.Scene.flamediff_coefficient_kind
    del bpy.types.Scene.flamediff_render
    del bpy.types.Scene.flamediff_track
    del bpy.types.Object.flamediff_rig_settings
