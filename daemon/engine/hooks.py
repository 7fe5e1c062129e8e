"""Commands run around a volume's backup: inside a running container, or on the host.

A before hook that fails aborts the volume's backup; the after hooks all run, whatever
happened before them, and their failures are reported. A command is an argument list,
never a shell string. Its output goes to the log line by line, bound to the policy and
volume of the backup it serves.

A hook's arguments may hold secrets (`mysqldump -pSECRET`, a token after `--token`), and
what is logged reaches the journal (SPEC §5.6): logs and error messages name a hook by its
program and its bare flags only (`-v`, `--verbose`, the name of `--password=…`); every other
argument shows as `…`. The hook's own output is logged as it writes it.
"""

from __future__ import annotations

import contextvars
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import docker
import requests
import structlog

from daemon.config.model import ExecHook, Hook, RunHook
from daemon.engine.client import engine_failure
from daemon.errors import OperationError

log = structlog.get_logger()

OUTPUT_LINES_LOGGED = 200  # per hook; the rest is counted, not logged
LINE_LIMIT = 2000  # characters of one logged line
KILL_GRACE = 5.0  # seconds to wait for a killed command's output to end
EXEC_POLL = 0.05  # seconds between looks at an exec that has not started yet
READ_SIZE = 64 << 10
BARE_FLAG = re.compile(r"-[A-Za-z0-9]|--([A-Za-z0-9][A-Za-z0-9_-]*)?")  # -v, --verbose, --
LONG_FLAG_WITH_VALUE = re.compile(r"(--[A-Za-z0-9][A-Za-z0-9_-]*)=.*", re.DOTALL)
HIDDEN = "…"


def describe(hook: Hook) -> str:
    """Given a hook, return it for logs and messages, its argument values hidden:
    "exec in db: pg_dump -U …", "run: sync"."""
    if isinstance(hook, ExecHook):
        return f"exec in {hook.container}: {redacted(hook.command)}"
    return f"run: {redacted(hook.command)}"


def redacted(command: Sequence[str]) -> str:
    """Given a command, return it with every argument but the bare flags shown as `…`
    ("mysqldump -u … --password=… …")."""
    shown = [shlex.quote(command[0])] if command else []
    for argument in command[1:]:
        if BARE_FLAG.fullmatch(argument):
            shown.append(argument)
        elif flag := LONG_FLAG_WITH_VALUE.fullmatch(argument):
            shown.append(f"{flag.group(1)}={HIDDEN}")
        else:
            shown.append(HIDDEN)
    return " ".join(shown)


def run_before_hooks(api: docker.APIClient, hooks: Sequence[Hook]) -> None:
    """Run the before hooks in order. Raise OperationError at the first that fails."""
    for number, hook in enumerate(hooks, 1):
        try:
            run_hook(api, hook, f"before hook {number}")
        except OperationError as error:
            raise OperationError(
                f"before hook {number} ({describe(hook)}) failed: {error.message}; "
                "the volume was not backed up"
            ) from None


@contextmanager
def after_hooks(api: docker.APIClient, hooks: Sequence[Hook]) -> Iterator[None]:
    """Run the after hooks, in order, once the block is over, however it ended.

    Raise OperationError naming the hooks that failed if the block itself succeeded; if it
    failed, its error is the one raised (the hooks' failures are logged either way).
    """
    failures = []
    try:
        yield
    finally:
        for number, hook in enumerate(hooks, 1):
            try:
                run_hook(api, hook, f"after hook {number}")
            except OperationError as error:
                log.error("hook failed", hook=f"after hook {number}", error=error.message)
                failures.append(f"after hook {number} ({describe(hook)}): {error.message}")
    if failures:
        raise OperationError(f"the backup is done, but {'; '.join(failures)}")


def run_hook(api: docker.APIClient, hook: Hook, name: str) -> None:
    """Run one hook, logging its output. Raise OperationError if it cannot run, times out
    or exits with a status other than 0."""
    with structlog.contextvars.bound_contextvars(hook=name):
        log.info("hook started", command=describe(hook))
        output = OutputLog()
        began = time.monotonic()
        try:
            if isinstance(hook, ExecHook):
                status = _run_in_container(api, hook, output)
            else:
                status = _run_on_host(hook, output)
        except (docker.errors.APIError, requests.RequestException) as error:
            raise engine_failure(error) from None
        finally:
            output.close()
        if status != 0:
            last = f": {output.last_line}" if output.last_line else ""
            raise OperationError(f"exit status {status}{last}")
        log.info("hook finished", seconds=round(time.monotonic() - began, 2))


