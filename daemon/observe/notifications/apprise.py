"""Apprise URLs: one URL names any of Apprise's services (ntfy, mail, Slack, Matrix,
Gotify, JSON webhooks...). Apprise's own log stays quiet: its lines can hold the URL."""

from __future__ import annotations

import logging

from daemon.observe.notifications.base import Notice, NoticeKind, Undelivered

TYPES: dict[NoticeKind, str] = {  # Apprise's notify types
    "failure": "failure",
    "drill_failure": "failure",
    "recovered": "success",
    "missed": "warning",
    "shrink": "warning",
}
logging.getLogger("apprise").disabled = True


def send(url: str, notice: Notice) -> None:
    """Send the notice to the URL's service, if it is one worth a message. Raise
    Undelivered. Apprise's services time out on their own (a few seconds each)."""
    kind = TYPES.get(notice.kind)
    if kind is None:
        return
    import apprise  # here: every volkeep command imports the daemon, few send a notice

    sender = apprise.Apprise()
    if not sender.add(url):
        raise Undelivered("Apprise does not take this URL")
    if not sender.notify(title=notice.title, body=notice.body, notify_type=kind):
        raise Undelivered("the service did not take the notification")
