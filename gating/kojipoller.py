"""The koji event scheduler: starts ``trigger: koji_build`` and ``trigger: koji_tag``
pipelines (and the task repositories' tasks) when koji builds complete or are tagged.

Events come from polling the hub (``source: poll``: one multicall per cycle, see
:mod:`gating.kojievents`) or from the fedora-messaging bus (``source: amqp``, see
:mod:`gating.kojiamqp`). The poll cursor and the keys of the events already fired are kept
in the master's database (Buildbot's object state), so a restarted master neither misses
nor repeats an event. An event's buildsets carry its key (``external_idstring``, see
:func:`buildset_idstring`) and the event being fired is saved before them
(``koji_firing``), so a master killed between starting an event's pipelines and saving
the event as fired starts, on restart, only those of its pipelines that have no buildset
yet (:mod:`gating.firing`). As a Buildbot scheduler it is active on one master at a time.

A hub that does not answer costs a poll cycle, not the poller: a cycle's retries stop
within about one poll interval (:func:`gating.outage.poll_cycle_policy`), the cursor stays
where it was, and the next cycle asks again from it, so the events of the outage are
delivered, once, when the hub answers again. Meanwhile :meth:`KojiEventScheduler.status`
(and the gate page) says since when the hub is unreachable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from buildbot.process.properties import Properties, Secret
from buildbot.schedulers.base import ReconfigurableBaseScheduler
from twisted.internet import defer, task, threads
from twisted.python import log

from gating import firing
from gating.firing import IDSTRING_MAX  # noqa: F401 (tests import it here)
from gating.kojiclient import KojiSession, KojiSettings, KojiUnavailable
from gating.kojievents import (
    KOJI_BUILD,
    Cursor,
    KojiBuildEvent,
    WatchSet,
    advance,
    build_target,
    detail_calls,
    poll_calls,
    with_details,
)
from gating.outage import HubOutage, poll_cycle_policy
from gating.siteevents import TaskRepoConfig
from gating.taskrunner import TASK_WORKDIR, TaskRepoRunner

KOJI_SCHEDULER = "koji-events"
CURSOR_KEY = "koji_cursor"
FIRED_KEY = "koji_fired"
# The key of the event whose pipelines are being started (None between events).
FIRING_KEY = "koji_firing"
# How many fired event keys are remembered (to drop duplicates from the message bus).
FIRED_MEMORY = 2000


@dataclass(frozen=True)
class KojiEventSettings:
    """What the scheduler watches and where events come from (hashable: Buildbot compares
    it on reconfig)."""

    watches: WatchSet
    source: str = "poll"
    poll_interval: float = 60.0
    server: str | None = None
    topurl: str | None = None
    weburl: str | None = None
    profile: str | None = None
    amqp_url: str | None = None
    amqp_password_secret: str | None = None
    amqp_queue: str = "gating-koji"
    amqp_topics: tuple[str, ...] = ()
    # With task repositories, every event also runs the tasks of its package's repository
    # (gating.taskrunner); ``watches.all_builds`` makes every completed build an event.
    task_repos: TaskRepoConfig | None = None

    def session(self) -> KojiSession:
        """A read-only (anonymous) session: polling needs no login. Its retries last about
        one poll cycle: the next cycle tries again."""
        retry = poll_cycle_policy(self.poll_interval)
        if self.profile:
            return KojiSession(KojiSettings.from_profile(self.profile, retry=retry))
        assert self.server and self.topurl
        return KojiSession(
            KojiSettings(server=self.server, topurl=self.topurl, weburl=self.weburl, retry=retry)
        )


class KojiEventScheduler(ReconfigurableBaseScheduler):
    compare_attrs: ClassVar[tuple[str, ...]] = (
        *ReconfigurableBaseScheduler.compare_attrs,
        "settings",
    )

    settings: KojiEventSettings
    # Called with each event after its pipelines were started (the task repositories).
    on_event: Callable[[KojiBuildEvent], Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: task.LoopingCall | None = None
        self._loop_done: defer.Deferred | None = None
        self._consumer: Any = None
        self._session: KojiSession | None = None
        self._cursor = Cursor()
        self._fired: list[str] = []
        self._interrupted: str | None = None  # the event a killed master was firing
        self._lock = defer.DeferredLock()
        self._runner: TaskRepoRunner | None = None
        self.polls = 0
        self.failed_polls = 0  # consecutive failed poll cycles

    def checkConfig(  # type: ignore[override]
        self, builderNames: list[str], settings: KojiEventSettings, **kwargs: Any
    ) -> None:
        super().checkConfig(builderNames=builderNames, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(  # type: ignore[override]
        self, builderNames: list[str], settings: KojiEventSettings, **kwargs: Any
    ) -> Any:
        old = getattr(self, "settings", None)
        self.settings = settings
        if old is None or old.task_repos != settings.task_repos:
            self._runner = None
        self.on_event = self._run_tasks if settings.task_repos is not None else None
        if old is not None and old != settings and self._session is not None:
            session, self._session = self._session, None
            yield threads.deferToThread(session.close)
        yield super().reconfigService(builderNames=builderNames, **kwargs)

    # -- activity ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def activate(self) -> Any:
        yield super().activate()
        if not self.enabled:
            return
        self._cursor = Cursor.from_json((yield self.getState(CURSOR_KEY, None)))
        self._fired = list((yield self.getState(FIRED_KEY, [])))
        self._interrupted = yield self.getState(FIRING_KEY, None)
        if self.settings.source == "amqp":
            from gating.kojiamqp import KojiMessageConsumer

            url = self.settings.amqp_url or ""
            if self.settings.amqp_password_secret:
                password = yield self.renderSecrets(Secret(self.settings.amqp_password_secret))
                url = _with_password(url, password)
            kwargs: dict[str, Any] = {}
            if self.settings.amqp_topics:
                kwargs["topics"] = self.settings.amqp_topics
            self._consumer = KojiMessageConsumer(
                url, self.settings.amqp_queue, on_event=self.fire, name=self.name, **kwargs
            )
            yield self._consumer.start()
            return
        self._loop = task.LoopingCall(self.poll)
        self._loop_done = self._loop.start(self.settings.poll_interval, now=True)

    @defer.inlineCallbacks
    def deactivate(self) -> Any:
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            yield consumer.stop()
        yield self._lock.run(lambda: None)
        if self._session is not None:
            session, self._session = self._session, None
            yield threads.deferToThread(session.close)
        yield super().deactivate()

    # -- polling ----------------------------------------------------------------------

    def poll(self) -> defer.Deferred:
        """One poll cycle (never fails: a hub error is logged and the next cycle retries
        from the same cursor)."""
        return self._lock.run(self._poll)

    @defer.inlineCallbacks
    def _poll(self) -> Any:
        try:
            cursor, events = yield threads.deferToThread(self._poll_blocking, self._cursor)
        except KojiUnavailable as exc:
            self.failed_polls += 1
            if self.failed_polls == 1 or self.failed_polls % 10 == 0:
                log.msg(
                    f"{self.name}: koji hub {exc.hub} unreachable ({self.failed_polls} poll "
                    f"cycle(s)); polling again in {self.settings.poll_interval:g} s from the "
                    "same event: none is lost"
                )
            return
        except Exception as exc:
            self.failed_polls += 1
            log.msg(f"{self.name}: koji poll failed, retrying next cycle: {exc}")
            return
        if self.failed_polls:
            log.msg(f"{self.name}: koji poll works again after {self.failed_polls} failed cycle(s)")
            self.failed_polls = 0
        self.polls += 1
        for event in events:
            yield self._fire(event)
        self._cursor = cursor
        yield self._save()

    def _poll_blocking(self, cursor: Cursor) -> tuple[Cursor, list[KojiBuildEvent]]:
        if self._session is None:
            self._session = self.settings.session()
        watches = self.settings.watches
        results = self._session.multicall(poll_calls(cursor, watches, time.time()))
        cursor, events = advance(cursor, watches, results)
        calls = detail_calls(events, watches)
        if calls:
            events = with_details(events, watches, self._session.multicall(calls))
        return cursor, events

    # -- firing -----------------------------------------------------------------------

    def fire(self, event: KojiBuildEvent) -> defer.Deferred:
        """Start what an event triggers, once (events from the message bus land here)."""

        @defer.inlineCallbacks
        def run() -> Any:
            complete = event
            if self._needs_target(event):
                try:
                    complete = yield threads.deferToThread(self._with_target, event)
                except Exception as exc:
                    log.msg(f"{self.name}: {event.describe()}: cannot read its target: {exc}")
            fired = yield self._fire(complete)
            yield self._save()
            return fired

        return self._lock.run(run)

    def _needs_target(self, event: KojiBuildEvent) -> bool:
        """A build from the message bus carries no target; a ``target`` filter needs it."""
        s = self.settings
        return (
            event.kind == KOJI_BUILD
            and event.target is None
            and event.task_id is not None
            and s.watches.needs_targets
            and bool(s.profile or (s.server and s.topurl))
        )

    def _with_target(self, event: KojiBuildEvent) -> KojiBuildEvent:
        if self._session is None:
            self._session = self.settings.session()
        task = self._session.call("getTaskInfo", event.task_id, request=True)
        return dataclasses.replace(event, target=build_target(task))

    @defer.inlineCallbacks
    def _fire(self, event: KojiBuildEvent) -> Any:
        if event.key in self._fired:
            log.msg(f"{self.name}: {event.describe()}: already handled ({event.key})")
            return []
        # A master killed while firing this event may have started some of its pipelines.
        done = set()
        if self._interrupted == event.key:
            done = yield self._started_before(event)
        yield self.setState(FIRING_KEY, event.key)
        started = []
        for pipeline in self.settings.watches.pipelines_for(event):
            ident = buildset_idstring(event.key, pipeline)
            if ident in done:
                log.msg(f"{self.name}: {event.describe()}: {pipeline} was started before a restart")
                continue
            props = Properties()
            for key, value in event.properties().items():
                props.setProperty(key, value, "koji")
            bsid, _ = yield self.addBuildsetForSourceStampsWithDefaults(
                reason=f"{event.describe()} ({event.kind})",
                sourcestamps=[],
                properties=props,
                builderNames=[pipeline],
                external_idstring=ident,
            )
            started.append((pipeline, bsid))
        if started:
            log.msg(
                f"{self.name}: {event.describe()}: started "
                + ", ".join(f"{p} (buildset {b})" for p, b in started)
            )
        # integration tests: a master killed once the buildsets exist, before "fired"
        yield firing.pause_for_test("koji-fire-after-buildsets", self.name)
        if self.on_event is not None:
            try:
                yield self.on_event(event)
            except Exception as exc:
                log.err(exc, f"{self.name}: {event.describe()}: task repositories")
        self._fired.append(event.key)
        del self._fired[:-FIRED_MEMORY]
        # Fired: saved before the next event (the cursor is saved at the cycle's end).
        yield self.setState(FIRED_KEY, list(self._fired))
        yield self.setState(FIRING_KEY, None)
        if self._interrupted == event.key:
            self._interrupted = None
        return started

    @defer.inlineCallbacks
    def _started_before(self, event: KojiBuildEvent) -> Any:
        """The idstrings of the buildsets this scheduler added for ``event`` (one SQL query on
        ``external_idstring``, only for the event a killed master was firing)."""
        pipelines = self.settings.watches.pipelines_for(event)
        idents = [buildset_idstring(event.key, p) for p in pipelines]
        return set((yield firing.existing_buildsets(self.master, idents)))

    def _run_tasks(self, event: KojiBuildEvent) -> defer.Deferred:
        """``on_event`` with task repositories: their tasks' builds for the event."""
        if self._runner is None:
            assert self.settings.task_repos is not None
            workdir = Path(self.master.basedir) / TASK_WORKDIR
            self._runner = TaskRepoRunner(self.settings.task_repos, workdir)
        if self._interrupted != event.key:
            return self._runner.handle(self, event)
        # the event a killed master was firing: only the tasks it had not started yet
        return self._runner.handle(
            self, event, lambda idents: firing.existing_buildsets(self.master, idents)
        )

    @defer.inlineCallbacks
    def _save(self) -> Any:
        yield self.setState(CURSOR_KEY, self._cursor.to_json())
        yield self.setState(FIRED_KEY, list(self._fired))

    def hub_outage(self) -> HubOutage | None:
        """The polled hub's outage in progress, or ``None``."""
        return self._session.outage() if self._session is not None else None

    def status(self) -> dict[str, Any]:
        outage = self.hub_outage()
        return {
            "source": self.settings.source,
            "cursor": self._cursor.to_json(),
            "polls": self.polls,
            "failed_polls": self.failed_polls,
            "fired": len(self._fired),
            "hub_outage": outage.to_json(time.time()) if outage is not None else None,
        }


def buildset_idstring(event_key: str, pipeline: str) -> str:
    """The ``external_idstring`` of the buildset an event starts for a pipeline: the event's
    key and the pipeline, or their digest when that does not fit Buildbot's column."""
    return firing.buildset_idstring("koji-event", event_key, pipeline)


def _with_password(url: str, password: str) -> str:
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    user = parts.username or "guest"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
