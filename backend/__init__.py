"""flamediff backend: FLAME core, Gaussian feature field, diffusion model, server and CLI.

This package never imports bpy. ``flamediff.formats`` is pure numpy + stdlib and is shared with
the Blender add-on (``build_addon.py`` copies it into the extension zip).
"""

__version__ = "0.1.0"
