"""`volkeep init`: a first policy file, drafted from the volumes on this host.

The steps: list the volumes and the containers that mount them; make one policy per Docker
Compose project (its volumes matched by the project's label, so that volumes the project
adds later are covered too) and one policy of the other volumes, by name; propose
`stop_containers` where a container of a well-known database image uses a volume; write
it all as a commented file with one local storage, a nightly deduplicated backup and a
weekly drill; load that file with the loader, and only then put it in place. What `init`
writes loads.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
import yaml

from daemon.config import load_config
from daemon.config.model import COMPOSE_PROJECT_LABEL, Policy
from daemon.config.values import NAME, VOLUME_NAME
from daemon.engine.client import connect, engine_failure
from daemon.engine.containers import LABEL_STOP, containers_using
from daemon.engine.helpers import LABEL_ROLE
from daemon.engine.volumes import all_volumes
from daemon.errors import ConfigError, OperationError, UsageError
from daemon.rules.databases import is_database_image
from daemon.terminal.render import plural

ANONYMOUS_LABEL = "com.docker.volume.anonymous"  # what Docker labels anonymous volumes with
OTHER_VOLUMES = "standalone"  # the policy of the volumes of no Compose project
STORAGE = "local"
STORAGE_PATH = "/var/backups/volkeep"
BACKUP_SCHEDULE = ("0 3 * * *", "nightly, at 03:00")
DRILL_SCHEDULE = ("30 4 * * 0", "weekly, on Sundays at 04:30")
RETENTION = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
# The image install.sh builds, then the policy's default: the first this host has is used.
HELPER_IMAGES = ("volkeep-helper:busybox", str(Policy.__dataclass_fields__["helper_image"].default))
PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]*")  # text YAML reads as itself, unquoted


@dataclass(frozen=True)
class VolumeUser:
    """A container that mounts a volume, and the image it was created from."""

    name: str
    image: str

    @property
    def runs_a_database(self) -> bool:
        return is_database_image(self.image)


@dataclass(frozen=True)
class HostVolume:
    name: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    users: tuple[VolumeUser, ...] = ()

    @property
    def project(self) -> str | None:
        """Return the Compose project that created the volume, if one did."""
        return self.labels.get(COMPOSE_PROJECT_LABEL) or None


@dataclass(frozen=True)
class DraftPolicy:
    """A policy of the draft: the volumes of a Compose project (matched by its label), or,
    when `project` is None, other volumes by name."""

    name: str
    project: str | None
    volumes: tuple[HostVolume, ...]

    @property
    def databases(self) -> list[VolumeUser]:
        """Return the containers of database images that use the policy's volumes."""
        found = {user for volume in self.volumes for user in volume.users if user.runs_a_database}
        return sorted(found, key=lambda user: user.name)


@dataclass(frozen=True)
class Draft:
    """The drafted policy file, and what it holds."""

    text: str
    policies: tuple[DraftPolicy, ...]

    def summary(self) -> str:
        volumes = sum(len(policy.volumes) for policy in self.policies)
        names = ", ".join(policy.name for policy in self.policies) or "none"
        return f"{plural(len(self.policies), 'policy')} ({names}) of {plural(volumes, 'volume')}"


def run_init(output: Path | None, *, force: bool = False) -> Draft:
    """Draft the policy file of this host's volumes and check that it loads; write it to
    `output` if given.

    Raise UsageError if `output` exists and not `force`, DockerUnavailable if the engine
    does not answer, OperationError if the draft cannot be written.
    """
    if output is not None and output.exists() and not force:
        raise UsageError(f"{output} exists: give --force to replace it")
    api = connect()
    policies, left_out = draft_policies(survey(api))
    draft = Draft(render(policies, left_out, helper_image(api)), tuple(policies))
    if output is None:
        with tempfile.TemporaryDirectory() as directory:
            write_checked(draft.text, Path(directory) / "volkeep.yaml", force=False)
    else:
        write_checked(draft.text, output, force=force)
    return draft


