"""The HTTP server: GET / (the status page), GET /metrics; nothing else, nothing written.

One thread runs an asyncio event loop that holds every connection: an idle or slow client
costs a socket, never a thread. A client has HEAD_SECONDS from connecting to send its whole
request line and headers (HEAD_LIMIT bytes at most), and WRITE_SECONDS to take the answer;
each connection answers one request and is closed. At most MAX_CONNECTIONS are open at
once: a new one closes the one that has waited longest for its request to arrive, so that
clients that hold connections open cannot lock Prometheus out.

With a token, every request must carry it: `Authorization: Bearer TOKEN`, or basic
authentication with any user name and the token as the password (what a browser asks for).
A request reads only what the observer last read: it never touches a storage.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from daemon.observe.metrics import Metrics
from daemon.observe.web.page import render_page

log = structlog.get_logger()

MAX_CONNECTIONS = 256  # open at once; far more than Prometheus and a few browsers need
HEAD_SECONDS = 10.0  # to send the request line and headers, from connecting
WRITE_SECONDS = 30.0  # to take the whole answer
HEAD_LIMIT = 16 * 1024  # bytes of request line and headers (a scrape sends ~300)
BACKLOG = 1024  # connections the kernel holds until accepted: a burst is not dropped
HEAD_END = b"\r\n\r\n"
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
)

Answer = tuple[str, list[tuple[str, str]], bytes]  # status, headers, body


class StatusServer:
    """Serves the metrics and the status page on (host, port) until `stop`; with a token,
    only to clients that present it."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        host_name: str,
        activity: Callable[[], str],
        token: str | None = None,
    ) -> None:
        """Listen on (host, port) now. Raise OSError if the address cannot be listened on."""
        self._metrics = metrics
        self._host_name = host_name
        self._activity = activity
        self._token = token.encode() if token is not None else None
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self._socket = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.StreamWriter] = set()
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # no request yet, oldest first
        self._thread = threading.Thread(target=self._run, name="status-server", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "metrics and status page served",
            url=f"http://{shown}:{port}/",
            authentication="token" if self._token is not None else "none",
        )

    def stop(self) -> None:
        """Stop listening, close every connection, and end the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        else:
            self._socket.close()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_server(
                self._connected, sock=self._socket, limit=HEAD_LIMIT, backlog=BACKLOG
            )
        )
        try:
            loop.run_forever()
        finally:
            server.close()
            for writer in list(self._open):
                writer.transport.abort()  # each one's task ends, as for a client gone
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=WRITE_SECONDS))
            loop.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            if not self._waiting:  # every one is being answered: this one waits its turn
                writer.transport.abort()
                return
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()
        self._open.add(writer)
        self._waiting[writer] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(HEAD_END), HEAD_SECONDS)
            except (asyncio.LimitOverrunError, ValueError):
                answer = _text("431 Request Header Fields Too Large", "request too large\n")
            else:
                answer = self._answer(head)
            self._waiting.pop(writer, None)
            status, headers, body = answer
            lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
            writer.write("\r\n".join(lines).encode("latin-1") + HEAD_END + body)
            await asyncio.wait_for(writer.drain(), WRITE_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a client that went away or took too long: nothing to tell it
        finally:
            self._waiting.pop(writer, None)
            self._open.discard(writer)
            writer.transport.abort()

    def _answer(self, head: bytes) -> Answer:
        """Given a request's line and headers, return the answer."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text("400 Bad Request", "expected an HTTP/1.x request line\n")
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if self._token is not None and not presents(headers.get("authorization"), self._token):
            status, fields, body = _text("401 Unauthorized", "a token is needed\n")
            challenge = ("WWW-Authenticate", 'Basic realm="volkeep", charset="UTF-8"')
            return status, [*fields, challenge], body
        if method not in ("GET", "HEAD"):
            return _text("405 Method Not Allowed", "read-only\n")
        status, fields, body = self._page(urlsplit(target).path)
        return status, fields, b"" if method == "HEAD" else body

    def _page(self, path: str) -> Answer:
        try:
            if path == "/metrics":
                return _answer("200 OK", CONTENT_TYPE_LATEST, self._metrics.exposition())
            if path == "/":
                now = datetime.now(UTC)
                overview = self._metrics.overview
                page = render_page(overview, now, self._host_name, self._activity())
                return _answer("200 OK", "text/html; charset=utf-8", page.encode())
        except Exception:  # a bug in rendering answers 500 and leaves the server serving
            log.exception("internal error while answering a request", path=path)
            return _text("500 Internal Server Error", "internal error: see the daemon's log\n")
        return _text("404 Not Found", "not found: try / or /metrics\n")


def presents(authorization: str | None, token: bytes) -> bool:
    """Given a request's Authorization header (None: none), say whether it carries the
    token: as a bearer token, or as the password of basic authentication (any user name).
    Compared in constant time."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        offered = credentials.strip().encode("latin-1")
    elif scheme.lower() == "basic":
        try:
            offered = base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
        except binascii.Error:
            return False
    else:
        return False
    return hmac.compare_digest(offered, token)


def _answer(status: str, content_type: str, body: bytes) -> Answer:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *SECURITY_HEADERS,
    ]
    return status, headers, body


def _text(status: str, text: str) -> Answer:
    return _answer(status, "text/plain; charset=utf-8", text.encode())
