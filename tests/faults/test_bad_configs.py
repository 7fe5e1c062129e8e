"""Bad configs (issue 13): whatever an operator writes in the policy files, `volkeep validate`
answers with a summary (exit 0) or with problems (exit 2), never a traceback.

Hypothesis writes the files: documents built from volkeep's own keys, holding plausible
values, wrong ones and anything at all, then mangled as text (a cut, a stray tab, an alias,
a tag, bytes that are not UTF-8), one to three files in a directory. `validate` runs in this
process through `daemon.cli.main.main`, with no Docker engine to reach (DOCKER_HOST points
nowhere: validate then says it cannot show the volumes).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.cli.main import main

pytestmark = pytest.mark.faults

ANYTHING = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=24)
    | st.sampled_from(["", "~", "null", "yes", "no", "0x1F", "1e400", ".inf", "-.nan", "0o17"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
NAMES = st.sampled_from(["app", "app_db", "db.v2", "a", "-x", "x" * 300, "über", "a/b", "", "0"])
DURATIONS = st.sampled_from(["30s", "10m", "1h30m", "0s", "-1h", "10d", "1y", "h", "9" * 30, 0, -5])
SCHEDULES = st.sampled_from(
    ["0 3 * * *", "@every 6h", "@daily", "@every 0s", "@every -1h", "61 * * * *", "* * * *",
     "0 3 * * * *", "@every 1h30m", "@every 99999999999999h", "30 4 * * 0", "@reboot", "0 0 31 2 *"]
)  # fmt: skip
PATHS = st.sampled_from(
    ["/var/backups/volkeep", "relative/dir", "/", "", "/dev/null", "/etc/shadow",
     "/nonexistent/file", "~/x", "/tmp/\x00"]
)  # fmt: skip
# secrets pasted where they do not belong: refused, and never repeated (promise 6)
PASTED_SECRETS = (
    "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
)
AGE_KEYS = st.sampled_from(
    ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p", "age1", "ssh-ed25519 AAAA",
     PASTED_SECRETS[0], "not a key"]
)  # fmt: skip


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind, sometimes anything at all."""
    return st.one_of(plausible, plausible, ANYTHING)


