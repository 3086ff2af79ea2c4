"""Token, binding, Host and request-size rules of the server.

The server renders on the user's GPU and reads files the user names, so only the user should
reach it: it binds loopback unless told otherwise, every request carries a random token kept
in a file only the user can read (the Blender add-on reads that file), and on a loopback bind
a request must name a loopback Host, so a web page that rebinds its DNS name to 127.0.0.1 is
refused even before the token is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Collection, Iterable, Sequence

from flamediff.server.files import make_private_dir, write_atomic

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Largest request body: a reference image plus a long animation fit well within it.
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The defaults are documented in PROTOCOL.md and each is an option of ``flamediff serve``."""

    header_timeout: float = 10.0     # seconds to finish a request's headers
    body_timeout: float = 120.0      # seconds to receive a whole request body
    max_connections: int = 64        # open connections before the oldest waiting one is dropped


def write_token_file(path: str) -> str:
    """Create a fresh token in ``path`` with mode 0600 (see :func:`write_atomic`) and return it."""
    make_private_dir(os.path.dirname(os.path.abspath(path)))
    token = secrets.token_urlsafe(32)
    write_atomic(path, (token + "\n").encode(), sync=True)
    return token


def read_token_file(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def loopback_hosts(bound: str) -> frozenset[str]:
    """Host names a request to a loopback bind may carry (ports stripped)."""
    return frozenset({"localhost", "127.0.0.1", "[::1]", bound.lower(), f"[{bound.strip('[]').lower()}]"})


#: A Host header is a host and an optional port, nothing else (RFC 9110 7.2): a name, an IPv4
#: address or a bracketed IPv6 address. ``127.0.0.1:1@evil.example`` is none of these.
_HOST = re.compile(r"(\[[0-9a-f:.]{2,45}\]|[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)(?::\d{1,5})?")


def host_name(header: str) -> str | None:
    """The Host header without its port (``[::1]:8765`` -> ``[::1]``, ``localhost:80`` ->
    ``localhost``), or None when it is not a host and port."""
    match = _HOST.fullmatch(header.strip().lower())
    return match.group(1) if match else None


class AllowedRoots:
    """The folders whose files a client may name by path (``serve --allow-path DIR``).

    Paths are compared after resolving symlinks, and a path outside every root gets one answer
    whether or not it exists, so a client learns nothing about the rest of the disk. ``None``
    allows every path: the CLI's ``render``, whose user is the one at the keyboard.
    """

    def __init__(self, roots: Iterable[str] | None = ()) -> None:
        self.roots = None if roots is None else tuple(os.path.realpath(os.path.expanduser(r)) for r in roots)

    def contains(self, path: str) -> bool:
        """Whether ``path`` (absolute) resolves into one of the roots."""
        if self.roots is None:
            return True
        real = os.path.realpath(path)
        for root in self.roots:
            try:
                if os.path.commonpath([real, root]) == root:
                    return True
            except ValueError:  # another drive (Windows)
                continue
        return False

    def refusal(self, what: str) -> str:
        """Advice for a refused path (the same for every path outside the roots)."""
        if not self.roots:
            return (f"this server reads no local files: upload the {what} instead, or start it with "
                    "--allow-path DIR for the folders clients may name")
        return f"upload the {what}, or name a path under the folders started with --allow-path"


async def _json(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without (or with a lying) Content-Length grows too big."""


class BodyTimeout(Exception):
    """Raised from ``receive`` when a body takes longer than the body timeout to arrive."""


class GuardMiddleware:
    """Checks the Host (400: not a host[:port], or not loopback when ``allowed_hosts`` is given),
    the bearer token (401), the body size (413) and the body's arrival time (408) before and while
    any route runs."""

    def __init__(self, app: ASGIApp, token: str, max_body_bytes: int = MAX_BODY_BYTES,
                 allowed_hosts: Collection[str] | None = None, body_timeout: float = 120.0) -> None:
        self.app, self.token, self.max_body_bytes, self.body_timeout = app, token, max_body_bytes, body_timeout
        self.allowed_hosts = None if allowed_hosts is None else frozenset(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if host is None:
            await _json(send, 400, {"error": f"the Host header {headers.get('host', '')[:100]!r} is not a host[:port]",
                                    "advice": "send 'Host: 127.0.0.1:<port>' (HTTP clients do this themselves)"})
            return
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _json(send, 400, {"error": f"Host {headers.get('host', '')[:100]!r} is not this loopback server",
                                    "advice": "connect to http://127.0.0.1:<port> (or localhost); a server for other "
                                              "machines runs with --allow-remote"})
            return
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
        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)
