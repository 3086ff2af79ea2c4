"""flamediff in Blender's own menus, where users (and F3 search) look for it.

Add > FLAME Rig (3D view), File > Import / Export > FLAME Animation (and from a video or photo),
Object > FLAME Rig (coefficients, match to a photo, track a video), and Render > flamediff
(render, preview, cancel, the backend).
"""

from __future__ import annotations

import bpy


class FLAMEDIFF_MT_render(bpy.types.Menu):
    """Render > flamediff"""

    bl_idname = "FLAMEDIFF_MT_render"
    bl_label = "flamediff"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("flamediff.render", text="Render Animation", icon="RENDER_ANIMATION")
        layout.operator("flamediff.render", text="Preview Animation", icon="HIDE_OFF").preview = True
        layout.operator("flamediff.render_cancel", text="Cancel Render", icon="CANCEL")
        layout.separator()
        layout.operator("flamediff.test_connection", text="Test Connection", icon="LINKED")
        layout.operator("flamediff.backend_start", text="Start Backend", icon="PLAY")
        layout.operator("flamediff.backend_stop", text="Stop Backend", icon="PAUSE")
        layout.operator("flamediff.copy_setup_command", icon="COPYDOWN")


class FLAMEDIFF_MT_rig(bpy.types.Menu):
    """Object > FLAME Rig"""

    bl_idname = "FLAMEDIFF_MT_rig"
    bl_label = "FLAME Rig"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("flamediff.reset_coefficients", icon="LOOP_BACK")
        layout.operator("flamediff.randomize_coefficients", icon="MOD_NOISE")
        layout.separator()
        layout.operator("flamediff.match_photo", text="Match Rig to Photo...", icon="IMAGE_DATA")
        layout.operator("flamediff.track_video", text="Track Video into Rig...", icon="FILE_MOVIE")
        layout.operator("flamediff.track_cancel", text="Cancel Tracking", icon="CANCEL")


def draw_add(self, context: bpy.types.Context) -> None:
    self.layout.operator("flamediff.add_rig", text="FLAME Rig", icon="OUTLINER_OB_ARMATURE")


def draw_import(self, context: bpy.types.Context) -> None:
    self.layout.operator("flamediff.import_animation", text="FLAME Animation (flamediff, trackers)")
    self.layout.operator("flamediff.track_video", text="FLAME Animation from Video (track)")
    self.layout.operator("flamediff.match_photo", text="FLAME Rig from Photo (match)")


def draw_export(self, context: bpy.types.Context) -> None:
    self.layout.operator("flamediff.export_animation", text="FLAME Animation (.npz)")


def draw_object(self, context: bpy.types.Context) -> None:
    self.layout.menu(FLAMEDIFF_MT_rig.bl_idname)


def draw_render(self, context: bpy.types.Context) -> None:
    self.layout.separator()
    self.layout.menu(FLAMEDIFF_MT_render.bl_idname, icon="RENDER_ANIMATION")


# Blender's menu -> what flamediff appends to it
MENUS = (("VIEW3D_MT_add", draw_add), ("TOPBAR_MT_file_import", draw_import),
         ("TOPBAR_MT_file_export", draw_export), ("VIEW3D_MT_object", draw_object),
         ("TOPBAR_MT_render", draw_render))
classes = (FLAMEDIFF_MT_render, FLAMEDIFF_MT_rig)


def register_menus() -> None:
    for menu, draw in MENUS:
        getattr(bpy.types, menu).append(draw)


def unregister_menus() -> None:
    for menu, draw in MENUS:
        getattr(bpy.types, menu).remove(draw)