@st.composite
def record(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A mapping of some of `fields` (and, now and then, a key volkeep does not know)."""
    keys = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
    result = {key: draw(either(fields[key])) for key in keys}
    if draw(st.integers(0, 9)) == 0:
        result[draw(st.text(max_size=12))] = draw(ANYTHING)
    return result


EXEC_FIELDS = {
    "container": NAMES,
    "command": st.lists(st.text(max_size=8)),
    "user": st.text(max_size=8),
    "timeout": DURATIONS,
}
EXEC_FIELDS = {
    "container": NAMES,
    "command": st.lists(st.text(max_size=8)),
    "user": st.text(max_size=8),
    "timeout": DURATIONS,
}
HOOK = st.one_of(
    st.fixed_dictionaries({"run": st.lists(st.text(max_size=8), max_size=3)}),
    st.fixed_dictionaries(
        {"run": record({"command": st.lists(st.text(max_size=8)), "timeout": DURATIONS})}
    ),
    st.fixed_dictionaries({"exec": record(EXEC_FIELDS)}),
)
HOOKS = record({"before": st.lists(HOOK, max_size=2), "after": st.lists(HOOK, max_size=2)})
POLICY = record(
    {
        "volumes": st.lists(NAMES, max_size=3),
        "match": record({"label": st.sampled_from(["volkeep.policy=app", "k", "=v", ""]),
                         "name": st.sampled_from(["app_*", "[", "*"]), "compose_project": NAMES}),
        "schedule": SCHEDULES,
        "timezone": st.sampled_from(["UTC", "Europe/Paris", "Mars/Olympus", "", "../../etc"]),
        "storage": st.one_of(NAMES, st.lists(NAMES, max_size=3), st.just("local")),
        "compression": st.one_of(
            st.sampled_from(["zstd", "gzip", "none", "lz4"]),
            record({"algorithm": st.sampled_from(["zstd", "gzip", "none", "xz"]),
                    "level": st.integers(-30, 30)}),
        ),
        "exclude": st.lists(st.sampled_from(["cache/", "*.tmp", "/abs", "../up", "", "a//b"])),
        "stop_containers": st.booleans(),
        "stop_timeout": DURATIONS,
        "helper_image": st.sampled_from(["busybox:1.36", "volkeep-helper:busybox", "UPPER",
                                         "a@sha256:00", ""]),
        "retention": record({key: st.integers(-3, 10**20) for key in
                             ("keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                              "keep_monthly", "keep_yearly")} | {"keep_within": DURATIONS}),
        "drill": record({"schedule": SCHEDULES, "max_per_run": st.integers(-2, 10**12),
                         "archive": st.sampled_from(["latest", "random", "oldest-unverified",
                                                     "all"]),
                         "storage": NAMES}),
        "hooks": HOOKS,
        "volume_hooks": st.dictionaries(NAMES, HOOKS, max_size=2),
        "encryption": st.fixed_dictionaries(
            {"age": record({"recipients": st.lists(AGE_KEYS, max_size=2),
                            "recipients_file": PATHS, "identity_file": PATHS})}
        ),
        "notify": record({"urls": st.lists(st.sampled_from(["ntfy://ntfy.example/b", "mailto:",
                                                            "https://u:p@x/", "::"])),
                          "ping": st.sampled_from(["https://hc.example/ping/x", "ftp://x", ""]),
                          "events": st.lists(st.sampled_from(["failure", "drill_failure",
                                                              "recovered", "missed", "boom"]))}),
    }
)  # fmt: skip
STORAGE = record(
    {
        "type": st.sampled_from(["local", "s3", "ftp"]),
        "path": PATHS,
        "bucket": st.sampled_from(["volkeep-backups", "Bad_Bucket", "a", "x" * 70]),
        "prefix": st.sampled_from(["prod/", "/lead", "..", ""]),
        "endpoint": st.sampled_from(["https://s3.example.net", "http://127.0.0.1:1", "s3.example",
                                     "ftp://x", ""]),
        "region": st.sampled_from(["eu-west-1", ""]),
        "path_style": st.booleans(),
        "credentials_file": PATHS,
        "profile": st.text(max_size=8),
        "ca_bundle": PATHS,
        "storage_class": st.sampled_from(["STANDARD_IA", "GLACIER", "cheap"]),
        "secret_access_key": st.just(PASTED_SECRETS[1]),
    }
)  # fmt: skip
DAEMON = record(
    {
        "max_parallel": st.integers(-1, 10**6),
        "shutdown_timeout": DURATIONS,
        "host": NAMES,
        "metrics": record({"listen": st.sampled_from(["127.0.0.1:9318", "9318", "[::1]:1", ":x",
                                                      "host:99999"]),
                           "textfile": PATHS}),
    }
)  # fmt: skip
DOCUMENT = record(
    {
        "version": st.sampled_from([1, 2, "1", None]),
        "storage": st.dictionaries(NAMES, STORAGE, max_size=2),
        "policies": st.dictionaries(NAMES, POLICY, max_size=2),
        "daemon": DAEMON,
    }
)
VALID: dict[str, Any] = {
    "version": 1,
    "storage": {"local": {"type": "local", "path": "/var/backups/volkeep"}},
    "policies": {"app": {"volumes": ["app_db"], "storage": "local", "schedule": "0 3 * * *"}},
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document of drawn keys; or, twice as often, a valid one with a few drawn parts."""
    if draw(st.integers(0, 2)) == 0:
        return draw(DOCUMENT)
    document = copy.deepcopy(VALID)
    for key, value in list(draw(POLICY).items())[: draw(st.integers(0, 2))]:
        document["policies"]["app"][key] = value
    if draw(st.integers(0, 3)) == 0:
        document.update(list(draw(DOCUMENT).items())[:1])
    return document


JUNK = st.sampled_from(
    ["\t", ":", ": ", "- ", "&a ", "*a", "*nowhere", "<<: *a\n", "!!python/object/apply:os.system ",
     "!!binary ", "{", "}", "[", "]", "'", '"', "\x00", "\ufeff", "%YAML 1.1\n", "---\n", "...\n",
     "? ", "|\n", ">-\n", "\\", "#", "\n  ", "\u2028", "\x85"]
) | st.text(max_size=4)  # fmt: skip


@st.composite
def mangled(draw: st.DrawFn, document: dict[str, Any]) -> bytes:
    """The document as YAML text, then maybe cut, spliced with junk, or not UTF-8 at all."""
    flow = draw(st.booleans())
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True, width=80)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "cut", "duplicate line", "truncate"]))
        if action == "insert":
            text = text[:at] + draw(JUNK) + text[at:]
        elif action == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif action == "duplicate line":
            lines = text.splitlines(keepends=True) or [""]
            line = draw(st.integers(0, len(lines) - 1))
            text = "".join([*lines[: line + 1], *lines[line:]])
        else:
            text = text[:at]
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    return raw


