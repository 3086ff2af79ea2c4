"""Token, binding and request-size rules of the server.

The server renders on the user's GPU and reads files the user names, so only the user should
reach it: it binds loopback unless told otherwise, and every request carries a random token
kept in a file only the user can read (the Blender add-on reads that file).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from typing import Any, Awaitable, Callable

from backend.assets import cache_dir

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Largest request body: a reference image plus a long animation fit well within it.
MAX_BODY_BYTES = 64 * 1024 * 1024


def default_token_file() -> str:
    return os.path.join(cache_dir(), "server", "token")


def write_token_file(path: str) -> str:
    """Create a fresh token in ``path`` with mode 0600 (created so, never widened) and return it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask only downwards; make it exact
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token_file(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without (or with a lying) Content-Length grows too big."""


class GuardMiddleware:
    """Checks the bearer token (401) and the body size (413) before any route runs."""

    def __init__(self, app: ASGIApp, token: str, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.token.encode()):
            await _json(send, 401, {"error": "missing or wrong token",
                                    "advice": "send 'Authorization: Bearer <token>' with the token from the file "
                                              "'flamediff serve' printed"}, [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _json(send, 413, {"error": f"request body larger than {self.max_body_bytes >> 20} MiB",
                                    "advice": "send a smaller reference image or animation, or a local path"})
            return
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)
