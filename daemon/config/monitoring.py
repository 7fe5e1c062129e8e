"""The keys of SPEC §3b: `daemon.metrics` (Prometheus, the status page) and a policy's
`notify` (Apprise URLs, a Healthchecks-style ping).

A notification URL may hold a secret (a token, a password): no message here echoes one.
Secrets are read from elsewhere (promise 6): wherever a URL goes, `{file: PATH}` or
`{env: NAME}` may stand instead, and the metrics token is only ever written so. They are
read when the config loads (and reloads), so that `validate` finds a missing one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import NamedTuple

import yaml

from daemon.config.model import NOTIFY_EVENTS, MetricsSettings, NotifySettings
from daemon.config.nodes import (
    TAG,
    Converter,
    boolean,
    child_path,
    choice,
    invalid,
    is_scalar,
    list_of,
    non_empty_string,
    problem_at,
    record,
    string,
    value_of,
)
from daemon.config.values import absolute_path, duration
from daemon.errors import ConfigProblem

HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*")
LOOPBACK = "127.0.0.1"
ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECRET_FILE_LIMIT = 64 * 1024  # bytes: a URL or a token, not a document


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


def environment_name(node: yaml.Node, path: str) -> str:
    """Given the name of an environment variable, return it. Raise Invalid otherwise."""
    name = non_empty_string(node, path)
    if not ENVIRONMENT_NAME.fullmatch(name):
        raise invalid(node, path, "expected an environment variable name: letters, digits, _")
    return name


class SecretSource(NamedTuple):
    """Where a secret is read from: a file, or an environment variable."""

    file: Path | None = None
    env: str | None = None


SECRET_SOURCE = record(
    {"file": absolute_path, "env": environment_name},
    into=SecretSource,
    exactly_one_of=("file", "env"),
)


def secret(node: yaml.Node, path: str) -> str:
    """Given {file: PATH} or {env: NAME}, return the text the file or the variable holds,
    white space around it stripped. Raise Invalid, naming the file or the variable and
    never what it holds, if it cannot be read or is empty, or if the node is anything
    else (a secret written in the text)."""
    if not isinstance(node, yaml.MappingNode):
        message = (
            "a secret is read from a file or the environment: write {file: PATH} (a file "
            "readable by root only) or {env: NAME}, never the secret itself"
        )
        raise invalid(node, path, message)
    source = SECRET_SOURCE(node, path)
    if source.file is not None:
        where = value_of(node, "file")
        text = _read_secret_file(source.file, where, child_path(path, "file"))
        if not text:
            raise invalid(where, child_path(path, "file"), f"{source.file} is empty")
        return text
    assert source.env is not None
    text = os.environ.get(source.env, "").strip()
    if not text:
        message = f"the environment variable {source.env} is not set, or empty"
        raise invalid(value_of(node, "env"), child_path(path, "env"), message)
    return text


def _read_secret_file(file: Path, node: yaml.Node, path: str) -> str:
    try:
        # O_NONBLOCK: a FIFO in its place would otherwise block the open until a writer came
        descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(descriptor, "rb") as opened:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise invalid(node, path, f"{file} is not a regular file")
            data = opened.read(SECRET_FILE_LIMIT + 1)
    except OSError as error:
        raise invalid(node, path, f"cannot read {file}: {error.strerror or error}") from None
    if len(data) > SECRET_FILE_LIMIT:
        raise invalid(node, path, f"{file} is larger than {SECRET_FILE_LIMIT} bytes")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise invalid(node, path, f"{file} is not UTF-8 text") from None


def written_or_read(plain: Converter[str]) -> Converter[str]:
    """Given the converter of a value written in the text (a URL), return a converter that
    also takes it from {file: PATH} or {env: NAME}, and checks what it reads as `plain`
    does."""

    def convert(node: yaml.Node, path: str) -> str:
        if isinstance(node, yaml.MappingNode):
            text = secret(node, path)
            node = yaml.ScalarNode(f"{TAG}str", text, node.start_mark, node.end_mark)
        return plain(node, path)

    return convert


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


APPRISE_URLS = list_of(written_or_read(apprise_url), non_empty=True)


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


def is_loopback(host: str) -> bool:
    """Given the host of a listen address, say whether only this machine can reach it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


METRICS = record(
    {"listen": listen_address, "textfile": textfile, "token": secret, "public": boolean},
    into=MetricsSettings,
)


def metrics_settings(node: yaml.Node, path: str) -> MetricsSettings:
    """Given `daemon.metrics`, return its settings. Raise Invalid at `listen` for an address
    other machines can reach, unless a token guards it or `public: true` says so."""
    settings = METRICS(node, path)
    if settings.listen is None or settings.token is not None or settings.public:
        return settings
    host = settings.listen[0]
    if is_loopback(host):
        return settings
    message = (
        f"{host} is not a loopback address: anyone who reaches it reads the metrics and the "
        "status page. Set token: {file: PATH} (clients present it), or public: true (a "
        "firewall or a reverse proxy guards it)"
    )
    raise invalid(value_of(node, "listen"), child_path(path, "listen"), message)


URL_KEYS = ("urls", "ping")  # the keys of `notify` that hold URLs


def urls_in_text(root: yaml.Node) -> list[tuple[yaml.Node, str]]:
    """Given a policy file's root node, return each notification URL written in its text
    (not read from a file or the environment), with its key path."""
    found: list[tuple[yaml.Node, str]] = []
    policies = _child(root, "policies")
    for name, policy in _children(policies):
        notify = _child(policy, "notify")
        for key, value in _children(notify):
            path = f"policies.{name}.notify.{key}"
            if key not in URL_KEYS:
                continue
            if isinstance(value, yaml.ScalarNode):
                found.append((value, path))
            elif isinstance(value, yaml.SequenceNode):
                found += [
                    (item, f"{path}[{index}]")
                    for index, item in enumerate(value.value)
                    if isinstance(item, yaml.ScalarNode)
                ]
    return found


def _children(node: yaml.Node | None) -> list[tuple[str, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        return []
    return [
        (str(key.value), value) for key, value in node.value if isinstance(key, yaml.ScalarNode)
    ]


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    return next((value for name, value in _children(node) if name == key), None)


def exposed_urls(file: Path, root: yaml.Node) -> list[ConfigProblem]:
    """Given a policy file and its root node, return a warning for each notification URL
    written in its text if every user of the machine may read the file: a URL may carry a
    token. The warning names the file and key, never the URL."""
    try:
        readable = bool(file.stat().st_mode & stat.S_IROTH)
    except OSError:
        return []
    if not readable:
        return []
    message = (
        f"a notification URL (it may carry a token) written in {file}, which every user may "
        "read: use {file: PATH} (mode 0600) or {env: NAME} instead, or chmod o-r the file"
    )
    return [problem_at(node, path, message) for node, path in urls_in_text(root)]


NOTIFY = record(
    {
        "urls": apprise_urls,
        "ping": written_or_read(ping_url),
        "events": list_of(choice(NOTIFY_EVENTS, "notify event"), unique=True),
        "remind_every": duration(),
    },
    into=NotifySettings,
)
