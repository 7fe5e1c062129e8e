"""The keys of SPEC §3b: `daemon.metrics` (Prometheus, the status page) and a policy's
`notify` (Apprise URLs, a Healthchecks-style ping).

A notification URL may hold a secret (a token, a password): no message here echoes one.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import yaml

from daemon.config.model import NOTIFY_EVENTS, MetricsSettings, NotifySettings
from daemon.config.nodes import (
    choice,
    invalid,
    is_scalar,
    list_of,
    non_empty_string,
    record,
    string,
)
from daemon.config.values import absolute_path

HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*")
LOOPBACK = "127.0.0.1"


def listen_address(node: yaml.Node, path: str) -> tuple[str, int]:
    """Given "HOST:PORT", "[IPv6]:PORT" or a bare port (then on loopback), return (host,
    port). Port 0 takes any free port. Raise Invalid otherwise."""
    text = str(node.value) if is_scalar(node, "int") else string(node, path)
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = LOOPBACK, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, version=6):
            raise invalid(node, path, f"{host!r} is not an IPv6 address")
    elif not (_is_ip(host, version=4) or HOST_NAME.fullmatch(host)):
        raise invalid(node, path, f"expected HOST:PORT (IPv6 in brackets), got {text!r}")
    if not port.isdigit() or int(port) > 65535:
        raise invalid(node, path, f"the port must be 0 to 65535, got {port!r}")
    return host, int(port)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def textfile(node: yaml.Node, path: str) -> Path:
    """Given the node_exporter textfile to write, return it (it must end in .prom: the
    collector reads nothing else)."""
    written = absolute_path(node, path)
    if written.suffix != ".prom":
        raise invalid(node, path, "node_exporter's textfile collector reads only *.prom files")
    return written


def apprise_url(node: yaml.Node, path: str) -> str:
    """Given an Apprise URL, return it. Raise Invalid, naming only its scheme, if Apprise
    does not take it."""
    text = non_empty_string(node, path)
    scheme, separator, _ = text.partition("://")
    if not separator:
        raise invalid(node, path, "expected an Apprise URL like ntfy://host/topic")
    import apprise  # here, not above: only files that notify pay for loading it

    if apprise.Apprise.instantiate(text) is None:
        raise invalid(node, path, f"Apprise cannot send to this {scheme}:// URL")
    return text


APPRISE_URLS = list_of(apprise_url, non_empty=True)


def apprise_urls(node: yaml.Node, path: str) -> tuple[str, ...]:
    """Given a list of Apprise URLs, return them. Raise Invalid for a URL listed twice
    (saying where, not what)."""
    urls = APPRISE_URLS(node, path)
    for index, url in enumerate(urls):
        if url in urls[:index]:
            first = urls.index(url)
            raise invalid(node.value[index], f"{path}[{index}]", f"the same URL as [{first}]")
    return urls


def ping_url(node: yaml.Node, path: str) -> str:
    """Given a Healthchecks-style ping URL, return it without a trailing slash. Raise
    Invalid, never showing it, unless it is an http(s) URL."""
    text = non_empty_string(node, path)
    scheme, _, rest = text.partition("://")
    if scheme not in ("http", "https") or not rest.split("/", 1)[0]:
        raise invalid(node, path, "the ping URL must be an http:// or https:// URL")
    return text.rstrip("/")


METRICS = record({"listen": listen_address, "textfile": textfile}, into=MetricsSettings)
NOTIFY = record(
    {
        "urls": apprise_urls,
        "ping": ping_url,
        "events": list_of(choice(NOTIFY_EVENTS, "notify event"), unique=True),
    },
    into=NotifySettings,
)
