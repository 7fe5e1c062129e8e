"""`validate`'s pre-flight: what can be checked before the first run without writing
anything: the helper images exist, each local storage is a writable directory or can be
created, each S3 storage answers, each identity file opens the archives its policy writes
(a wrong key shows at the first drill, a week later, otherwise). What cannot be checked
(the engine is down) is said."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import requests

from daemon.actions.context import Context
from daemon.config.keys import EncryptionError, load_identities
from daemon.config.model import LocalStorageConfig, Policy, Source
from daemon.errors import ConfigProblem, OperationError


def _problem(source: Source, key: str, message: str) -> ConfigProblem:
    return ConfigProblem(source.file, source.line, 1, key, message)


def local_storage_problem(path: Path) -> str | None:
    """Given a local storage's path, return why volkeep could not write there, or None."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        return f"{path} cannot be created: {existing} is not a directory"
    if existing == path and not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "is" if existing == path else f"cannot be created: {existing} is"
        return f"{path} {verb} not writable by this user"
    return None


def identity_problem(ctx: Context, policy: Policy) -> ConfigProblem | None:
    """Given an encrypting policy, return why its identity file could not open the archives
    it writes, at the line of `identity_file` (or of the policy, for a drill without one),
    or None. The message names files and public keys, never a secret."""
    settings = policy.encryption
    if settings is None:
        return None
    key = f"policies.{policy.name}.encryption.age"
    if settings.identity_file is None:
        if policy.drill is None:
            return None  # the key is kept elsewhere: restores bring it
        message = "drills of encrypted archives need identity_file (the secret key's file)"
        return _problem(policy.source, f"{key}.identity_file", message)
    where = settings.identity_source or policy.source
    try:
        identities = load_identities(settings.identity_file)
        recipients = ctx.recipients(policy)
    except (EncryptionError, OperationError) as error:
        message = error.message if isinstance(error, OperationError) else str(error)
        return _problem(where, f"{key}.identity_file", message)
    unmatched = identities.unmatched(recipients)
    if unmatched is None:
        return None
    message = (
        f"{settings.identity_file} opens none of the archives: its key is not one of the "
        f"recipients ({', '.join(unmatched)})"
    )
    return _problem(where, f"{key}.identity_file", message)


def preflight(ctx: Context, api: docker.APIClient | None) -> list[ConfigProblem]:
    """Return the problems the config would meet at its first run. Images are checked only
    with an engine (`api`)."""
    problems: list[ConfigProblem] = []
    used = {name for policy in ctx.config.policies.values() for name in policy.storage_names}
    for name in sorted(used):
        storage = ctx.config.storages[name]
        key = f"storage.{name}"
        if isinstance(storage, LocalStorageConfig):
            why = local_storage_problem(storage.path)
            if why is not None:
                problems.append(_problem(storage.source, f"{key}.path", why))
            continue
        try:
            next(iter(ctx.store(name).list(f"{ctx.host}/")), None)
        except OSError as error:
            problems.append(_problem(storage.source, key, error.strerror or str(error)))
    for policy in ctx.config.policies.values():
        problem = identity_problem(ctx, policy)
        if problem is not None:
            problems.append(problem)
    if api is None:
        return problems
    for policy in ctx.config.policies.values():
        try:
            api.inspect_image(policy.helper_image)
        except docker.errors.ImageNotFound:
            message = (
                f"the helper image {policy.helper_image!r} is not on this host (no registry "
                "is asked: build or load it first, e.g. scripts/build-helper-image.sh)"
            )
            problems.append(
                _problem(policy.source, f"policies.{policy.name}.helper_image", message)
            )
        except (docker.errors.DockerException, requests.RequestException):
            continue
    return problems
