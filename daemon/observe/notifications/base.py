"""The protocol every notification service follows, and how a URL is named in a log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

NoticeKind = Literal[
    "start", "success", "failure", "drill_failure", "recovered", "missed", "shrink"
]
TIMEOUT_SECONDS = 10.0  # for one delivery; a notice is never worth holding the daemon


@dataclass(frozen=True)
class Notice:
    """What to tell: its kind, a one-line title and the lines of its body."""

    kind: NoticeKind
    policy: str
    title: str
    body: str


class Undelivered(Exception):
    """A notice did not reach its service; the message holds no URL."""


class Service(Protocol):
    """A notification service: `send` delivers a notice to one of its URLs, or raises
    Undelivered. A notice kind the service has no use for is not sent."""

    def __call__(self, url: str, notice: Notice) -> None: ...


def redacted(url: str) -> str:
    """Given a notification URL, return what a log may say of it: the scheme, and the host
    of an http(s) URL (elsewhere the host part may be a token, as in tgram://TOKEN/...)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    return f"{parts.scheme}://…"
