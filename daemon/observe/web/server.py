"""The HTTP server: GET / (the status page), GET /metrics; nothing else, nothing written.

It serves from threads of its own and reads only what the observer last read: a request
never touches a storage.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from daemon.observe.metrics import Metrics
from daemon.observe.web.page import render_page

log = structlog.get_logger()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every 15 s is no news."""


class StatusServer:
    """Serves the metrics and the status page on (host, port) until `stop`."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, host_name: str, activity: Callable[[], str]
    ) -> None:
        self._metrics = metrics
        self._host_name = host_name
        self._activity = activity
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        self._server = make_server(
            host, port, self._application, server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="status-server", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics and status page served", url=f"http://{shown}:{port}/")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _application(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return _respond(start, "405 Method Not Allowed", "text/plain", b"read-only\n")
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return _respond(start, "200 OK", CONTENT_TYPE_LATEST, self._metrics.exposition())
        if path == "/":
            now = datetime.now(UTC)
            page = render_page(self._metrics.overview, now, self._host_name, self._activity())
            return _respond(start, "200 OK", "text/html; charset=utf-8", page.encode())
        return _respond(start, "404 Not Found", "text/plain", b"not found: try / or /metrics\n")


def _respond(start: StartResponse, status: str, content_type: str, body: bytes) -> list[bytes]:
    start(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ],
    )
    return [body]
