"""flamediff Blender extension: a FLAME rig, animation export/import, rendering through the backend.

The zip built by ``build_addon.py`` holds this package as ``flamediff/`` with ``operators/``,
``ui_panels/`` and the shared ``formats/`` (numpy + stdlib) inside it; everything is imported
relatively, as Blender 4.2+ extensions require.
"""

from __future__ import annotations

import bpy

from . import local_backend, operators, preferences, render_job, ui_panels

_CLASSES = (*preferences.classes, *render_job.classes, *operators.classes, *ui_panels.classes)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    ui_panels.register_properties()
    ui_panels.register_menus()
    render_job.register_handlers()


def unregister() -> None:
    render_job.unregister_handlers()
    render_job.cancel_all()
    local_backend.stop()
    ui_panels.unregister_menus()
    ui_panels.unregister_properties()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
