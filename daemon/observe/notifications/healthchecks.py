"""Healthchecks-style pings (healthchecks.io, and the services that speak its protocol):
`<url>/start` when a scheduled backup starts, `<url>` when it succeeds, `<url>/fail` with
the error lines in the body when it fails."""

from __future__ import annotations

import requests

from daemon.observe.notifications.base import TIMEOUT_SECONDS, Notice, NoticeKind, Undelivered

SUFFIXES: dict[NoticeKind, str] = {"start": "/start", "success": "", "failure": "/fail"}
BODY_LIMIT = 10_000  # bytes: Healthchecks keeps the first 10 kB of a ping's body


def send(url: str, notice: Notice) -> None:
    """Ping the check for the notice, if it is one a check knows. Raise Undelivered."""
    suffix = SUFFIXES.get(notice.kind)
    if suffix is None:
        return
    try:
        response = requests.post(
            url + suffix, data=notice.body.encode()[:BODY_LIMIT], timeout=TIMEOUT_SECONDS
        )
    except requests.RequestException as error:
        # its message holds the URL: say only what went wrong
        raise Undelivered(type(error).__name__) from None
    if response.status_code >= 400:
        raise Undelivered(f"HTTP {response.status_code}")
