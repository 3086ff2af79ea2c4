"""File formats and conventions shared by the backend and the Blender add-on.

Pure numpy + stdlib, relative imports only: ``build_addon.py`` copies this package into the
add-on zip, so both sides read and write files through exactly this code.
"""