class OutputLog:
    """A command's output, logged line by line as it arrives (at most OUTPUT_LINES_LOGGED)."""

    def __init__(self) -> None:
        self._partial: dict[str, bytes] = {}
        self._last: dict[str, str] = {}
        self._logged = 0
        self._left_out = 0
        self._lock = threading.Lock()

    @property
    def last_line(self) -> str:
        """Return the last line the command wrote on stderr, else on stdout ("" if none)."""
        return self._last.get("stderr") or self._last.get("stdout", "")

    def feed(self, stream: str, data: bytes) -> None:
        with self._lock:
            *lines, self._partial[stream] = (self._partial.get(stream, b"") + data).split(b"\n")
            for line in lines:
                self._line(stream, line)

    def close(self) -> None:
        with self._lock:
            for stream, rest in self._partial.items():
                if rest:
                    self._line(stream, rest)
            self._partial.clear()
            if self._left_out:
                log.warning("hook output not logged", lines=self._left_out)

    def _line(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[:LINE_LIMIT]
        if text.strip():
            self._last[stream] = text.strip()
        if self._logged < OUTPUT_LINES_LOGGED:
            self._logged += 1
            log.info("hook output", stream=stream, line=text)
        else:
            self._left_out += 1


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    """Start `target` in a daemon thread that logs with the caller's bound context."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    thread.start()
    return thread


def _run_on_host(hook: RunHook, output: OutputLog) -> int:
    """Run the command on the host in its own session; return its exit status."""
    try:
        process = subprocess.Popen(
            list(hook.command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as error:
        raise OperationError(f"cannot run {hook.command[0]!r}: {error.strerror}") from None
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None and stderr is not None
    readers = [
        _in_thread(lambda: _pump(stdout, "stdout", output)),
        _in_thread(lambda: _pump(stderr, "stderr", output)),
    ]
    try:
        status = process.wait(hook.timeout)
    except subprocess.TimeoutExpired:
        raise OperationError(f"timed out after {hook.timeout:g}s and was killed") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for reader in readers:
            reader.join(KILL_GRACE)
    return status


def _pump(pipe: IO[bytes], stream: str, output: OutputLog) -> None:
    with pipe:
        for data in iter(lambda: os.read(pipe.fileno(), READ_SIZE), b""):
            output.feed(stream, data)


def _run_in_container(api: docker.APIClient, hook: ExecHook, output: OutputLog) -> int:
    """Run the command in the running container through the engine; return its exit status."""
    try:
        exec_id: str = api.exec_create(
            hook.container, list(hook.command), user=hook.user or "", stdin=False
        )["Id"]
        stream = api.exec_start(exec_id, stream=True, demux=True)
    except docker.errors.NotFound:
        raise OperationError(f"no container named {hook.container!r}") from None
    except docker.errors.APIError as error:
        if error.status_code == 409:
            raise OperationError(f"container {hook.container!r} is not running") from None
        raise
    reader = _in_thread(lambda: _pump_frames(stream, output))
    finished = False
    try:
        reader.join(hook.timeout)
        finished = not reader.is_alive()
    finally:
        if not finished:
            _kill_exec(api, exec_id)
            stream.close()
            reader.join(KILL_GRACE)
    if not finished:
        raise OperationError(f"timed out after {hook.timeout:g}s")
    return _exit_status(api, exec_id)


def _pump_frames(frames: Iterable[tuple[bytes | None, bytes | None]], output: OutputLog) -> None:
    for stdout, stderr in frames:
        if stdout:
            output.feed("stdout", stdout)
        if stderr:
            output.feed("stderr", stderr)


def _exit_status(api: docker.APIClient, exec_id: str) -> int:
    """Return the exit status of an exec whose output has ended (the engine may need a moment
    to record it)."""
    deadline = time.monotonic() + KILL_GRACE
    while True:
        info = api.exec_inspect(exec_id)
        if not info["Running"] and info["ExitCode"] is not None:
            status: int = info["ExitCode"]
            return status
        if time.monotonic() > deadline:
            raise OperationError("its output ended but the engine reports it still running")
        time.sleep(0.05)


def _kill_exec(api: docker.APIClient, exec_id: str) -> None:
    """Kill an exec's process. The engine's API cannot; the host can, when volkeep shares
    the engine's pid namespace: then the process with that pid has the container's cgroup."""
    info = api.exec_inspect(exec_id)
    deadline = time.monotonic() + KILL_GRACE
    while not info.get("Running") and info.get("ExitCode") is None:
        # started, its process not running yet (a loaded engine): it would run on unkilled
        if time.monotonic() > deadline:
            log.warning("cannot kill the hook's command: it has not started yet")
            return
        time.sleep(EXEC_POLL)
        info = api.exec_inspect(exec_id)
    pid, container = info.get("Pid"), info.get("ContainerID") or ""
    if not info.get("Running") or not pid or not container:
        return
    try:
        if container not in Path(f"/proc/{pid}/cgroup").read_text():
            raise ProcessLookupError(pid)
        os.kill(pid, signal.SIGKILL)
        log.warning("killed the hook's command in the container", pid=pid)
    except OSError:
        log.warning("cannot kill the hook's command: it may still run in the container", pid=pid)
