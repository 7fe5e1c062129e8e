"""`volkeep validate`: the loaded config, summarised with what it covers right now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from daemon.actions.backup import LIVE_DATABASE_ADVICE, unguarded_databases
from daemon.actions.context import Context
from daemon.actions.preflight import preflight
from daemon.config.model import Policy, Schedule, can_deduplicate
from daemon.config.triggers import next_run
from daemon.engine.containers import containers_to_stop, containers_using
from daemon.engine.swarm import plan_scaling
from daemon.engine.volumes import select_volumes
from daemon.errors import ConfigError, DockerUnavailable
from daemon.terminal.render import plural


def _next(schedule: Schedule | None, policy: Policy, now: datetime, splay: timedelta) -> str:
    if schedule is None:
        return "not scheduled"
    moment = next_run(schedule, policy.timezone, now, splay=splay)
    when = moment.strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "never"
    shifted = f" + splay {splay}" if splay and schedule.cron is not None else ""
    return f"{schedule.text!r}{shifted}, next {when}"


def validate(ctx: Context) -> str:
    """Return the summary of a valid config: policies, volumes matched now (and the running
    containers their backups would stop), next runs.

    Raise ConfigError with what the first run would meet (see `preflight`)."""
    config = ctx.config
    now = datetime.now(UTC)
    lines = [
        f"config OK: {plural(len(config.policies), 'policy')}, "
        f"{plural(len(config.storages), 'storage')} "
        f"({', '.join(str(path) for path in config.files)})"
    ]
    try:
        api = ctx.docker()
    except DockerUnavailable as error:
        api = None
        lines.append(f"cannot check the volumes and helper images: {error}")
    problems = preflight(ctx, api)
    if problems:
        raise ConfigError(problems)
    for policy in config.policies.values():
        storages = ", ".join(policy.storage_names)
        lines.append(f"policy {policy.name} -> storage {storages} (host {ctx.host})")
        if policy.format is None and not can_deduplicate(policy.encryption):
            lines.append(
                f"  note: policy {policy.name} backs up as format: tar (one file per backup), "
                "not the default dedup: it encrypts without encryption.age.identity_file"
            )
        if api is not None:
            names = [volume.name for volume in select_volumes(api, policy.selector)]
            missing = [name for name in policy.selector.names if name not in names]
            lines.append(f"  volumes now: {', '.join(names) or '(none)'}")
            if missing:
                lines.append(f"  missing volumes: {', '.join(missing)}")
            for name in names:
                users = containers_using(api, name)
                stopping, scalings = plan_scaling(
                    api, containers_to_stop(users, policy.stop_containers)
                )
                if stopping:
                    listed = ", ".join(container.name for container in stopping)
                    lines.append(f"  stops during the backup of {name}: {listed}")
                lines += [
                    f"  warning: the backup of {name} is refused: {scaling.refusal}"
                    if scaling.refusal
                    else f"  scales Swarm service {scaling.name} "
                    f"({plural(scaling.replicas, 'replica')}) to 0 during the backup of {name}"
                    for scaling in scalings
                ]
                lines += [
                    f"  warning: {name} is used by the running database container "
                    f"{container.name} ({container.image}) and would be backed up live: "
                    f"{LIVE_DATABASE_ADVICE}"
                    for container in unguarded_databases(policy, name, users)
                ]
        lines.append(f"  backup: {_next(policy.schedule, policy, now, ctx.splay)}")
        if policy.drill is not None:
            lines.append(f"  drill: {_next(policy.drill.schedule, policy, now, ctx.splay)}")
    return "\n".join(lines)
