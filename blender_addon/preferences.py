"""Add-on preferences: which FLAME asset, how many coefficients a new rig exposes, the backend."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import EXTENSION
from ..backend.formats.protocol import DEFAULT_PORT, DEFAULT_URL, default_token_file

UNSAVED_FOLDER = "flamediff_renders"  # in the home folder: where an unsaved .blend's renders go by default


class FLAMEDIFF_AP_preferences(bpy.types.AddonPreferences):
    """Stored in Blender's user preferences, so every .blend builds rigs from the same asset."""

    bl_idname = EXTENSION

    asset_folder: StringProperty(
        name="FLAME asset folder", subtype="DIR_PATH", default="",
        description="Folder with a FLAME model, UV layout and landmarks; empty = the licence-free "
                    "procedural head, generated on first use into Blender's user data folder")
    num_shape: IntProperty(
        name="Shape coefficients", default=100, min=1, max=300,
        description="Shape keys a new rig exposes (capped at the model's number)")
    num_expression: IntProperty(
        name="Expression coefficients", default=50, min=1, max=100,
        description="Expression shape keys a new rig exposes (capped at the model's number)")
    backend_mode: EnumProperty(
        name="Backend", default="LOCAL",
        items=[("LOCAL", "Start locally", "The add-on starts 'python -m flamediff serve' from the backend's venv"),
               ("URL", "Connect to URL", "Use a backend that is already running ('flamediff serve')")])
    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="The python executable of the venv flamediff is installed in (e.g. .venv/bin/python); "
                    "empty = $FLAMEDIFF_PYTHON, else the usual places (see docs/ADDON.md)")
    backend_port: IntProperty(name="Port", default=DEFAULT_PORT, min=1, max=65535)
    pick_free_port: BoolProperty(name="Pick a free port", default=True,
                                 description="When another program uses the port, start the local backend on a "
                                             "free one instead (for this Blender session)")
    backend_device: EnumProperty(
        name="Device", default="auto",
        items=[("auto", "Auto", "NVIDIA GPU (CUDA) when available, else an Apple GPU (Metal), else CPU"),
               ("cpu", "CPU", ""), ("cuda", "CUDA", "NVIDIA GPU"), ("mps", "Apple GPU", "Metal (mps) on macOS")])
    backend_url: StringProperty(
        name="Backend URL", default=DEFAULT_URL,
        description="URL of a running 'flamediff serve'")
    token_file: StringProperty(
        name="Token file", subtype="FILE_PATH", default="",
        description="The token file the backend writes at start; empty = the backend's default, "
                    "$FLAMEDIFF_CACHE/server/token, else $XDG_CACHE_HOME/flamediff/server/token, else "
                    "~/.cache/flamediff/server/token (or the add-on's own one in 'Start locally' mode)")
    unsaved_output_dir: StringProperty(
        name="Renders of unsaved files", subtype="DIR_PATH", default="",
        description=f"Where frames go while the .blend is unsaved (a saved one renders into //flamediff next to "
                    f"it); empty = {UNSAVED_FOLDER} in your home folder")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "asset_folder")
        row = layout.row()
        row.prop(self, "num_shape")
        row.prop(self, "num_expression")
        box = layout.box()
        box.label(text="Render backend")
        box.row().prop(self, "backend_mode", expand=True)
        if self.backend_mode == "LOCAL":
            box.prop(self, "backend_python")
            draw_python_choice(box, context, self.backend_python)
            row = box.row()
            row.prop(self, "backend_port")
            row.prop(self, "pick_free_port")
            row.prop(self, "backend_device")
            row = box.row()
            row.operator("flamediff.backend_start", text="Start backend", icon="PLAY")
            row.operator("flamediff.backend_stop", text="Stop backend", icon="CANCEL")
        else:
            box.prop(self, "backend_url")
            box.prop(self, "token_file")
        box.operator("flamediff.test_connection", text="Test connection", icon="LINKED")
        layout.prop(self, "unsaved_output_dir")


def draw_python_choice(layout: bpy.types.UILayout, context: bpy.types.Context, preference: str) -> None:
    """Which backend Python "Start locally" will use, or the command that creates one (file checks only)."""
    from ..ui_panels.text import wrapped_label
    from . import local_backend
    from .backend_client import BackendError

    try:
        choice = local_backend.resolve_python(preference)
    except BackendError:
        wrapped_label(layout, context, "No backend Python found. Create one with:", icon="ERROR")
        wrapped_label(layout, context, local_backend.install_command())
        layout.operator("flamediff.copy_setup_command", icon="COPYDOWN")
        return
    wrapped_label(layout, context, f"Uses {choice.path} ({choice.origin})", icon="CHECKMARK")


def get_preferences(context: bpy.types.Context) -> FLAMEDIFF_AP_preferences:
    """This add-on's preferences (the add-on is registered under the extension's package name)."""
    return context.preferences.addons[EXTENSION].preferences


def backend_settings(context: bpy.types.Context) -> dict:
    """``{mode, url, token_file, python, port, device}`` resolved from the preferences."""
    prefs = get_preferences(context)
    if prefs.backend_mode == "LOCAL":
        token = prefs.token_file.strip() or os.path.join(
            bpy.utils.extension_path_user(EXTENSION, path="server", create=True), "token")
        from . import local_backend

        port = local_backend.started_port() or prefs.backend_port
        url = f"http://127.0.0.1:{port}"
    else:
        token = prefs.token_file.strip() or default_token_file()
        url = prefs.backend_url.strip()
    python = prefs.backend_python.strip()
    return {"mode": prefs.backend_mode, "url": url, "token_file": os.path.abspath(bpy.path.abspath(token)),
            "python": bpy.path.abspath(python) if python else "", "port": prefs.backend_port,
            "device": prefs.backend_device, "pick_free_port": prefs.pick_free_port}


def unsaved_output_root(context: bpy.types.Context) -> str:
    """Where an unsaved .blend's renders go: the preference, else ``~/flamediff_renders``."""
    chosen = get_preferences(context).unsaved_output_dir.strip()
    return os.path.abspath(os.path.expanduser(chosen)) if chosen else os.path.join(os.path.expanduser("~"),
                                                                                     UNSAVED_FOLDER)


def make_client(context: bpy.types.Context, timeout: float = 3.0):
    from .backend_client import LOCAL_START_HINT, START_HINT, BackendClient

    settings = backend_settings(context)
    return BackendClient(settings["url"], settings["token_file"], timeout=timeout,
                         online_access=bool(getattr(bpy.app, "online_access", True)),
                         start_hint=LOCAL_START_HINT if settings["mode"] == "LOCAL" else START_HINT)


classes = (FLAMEDIFF_AP_preferences,)
