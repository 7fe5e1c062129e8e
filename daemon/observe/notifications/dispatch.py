"""What the daemon tells a policy's `notify` settings, and when; read from the event stream.

- The ping URL hears each scheduled backup run: /start when it starts, the bare URL when
  every volume was backed up, /fail with the error lines when one failed. A run cut short
  by the daemon's stop pings nothing: it runs again at the next start.
- The Apprise URLs hear the events the policy lists (all by default): `failure` (a
  scheduled backup or drill run that failed), `drill_failure` (a drill found an archive
  wanting) (both told when the job starts failing, then again every `remind_every` at most
  while it keeps failing, and once after a restart), `recovered` (the first run without
  failure after a failed one, also across a restart: the run history says how the last
  one ended), `missed` (a scheduled run that
  did not start on time), `shrink` (a backup found the volume had lost most of its
  content: retention keeps the archive before the loss until the shrink is accepted).

Notices are delivered one after another by a worker thread, each with the service's own
timeout; the event stream never waits for one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from daemon.config.model import Config, NotifySettings
from daemon.events import DrillVerdict, Event, RunFinished, RunMissed, RunStarted, VolumeShrank
from daemon.observe.notifications import apprise, healthchecks
from daemon.observe.notifications.base import Notice, NoticeKind, Service, Undelivered, redacted
from daemon.state.history import History
from daemon.terminal.render import plural

log = structlog.get_logger()

CLOSE_SECONDS = 15.0  # at the daemon's stop, for the last notices to go out
Delivery = tuple[str, str, Service, Notice]  # (the setting it comes from, URL, service, notice)


class Notifications:
    """A subscriber of the event stream; `start` it, and `close` it at the stop."""

    def __init__(
        self,
        config: Callable[[], Config],
        history: History,
        host: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._history = history
        self._host = host
        self._clock = clock
        self._failing: set[tuple[str, str]] = set()  # (kind, policy) whose last run failed
        self._told: dict[tuple[str, str], datetime] = {}  # when its failure was last told
        self._verdicts: dict[str, dict[str, str]] = {}  # failed drills of a running drill run
        self._missed: set[tuple[str, str]] = set()  # told of a missed run since its last run
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._deliver, name="notifications", daemon=True)

    def start(self) -> None:
        """Learn from the run history which policies are failing, then start delivering."""
        self._failing = {
            (kind, policy) for (kind, policy, _), outcomes in self._history.outcomes().items()
            if outcomes.failing
        }  # fmt: skip
        self._worker.start()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Deliver what is queued, for at most `timeout` seconds; drop the rest."""
        self._queue.put(None)
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("notifications not sent before the stop", waiting=self._queue.qsize())

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) and event.kind == "backup":
            self._ping(event.policy, Notice("start", event.policy, "", ""))
        elif isinstance(event, DrillVerdict) and not event.record.passed:
            record = event.record
            with self._lock:
                found = self._verdicts.setdefault(record.policy, {})
                found[record.volume] = f"archive {record.archive}: {record.reason}"
        elif isinstance(event, RunFinished):
            self._finished(event)
        elif isinstance(event, RunMissed) and self._first_miss(event.kind, event.policy):
            title = f"volkeep on {self._host}: the scheduled {event.kind} of {event.policy} "
            title += "did not start on time"
            body = f"It was due at {event.due:%Y-%m-%d %H:%M:%S %Z}: {event.why}."
            self._tell(Notice("missed", event.policy, title, body))
        elif isinstance(event, VolumeShrank):
            self._tell(self._shrink_notice(event))

    def _shrink_notice(self, event: VolumeShrank) -> Notice:
        found = event.shrink
        title = f"volkeep on {self._host}: volume {event.volume} of {event.policy} lost most "
        title += "of its content"
        body = (
            f"The backup {found.describe()}. Retention keeps {found.before}, the backup "
            "before the loss, until the longest keep window has passed or the shrink is "
            f"accepted: volkeep accept-shrink {event.policy} --volume {event.volume}"
        )
        return Notice("shrink", event.policy, title, body)

    def _first_miss(self, kind: str, policy: str) -> bool:
        """Whether this is the first run of the job missed since it last ran: one notice
        for a backup that outlasts many ticks of its schedule."""
        with self._lock:
            first = (kind, policy) not in self._missed
            self._missed.add((kind, policy))
            return first

    def _finished(self, run: RunFinished) -> None:
        with self._lock:
            self._missed.discard((run.kind, run.policy))
            verdicts = self._verdicts.pop(run.policy, {}) if run.kind == "drill" else {}
            if run.interrupted:
                return
            key = (run.kind, run.policy)
            was_failing = key in self._failing
            if run.failures:
                self._failing.add(key)
            else:
                self._failing.discard(key)
                self._told.pop(key, None)
            tell_failure = bool(run.failures) and self._failure_due(key, was_failing)
        where = f"volkeep on {self._host}"
        others = {volume: error for volume, error in run.failures.items() if volume not in verdicts}
        lines = "\n".join(
            f"{'every volume' if volume == '*' else volume}: {error}"
            for volume, error in sorted(others.items())
        )
        if run.kind == "backup":
            done = f"{plural(len(run.volumes), 'volume')} backed up"
            kind: NoticeKind = "failure" if run.failures else "success"
            self._ping(run.policy, Notice(kind, run.policy, "", lines or done))
        if verdicts and tell_failure:
            found = "still finds" if was_failing else "found"
            title = f"{where}: a drill of {run.policy} {found} an archive that does not restore"
            body = "\n".join(f"{volume}: {why}" for volume, why in sorted(verdicts.items()))
            self._tell(Notice("drill_failure", run.policy, title, body))
        if others and tell_failure:
            failed = "still fails" if was_failing else "failed"
            title = f"{where}: the scheduled {run.kind} of {run.policy} {failed}"
            self._tell(Notice("failure", run.policy, title, lines))
        if was_failing and not run.failures:
            title = f"{where}: the scheduled {run.kind} of {run.policy} succeeds again"
            body = f"{plural(len(run.volumes), 'volume')}, no failure, after a failed run."
            self._tell(Notice("recovered", run.policy, title, body))

    def _failure_due(self, key: tuple[str, str], was_failing: bool) -> bool:
        """Given a job whose run failed (the caller holds the lock), say whether to tell of
        it: when it starts failing, or when the policy's `remind_every` has passed since it
        was last told of (never told since this daemon started: now). Record the telling."""
        now = self._clock()
        last = self._told.get(key)
        settings = self._settings(key[1])
        remind = settings.remind_every if settings is not None else NotifySettings.remind_every
        if was_failing and last is not None and now - last < remind:
            return False
        self._told[key] = now
        return True

    def _settings(self, policy: str) -> NotifySettings | None:
        found = self._config().policies.get(policy)
        return found.notify if found is not None else None

    def _ping(self, policy: str, notice: Notice) -> None:
        settings = self._settings(policy)
        if settings is not None and settings.ping is not None:
            self._queue.put(("notify.ping", settings.ping, healthchecks.send, notice))

    def _tell(self, notice: Notice) -> None:
        settings = self._settings(notice.policy)
        if settings is None or notice.kind not in settings.events:
            return
        for index, url in enumerate(settings.urls):
            self._queue.put((f"notify.urls[{index}]", url, apprise.send, notice))

    def _deliver(self) -> None:
        while (delivery := self._queue.get()) is not None:
            setting, url, send, notice = delivery
            about = {
                "policy": notice.policy,
                "notice": notice.kind,
                "setting": setting,
                "service": redacted(url),
            }
            try:
                send(url, notice)
            except Undelivered as error:
                log.warning("notification not delivered", error=str(error), **about)
            except Exception as error:  # a service's bug never stops the notifications
                log.warning("notification not delivered", error=type(error).__name__, **about)
            else:
                log.info("notification sent", **about)
