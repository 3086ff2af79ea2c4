"""flamediff Blender extension: a keyframeable FLAME rig, animation export/import, sidebar UI.

The zip built by ``build_addon.py`` holds this package as ``flamediff/`` with ``operators/``,
``ui_panels/`` and the shared ``formats/`` (numpy + stdlib) inside it; everything is imported
relatively, as Blender 4.2+ extensions require.
"""

from __future__ import annotations

import bpy

from . import operators, preferences, ui_panels

_CLASSES = (*preferences.classes, *operators.classes, *ui_panels.classes)


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    ui_panels.register_properties()


def unregister() -> None:
    ui_panels.unregister_properties()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