def survey(api: docker.APIClient) -> list[HostVolume]:
    """Return the volumes on this host with the containers that mount them, by name."""
    images: dict[str, str] = {}

    def image_of(container_id: str) -> str:
        if container_id not in images:
            try:
                images[container_id] = str(api.inspect_container(container_id)["Config"]["Image"])
            except docker.errors.NotFound:  # removed since it was listed
                images[container_id] = ""
        return images[container_id]

    try:
        return [
            HostVolume(
                volume.name,
                volume.labels,
                tuple(
                    VolumeUser(container.name, image_of(container.id))
                    for container in containers_using(api, volume.name)
                ),
            )
            for volume in all_volumes(api)
        ]
    except (docker.errors.APIError, requests.RequestException) as error:
        raise engine_failure(error) from None


def draft_policies(
    volumes: Iterable[HostVolume],
) -> tuple[list[DraftPolicy], list[tuple[str, str]]]:
    """Given the volumes on a host, return the policies that cover them, and the volumes
    left out with the reason why: volkeep's own, anonymous ones, names volkeep refuses."""
    by_project: dict[str, list[HostVolume]] = {}
    others: list[HostVolume] = []
    left_out: list[tuple[str, str]] = []
    for volume in volumes:
        if LABEL_ROLE in volume.labels:
            left_out.append((volume.name, "a scratch volume of volkeep"))
        elif volume.project is not None:
            by_project.setdefault(volume.project, []).append(volume)
        elif ANONYMOUS_LABEL in volume.labels:
            left_out.append((volume.name, "an anonymous volume"))
        elif not VOLUME_NAME.fullmatch(volume.name):
            left_out.append((volume.name, "a name volkeep does not take"))
        else:
            others.append(volume)
    taken = {OTHER_VOLUMES} if others else set()
    names: dict[str, str] = {}
    for project in sorted(sorted(by_project), key=lambda name: not NAME.fullmatch(name)):
        names[project] = policy_name(project, taken)  # a valid name first keeps its own
    policies = [
        DraftPolicy(names[project], project, tuple(by_project[project]))
        for project in sorted(by_project)
    ]
    if others:
        policies.append(DraftPolicy(OTHER_VOLUMES, None, tuple(others)))
    return policies, left_out


