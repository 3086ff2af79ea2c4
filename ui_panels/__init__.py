"""The "flamediff" tab in the 3D view sidebar."""

from .panels import (FLAMEDIFF_PT_animation, FLAMEDIFF_PT_camera, FLAMEDIFF_PT_render, FLAMEDIFF_PT_rig,
                     FLAMEDIFF_UL_coefficients, register_properties, unregister_properties)

classes = (FLAMEDIFF_UL_coefficients, FLAMEDIFF_PT_rig, FLAMEDIFF_PT_animation, FLAMEDIFF_PT_camera,
           FLAMEDIFF_PT_render)
