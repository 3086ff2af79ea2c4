"""flamediff Blender extension: a FLAME rig, animation export/import, rendering through the backend.

The zip built by ``build_addon.py`` holds this package as ``flamediff/`` with ``operators/``,
``ui_panels/`` and the shared ``formats/`` (numpy + stdlib) inside it; everything is imported
relatively, as Blender 4.2+ extensions require. In the source checkout those three folders are
siblings of this one (``operators/``, ``ui_panels/``, ``backend/formats/``), so the package's
search path is extended to them: ``import blender_addon`` then has the zip's shape, and the
plain-Python parts (``render_job``, ``backend_client``, ``formats``) import without Blender.
bpy is imported when Blender registers the add-on.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_HERE, "operators")):  # the source checkout, not the built zip
    _CHECKOUT = os.path.dirname(_HERE)
    __path__.extend([_CHECKOUT, os.path.join(_CHECKOUT, "backend")])  # type: ignore[name-defined]


def _classes() -> tuple[type, ...]:
    from . import operators, preferences, render_engine, render_scene, track_scene, ui_panels

    return (*preferences.classes, *render_scene.classes, *track_scene.classes, *operators.classes,
            *render_engine.classes, *ui_panels.classes)


def register() -> None:
    import bpy

    from . import render_engine, render_scene, ui_panels

    for cls in _classes():
        bpy.utils.register_class(cls)
    ui_panels.register_properties()
    ui_panels.register_menus()
    render_scene.register_handlers()
    render_engine.register_handlers()


def unregister() -> None:
    import bpy

    from . import local_backend, render_engine, render_job, render_scene, ui_panels

    render_engine.unregister_handlers()
    render_scene.unregister_handlers()
    render_job.cancel_all()
    local_backend.stop()
    ui_panels.unregister_menus()
    ui_panels.unregister_properties()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
