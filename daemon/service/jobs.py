"""The job table: one APScheduler job per policy backup (`backup:<policy>`) and per policy
drill (`drill:<policy>`), kept in memory: the YAML is the source of truth.

A new table is built whole before anything in the scheduler changes: every new or changed
job gets its trigger and first run first. Only then are the jobs swapped; should the swap
itself fail, the jobs it touched are put back as they were. Either way the table is the old
one or the new one, never a mix.

Missed runs: a job whose next run after its last run (or, if it never ran, after it was
first scheduled) is already past runs once right away, at start and when a reload adds or
changes it: missed runs are coalesced, never replayed, and announced (`RunMissed`), as is a
run skipped because the previous one still ran.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger

from daemon import events
from daemon.config.model import Config, Schedule
from daemon.config.triggers import first_run, next_run, trigger_for
from daemon.events import RunMissed
from daemon.state.history import History

log = structlog.get_logger()


@dataclass(frozen=True)
class JobSpec:
    """A scheduler job as the config asks for it."""

    kind: str  # backup or drill
    policy: str
    schedule: Schedule
    timezone: str
    splay: timedelta  # this host's offset on a cron schedule (`Context.splay`)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.policy}"


def job_specs(config: Config, splay: timedelta) -> dict[str, JobSpec]:
    """Given a config and this host's splay offset, return the jobs it asks for by id: one
    per policy with a backup schedule, one per policy with a drill schedule."""
    specs = []
    for policy in config.policies.values():
        if policy.schedule is not None:
            specs.append(JobSpec("backup", policy.name, policy.schedule, policy.timezone, splay))
        if policy.drill is not None and policy.drill.schedule is not None:
            drill = policy.drill.schedule
            specs.append(JobSpec("drill", policy.name, drill, policy.timezone, splay))
    return {spec.id: spec for spec in specs}


@dataclass(frozen=True)
class Planned:
    """A new or changed job, ready to be put in the scheduler."""

    spec: JobSpec
    trigger: BaseTrigger
    anchor: datetime  # the time its schedule counts from
    first: datetime | None  # its first run
    missed: datetime | None  # the run it catches up on, if one fell due since the anchor


@dataclass(frozen=True)
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)


class JobTable:
    """The scheduler's jobs as the running config asks for them; `run(kind, policy)` is
    what each job calls."""

    def __init__(
        self, scheduler: BaseScheduler, history: History, run: Callable[[str, str], None]
    ) -> None:
        self._scheduler = scheduler
        self._history = history
        self._run = run
        self.specs: dict[str, JobSpec] = {}
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)

    def replace(self, config: Config, splay: timedelta) -> Changes:
        """Make the scheduler's jobs those `config` asks for, with this host's `splay`
        offset; jobs whose schedule did not change keep their next run. Raise whatever
        stopped it, the old table in place."""
        wanted = job_specs(config, splay)
        now = datetime.now(UTC)
        anchors = self._history.schedule_anchors()  # read only: nothing changes before the swap
        plans = [
            self._plan(spec, anchors.get(job_id, now), now)
            for job_id, spec in sorted(wanted.items())
            if self.specs.get(job_id) != spec
        ]
        gone = sorted(set(self.specs) - set(wanted))
        self._swap(plans, gone)
        for plan in plans:
            self._remember_first_scheduled(plan.spec.id, now)
        changes = Changes(
            added=[plan.spec.id for plan in plans if plan.spec.id not in self.specs],
            removed=gone,
            rescheduled=[plan.spec.id for plan in plans if plan.spec.id in self.specs],
        )
        self.specs = wanted
        for job_id in gone:
            log.info("job removed", job=job_id)
        for plan in plans:
            self._announce(plan)
        return changes

    def _plan(self, spec: JobSpec, anchor: datetime, now: datetime) -> Planned:
        schedule, zone, splay = spec.schedule, spec.timezone, spec.splay
        first = first_run(schedule, zone, anchor, now, splay=splay)
        missed = next_run(schedule, zone, anchor, splay=splay) if first == now else None
        trigger = trigger_for(schedule, zone, splay=splay, start=anchor)
        return Planned(spec, trigger, anchor, first, missed)

    def _remember_first_scheduled(self, job_id: str, now: datetime) -> None:
        """Record when a job new to the history was first scheduled (its schedule counts
        from then, across restarts); if that fails, the next start records it."""
        try:
            self._history.schedule_anchor(job_id, now)
        except sqlite3.Error as error:
            log.warning("cannot record the job in the run history", job=job_id, error=str(error))

    def _swap(self, plans: list[Planned], gone: list[str]) -> None:
        """Put the planned jobs in the scheduler and remove the gone ones; if that fails
        half way, put back every job it touched."""
        touched = [plan.spec.id for plan in plans] + gone
        before = {job_id: self._scheduler.get_job(job_id) for job_id in touched}
        try:
            for plan in plans:
                self._scheduler.add_job(
                    self._run,
                    plan.trigger,
                    args=(plan.spec.kind, plan.spec.policy),
                    id=plan.spec.id,
                    name=plan.spec.id,
                    next_run_time=plan.first,
                    replace_existing=True,
                )
            for job_id in gone:
                self._scheduler.remove_job(job_id)
        except BaseException:
            for job_id, job in before.items():
                if job is None:
                    if self._scheduler.get_job(job_id) is not None:
                        self._scheduler.remove_job(job_id)
                    continue
                self._scheduler.add_job(
                    job.func,
                    job.trigger,
                    args=job.args,
                    id=job.id,
                    name=job.name,
                    next_run_time=job.next_run_time,
                    replace_existing=True,
                )
            raise

    def _announce(self, plan: Planned) -> None:
        log.info(
            "job scheduled",
            job=plan.spec.id,
            schedule=plan.spec.schedule.text,
            timezone=plan.spec.timezone,
            counts_from=plan.anchor.isoformat(),
            next_run=plan.first.isoformat() if plan.first else None,
            catching_up=plan.missed is not None,
        )
        if plan.missed is not None:
            events.emit(
                RunMissed(
                    plan.spec.kind,
                    plan.spec.policy,
                    plan.missed,
                    f"it fell due after {plan.anchor:%Y-%m-%d %H:%M:%S %Z} (the time its "
                    "schedule counts from) and never started: it runs now",
                )
            )

    def _skipped(self, event: JobSubmissionEvent) -> None:
        spec = self.specs.get(event.job_id)
        if spec is not None:
            for due in event.scheduled_run_times:
                # in volkeep's words, instead of APScheduler's "maximum number of running
                # instances reached" (that line is not forwarded)
                log.warning(
                    f"scheduled {spec.kind} of {spec.policy} not started: its previous run "
                    "still runs (it waits for the engine or a busy volume); the next one is "
                    "at its usual time",
                    due=due.isoformat(),
                )
                events.emit(RunMissed(spec.kind, spec.policy, due, "the previous run still ran"))

    def next_runs(self) -> dict[str, datetime | None]:
        """Return the next run of each job of the table, by id."""
        return {
            job.id: job.next_run_time for job in self._scheduler.get_jobs() if job.id in self.specs
        }
