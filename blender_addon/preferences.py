"""Add-on preferences: which FLAME asset, how many coefficients a new rig exposes, backend."""

from __future__ import annotations

import bpy
from bpy.props import IntProperty, StringProperty


class FLAMEDIFF_AP_preferences(bpy.types.AddonPreferences):
    """Stored in Blender's user preferences, so every .blend builds rigs from the same asset."""

    bl_idname = __package__

    asset_folder: StringProperty(
        name="FLAME asset folder", subtype="DIR_PATH", default="",
        description="Folder with a FLAME model, UV layout and landmarks; empty = the licence-free "
                    "procedural head, generated on first use into Blender's user data folder")
    num_shape: IntProperty(
        name="Shape coefficients", default=100, min=1, max=300,
        description="Shape keys a new rig exposes (capped at the model's number)")
    num_expression: IntProperty(
        name="Expression coefficients", default=50, min=1, max=100,
        description="Expression shape keys a new rig exposes (capped at the model's number)")
    backend_url: StringProperty(
        name="Backend URL", default="http://127.0.0.1:8765",
        description="Local render backend (used by the render issue; not contacted yet)")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "asset_folder")
        row = layout.row()
        row.prop(self, "num_shape")
        row.prop(self, "num_expression")
        box = layout.box()
        box.label(text="Render backend (not used yet)")
        box.prop(self, "backend_url")


def get_preferences(context: bpy.types.Context) -> FLAMEDIFF_AP_preferences:
    """This add-on's preferences (the add-on is registered under its package name)."""
    return context.preferences.addons[__package__].preferences


classes = (FLAMEDIFF_AP_preferences,)
