"""Slow, heavy and odd clients against a real socket (issue 27): the server runs in a thread with
``serve``'s uvicorn options (:func:`flamediff.server.cli.server_options`), short timeouts so the
test is fast. Each probe asserts its answer, that a client with the token is still served within
a second, and the server's peak memory (:func:`test_server_helpers.peak_memory`)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from test_server_helpers import TOKEN, peak_memory

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402

from flamediff.server.app import create_app  # noqa: E402
from flamediff.server.cli import server_options  # noqa: E402
from flamediff.server.security import ConnectionLimits, loopback_hosts  # noqa: E402
from flamediff.server.service import build_service  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = ConnectionLimits(header_timeout=1.0, body_timeout=1.0, max_connections=32)
MEGABYTES = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory, head_folder):
    base = tmp_path_factory.mktemp("connections")
    service = build_service(str(base / "jobs"), str(base / "models"), "cpu", shipped_dir=str(base / "none"),
                            allow_paths=[str(base)])
    app = create_app(service, TOKEN, start_worker=False, allowed_hosts=loopback_hosts("127.0.0.1"),
                     body_timeout=LIMITS.body_timeout)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, **server_options(LIMITS))
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    running.url = f"http://127.0.0.1:{port}"
    running.port = port
    yield running
    running.should_exit = True
    thread.join(10)


def health_seconds(server) -> float:
    started = time.perf_counter()
    response = httpx.get(server.url + "/v1/health", headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def raw(server, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(data)
    return sock


def answer(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("host", ["127.0.0.1:1@evil.example", "evil.example", "127.0.0.1:80:80", "127.0.0.1/x",
                                  "[::1", "127.0.0.1 evil", ""])
def test_host_header_must_be_a_loopback_host_and_port(server, host):
    started = time.perf_counter()
    with peak_memory() as memory:
        sock = raw(server, f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                           "Connection: close\r\n\r\n".encode())
        reply = answer(sock)
    seconds = time.perf_counter() - started
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert seconds <= 1.0 and memory[0] <= MEGABYTES, (seconds, memory)
    if b"{" in reply:
        assert json.loads(reply[reply.index(b"{"):])["advice"]
    for good in ("127.0.0.1", f"127.0.0.1:{server.port}", "localhost:1", "[::1]:8765"):
        assert httpx.get(server.url + "/v1/health", headers={**AUTH, "Host": good}, timeout=5).status_code == 200


def test_300_half_open_requests_cannot_starve_the_server(server):
    """Headers never finished, no token: the oldest are dropped past ``max_connections`` and all of
    them at the header deadline; the client with the token is served meanwhile."""
    health_seconds(server)  # warm-up: the first request's start-up is not what is measured
    with peak_memory() as memory:
        sockets = [raw(server, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(300)]
        seconds = max(health_seconds(server) for _ in range(3))
    peak = memory[0]
    assert seconds <= 1.0 and peak <= MEGABYTES, (seconds, peak)
    open_now = len(server.server_state.connections)
    assert open_now <= LIMITS.max_connections + 1, open_now
    time.sleep(LIMITS.header_timeout + 0.5)
    assert len(server.server_state.connections) == 0
    for sock in sockets:
        sock.settimeout(1)
        assert answer(sock) == b""  # closed by the server
        sock.close()
    print(f"health in {seconds:.3f} s with 300 half-open requests, {open_now} kept open, peak {peak:.1f} MB")


def test_a_kept_alive_client_is_served_through_a_flood_of_half_open_requests(server):
    """A client that keeps its connection between requests (httpx, browsers) is not the one the
    connection cap closes: never-used half-open connections go first, though its connection
    is older than theirs (its request may already be on the way when the flood is accepted)."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as client:
        assert client.get("/v1/health").status_code == 200  # its connection, kept alive
        for _ in range(3):
            sockets = [raw(server, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(100)]
            assert [client.get("/v1/health").status_code for _ in range(3)] == [200] * 3
            for sock in sockets:
                sock.close()


def test_a_body_that_trickles_is_a_408(server):
    started = time.perf_counter()
    sock = raw(server, f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                       "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":".encode())
    reply = answer(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert time.perf_counter() - started <= LIMITS.body_timeout + 1.0
    assert health_seconds(server) <= 1.0


def test_a_57_mib_json_body_is_refused_at_once_and_blocks_no_one(server):
    """Refused from its Content-Length (413) before it is read; a body without one is refused
    as it passes 1 MiB; the JSON that is read is parsed off the event loop."""
    timings: list[float] = []
    health_seconds(server)  # warm-up: the first request's start-up is not what is measured
    poller = threading.Thread(target=lambda: timings.extend(health_seconds(server) for _ in range(5)))
    with peak_memory() as memory:
        started = time.perf_counter()
        poller.start()
        sock = raw(server, f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {57 << 20}\r\n\r\n".encode())
        sock.sendall(b"[" * 65536)
        reply = b""  # the answer (headers and body may come in separate packets), before the deadline
        while b"larger than" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
        seconds = time.perf_counter() - started
        chunked = httpx.post(server.url + "/v1/jobs", headers={**AUTH, "Content-Type": "application/json"},
                             content=iter([b"[" * (256 << 10)] * 8), timeout=10)
        poller.join(10)
    peak = memory[0]
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413") and b"larger than 1024 KiB" in reply, reply[:300]
    assert chunked.status_code == 413, chunked.text
    assert seconds <= 1.0 and max(timings) <= 1.0 and peak <= MEGABYTES, (seconds, timings, peak)
    nested = httpx.post(server.url + "/v1/jobs", headers={**AUTH, "Content-Type": "application/json"},
                        content=b"[" * 500_000 + b"]" * 500_000, timeout=10)
    assert nested.status_code == 400 and "nested deeper" in nested.json()["error"], nested.text
