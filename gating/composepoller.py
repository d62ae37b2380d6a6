"""The compose scheduler (seed 002): watches compose locations, starts ``trigger: compose``
pipelines once per finished compose, and writes the compose check report when they are done.

Each location (Rawhide, Branched, ...) is polled by its own loop, so a slow or unreachable
location never holds up another. A compose is done when its ``STATUS`` says FINISHED or
FINISHED_INCOMPLETE; DOOMED is reported as failed at once (there is nothing to test); an
old-style nightly without STATUS is done when koji shows tasks for it and none is open
(:mod:`gating.compose`). The composes already started and the reports still waiting for
their pipelines are kept in the master's database (Buildbot object state), so a restart
neither repeats nor loses one. A compose is saved as started, its entry marked ``firing``,
before its first buildset is added, and each buildset carries the location, the compose and
the pipeline (``external_idstring``, :func:`compose_idstring`): a master killed while it
starts a compose's pipelines does not start them again on restart; the next master adopts
the buildsets that exist, starts only the pipelines without one (:mod:`gating.firing`) and
the report waits for all of them.

When every pipeline run of a compose has finished, the report (added, removed and missing
expected images, failed jobs with links) is written as JSON under ``BASEDIR/compose-reports``,
shown by the web UI (``/plugins/gating/compose/<id>``) and published on Buildbot's message
queue as ``("gating", "compose-reports", <location name>, "new")``, where the mail reporter
(:class:`ComposeReportGenerator`) picks it up.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from buildbot import interfaces
from buildbot.data import resultspec
from buildbot.process.properties import Properties
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS, WARNINGS, Results
from buildbot.schedulers.base import ReconfigurableBaseScheduler
from twisted.internet import defer, task, threads
from twisted.python import log
from zope.interface import implementer

from gating import compose as composemod
from gating import firing
from gating.compose import Compose, Expected, FailedJob, Report
from gating.kojiclient import KojiCall, KojiSession, KojiSettings

COMPOSE_SCHEDULER = "composes"
REPORT_TOPIC = ("gating", "compose-reports")
# Compose ids remembered per location (older ones can never come back).
FIRED_MEMORY = 200
PASSED = (SUCCESS, WARNINGS, SKIPPED)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z")


@dataclass(frozen=True)
class ComposeLocation:
    name: str
    location: str
    poll_interval: float
    pipelines: tuple[str, ...]
    expected: tuple[tuple[str, str, str], ...] = ()
    nightly_tasks: tuple[str, ...] = composemod.NIGHTLY_TASK_METHODS


@dataclass(frozen=True)
class ComposeSettings:
    locations: tuple[ComposeLocation, ...]
    reports_dir: str
    base_url: str = "http://127.0.0.1:8010/"
    server: str | None = None
    topurl: str | None = None
    profile: str | None = None
    timeout: float = 60.0

    def session(self) -> KojiSession | None:
        if self.profile:
            return KojiSession(KojiSettings.from_profile(self.profile))
        if self.server and self.topurl:
            return KojiSession(KojiSettings(server=self.server, topurl=self.topurl))
        return None


def compose_idstring(location: str, compose_id: str, pipeline: str) -> str:
    """The ``external_idstring`` of the buildset a compose starts for a pipeline (a digest
    when it does not fit Buildbot's column)."""
    return firing.buildset_idstring("compose", location, compose_id, pipeline)


def entry_complete(entry: dict[str, Any]) -> bool:
    """Whether every pipeline run of a pending compose has finished: never while its
    pipelines are being started (``firing``: some may have no buildset yet)."""
    return not entry.get("firing") and len(entry["done"]) == len(entry["bsids"])


def report_path(reports_dir: str | Path, compose_id: str) -> Path:
    if not SAFE_ID.match(compose_id):
        raise ValueError(f"not a compose id: {compose_id!r}")
    return Path(reports_dir) / f"{compose_id}.json"


def list_reports(reports_dir: str | Path) -> list[dict[str, Any]]:
    """Every stored report, newest first."""
    folder = Path(reports_dir)
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            log.msg(f"compose reports: cannot read {path}: {exc}")
    return sorted(out, key=lambda r: (r.get("finished_at", 0), r["compose"]["id"]), reverse=True)


class ComposeScheduler(ReconfigurableBaseScheduler):
    compare_attrs: ClassVar[tuple[str, ...]] = (
        *ReconfigurableBaseScheduler.compare_attrs,
        "settings",
    )
    settings: ComposeSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loops: dict[str, task.LoopingCall] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self._consumer: Any = None
        self._session: KojiSession | None = None
        self._waiting: dict[int, tuple[str, str]] = {}  # bsid -> (location, compose id)
        self.polls: dict[str, int] = {}

    def checkConfig(  # type: ignore[override]
        self, builderNames: list[str], settings: ComposeSettings, **kwargs: Any
    ) -> None:
        super().checkConfig(builderNames=builderNames, **kwargs)

    def reconfigService(  # type: ignore[override]
        self, builderNames: list[str], settings: ComposeSettings, **kwargs: Any
    ) -> Any:
        self.settings = settings
        return super().reconfigService(builderNames=builderNames, **kwargs)

    # -- activity ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def activate(self) -> Any:
        yield super().activate()
        if not self.enabled:
            return
        self._consumer = yield self.master.mq.startConsuming(
            self._buildset_complete, ("buildsets", None, "complete")
        )
        for loc in self.settings.locations:
            self._locks[loc.name] = defer.DeferredLock()
            loop = task.LoopingCall(self.poll, loc.name)
            self._loops[loc.name] = loop
            loop.start(loc.poll_interval, now=True)
        # runs that finished while this master was down
        for loc in self.settings.locations:
            yield self._locks[loc.name].run(self._recheck_pending, loc)

    @defer.inlineCallbacks
    def deactivate(self) -> Any:
        for loop in self._loops.values():
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self._consumer is not None:
            self._consumer.stopConsuming()
            self._consumer = None
        for lock in list(self._locks.values()):
            yield lock.run(lambda: None)
        if self._session is not None:
            session, self._session = self._session, None
            yield threads.deferToThread(session.close)
        yield super().deactivate()

    def _location(self, name: str) -> ComposeLocation:
        return next(loc for loc in self.settings.locations if loc.name == name)

    def _state_key(self, name: str) -> str:
        return f"compose:{name}"

    @defer.inlineCallbacks
    def _load(self, name: str) -> Any:
        state = yield self.getState(self._state_key(name), None)
        return state or {"fired": [], "pending": {}, "previous": None}

    def _save(self, name: str, state: dict[str, Any]) -> Any:
        return self.setState(self._state_key(name), state)

    # -- polling ----------------------------------------------------------------------

    def poll(self, name: str) -> defer.Deferred:
        """One poll of one location (never fails: errors are logged, the next poll retries)."""
        return self._locks[name].run(self._poll, self._location(name))

    @defer.inlineCallbacks
    def _poll(self, loc: ComposeLocation) -> Any:
        try:
            current, state_name = yield threads.deferToThread(self._read, loc)
        except Exception as exc:
            log.msg(f"{self.name}: compose location {loc.name} ({loc.location}): {exc}")
            return
        self.polls[loc.name] = self.polls.get(loc.name, 0) + 1
        if state_name == composemod.PENDING:
            return
        state = yield self._load(loc.name)
        if current.id in state["fired"]:
            return
        state["fired"] = (state["fired"] + [current.id])[-FIRED_MEMORY:]
        entry = {"compose": current.to_json(), "state": state_name, "bsids": [], "done": {}}
        if state_name == composemod.DOOMED or not loc.pipelines:
            log.msg(f"{self.name}: compose {current.id} at {loc.name} is {state_name}")
            state["pending"][current.id] = entry
            yield self._save(loc.name, state)
            yield self._report(loc, state, current.id)
            return
        # Saved as fired before its first buildset: a master killed from here on never
        # starts the compose from scratch again (see _finish_firing).
        entry["firing"] = True
        state["pending"][current.id] = entry
        yield self._save(loc.name, state)
        for pipeline in loc.pipelines:
            yield self._start(loc, entry, pipeline)
            # integration tests: a master killed once a buildset exists, before "started"
            yield firing.pause_for_test("compose-fire-after-buildsets", self.name)
        del entry["firing"]
        yield self._save(loc.name, state)
        log.msg(
            f"{self.name}: compose {current.id} at {loc.name} is {state_name}: started "
            + ", ".join(loc.pipelines)
        )

    @defer.inlineCallbacks
    def _start(self, loc: ComposeLocation, entry: dict[str, Any], pipeline: str) -> Any:
        """Add the buildset of ``pipeline`` for the compose of ``entry`` (into its bsids)."""
        current = Compose.from_json(entry["compose"])
        props = Properties()
        values = {
            "compose_id": current.id,
            "compose_name": loc.name,
            "compose_location": current.location,
            "compose_status": current.status or "FINISHED",
            "compose_images": [image.to_json() for image in current.images],
        }
        for key, value in values.items():
            props.setProperty(key, value, "compose")
        bsid, _ = yield self.addBuildsetForSourceStampsWithDefaults(
            reason=f"compose {current.id} ({loc.name}) is {entry['state']}",
            sourcestamps=[],
            properties=props,
            builderNames=[pipeline],
            external_idstring=compose_idstring(loc.name, current.id, pipeline),
        )
        entry["bsids"].append(bsid)
        self._waiting[bsid] = (loc.name, current.id)

    @defer.inlineCallbacks
    def _finish_firing(self, loc: ComposeLocation, compose_id: str, entry: dict[str, Any]) -> Any:
        """A compose whose pipelines a killed master was starting: adopt the buildsets it
        added (the report waits for them) and start only the pipelines without one."""
        idents = {p: compose_idstring(loc.name, compose_id, p) for p in loc.pipelines}
        found = yield firing.existing_buildsets(self.master, idents.values())
        for pipeline, ident in idents.items():
            bsid = found.get(ident)
            if bsid is None:
                yield self._start(loc, entry, pipeline)
                log.msg(f"{self.name}: compose {compose_id}: {pipeline} started after a restart")
            elif bsid not in entry["bsids"]:
                entry["bsids"].append(bsid)
                log.msg(
                    f"{self.name}: compose {compose_id}: {pipeline} was started before a "
                    f"restart (buildset {bsid})"
                )
        del entry["firing"]

    def _read(self, loc: ComposeLocation) -> tuple[Compose, str]:
        current = composemod.read_location(loc.location, timeout=self.settings.timeout)
        tasks = None
        if current.status is None:
            tasks = self._nightly_tasks(loc, current)
        return current, composemod.state(current.status, tasks)

    def _nightly_tasks(self, loc: ComposeLocation, current: Compose) -> list[Any] | None:
        if self._session is None:
            self._session = self.settings.session()
        if self._session is None:
            log.msg(
                f"{self.name}: compose {current.id} at {loc.name} has no STATUS and no koji "
                "hub is configured to see its tasks: it stays pending"
            )
            return None
        queries = composemod.nightly_task_query(current.id, loc.nightly_tasks)
        results = self._session.multicall(
            [KojiCall("listTasks", (), {"opts": opts}) for opts in queries.values()]
        )
        tasks = [t for answer in results for t in answer]
        return composemod.tasks_for_compose(tasks, composemod.compose_label(current.id))

    # -- the pipelines of a compose finish ----------------------------------------------

    def _buildset_complete(self, key: Any, msg: dict[str, Any]) -> Any:
        waiting = self._waiting.pop(msg.get("bsid"), None)  # type: ignore[arg-type]
        if waiting is None or waiting[0] not in self._locks:
            return None
        name, compose_id = waiting
        return self._locks[name].run(
            self._run_finished, self._location(name), compose_id, msg["bsid"]
        )

    @defer.inlineCallbacks
    def _run_finished(self, loc: ComposeLocation, compose_id: str, bsid: int) -> Any:
        state = yield self._load(loc.name)
        entry = state["pending"].get(compose_id)
        if entry is None or str(bsid) in entry["done"]:
            return
        entry["done"][str(bsid)] = yield self._failed_jobs(bsid)
        yield self._save(loc.name, state)
        if entry_complete(entry):
            yield self._report(loc, state, compose_id)

    @defer.inlineCallbacks
    def _recheck_pending(self, loc: ComposeLocation) -> Any:
        state = yield self._load(loc.name)
        for compose_id, entry in list(state["pending"].items()):
            if entry.get("firing"):
                yield self._finish_firing(loc, compose_id, entry)
            for bsid in entry["bsids"]:
                if str(bsid) in entry["done"]:
                    continue
                self._waiting[bsid] = (loc.name, compose_id)
                buildset = yield self.master.data.get(("buildsets", bsid))
                if buildset and buildset["complete"]:
                    entry["done"][str(bsid)] = yield self._failed_jobs(bsid)
            yield self._save(loc.name, state)
            if entry_complete(entry):
                yield self._report(loc, state, compose_id)

    @defer.inlineCallbacks
    def _builds_of_buildset(self, bsid: int) -> Any:
        requests = yield self.master.data.get(
            ("buildrequests",), filters=[resultspec.Filter("buildsetid", "eq", [bsid])]
        )
        builds = []
        for request in requests or []:
            found = yield self.master.data.get(
                ("buildrequests", request["buildrequestid"], "builds")
            )
            builds.extend(found or [])
        return builds

    @defer.inlineCallbacks
    def _failed_jobs(self, bsid: int) -> Any:
        """The failed builds of a compose's pipeline run: its job builds (children of the
        pipeline build), or the pipeline build itself when it failed on its own."""
        failed = []
        for run in (yield self._builds_of_buildset(bsid)):
            children = yield self.master.data.get(
                ("buildsets",),
                filters=[resultspec.Filter("parent_buildid", "eq", [run["buildid"]])],
            )
            jobs = []
            for child in children or []:
                jobs.extend((yield self._builds_of_buildset(child["bsid"])))
            bad = [b for b in jobs if b["results"] not in PASSED]
            if not bad and run["results"] not in PASSED:
                bad = [run]
            for build in bad:
                builder = yield self.master.data.get(("builders", build["builderid"]))
                failed.append(
                    {
                        "name": builder["name"] if builder else str(build["builderid"]),
                        "url": f"{self.settings.base_url.rstrip('/')}/#/builders/"
                        f"{build['builderid']}/builds/{build['number']}",
                        "result": Results[build["results"]]
                        if build["results"] is not None
                        else "unfinished",
                    }
                )
        return failed

    @defer.inlineCallbacks
    def _report(self, loc: ComposeLocation, state: dict[str, Any], compose_id: str) -> Any:
        entry = state["pending"].pop(compose_id)
        current = Compose.from_json(entry["compose"])
        previous = Compose.from_json(state["previous"]) if state.get("previous") else None
        failed = [FailedJob(**job) for jobs in entry["done"].values() for job in jobs]
        expected = [Expected(*e) for e in loc.expected]
        report = composemod.check(current, previous, expected, failed)
        doomed = entry["state"] == composemod.DOOMED
        data = report.to_json()
        data.update(
            name=loc.name,
            state=entry["state"],
            result="failed" if doomed or failed else "passed",
            text=composemod.render_text(report),
            subject=composemod.subject(report),
            finished_at=self.master.reactor.seconds(),
            buildsets=entry["bsids"],
        )
        yield threads.deferToThread(_write_report, self.settings.reports_dir, compose_id, data)
        if not doomed:
            state["previous"] = entry["compose"]
        yield self._save(loc.name, state)
        log.msg(f"{self.name}: compose check report of {compose_id}: {data['result']}")
        self.master.mq.produce((*REPORT_TOPIC, loc.name, "new"), data)


def _write_report(reports_dir: str, compose_id: str, data: dict[str, Any]) -> None:
    path = report_path(reports_dir, compose_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".json.part")
    part.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(part, path)


@implementer(interfaces.IReportGenerator)
class ComposeReportGenerator:
    """Buildbot report generator: one mail per compose check report."""

    wanted_event_keys: ClassVar[list[tuple[Any, ...]]] = [(*REPORT_TOPIC, None, "new")]
    compare_attrs: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        pass

    def generate_name(self) -> str:
        return "ComposeReport"

    def generate(self, master: Any, reporter: Any, key: Any, data: dict[str, Any]) -> Any:
        report = Report.from_json(data)
        return defer.succeed(
            {
                "body": composemod.render_text(report),
                "subject": composemod.subject(report),
                "type": "plain",
                "results": FAILURE if data.get("result") == "failed" else SUCCESS,
                "builds": [],
                "buildset": None,
                "users": [],
                "patches": [],
                "logs": [],
                "worker": None,
            }
        )
