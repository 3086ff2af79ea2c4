"""What every flamediff operator shares: finding the rig it works on."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

from .. import rig as rigmod


def target_rig(context: bpy.types.Context, name: str) -> bpy.types.Object | None:
    """The rig named ``name`` (or owning that object), else the rig of the active object."""
    if name:
        return rigmod.find_rig(bpy.data.objects.get(name))
    return rigmod.find_rig(context.active_object)


NO_RIG = "Select a flamediff rig (or its head mesh), or pass rig=NAME; add one with Add > FLAME Rig"


def has_rig(context: bpy.types.Context) -> bool:
    """Poll helper: scripts may name the rig, so any rig in the file enables the operators."""
    return rigmod.find_rig(context.active_object) is not None or any(
        obj.get("flamediff_rig") for obj in context.scene.objects)


class RigOperator:
    """Mixin of the operators that act on one rig: the ``rig`` argument and the poll."""

    rig: StringProperty(name="Rig", default="", description="Rig object name; empty = the active rig")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if has_rig(context):
            return True
        cls.poll_message_set("No flamediff rig in this scene: add one with Add > FLAME Rig")
        return False
