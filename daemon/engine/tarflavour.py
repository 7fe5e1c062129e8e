"""Which tar the helper image has, the best flags it offers for a backup, and the stream of
a volume it writes.

What each flavour keeps on backup (restore goes through the Engine's archive endpoint,
which restores everything the stream carries, whatever tar made it):

- GNU tar: PAX format with sub-second mtimes and extended attributes (`--xattrs`);
  numeric owners. ACLs are not kept (the Engine does not restore them).
- busybox tar: ustar with GNU long names; contents, types, modes, numeric uid/gid and
  whole-second mtimes of every object, symlinks and directories included. Extended
  attributes and ACLs are lost.
- Neither keeps holes: a sparse file restores with equal content but fully allocated
  (zstd stores the zeros in a few bytes, so the archive does not grow).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import structlog

from daemon.engine import pipe
from daemon.engine.helpers import HelperOutput, Mount, helper_container, missing_image, run_helper
from daemon.errors import EngineFailure, OperationError
from daemon.system.files import publish

SOURCE = "/src"
log = structlog.get_logger()
KILLED = 128  # an exit code from 128 up: killed by a signal, or by its engine


@dataclass(frozen=True)
class TarFlavour:
    name: str  # "gnu", "busybox" or "posix" (unknown: plain POSIX flags only)
    version: str

    @property
    def warning_exit(self) -> int:
        """The highest exit code that still means a complete archive: GNU tar exits 1 when a
        file changed while it was read (a live volume: see stop_containers)."""
        return 1 if self.name == "gnu" else 0

    def create_command(self, source: str = SOURCE, output: str = "-") -> list[str]:
        """Return the argv that writes a tar of `source` into `output` (-: stdout)."""
        if self.name == "gnu":
            return [
                "tar",
                "--create",
                f"--file={output}",
                f"--directory={source}",
                "--numeric-owner",
                "--format=posix",
                "--pax-option=delete=atime,delete=ctime",
                "--xattrs",
                "--xattrs-include=*",
                ".",
            ]
        return ["tar", "-c", "-f", output, "-C", source, "."]


def keeps_xattrs(flavour: str) -> bool:
    """Given a tar flavour's name, say whether the tar it writes records extended
    attributes (GNU tar with `--xattrs`; busybox tar records none)."""
    return flavour == "gnu"


def parse_flavour(version_output: str) -> TarFlavour:
    """Given what `tar --version` printed (stdout and stderr), return the flavour."""
    if match := re.search(r"GNU tar\)?\s*([\d.]+)", version_output):
        return TarFlavour("gnu", match.group(1))
    if match := re.search(r"busybox\)?\s*v?([\d.]+)", version_output, re.IGNORECASE):
        return TarFlavour("busybox", match.group(1))
    return TarFlavour("posix", "")


_detected: dict[str, TarFlavour] = {}
VERSIONS_FILE = "tar-versions.json"  # in the state dir: docs/daemon.md, "The state dir"
VERSIONS_KEPT = 16  # images remembered; the oldest goes first
_VERSION_TEXT = 4096  # characters of `tar --version` kept per image


def detect_flavour(api: docker.APIClient, image: str, state_dir: Path | None = None) -> TarFlavour:
    """Given an image, return the flavour of its tar: what `tar --version` printed in it,
    run once per image id (then remembered in `state_dir`, when given, for later
    processes). Raise EngineFailure if the image is missing."""
    try:
        image_id: str = api.inspect_image(image)["Id"]
    except docker.errors.ImageNotFound:
        raise missing_image(image) from None
    if image_id not in _detected:
        known = _read_versions(state_dir) if state_dir is not None else {}
        output = known.get(image_id)
        if output is None:
            _, stdout, stderr = run_helper(api, image, ["tar", "--version"], [])
            output = (stdout.decode("utf-8", "replace") + stderr)[:_VERSION_TEXT]
            if state_dir is not None:
                _remember_version(state_dir, known, image_id, output)
        _detected[image_id] = parse_flavour(output)
    return _detected[image_id]


def _read_versions(state_dir: Path) -> dict[str, str]:
    """Given the state dir, return what `tar --version` printed in each image remembered,
    by image id: none if the file is missing or not one this version wrote (it is then
    written again)."""
    try:
        document = json.loads((state_dir / VERSIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("version") != 1:
        return {}
    images = document.get("images")
    if not isinstance(images, dict):
        return {}
    return {
        image_id: output
        for image_id, output in images.items()
        if isinstance(image_id, str) and isinstance(output, str)
    }


def _remember_version(state_dir: Path, known: dict[str, str], image_id: str, output: str) -> None:
    """Add an image's `tar --version` to the state dir's file, the newest last, keeping the
    newest VERSIONS_KEPT. A file that cannot be written is logged and left: the next
    process runs `tar --version` again."""
    kept = dict([*known.items()][1 - VERSIONS_KEPT :])
    kept[image_id] = output
    text = json.dumps({"version": 1, "images": kept}, indent=1) + "\n"
    temporary: Path | None = None
    try:
        handle, name = tempfile.mkstemp(prefix=f".{VERSIONS_FILE}.", dir=state_dir)
        temporary = Path(name)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        publish(temporary, state_dir / VERSIONS_FILE)
    except OSError as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        log.warning("cannot remember the helper image's tar", path=str(state_dir), error=str(error))


def volume_tar(
    api: docker.APIClient,
    image: str,
    flavour: TarFlavour,
    volume: str,
    owner: str | None = None,
    *,
    state_dir: Path | None = None,
    command: Callable[[str], list[str]] | None = None,
) -> Iterator[memoryview]:
    """Given a volume, yield the tar stream of its content as a helper's tar writes it
    (read-only mount), through a pipe in `state_dir` where the engine can reach it, else
    through the attach socket. `command`, given where to write ("-": stdout), returns
    another argv to run than the flavour's tar of the whole volume.

    Raise OperationError if the tar fails.
    """
    command = command or (lambda output: flavour.create_command(output=output))
    if state_dir is not None and pipe.usable(api):
        try:
            with pipe.Pipe(state_dir) as through:
                yield from _helper_tar(api, image, flavour, volume, owner, through, command)
            return
        except pipe.PipeUnavailable as why:  # raised before the first piece
            pipe.refuse(api, str(why))
    yield from _helper_tar(api, image, flavour, volume, owner, None, command)


def _helper_tar(
    api: docker.APIClient,
    image: str,
    flavour: TarFlavour,
    volume: str,
    owner: str | None,
    through: pipe.Pipe | None,
    command: Callable[[str], list[str]],
) -> Iterator[memoryview]:
    log.debug("helper tar", volume=volume, stream="pipe" if through else "attach")
    argv = command(pipe.PIPE_TARGET if through else "-")
    mounts = [Mount(volume, SOURCE)]
    with helper_container(api, image, argv, mounts, owner=owner, pipe=through) as helper:
        output = HelperOutput(api, helper, through)
        try:
            yield from output.chunks()
        except pipe.PipeUnavailable as why:
            raise pipe.PipeUnavailable(f"{why}: {output.stderr or 'no reason given'}") from None
        exit_code = output.wait()
    if exit_code > flavour.warning_exit:
        if exit_code >= KILLED and not output.stderr.strip():
            raise EngineFailure(
                f"the helper was stopped before its tar finished (exit {exit_code}): the "
                "Docker engine stopped or killed it (an engine restart, or its memory limit)"
            )
        reason = output.stderr.strip() or "no reason given"
        raise OperationError(f"the helper's tar failed (exit {exit_code}): {reason}")
    if exit_code:
        log.warning("the helper's tar warned; the archive is complete", stderr=output.stderr)
