"""The job service behind ``flamediff serve`` and ``flamediff render``.

Pure logic (inputs, checkpoints, the on-disk job store, the worker) is kept apart from HTTP
(``app.py``) so the command line renders with exactly the same code as the server, and so the
logic is testable without a socket.
"""

#: Bumped when a route or a field of the HTTP protocol changes meaning; clients compare it.
PROTOCOL_VERSION = 1
