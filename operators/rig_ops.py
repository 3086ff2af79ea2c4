"""Add a rig; reset or randomise its coefficients."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty

from ..blender_addon import assets, rig as rigmod
from ..backend.formats.flame_asset import FlameAssetError
from ..blender_addon.preferences import get_preferences
from .common import NO_RIG, RigOperator, target_rig

_WHICH = [("BOTH", "Shape and expression", ""), ("SHAPE", "Shape", ""), ("EXPRESSION", "Expression", "")]


class FLAMEDIFF_OT_add_rig(bpy.types.Operator):
    """Build a FLAME rig (mesh, shape keys, armature, correctives) from the preferences' asset"""

    bl_idname = "flamediff.add_rig"
    bl_label = "Add FLAME Rig"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", default="FLAME")
    num_shape: IntProperty(name="Shape coefficients", default=0, min=0, max=300,
                           description="0 = the preferences' number")
    num_expression: IntProperty(name="Expression coefficients", default=0, min=0, max=100,
                                description="0 = the preferences' number")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.mode == "OBJECT":
            return True
        cls.poll_message_set("Switch to Object Mode to add a FLAME rig")
        return False

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = get_preferences(context)
        try:
            asset, identity = assets.current(context)
        except (FlameAssetError, OSError, ValueError) as exc:
            self.report({"ERROR"}, f"Cannot load the FLAME asset: {exc}")
            return {"CANCELLED"}
        rig = rigmod.build_rig(context, asset, identity, self.num_shape or prefs.num_shape,
                               self.num_expression or prefs.num_expression, self.name)
        self.report({"INFO"}, f"Added rig {rig.name} from FLAME asset '{identity['name']}'")
        return {"FINISHED"}


class _SetsCoefficients(RigOperator):
    """What both coefficient operators share: find the rig, then set its ``which`` coefficients."""

    def _coefficients(self) -> dict:
        """Keyword arguments of :func:`~..blender_addon.rig.set_coefficients` besides ``which``."""
        return {}

    def execute(self, context: bpy.types.Context) -> set[str]:
        rig = target_rig(context, self.rig)
        if rig is None:
            self.report({"ERROR"}, NO_RIG)
            return {"CANCELLED"}
        rigmod.set_coefficients(rig, self.which, **self._coefficients())
        return {"FINISHED"}


class FLAMEDIFF_OT_reset_coefficients(_SetsCoefficients, bpy.types.Operator):
    """Set the rig's shape and/or expression coefficients to zero (the mean face)"""

    bl_idname = "flamediff.reset_coefficients"
    bl_label = "Reset Coefficients"
    bl_options = {"REGISTER", "UNDO"}

    which: EnumProperty(name="Which", items=_WHICH, default="BOTH")


class FLAMEDIFF_OT_randomize_coefficients(_SetsCoefficients, bpy.types.Operator):
    """Draw the rig's shape and/or expression coefficients from a normal distribution"""

    bl_idname = "flamediff.randomize_coefficients"
    bl_label = "Randomise Coefficients"
    bl_options = {"REGISTER", "UNDO"}

    which: EnumProperty(name="Which", items=_WHICH, default="SHAPE")
    sigma: FloatProperty(name="Sigma", default=1.0, min=0.0, max=3.0)
    seed: IntProperty(name="Seed", default=0, min=0)

    def _coefficients(self) -> dict:
        return {"sigma": self.sigma, "seed": self.seed}
