"""Operators (``bpy.ops.flamediff.*``): thin wrappers that report errors instead of raising."""

from .animation_ops import FLAMEDIFF_OT_export_animation, FLAMEDIFF_OT_import_animation
from .render_ops import (FLAMEDIFF_OT_backend_start, FLAMEDIFF_OT_backend_stop, FLAMEDIFF_OT_copy_setup_command,
                         FLAMEDIFF_OT_render, FLAMEDIFF_OT_render_cancel, FLAMEDIFF_OT_test_connection)
from .rig_ops import FLAMEDIFF_OT_add_rig, FLAMEDIFF_OT_randomize_coefficients, FLAMEDIFF_OT_reset_coefficients
from .tracking_ops import FLAMEDIFF_OT_match_photo, FLAMEDIFF_OT_track_cancel, FLAMEDIFF_OT_track_video

classes = (FLAMEDIFF_OT_add_rig, FLAMEDIFF_OT_reset_coefficients, FLAMEDIFF_OT_randomize_coefficients,
           FLAMEDIFF_OT_export_animation, FLAMEDIFF_OT_import_animation, FLAMEDIFF_OT_render,
           FLAMEDIFF_OT_render_cancel, FLAMEDIFF_OT_test_connection, FLAMEDIFF_OT_backend_start,
           FLAMEDIFF_OT_backend_stop, FLAMEDIFF_OT_copy_setup_command, FLAMEDIFF_OT_match_photo,
           FLAMEDIFF_OT_track_video, FLAMEDIFF_OT_track_cancel)
