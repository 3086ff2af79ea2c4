"""Connection limits of ``flamediff serve``: slow and idle clients cannot starve it.

uvicorn bounds the time between requests on a kept-alive connection, but not the time a fresh
connection may take to send its headers, nor how many connections may sit open: a client that
opens hundreds of sockets and never finishes a request (no token needed) would hold the server's
file descriptors. :class:`GuardedH11Protocol` is uvicorn's h11 protocol plus two rules:

- a connection must finish a request's headers within ``header_timeout`` seconds of opening (or
  of its previous response), else it is closed;
- past ``max_connections`` open connections, the one waiting longest for headers is closed, and
  one that never completed a request before one kept alive between requests: a client that sends
  its request at once (the add-on) or keeps its connection (httpx, browsers: its next request may
  already be on the way, unread, when a flood of new connections is accepted) always gets in.

Request bodies are bounded in time by :class:`flamediff.server.security.GuardMiddleware`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from flamediff.server.security import ConnectionLimits


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's ``http`` protocol class with ``limits`` (a class, as ``uvicorn.Config`` takes one)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cap on open connections."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting_since, self.served = time.monotonic(), False
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()
        if len(self.connections) > self.limits.max_connections:
            waiting = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c is not self
                       and c.waiting_for_headers() and not c.transport.is_closing()]
            if waiting:
                min(waiting, key=lambda c: (c.served, c.waiting_since)).transport.close()

    def waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if not self.waiting_for_headers() and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def on_response_complete(self) -> None:
        self.waiting_since, self.served = time.monotonic(), True
        if not self.transport.is_closing():
            self._arm_header_timer()  # before the next pipelined request, which cancels it
        super().on_response_complete()

    def connection_lost(self, exc: Any) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)
