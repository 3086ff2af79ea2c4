"""flamediff backend: FLAME core, Gaussian feature field, diffusion model, server and CLI.

This package never imports bpy. ``flamediff.formats`` is pure numpy + stdlib and is shared with
the Blender add-on (``build_addon.py`` ships it in the extension zip as ``backend/formats/``).
Its source folder is ``backend/`` but its one name is ``flamediff``: ``import backend`` from the
checkout would load every module a second time under another name, so it is refused.
"""

if __name__ != "flamediff":
    raise ImportError(f"backend/ is the source folder of the package 'flamediff', not {__name__!r}: "
                      "install the checkout (pip install -e .) and import flamediff")

__version__ = "0.1.0"
