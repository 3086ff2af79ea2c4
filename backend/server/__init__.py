"""The job service behind ``flamediff serve`` and ``flamediff render``.

Pure logic (inputs, checkpoints, the on-disk job store, the worker) is kept apart from HTTP
(``app.py``) so the command line renders with exactly the same code as the server, and so the
logic is testable without a socket. The protocol's version, settings and rules shared with the
Blender add-on are in :mod:`flamediff.formats.protocol`.
"""
