"""The base class of the backend's user-facing errors: the CLI (and later the server) shows
their message, which names the problem and the fix, instead of a traceback."""


class FlamediffError(ValueError):
    """An error whose message is meant for the user."""
