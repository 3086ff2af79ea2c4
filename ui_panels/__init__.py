"""The "flamediff" tab in the 3D view sidebar, and flamediff's entries in Blender's menus."""

from .menus import classes as menu_classes, register_menus, unregister_menus
from .panels import (FLAMEDIFF_PT_animation, FLAMEDIFF_PT_camera, FLAMEDIFF_PT_engine, FLAMEDIFF_PT_render,
                     FLAMEDIFF_PT_rig, FLAMEDIFF_UL_coefficients, register_properties, unregister_properties)

classes = (FLAMEDIFF_UL_coefficients, FLAMEDIFF_PT_rig, FLAMEDIFF_PT_animation, FLAMEDIFF_PT_camera,
           FLAMEDIFF_PT_render, FLAMEDIFF_PT_engine, *menu_classes)
__all__ = ["classes", "register_menus", "register_properties", "unregister_menus", "unregister_properties"]
