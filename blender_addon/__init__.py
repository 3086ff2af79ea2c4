"""flamediff Blender extension: a FLAME rig, animation export/import, rendering through the backend.

The add-on is the zip that ``build_addon.py`` builds, and nothing else: one ``flamediff/`` package
holding this folder, ``operators/``, ``ui_panels/`` and the backend's shared ``backend/formats/``
(numpy + stdlib) at the paths they have in the checkout. Every import between them is relative and
reads the same on disk and in the zip (``from ..backend.formats.protocol import ...`` here is
``backend/formats/protocol.py`` in both), so each module has one name: Blender's, under
``bl_ext.<repo>.flamediff``. The checkout's folders are the zip's sources, not an importable
package; tests install the built zip as Blender does (``tests/conftest.py``). bpy is imported
when Blender registers the add-on.
"""

from __future__ import annotations

import os

if "." not in __name__:
    raise ImportError("blender_addon/ is the source of the flamediff extension, not a package of its own: build the "
                      "zip with 'python build_addon.py' and install it in Blender (tests: tests/conftest.py)")

#: The extension's package (the zip's root), under which Blender registers the add-on and its preferences.
EXTENSION = __name__.rpartition(".")[0]
#: The extension's folder (where ``build_addon.py`` writes ``source_checkout.txt``).
EXTENSION_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _classes() -> tuple[type, ...]:
    from .. import operators, ui_panels
    from . import preferences, render_engine, render_scene, track_scene

    return (*preferences.classes, *render_scene.classes, *track_scene.classes, *operators.classes,
            *render_engine.classes, *ui_panels.classes)


def register() -> None:
    import bpy

    from .. import ui_panels
    from . import render_engine, render_scene

    for cls in _classes():
        bpy.utils.register_class(cls)
    ui_panels.register_properties()
    ui_panels.register_menus()
    render_scene.register_handlers()
    render_engine.register_handlers()


def unregister() -> None:
    import bpy

    from .. import ui_panels
    from . import backend_job, local_backend, render_engine, render_scene

    render_engine.unregister_handlers()
    render_scene.unregister_handlers()
    backend_job.cancel_all()
    local_backend.stop()
    ui_panels.unregister_menus()
    ui_panels.unregister_properties()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