def policy_name(project: str, taken: set[str]) -> str:
    """Given a Compose project and the policy names taken, return a new valid policy name
    for it (the project's own name when it is one), and take it."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", project).lstrip("_.-")[:90] or "project"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    taken.add(name)
    assert NAME.fullmatch(name), name
    return name


def helper_image(api: docker.APIClient) -> tuple[str, bool]:
    """Return the helper image to propose, and whether this host has it."""
    for image in HELPER_IMAGES:
        try:
            api.inspect_image(image)
        except docker.errors.ImageNotFound:
            continue
        return image, True
    return HELPER_IMAGES[-1], False


def scalar(text: str) -> str:
    """Given a text, return it as a YAML scalar: as is when YAML reads it back so (and it
    stays on one line), else quoted."""
    if PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def mention(text: str) -> str:
    """Given a name to mention in a comment, return it printable on one line."""
    return text if text.isprintable() else json.dumps(text)


def comment(indent: int, text: str) -> list[str]:
    """Given an indentation and a paragraph, return it as comment lines of at most 90."""
    prefix = " " * indent + "# "
    return textwrap.wrap(text, 90, initial_indent=prefix, subsequent_indent=prefix)


def used_by(volume: HostVolume) -> str:
    users = ", ".join(f"{mention(user.name)} ({mention(user.image)})" for user in volume.users)
    return f"used by {users}" if users else "used by no container now"


def render(
    policies: list[DraftPolicy], left_out: list[tuple[str, str]], helper: tuple[str, bool]
) -> str:
    """Given the drafted policies, the volumes left out and the helper image (and whether
    this host has it), return the text of the commented policy file."""
    lines = [
        "# volkeep policy file, drafted by `volkeep init` from the volumes on this host.",
        "# Read it through, check it with `volkeep validate` (it lists the volumes each policy",
        "# covers now), then start the daemon. `volkeep schema` prints the JSON Schema with",
        "# which an editor completes and checks this file.",
        "",
        "version: 1",
        "",
        "# Where archives are written: a directory on this host (better on another disk than",
        "# Docker's). An s3 storage keeps copies off this host; see config/example.yaml.",
        "storage:",
        f"  {STORAGE}:",
        "    type: local",
        f"    path: {STORAGE_PATH}",
        "",
    ]
    if not policies:
        lines += ["# There is no volume to back up on this host yet.", "policies: {}"]
    else:
        lines.append("policies:")
    for policy in policies:
        lines += render_policy(policy, helper)
    if left_out:
        lines += ["", "# Left out:"]
        lines += [f"#   {mention(name)}: {why}" for name, why in left_out]
    return "\n".join(lines) + "\n"


def render_policy(policy: DraftPolicy, helper: tuple[str, bool]) -> list[str]:
    """Given a drafted policy and the helper image, return the lines of its entry."""
    lines = [""]
    if policy.project is not None:
        project = mention(policy.project)
        lines += [
            *comment(
                2, f"The volumes of the Compose project {project}, and those it creates later:"
            ),
            *(f"  #   {mention(volume.name)}: {used_by(volume)}" for volume in policy.volumes),
            f"  {policy.name}:",
            f"    match: {{compose_project: {scalar(policy.project)}}}",
        ]
    else:
        lines += [
            "  # The volumes of no Compose project, by name (add the ones created later).",
            f"  {policy.name}:",
            "    volumes:",
            *(f"      - {scalar(volume.name)}  # {used_by(volume)}" for volume in policy.volumes),
        ]
    schedule, when = BACKUP_SCHEDULE
    lines += [
        f'    schedule: "{schedule}"  # {when}',
        "    timezone: UTC",
        f"    storage: {STORAGE}",
        "    # Each backup stores only the file content its storage does not hold yet; tar would",
        "    # write each backup as one compressed tar file instead.",
        "    format: dedup",
    ]
    databases = policy.databases
    if databases:
        running = ", ".join(f"{mention(user.name)} ({mention(user.image)})" for user in databases)
        lines += comment(
            4,
            f"A database uses these volumes: {running}. The containers that use a volume are "
            "stopped while it is backed up, for a consistent copy, and started again right "
            f"after; a container labelled {LABEL_STOP}=false keeps running.",
        )
        lines.append("    stop_containers: true")
    else:
        lines += [
            "    # No container of a known database image uses these volumes; true would stop",
            "    # the containers that use a volume while it is backed up.",
            "    stop_containers: false",
        ]
    image, found = helper
    if not found:
        lines.append(
            "    # Not on this host: it is never pulled (any image with sh and tar will do)."
        )
    drill_schedule, drill_when = DRILL_SCHEDULE
    lines += [
        f"    helper_image: {scalar(image)}",
        "    retention:",
        *(f"      {rule}: {count}" for rule, count in RETENTION.items()),
        "    # A restore drill: the latest archive restored into a scratch volume and compared,",
        "    # byte for byte, with what its manifest recorded.",
        "    drill:",
        f'      schedule: "{drill_schedule}"  # {drill_when}',
        "      archive: latest",
    ]
    return lines


def write_checked(text: str, output: Path, *, force: bool) -> None:
    """Given the text of a policy file, write it to `output` once the loader takes it: it is
    written to a hidden file beside it (the loader skips hidden files), loaded, then put in
    place whole. Without `force`, an existing `output` is left as it is.

    Raise UsageError if `output` exists and not `force`, OperationError if the text does not
    load or cannot be written.
    """
    try:
        with tempfile.NamedTemporaryFile(
            "w", dir=output.parent, prefix=f".{output.name}.", suffix=".draft", delete=False
        ) as file:
            file.write(text)
    except OSError as error:
        raise OperationError(f"cannot write {output}: {error.strerror or error}") from None
    written = Path(file.name)
    try:
        try:
            load_config(written)
        except ConfigError as error:
            raise OperationError(
                f"volkeep init drafted a file that does not load: {error}"
            ) from None
        os.chmod(written, 0o644)
        if force:
            os.replace(written, output)
        else:
            os.link(written, output)  # never over a file that appeared meanwhile
    except FileExistsError:
        raise UsageError(f"{output} exists: give --force to replace it") from None
    except OSError as error:
        raise OperationError(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        written.unlink(missing_ok=True)