CONFIGS = st.lists(documents().flatmap(mangled), min_size=1, max_size=3)


@contextlib.contextmanager
def no_engine() -> Iterator[None]:
    """No Docker engine to reach, and volkeep's SIGTERM handler gone again afterwards."""
    before = os.environ.get("DOCKER_HOST")
    handler = signal.getsignal(signal.SIGTERM)
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/volkeep-fault-suite.sock"
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        if before is None:
            del os.environ["DOCKER_HOST"]
        else:
            os.environ["DOCKER_HOST"] = before


def validate(config: Path, state_dir: Path) -> tuple[int, str, str]:
    """Run `volkeep --config CONFIG validate` in this process; return code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["--config", str(config), "--state-dir", str(state_dir), "validate"]
    with no_engine(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse
            code = exit.code if isinstance(exit.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=CONFIGS, as_directory=st.booleans())
def test_any_policy_file_is_validated_or_refused_with_exit_2_never_a_traceback(
    files: list[bytes], as_directory: bool
) -> None:
    with tempfile.TemporaryDirectory(prefix="volkeep-fuzz-") as temporary:
        root = Path(temporary)
        directory = root / "config"
        directory.mkdir()
        for number, raw in enumerate(files):
            (directory / f"{number}-policy.{'yml' if number % 2 else 'yaml'}").write_bytes(raw)
        config = directory if as_directory or len(files) > 1 else directory / "0-policy.yaml"

        code, out, err = validate(config, root / "state")
    event(f"exit {code}")

    shown = f"exit {code}\n--- stdout\n{out}\n--- stderr\n{err}\n--- files\n{files!r}"
    assert "Traceback" not in out + err, shown
    assert "internal error" not in err, shown
    assert code in (0, 2), shown
    assert not [secret for secret in PASTED_SECRETS if secret in out + err], shown
    if code == 2:
        assert err.startswith("volkeep: "), shown
        assert str(directory) in err, shown  # the problems name the file
    else:
        assert out.startswith("config OK"), shown


def test_a_key_with_a_line_break_or_an_escape_stays_on_its_one_problem_line(tmp_path: Path):
    config = tmp_path / "volkeep.yaml"
    config.write_text(
        'version: 1\n"evil\\nvolkeep: forged line": 1\n"\\e[2Jred": 2\n'
        f"storage: {{local: {{type: local, path: {tmp_path / 'repo'}}}}}\n"
        "policies: {}\n"
    )

    code, _, err = validate(config, tmp_path / "state")

    assert code == 2
    assert [": ".join(line.split(": ", 2)[:2]) for line in err.splitlines()] == [
        f"volkeep: {config}:2:1",
        f"volkeep: {config}:3:1",
    ]
    assert "\x1b" not in err
