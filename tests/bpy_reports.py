"""Run an operator inside the ``bpy`` module and keep what it reported, and check what a panel or
menu draws (for the add-on drivers).

Background bpy prints INFO / WARNING reports to the process's stdout from C, not through Python,
so the file descriptor itself is redirected around the call; an ERROR report arrives as the
RuntimeError's text.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def reported(op, **kwargs) -> tuple[list[str] | None, str]:
    """``(sorted result, report text)``; result ``None`` when the operator failed (text: the error)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        try:
            result, error = sorted(op(**kwargs)), ""
        except RuntimeError as exc:
            result, error = None, str(exc)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        printed = capture.read().decode("utf-8", "replace").strip()
    return result, error or printed


def draw_problems(context, *draws) -> list[str]:
    """Call each ``draw(self, context)`` of a panel or menu with a stand-in layout; the properties and
    operators it names that do not exist."""
    import bpy

    problems: list[str] = []

    class Layout:
        def __getattr__(self, name):
            return lambda *args, **kwargs: self

        def prop(self, data, name, **kwargs):
            if name not in data.bl_rna.properties:
                problems.append(f"no property {name}")
            return self

        def operator(self, idname, **kwargs):
            module, name = idname.split(".")
            if name not in dir(getattr(bpy.ops, module)):
                problems.append(f"no operator {idname}")
            return self

    owner = type("P", (), {"layout": Layout()})()
    for draw in draws:
        draw(owner, context)
    return problems


def install_addon(zip_path: str, module: str, asset: str, token_file: str):
    """Install and enable the built zip in a fresh session, pointed at ``asset`` and a backend by URL whose
    token is in ``token_file``; ``(install result, the add-on's preferences)``."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = sorted(bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                             enable_on_install=True))
    prefs = bpy.context.preferences.addons[module].preferences
    prefs.asset_folder, prefs.backend_mode, prefs.token_file = asset, "URL", token_file
    return result, prefs


def run_main(main, results: dict, work: str) -> None:
    """Run the driver's ``main``, keeping a traceback in ``results["errors"]``, and write ``results``
    to ``work``/results.json for the test."""
    try:
        main()
    except Exception:  # noqa: BLE001 - the test prints it
        results["errors"].append(traceback.format_exc())
    with open(os.path.join(work, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1, default=str)
