"""The status server on loopback, with real sockets: idle and slow clients cost no thread
and cannot lock a scrape out, request heads are capped, and a token is enforced."""

from __future__ import annotations

import base64
import http.client
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from daemon.observe.metrics import Metrics
from daemon.observe.web import server as web
from daemon.observe.web.server import StatusServer

IDLE_CONNECTIONS = 1000
TOKEN = "s3cret-t0ken"


def serve(token: str | None = None) -> Iterator[StatusServer]:
    running = StatusServer(
        "127.0.0.1", 0, Metrics("testhost"), "testhost", lambda: "idle", token=token
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
def server() -> Iterator[StatusServer]:
    yield from serve()


@pytest.fixture
def guarded() -> Iterator[StatusServer]:
    yield from serve(TOKEN)


def get(
    server: StatusServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for a thousand client sockets and as many on the server's side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * IDLE_CONNECTIONS
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the file descriptor limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_idle_connections_hold_no_threads_and_a_scrape_still_answers(
    server: StatusServer, descriptors: None
) -> None:
    threads_before = threading.active_count()
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(server.address, timeout=5))
        time.sleep(0.5)  # the server has accepted what it will
        threads_while_idle = threading.active_count()
        status, _, body = get(server, "/metrics")  # within its 5 s timeout
        still_open = sum(is_open(connection) for connection in idle)
    finally:
        for connection in idle:
            connection.close()
    assert threads_while_idle - threads_before <= 2
    assert status == 200 and b"# HELP volkeep_operations_total" in body
    assert still_open <= web.MAX_CONNECTIONS  # the oldest idle ones were closed


def is_open(connection: socket.socket) -> bool:
    """Given a client socket that sent nothing, say whether the server still holds it."""
    connection.setblocking(False)
    try:
        return connection.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False


def test_a_client_that_sends_its_request_slowly_is_cut_off(
    server: StatusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "HEAD_SECONDS", 0.5, raising=False)
    with socket.create_connection(server.address, timeout=5) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        cut_off = None
        started = time.monotonic()
        for _ in range(30):  # a header line every 0.1 s, never the blank line
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                cut_off = time.monotonic() - started
                break
            time.sleep(0.1)
        else:
            slow.settimeout(1)
            assert slow.recv(100) == b"", "the server kept a slow client for 3 s"
    assert cut_off is None or cut_off < 2.5
    assert get(server, "/metrics")[0] == 200


def test_a_request_head_over_the_limit_is_refused(server: StatusServer) -> None:
    status, _, _ = get(server, "/metrics", {"X-Padding": "x" * 20_000})
    assert status == 431
    assert get(server, "/metrics")[0] == 200


def test_only_reading_is_allowed_and_unknown_paths_are_not_found(server: StatusServer) -> None:
    status, headers, page = get(server, "/")
    assert status == 200 and b"volkeep on testhost" in page
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert get(server, "/nothing")[0] == 404
    connection = http.client.HTTPConnection(*server.address, timeout=5)
    connection.request("POST", "/metrics", body=b"")
    assert connection.getresponse().status == 405
    connection.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_with_a_token_only_requests_that_present_it_are_answered(guarded: StatusServer) -> None:
    status, headers, body = get(guarded, "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert TOKEN.encode() not in body
    assert get(guarded, "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    assert get(guarded, "/", basic("prometheus", "wrong"))[0] == 401
    assert get(guarded, "/metrics", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert get(guarded, "/", basic("anyone", TOKEN))[0] == 200
