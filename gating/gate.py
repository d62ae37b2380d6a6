"""The gate scheduler: Buildbot glue around :mod:`gating.queue` and :mod:`gating.forge`.

The scheduler owns the gate's queues. It turns the model's actions into Buildbot work:

* ``Start``: build the item's speculative state with git (branch tip + the changes
  ahead of it in the same repository + the item, merged in order), publish it under
  ``refs/gating/...`` in the project's repository and request the gate pipelines on it;
  the build properties name the change, the changes ahead with their commits and the
  merge commit;
* ``Cancel``: cancel the item's build requests and stop its builds;
* ``Merge``: move the branch to the tested commit, only if the branch still is where the
  item was tested (else: tested again on the new tip);
* ``Report``: record the verdict on the change.

Actions run one at a time, in the order the model gave them, and each is checked against
the model before it runs, so the work of a reset item is never started. The model is
saved in the master's database after every event, so a restart resumes the queues.

Exports are journaled (:mod:`gating.exportjournal`, object state ``export-journal``):
the export job records each step of its section through the gate (before the tag, after
it, after the repository), the gate records the merge (before and after) and any
rollback. On activation, before any event, the open entries are recovered: each export
is finished (its merge completed) or rolled back (its NVR untagged) from what the journal
says and what the tag and the branch show, then the gate's state is made to agree.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from buildbot.changes.filter import ChangeFilter
from buildbot.data import resultspec
from buildbot.process.properties import Secret
from buildbot.process.results import SUCCESS, WARNINGS
from buildbot.schedulers.base import ReconfigurableBaseScheduler
from twisted.internet import defer, reactor, threads
from twisted.python import log

from gating import exportjournal as journalmod
from gating import forge as forgemod
from gating import gaterpc, gateview
from gating import gerrit as gerritmod
from gating.gerrit import GerritForge
from gating.queue import (
    Action,
    Cancel,
    Change,
    Gate,
    GateEncoder,
    Item,
    Merge,
    Queue,
    QueueError,
    Report,
    Start,
    State,
)

SCHEDULER_NAME = "gate"
STATE_KEY = "gate"
# The export journal (gating.exportjournal): its own object state next to the gate's, in
# the master's database (shared by the masters of a cluster), written and awaited at
# every step of an export, independently of the gate's coalesced saves.
JOURNAL_KEY = "export-journal"
HOLDS_FILE = "export-holds.jsonl"  # one line per export section: when it was held
EVENTS_FILE = "gate-events.jsonl"  # one line per gate event: the scheduler's time on it

_DEPENDS_URL_RE = re.compile(r"/c/([A-Za-z0-9._+/-]+?)/\+/(\d+)/?$|/([A-Za-z0-9._+-]+)/\+/(\d+)/?$")
_DEPENDS_KEY_RE = re.compile(r"^([A-Za-z0-9._+-]+)[~/](\d+)$")


def depends_key(value: str) -> str | None:
    """``nova~3``, ``nova/3`` or a Gerrit-style URL ``.../c/nova/+/3`` -> ``nova~3``."""
    value = value.strip()
    found = _DEPENDS_KEY_RE.match(value)
    if found:
        return f"{found.group(1)}~{int(found.group(2))}"
    found = _DEPENDS_URL_RE.search(value)
    if found:
        project = found.group(1) or found.group(3)
        number = found.group(2) or found.group(4)
        return f"{project}~{int(number)}"
    return None


@dataclass(frozen=True)
class GateSettings:
    """What the gate scheduler needs from the configuration (frozen, comparable)."""

    forge_root: str  # bare repositories, <project>.git
    workdir: str  # scratch clones for speculative merges
    project_queues: tuple[tuple[str, str], ...]  # (project, queue)
    project_branches: tuple[tuple[str, tuple[str, ...]], ...]
    project_pipelines: tuple[tuple[str, tuple[str, ...]], ...]  # project -> pipeline builders
    project_seeds: tuple[tuple[str, str], ...] = ()  # project -> repository to import first
    # Gerrit instead of the embedded forge, when gerrit_url is set.
    gerrit_url: str = ""
    gerrit_user: str = ""
    gerrit_password_secret: str = ""
    gerrit_approvals: tuple[tuple[str, int], ...] = ()
    gerrit_git_url: str | None = None
    mirror_root: str = ""
    queue_settings: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()

    def queues(self) -> dict[str, str]:
        return dict(self.project_queues)

    def branches(self, project: str) -> tuple[str, ...]:
        return dict(self.project_branches).get(project, ())

    def pipelines(self, project: str) -> tuple[str, ...]:
        return dict(self.project_pipelines).get(project, ())


def _note_backend_time(gate: Gate, key: str, attempt: int, seconds: float | None) -> None:
    """Keep what an export job reported of its section's time in backend calls."""
    item = gate.find(key)
    if seconds is not None and item is not None and item.attempt == attempt:
        item.info["export_backend"] = {"attempt": attempt, "seconds": round(seconds, 4)}


def _backend_time(item: Item | None, attempt: int) -> float | None:
    noted = (item.info.get("export_backend") or {}) if item is not None else {}
    return noted.get("seconds") if noted.get("attempt") == attempt else None


def run_ref(item: Item) -> str:
    return f"refs/gating/{item.queue}/{item.change.project}/{item.change.number}/{item.attempt}"


class GateScheduler(ReconfigurableBaseScheduler):
    compare_attrs: ClassVar[tuple[str, ...]] = (
        *ReconfigurableBaseScheduler.compare_attrs,
        "settings",
    )

    def checkConfig(  # type: ignore[override]
        self, builderNames: list[str], settings: GateSettings, **kwargs: Any
    ) -> None:
        super().checkConfig(builderNames=builderNames, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(  # type: ignore[override]
        self, builderNames: list[str], settings: GateSettings, **kwargs: Any
    ) -> Any:
        self.settings = settings
        if settings.gerrit_url:
            password = yield self.renderSecrets(Secret(settings.gerrit_password_secret))
            self.forge = GerritForge(
                settings.gerrit_url,
                settings.gerrit_user,
                password,
                Path(settings.mirror_root),
                approval_rule=dict(settings.gerrit_approvals) or None,
                git_url=settings.gerrit_git_url,
            )
        else:
            self.forge = forgemod.LocalForge(Path(settings.forge_root))
        for project, seed in settings.project_seeds:
            yield threads.deferToThread(
                self.forge.ensure_project,
                project,
                list(settings.branches(project)),
                Path(seed) if seed and Path(seed).exists() else None,
            )
        if self.gate is not None:
            self.gate.project_queues = settings.queues()
            for name in set(settings.queues().values()) - set(self.gate.queues):
                self.gate.queues[name] = Queue(name)
            self._apply_queue_settings()
        yield super().reconfigService(builderNames=builderNames, **kwargs)

    gate: Gate | None = None
    # Saving (_save, _write_states): the state this master last wrote, the newest one not
    # yet written and who waits for it, and whether a write is under way.
    _saved: str | None = None
    _unsaved: str | None = None
    _writing: bool = False
    _consumer: Any = None
    _calls: Any = None
    # The export journal (JOURNAL_KEY): read on activation, written at every step.
    _journal: journalmod.Journal | None = None
    _journal_writes: defer.DeferredLock | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = defer.DeferredLock()
        # The serial export section: waiting attempts, and when each holder got in.
        self._export_waiters: dict[tuple[str, int], defer.Deferred] = {}
        self._holds: dict[str, tuple[int, float]] = {}
        self._save_waiters: list[defer.Deferred] = []
        self._encoder = GateEncoder()

    # -- activity ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def activate(self) -> Any:
        yield super().activate()
        if not self.enabled:
            return
        saved = yield self.getState(STATE_KEY, None)
        self._saved = None
        queues = self.settings.queues()
        if saved:
            self.gate = Gate.from_json(json.loads(saved), queues)
            self._apply_queue_settings()
        else:
            self.gate = Gate.for_projects(
                queues, settings={q: dict(v) for q, v in self.settings.queue_settings}
            )
        journal = yield self.getState(JOURNAL_KEY, None)
        self._journal = journalmod.Journal.from_json(journal)
        # Before any event: the exports a master (this one, or the one this master takes
        # the gate over from) left unfinished are finished or rolled back.
        yield self._lock.acquire()
        try:
            actions = yield self._recover_journal()
        finally:
            self._lock.release()
        if saved:
            actions += self.gate.restart_all("the master restarted")
        self._consumer = yield self.master.mq.startConsuming(
            self._buildset_complete, ("buildsets", None, "complete")
        )
        # Calls from the other masters of a cluster (their API, their built-in jobs).
        self._calls = gaterpc.CallServer(
            self.master, lambda method, args: gaterpc.handle(self, method, args)
        )
        yield self._calls.start()
        if self.settings.gerrit_url:
            yield self.startConsumingChanges(
                change_filter=ChangeFilter(category="comment-added", project=list(queues))
            )
        yield self._apply(actions)

    @defer.inlineCallbacks
    def deactivate(self) -> Any:
        if self._consumer is not None:
            self._consumer.stopConsuming()
            self._consumer = None
        if self._calls is not None:
            self._calls.stop()
            self._calls = None
        # The event under way finishes, and a write under way reaches the database.
        yield self._lock.run(
            lambda: self._save() if self._writing and self.gate is not None else None
        ).addErrback(log.err, "gate: saving the gate")
        # Another master may take the gate over now: this one only reads the saved state.
        self.gate = None
        self._saved = None
        yield super().deactivate()

    def _apply_queue_settings(self) -> None:
        """The configuration's window knobs win over saved ones; the current window is kept
        (within the ceiling)."""
        assert self.gate is not None
        for name, knobs in self.settings.queue_settings:
            queue = self.gate.queues.get(name)
            if queue is None:
                continue
            for key, value in knobs:
                if key != "window":
                    setattr(queue, key, value)
            if queue.ceiling is not None:
                queue.window = min(queue.window, queue.ceiling)

    # -- requests from people (API) ------------------------------------------------------

    @defer.inlineCallbacks
    def approve(self, project: str, number: int) -> Any:
        """Put a change in its queue; QueueError / ForgeError with a clear message otherwise."""
        if self.gate is None:
            raise QueueError("the gate is not active on this master")
        if project not in self.settings.queues():
            raise QueueError(f"project {project} is not gated by any queue")
        info = yield threads.deferToThread(self.forge.change, project, number)
        if info.branch not in self.settings.branches(project):
            raise QueueError(
                f"change {info.key} is for branch {info.branch}, which is not gated "
                f"(gated branches of {project}: {', '.join(self.settings.branches(project))})"
            )
        if info.status == "merged":
            raise QueueError(f"change {info.key} is already merged")
        if getattr(info, "gerrit_status", "") == "ABANDONED":
            raise QueueError(f"change {info.key} is abandoned")
        depends = tuple(k for v in info.depends_on if (k := depends_key(v)) is not None)
        change = Change(
            project=project,
            number=number,
            branch=info.branch,
            revision=info.revision,
            depends_on=depends,
            subject=info.subject,
            url=getattr(info, "url", ""),  # Gerrit's page of the change (the UI links it)
        )
        result = yield self._event(lambda gate: gate.enqueue(change))
        return result

    @defer.inlineCallbacks
    def dequeue(self, key: str, reason: str) -> Any:
        if self.gate is None:
            raise QueueError("the gate is not active on this master")
        yield self._event(lambda gate: gate.dequeue(key, reason))

    @defer.inlineCallbacks
    def gotChange(self, change: Any, important: bool) -> Any:
        """A Gerrit review (comment-added): enqueue the change once the approval rule holds.
        The event carries only its author's votes, so all votes are read back over REST."""
        approvals = gerritmod.approvals_from_change_properties(change.properties)
        rule = dict(self.settings.gerrit_approvals) or gerritmod.DEFAULT_RULE
        if not any(a.get("type") in rule for a in approvals):
            return
        number = int(change.properties.getProperty("event.change.number"))
        ok = yield threads.deferToThread(self.forge.is_approved, change.project, number)
        if not ok:
            return
        try:
            yield self.approve(change.project, number)
        except (QueueError, forgemod.ForgeError) as exc:
            log.msg(f"gate: not enqueuing {change.project}~{number}: {exc}")

    def status(self) -> dict[str, Any]:
        if self.gate is None:
            return {"active": False, "queues": [], "waiting": [], "finished": []}
        return {"active": True, **self.gate.status()}

    @defer.inlineCallbacks
    def saved_status(self) -> Any:
        """The queues as the active master last saved them (object state in the shared
        database): what a master where the gate is not active shows."""
        if self.gate is not None:
            return self.status()
        saved = yield self.getState(STATE_KEY, None)
        if not saved:
            return {"active": False, "queues": [], "waiting": [], "finished": []}
        gate = Gate.from_json(json.loads(saved), self.settings.queues())
        return {"active": False, **gate.status()}

    # -- events -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def _event(self, mutate: Any) -> Any:
        """Apply one model event under the lock and serialize the state; once the state
        is in the database, carry out the event's actions. How long each part took goes
        to ``BASEDIR/gate-events.jsonl`` (:meth:`_record_event`)."""
        timing: dict[str, Any] = {"serialize_ms": 0.0}
        yield self._lock.acquire()
        try:
            assert self.gate is not None
            start = time.perf_counter()
            actions = mutate(self.gate)  # QueueError propagates, nothing changed
            self._export_bookkeeping()
            timing["step_ms"] = (time.perf_counter() - start) * 1000
            timing["items"] = sum(len(q.items) for q in self.gate.queues.values())
            timing["waiting"] = len(self.gate.waiting)
            saved = self._save(timing)
        finally:
            self._lock.release()
        timing["event_ms"] = timing["step_ms"] + timing["serialize_ms"]
        start = time.perf_counter()
        yield saved
        timing["write_ms"] = (time.perf_counter() - start) * 1000
        yield self._apply(actions, timing)
        self._record_event(mutate, actions, timing)
        return actions

    def _save(self, timing: dict[str, Any] | None = None) -> defer.Deferred:
        """Serialize the gate now (the caller holds the lock) and have it written to the
        database: the Deferred fires once the database holds this state or a newer one.
        The gate is not held while the database works: states are written one at a time,
        in order; of the states serialized meanwhile only the newest is written next, and
        a state equal to the last one written is not written again (e.g. after a late
        result of a cancelled run, or a Cancel action)."""
        assert self.gate is not None
        start = time.perf_counter()
        self._unsaved = self._encoder.encode(self.gate)  # json.dumps(self.gate.to_json())
        if timing is not None:
            timing["serialize_ms"] += (time.perf_counter() - start) * 1000
            timing["state_bytes"] = len(self._unsaved)
        done: defer.Deferred = defer.Deferred()
        self._save_waiters.append(done)
        if not self._writing:
            self._writing = True
            self._write_states().addErrback(log.err, "gate: saving the gate")
        return done

    @defer.inlineCallbacks
    def _write_states(self) -> Any:
        try:
            while self._save_waiters:
                data, waiters = self._unsaved, self._save_waiters
                self._unsaved, self._save_waiters = None, []
                try:
                    if data is not None and data != self._saved:
                        yield self.setState(STATE_KEY, data)
                        self._saved = data
                except Exception as exc:
                    for waiter in waiters:
                        waiter.errback(exc)
                else:
                    for waiter in waiters:
                        waiter.callback(None)
        finally:
            self._writing = False

    @defer.inlineCallbacks
    def _apply(self, actions: list[Action], timing: dict[str, Any] | None = None) -> Any:
        """Carry out actions in order, one at a time, each after the state its predecessor
        left is saved; outcomes feed back as new events. ``timing`` gets the wall time of
        the actions' work (git, build requests: ``actions_ms``) and of the gate's own
        bookkeeping and serialization after each (``action_saves_ms``)."""
        pending = list(actions)
        work = saves = 0.0
        done = 0
        while pending:
            action = pending.pop(0)
            yield self._lock.acquire()
            saved = None
            try:
                start = time.perf_counter()
                more = yield self._do(action)
                did = time.perf_counter()
                self._export_bookkeeping()
                saved = self._save()
                work += did - start
                saves += time.perf_counter() - did
            except Exception as exc:  # an action must never wedge the gate
                log.err(exc, f"gate: {action} failed")
                more = []
            finally:
                self._lock.release()
            if saved is not None:
                try:
                    yield saved
                except Exception as exc:
                    log.err(exc, f"gate: cannot save the gate after {action}")
                    more = []
            done += 1
            pending.extend(more)
        if timing is not None:
            timing.update(actions=done, actions_ms=work * 1000, action_saves_ms=saves * 1000)

    def _record_event(self, mutate: Any, actions: list[Action], timing: dict[str, Any]) -> None:
        """One line of ``gate-events.jsonl``: the event (named after the scheduler method
        that made it: ``approve``, ``dequeue``, ``buildset_complete``...), the gate's size
        then (``items``, ``waiting``) and the milliseconds it took: ``step_ms`` (the
        model's step and the export bookkeeping) and ``serialize_ms`` (the state's JSON),
        ``event_ms`` (their sum: how long the event held the gate, the scheduler's time on
        it), ``state_bytes`` (the state's size), ``write_ms`` (then until the database held
        the state: the gate is not held meanwhile); then for the actions it gave and their
        follow-ups: ``actions``, ``actions_ms`` and ``action_saves_ms``."""
        name = getattr(mutate, "__qualname__", "") or "event"
        name = name.split(".<locals>")[0].rsplit(".", 1)[-1].lstrip("_")
        record = {
            "time": time.time(),
            "event": name,
            "kinds": sorted({type(a).__name__ for a in actions}),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()},
        }
        try:
            with open(Path(self.master.basedir) / EVENTS_FILE, "a") as out:
                out.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as exc:
            log.msg(f"gate: cannot record an event: {exc}")

    # -- the serial export section -------------------------------------------------------

    def export_acquire(self, key: str, attempt: int) -> defer.Deferred:
        """A Deferred that fires when ``key``'s attempt holds its queue's export section
        (cancel it to stop waiting). Sections are granted in gate order."""
        waiter: defer.Deferred = defer.Deferred(
            lambda d: self._export_waiters.pop((key, attempt), None)
        )
        self._export_waiters[(key, attempt)] = waiter

        def ask(gate: Gate) -> list[Action]:
            if not gate.export_request(key, attempt):
                item = gate.find(key)
                if item is None or item.attempt != attempt or item.state != State.TESTING:
                    self._export_waiters.pop((key, attempt), None)
                    if not waiter.called:
                        waiter.errback(QueueError(f"{key} attempt {attempt} is not current"))
            return []

        self._event(ask).addErrback(lambda f: waiter.called or waiter.errback(f))
        return waiter

    @defer.inlineCallbacks
    def export_check_branch(self, key: str, attempt: int) -> Any:
        """Asked by the export job of ``key``'s attempt once it holds its section, before
        it builds or tags anything: is the branch still where the attempt was tested (the
        first parent of its merge commit)? If someone moved it outside the gate, nothing of
        the attempt may land (its NVR, built from a commit that would never merge, could
        not be built again from the one that will): the item, and every item of its queue
        being tested, are tested again on the new tip (``Gate.branch_moved``). True: go
        on; False: stop (moved, or the attempt is no longer current)."""
        if self.gate is None:
            raise QueueError("the gate is not active on this master")
        item = self._current(key, attempt, State.TESTING)
        if item is None or item.export not in ("holding", "landed"):
            return False
        if item.export == "landed":
            return True  # its RPM is in the tag: the merge (compare-and-swap) decides
        project, branch = item.change.project, item.change.branch
        commit = item.info.get("merge_commit")
        tip = yield threads.deferToThread(self.forge.branch_tip, project, branch)
        if not commit or tip == commit:
            return True
        expected = yield threads.deferToThread(
            forgemod.first_parent, self.forge.repo_path(project), commit
        )
        if tip == expected:
            return True
        reason = (
            f"branch '{branch}' of project {project} moved outside the gate: tested on "
            f"top of {expected}, it is now at {tip}"
        )
        yield self._event(lambda gate: gate.branch_moved(key, attempt, reason))
        return False

    @defer.inlineCallbacks
    def export_tagging(self, key: str, attempt: int, nvr: str, tag: str) -> Any:
        """Record, before the tag, what the holder is about to land: in the export
        journal (``tagging``, for a restart) and in the item (for people). True: tag;
        False: the attempt is no longer current, or recorded no ``intent``."""
        go_on = yield self.export_step(key, attempt, journalmod.TAGGING, {"nvr": nvr})

        def note(gate: Gate) -> list[Action]:
            item = gate.find(key)
            if go_on and item is not None and item.attempt == attempt:
                item.info["export"] = {"nvr": nvr, "tag": tag, "attempt": attempt}
            return []

        yield self._event(note)
        return go_on

    @defer.inlineCallbacks
    def export_landed(
        self, key: str, attempt: int, nvr: str, backend_seconds: float | None = None
    ) -> Any:
        """The holder's RPM landed. The export is the only job of its pipeline's last stage
        (``gating.plan``), started once every other job passed: with no other gate
        pipeline for the project, the item passed, and merges now rather than after
        Buildbot finished the export's build and then the pipeline's, seconds of the
        serial section on a busy master. Otherwise it merges when its pipelines finished.
        ``backend_seconds``: the time its section spent in build-backend (koji) calls, for
        the record."""
        box: list[bool] = []

        def landed(gate: Gate) -> list[Action]:
            box.append(gate.export_landed(key, attempt, nvr))
            _note_backend_time(gate, key, attempt, backend_seconds)
            item = gate.find(key)
            alone = item is not None and len(self.settings.pipelines(item.change.project)) == 1
            return gate.job_result(key, attempt, True) if box[0] and alone else []

        yield self._event(landed)
        return bool(box and box[0])

    @defer.inlineCallbacks
    def job_failed(self, key: str, attempt: int, reason: str) -> Any:
        """A built-in job of the item's attempt failed: the item fails now, with the reason
        (e.g. the failed koji task and its log), without waiting for the pipeline's end."""
        yield self._event(lambda gate: gate.job_result(key, attempt, False, reason))

    @defer.inlineCallbacks
    def export_failed(
        self, key: str, attempt: int, reason: str, backend_seconds: float | None = None
    ) -> Any:
        def failed(gate: Gate) -> list[Action]:
            _note_backend_time(gate, key, attempt, backend_seconds)
            return gate.export_failed(key, attempt, reason)

        yield self._event(failed)

    def _export_bookkeeping(self) -> None:
        """After every event (under the lock): wake the attempts let into a section and
        record the sections that ended (for the benchmark: ``export-holds.jsonl``)."""
        assert self.gate is not None
        now = time.time()
        self.gate.export_grants()  # marks the attempts let in as holding; woken below
        holders = self.gate.export_holders()
        for key, attempt in holders.items():
            if key not in self._holds or self._holds[key][0] != attempt:
                self._holds[key] = (attempt, now)
            waiter = self._export_waiters.pop((key, attempt), None)
            if waiter is not None and not waiter.called:
                reactor.callLater(0, waiter.callback, None)
        for key, (attempt, start) in list(self._holds.items()):
            if holders.get(key) == attempt:
                continue
            del self._holds[key]
            item = self.gate.find(key) or next(
                (i for i in reversed(self.gate.finished) if i.key == key), None
            )
            outcome = item.state.value if item is not None else "gone"
            if item is not None and item.attempt != attempt:
                outcome = "reset"
            record = {
                "queue": item.queue if item else None,
                "change": key,
                "attempt": attempt,
                "start": start,
                "end": now,
                "outcome": outcome,
                "nvr": (item.info.get("export") or {}).get("nvr") if item else None,
                # seconds of the section spent in build-backend (koji) calls, if reported
                "backend": _backend_time(item, attempt),
            }
            if item is not None:
                item.info.setdefault("export_holds", []).append([start, now])
            try:
                with open(Path(self.master.basedir) / HOLDS_FILE, "a") as out:
                    out.write(json.dumps(record, sort_keys=True) + "\n")
            except OSError as exc:
                log.msg(f"gate: cannot record an export section: {exc}")
        # Waiters of attempts that are no longer current never get the section.
        for (key, attempt), waiter in list(self._export_waiters.items()):
            item = self.gate.find(key)
            if item is None or item.attempt != attempt or item.state != State.TESTING:
                del self._export_waiters[(key, attempt)]
                if not waiter.called:
                    reactor.callLater(
                        0, waiter.errback, QueueError(f"{key} attempt {attempt} is not current")
                    )

    @defer.inlineCallbacks
    def _roll_back_export(self, key: str) -> Any:
        """A change that leaves the gate unmerged must not leave its RPM in the destination:
        if its export got as far as the tag (e.g. the master died before the merge and its
        new attempt failed), the tag is undone."""
        assert self.gate is not None
        item = next((i for i in reversed(self.gate.finished) if i.key == key), None)
        journal = self.journal()
        if any(e.key == key for e in journal.entries.values()):
            # Journaled: undo what landed (untag only what an attempt tagged and the tag
            # still holds), then close the entry. An attempt given up while its tag call
            # may have been under way (closed "abandoned" after ``tagging``: a koji tag
            # task can end after its master died) is looked at again.
            unsure = [
                e.ident
                for e in journal.entries.values()
                if e.key == key
                and e.closed == journalmod.CLOSED_ABANDONED
                and e.has(journalmod.TAGGING)
            ]
            for ident in unsure:
                journal.put(journalmod.reopen(journal.entries[ident]))
            for entry in journal.open_for(key):
                try:
                    plan = yield self._settle_and_close(entry.ident, leaving=True)
                except Exception as exc:
                    log.err(exc, f"gate: cannot roll back the export of unmerged {key}")
                    if item is not None:
                        item.history.append(f"could not roll back its export: {exc}")
                    continue
                if item is not None:
                    item.history.append(f"export journal: {plan.reason}")
                    item.info["export_rolled_back"] = True
            return
        export = item.info.get("export") if item is not None else None
        if not export or item.info.get("export_rolled_back"):
            return
        svc = self.master.service_manager.namedServices.get("gating-backend")
        if svc is None:
            return
        try:
            removed = yield threads.deferToThread(svc.backend.untag, export["tag"], export["nvr"])
        except Exception as exc:
            log.err(exc, f"gate: cannot untag {export['nvr']} of unmerged {key}")
            item.history.append(f"could not untag {export['nvr']} from {export['tag']}: {exc}")
            return
        item.info["export_rolled_back"] = True
        if removed:
            item.history.append(f"untagged {export['nvr']} from {export['tag']} (not merged)")
            if svc.backend.kind == "koji":
                yield threads.deferToThread(svc.backend.publish_repo, export["tag"])

    # -- the export journal ---------------------------------------------------------------

    def journal(self) -> journalmod.Journal:
        if self._journal is None:
            self._journal = journalmod.Journal()
        return self._journal

    def _write_journal(self) -> defer.Deferred:
        """Have the journal as it is when the write starts written to the database; fires
        once it is there (written one at a time: a later write holds every earlier
        record)."""
        if self._journal_writes is None:
            self._journal_writes = defer.DeferredLock()
        return self._journal_writes.run(
            lambda: self.setState(JOURNAL_KEY, self.journal().to_json())
        )

    def _record(self, ident: tuple[str, int], step: str, **values: Any) -> defer.Deferred:
        """Record ``step`` of the entry ``ident`` (read again: the export job and the gate
        both record) and write the journal; fires when it is in the database."""
        journal = self.journal()
        entry = journal.entries[ident]
        journal.put(journalmod.record(entry, step, **values))
        return self._write_journal()

    def _close(self, ident: tuple[str, int], how: str, note: str = "") -> defer.Deferred:
        journal = self.journal()
        journal.put(journalmod.close(journal.entries[ident], how, note))
        return self._write_journal()

    @defer.inlineCallbacks
    def export_step(
        self, key: str, attempt: int, step: str, details: dict[str, Any] | None = None
    ) -> Any:
        """The export job of ``key``'s attempt records a step of its section; it is in the
        database when this fires. True: go on; False: stop, the attempt is no longer
        current (what it may have tagged meanwhile is undone here). ``intent`` (once the
        attempt holds the section) takes ``mode``, ``tag``, ``candidate_tag``, ``commit``
        and, in mode promote, ``nvr``; ``built`` and ``tagging`` the ``nvr``."""
        if self.gate is None:
            raise QueueError("the gate is not active on this master")
        if step not in journalmod.JOB_STEPS:
            raise QueueError(f"unknown export step {step!r}")
        details = dict(details or {})
        yield self._lock.acquire()
        try:
            written, go_on = yield self._export_step(key, attempt, step, details)
        finally:
            self._lock.release()
        if written is not None:
            yield written
        return go_on

    @defer.inlineCallbacks
    def _export_step(self, key: str, attempt: int, step: str, details: dict[str, Any]) -> Any:
        """Under the gate's lock: (the journal write to wait for or None, go on?)."""
        assert self.gate is not None
        journal = self.journal()
        entry = journal.get(key, attempt)
        item = self.gate.find(key)
        holds = (
            item is not None
            and item.attempt == attempt
            and item.state == State.TESTING
            and item.export in ("holding", "landed")
        )
        if step == journalmod.INTENT:
            if entry is None and holds:
                assert item is not None
                entry = journal.put(
                    journalmod.begin(
                        key=key,
                        attempt=attempt,
                        queue=item.queue,
                        project=item.change.project,
                        branch=item.change.branch,
                        revision=item.change.revision,
                        commit=details.get("commit") or item.info.get("merge_commit", ""),
                        mode=details.get("mode", "rebuild"),
                        tag=details.get("tag", ""),
                        candidate_tag=details.get("candidate_tag") or "",
                        nvr=details.get("nvr") or "",
                    )
                )
                return self._write_journal(), True
            return None, holds and entry is not None and not entry.closed
        values = {"nvr": details["nvr"]} if details.get("nvr") else {}
        if entry is None:
            return None, False
        if entry.closed:
            late = step in (journalmod.TAGGED, journalmod.CANDIDATE_UNTAGGED, journalmod.REPO_READY)
            if late and entry.closed != journalmod.CLOSED_MERGED and entry.has(journalmod.TAGGING):
                # Its tag call ran on after the gate gave the attempt up: undo what landed.
                journal.put(journalmod.record(journalmod.reopen(entry), step, **values))
                yield self._write_journal()
                yield self._settle_and_close(entry.ident, leaving=True)
            return None, False
        if step == journalmod.TAGGING and not holds:
            return None, False  # nothing tagged: nothing to record
        journal.put(journalmod.record(entry, step, **values))
        return self._write_journal(), holds

    def _backend(self) -> Any:
        svc = self.master.service_manager.namedServices.get("gating-backend")
        if svc is None:
            raise QueueError("no build backend is configured on this master")
        return svc.backend

    def _observe(self, backend: Any, entry: journalmod.Entry) -> journalmod.Observed:
        """(In a thread.) Is the entry's NVR in its tag; does the branch contain the
        change (Gerrit: is the change merged; the local forge: is its tested commit on
        the branch)?"""
        settle = getattr(backend, "settle_tag", None)
        if settle is not None and entry.nvr and entry.last == journalmod.TAGGING:
            # Its tag call may still be pending on the hub (koji: a task outlives the
            # master that asked for it): cancelled, or ended, before the tag is read.
            settle(entry.tag, entry.nvr)
        in_tag = bool(entry.nvr) and entry.nvr in backend.tagged(entry.tag)
        merged = self._contains(entry.project, entry.branch, entry.number, entry.commit)
        return journalmod.Observed(in_tag=in_tag, merged=merged)

    def _contains(self, project: str, branch: str, number: int, commit: str) -> bool:
        """(In a thread.) Does the branch contain the change: Gerrit: is it merged; the
        local forge: is its tested commit on the branch?"""
        if isinstance(self.forge, GerritForge):
            return self.forge.change(project, number).status == "merged"
        return bool(commit) and forgemod.branch_contains(
            self.forge.repo_path(project), branch, commit
        )

    @defer.inlineCallbacks
    def _settle(self, ident: tuple[str, int], *, leaving: bool = False) -> Any:
        """Observe the world, decide (:func:`gating.exportjournal.recover`) and carry the
        plan out, each step recorded before/after as the journal wants; the plan. A merge
        the forge refuses is recorded (``merge-failed``) and the entry goes back."""
        backend = self._backend()
        for _ in range(3):
            entry = self.journal().entries[ident]
            observed = yield threads.deferToThread(self._observe, backend, entry)
            plan = journalmod.recover(entry, observed, leaving=leaving)
            (log.err if plan.warning else log.msg)(f"gate: export journal: {plan.reason}")
            refused = False
            for action in plan.actions:
                refused = yield self._carry_out(ident, action, backend)
                if refused:
                    break
            if not refused:
                return plan
        raise QueueError(f"export of {ident[0]} attempt {ident[1]}: recovery did not settle")

    @defer.inlineCallbacks
    def _carry_out(self, ident: tuple[str, int], action: Any, backend: Any) -> Any:
        """One action of a plan; True if it was a merge the forge refused."""
        if isinstance(action, journalmod.UntagCandidate):
            yield threads.deferToThread(backend.untag, action.tag, action.nvr)
            yield self._record(ident, action.after)
        elif isinstance(action, journalmod.PublishRepo):
            # koji: not again when the killed master's repo request made it already.
            publish = getattr(backend, "ensure_repo", backend.publish_repo)
            yield threads.deferToThread(publish, action.tag)
            yield self._record(ident, action.after)
        elif isinstance(action, journalmod.Untag):
            yield self._record(ident, action.before)
            yield threads.deferToThread(backend.untag, action.tag, action.nvr)
            yield self._record(ident, action.after)
        elif isinstance(action, journalmod.Merge):
            expected = action.expected_tip or (
                yield threads.deferToThread(
                    forgemod.first_parent, self.forge.repo_path(action.project), action.commit
                )
            )
            yield self._record(ident, action.before, expected_tip=expected)
            try:
                yield threads.deferToThread(
                    self.forge.merge, action.project, action.branch, action.commit, expected
                )
            except forgemod.ForgeError as exc:
                retest = isinstance(exc, forgemod.BranchMoved)
                yield self._record(ident, journalmod.MERGE_FAILED, reason=str(exc), retest=retest)
                return True
            yield self._record(ident, action.after)
        else:
            raise TypeError(action)
        return False

    @defer.inlineCallbacks
    def _settle_and_close(self, ident: tuple[str, int], *, leaving: bool) -> Any:
        plan = yield self._settle(ident, leaving=leaving)
        yield self._close(ident, plan.closed, plan.reason)
        return plan

    @defer.inlineCallbacks
    def _recover_journal(self) -> Any:
        """On activation (the gate's lock held, before restart_all): settle every open
        entry, make the gate agree (``Gate.export_recovered``), save the gate, then close
        the entries. An entry that cannot be settled now (backend down) stays open: it is
        settled again when its item is reported failed, or at the next activation."""
        assert self.gate is not None
        actions: list[Action] = []
        settled: list[tuple[tuple[str, int], journalmod.Plan]] = []
        for entry in self.journal().open_entries():
            # An item no longer in its export (failed, dequeued, or at another attempt)
            # never goes forward: only what landed for it is undone.
            live = self._current(entry.key, entry.attempt, State.TESTING, State.MERGING)
            try:
                plan = yield self._settle(entry.ident, leaving=live is None)
            except Exception as exc:
                log.err(exc, f"gate: cannot recover the export of {entry.key}")
                continue
            settled.append((entry.ident, plan))
            if plan.outcome == journalmod.OUTCOME_NONE:
                continue
            key, attempt = entry.ident
            item = self.gate.find(key)
            if plan.outcome == journalmod.OUTCOME_MERGED and item is not None:
                item.info["merged_commit"] = entry.commit
            actions += self.gate.export_recovered(key, attempt, plan.outcome, plan.reason)
            item = self.gate.find(key) or next(
                (i for i in reversed(self.gate.finished) if i.key == key), None
            )
            if item is not None:
                item.history.append(f"export journal: {plan.reason}")
        if settled:
            yield self._save()  # the gate agrees in the database before the entries close
            for ident, plan in settled:
                yield self._close(ident, plan.closed, plan.reason)
        return actions

    def _current(self, key: str, attempt: int, *states: State) -> Item | None:
        assert self.gate is not None
        item = self.gate.find(key)
        if item is None or item.attempt != attempt or item.state not in states:
            return None
        return item

    @defer.inlineCallbacks
    def _do(self, action: Action) -> Any:
        assert self.gate is not None
        if isinstance(action, Start):
            item = self._current(action.key, action.attempt, State.TESTING)
            if item is None:
                return []
            return (yield self._start(item))
        if isinstance(action, Cancel):
            # The item may have left the queue in the same event (dequeued, failed dependent).
            item = self.gate.find(action.key) or next(
                (i for i in reversed(self.gate.finished) if i.key == action.key), None
            )
            runs = item.info.get("runs", {}) if item else {}
            bsid = runs.get(str(action.attempt))
            if bsid is not None:
                yield self._cancel(bsid, f"gate reset: attempt {action.attempt} superseded")
            return []
        if isinstance(action, Merge):
            item = self._current(action.key, action.attempt, State.MERGING)
            if item is None:
                return []
            return (yield self._merge(item))
        if isinstance(action, Report):
            project, number = action.key.rsplit("~", 1)
            if action.status == "failed":
                yield self._roll_back_export(action.key)
            elif action.status == "merged":
                yield self._close_merged(action.key)
            yield threads.deferToThread(
                self.forge.set_result, project, int(number), action.status, action.reason
            )
            return []
        raise TypeError(action)

    @defer.inlineCallbacks
    def _start(self, item: Item) -> Any:
        """Called with the gate's lock held (``_apply``), which it gives up during the git
        work (the speculative merge, publishing its ref): other events, the export
        section's first (it is the gate's serial bottleneck), need not wait for that. The
        item is checked again once the lock is back: a reset or dequeued item's run is
        never requested. (The same attempt has the same items ahead; a branch tip that
        moved meanwhile is the tested state of an item ahead, as when it moves just after.)"""
        assert self.gate is not None
        change = item.change
        key, attempt = item.key, item.attempt
        ahead = self.gate.queues[item.queue].ahead_of(item.key)  # what the merge is made of
        same_repo = [
            (i.key, i.change.revision)
            for i in ahead
            if i.change.project == change.project and i.change.branch == change.branch
        ]
        repo = self.forge.repo_path(change.project)
        workdir = Path(self.settings.workdir) / change.project
        ref = run_ref(item)
        self._lock.release()
        try:
            tip = yield threads.deferToThread(self.forge.branch_tip, change.project, change.branch)
            result = yield threads.deferToThread(
                forgemod.speculative_merge,
                workdir,
                repo,
                change.branch,
                tip,
                [*same_repo, (change.key, change.revision)],
            )
            if result.commit is not None:
                yield threads.deferToThread(forgemod.publish, repo, workdir, result.commit, ref)
        finally:
            yield self._lock.acquire()
        if self.gate is None or self._current(key, attempt, State.TESTING) is None:
            return []  # reset, dequeued (or the gate moved to another master) meanwhile
        item = self._current(key, attempt, State.TESTING)
        assert item is not None
        if result.commit is None:
            item.info["conflict"] = result.conflict
            return self.gate.merge_conflict(item.key, item.attempt)
        ahead_info = [
            {
                "change": i.key,
                "project": i.change.project,
                "branch": i.change.branch,
                "revision": i.change.revision,
                "merge_commit": i.info.get("merge_commit"),
            }
            for i in ahead
        ]
        properties = {
            "gating_queue": item.queue,
            "gating_change": item.key,
            "gating_project": change.project,
            "gating_branch": change.branch,
            "gating_revision": change.revision,
            "gating_attempt": item.attempt,
            "gating_ahead": ahead_info,
            "gating_base": tip,
            "gating_merge_commit": result.commit,
        }
        item.info.update(
            {"base": tip, "merge_commit": result.commit, "ref": ref, "ahead": ahead_info}
        )
        builders = list(self.settings.pipelines(change.project))
        if not builders:
            # Nothing to run: the change passes on merging cleanly.
            return self.gate.job_result(item.key, item.attempt, True)
        sourcestamp = {
            "codebase": "",
            "repository": str(repo),
            "branch": ref,
            "revision": result.commit,
            "project": change.project,
        }
        bsid, _brids = yield self.addBuildsetForSourceStamps(
            waited_for=False,
            sourcestamps=[sourcestamp],
            reason=f"gate {item.queue}: {item.key} attempt {item.attempt}",
            properties=self._properties(properties),
            builderNames=builders,
        )
        item.info.setdefault("runs", {})[str(item.attempt)] = bsid
        item.info["bsid"] = bsid
        return []

    def _properties(self, values: dict[str, Any]) -> Any:
        from buildbot.process.properties import Properties

        props = Properties()
        for key, value in values.items():
            props.setProperty(key, value, "gate")
        return props

    @defer.inlineCallbacks
    def _cancel(self, bsid: int, reason: str) -> Any:
        requests = yield self.master.data.get(
            ("buildrequests",), filters=[resultspec.Filter("buildsetid", "eq", [bsid])]
        )
        for request in requests or []:
            if request["complete"]:
                continue
            brid = request["buildrequestid"]
            builds = yield self.master.data.get(("buildrequests", brid, "builds"))
            running = [b for b in builds if not b["complete"]]
            for build in running:
                yield self.master.data.control(
                    "stop", {"reason": reason}, ("builds", build["buildid"])
                )
            if not running:
                # No build yet, or only builds that ended without completing the request
                # (RETRY: a master killed during them; it would be run again).
                yield self.master.data.control(
                    "cancel", {"reason": reason}, ("buildrequests", brid)
                )

    @defer.inlineCallbacks
    def _merge(self, item: Item) -> Any:
        """Move the branch to the tested commit. With a journaled export, ``merging`` is
        recorded before and ``merged`` after; a refused merge is recorded and the RPM
        that landed for it is untagged before the item is tested again or fails."""
        assert self.gate is not None
        change = item.change
        commit = item.info["merge_commit"]
        entry = self.journal().get(item.key, item.attempt)
        ident = entry.ident if entry is not None and not entry.closed else None
        tip = yield threads.deferToThread(self.forge.branch_tip, change.project, change.branch)
        if tip != commit:
            expected = yield threads.deferToThread(
                forgemod.first_parent, self.forge.repo_path(change.project), commit
            )
            if ident is not None:
                yield self._record(ident, journalmod.MERGING, expected_tip=expected)
            try:
                yield threads.deferToThread(
                    self.forge.merge, change.project, change.branch, commit, expected
                )
            except forgemod.ForgeError as exc:  # BranchMoved, or e.g. Gerrit's 409
                retest = isinstance(exc, forgemod.BranchMoved)
                contained = retest and (
                    yield threads.deferToThread(
                        self._contains, change.project, change.branch, change.number, commit
                    )
                )
                if contained:  # merged already (the record of it was lost): not twice
                    if ident is not None:
                        yield self._record(ident, journalmod.MERGED)
                    item.info["merged_commit"] = commit
                    return self.gate.merged_ok(item.key, item.attempt)
                if ident is not None:
                    yield self._record(
                        ident, journalmod.MERGE_FAILED, reason=str(exc), retest=retest
                    )
                    try:
                        plan = yield self._settle_and_close(ident, leaving=True)
                        item.history.append(f"export journal: {plan.reason}")
                    except Exception as err:
                        log.err(err, f"gate: cannot roll back the export of {item.key}")
                return self.gate.merge_failed(item.key, item.attempt, str(exc), retest=retest)
        if ident is not None:
            yield self._record(ident, journalmod.MERGED)
        item.info["merged_commit"] = commit
        return self.gate.merged_ok(item.key, item.attempt)

    @defer.inlineCallbacks
    def _close_merged(self, key: str) -> Any:
        """The item merged and the gate's state saying so is in the database (a Report
        runs after it): its journal entry closes."""
        assert self.gate is not None
        item = next((i for i in reversed(self.gate.finished) if i.key == key), None)
        if item is None:
            return
        entry = self.journal().get(key, item.attempt)
        if entry is not None and not entry.closed and entry.has(journalmod.MERGED):
            yield self._close(entry.ident, journalmod.CLOSED_MERGED, f"{key}: merged")

    @defer.inlineCallbacks
    def _buildset_complete(self, key: Any, msg: dict[str, Any]) -> Any:
        if self.gate is None:
            return None
        found = self._run_of(msg["bsid"])
        if found is None:
            return None
        item_key, attempt = found
        passed = msg["results"] in (SUCCESS, WARNINGS)
        reason = "" if passed else (yield self._failure_reason(msg["bsid"]))
        yield self._event(lambda gate: gate.job_result(item_key, attempt, passed, reason))

    @defer.inlineCallbacks
    def _failure_reason(self, bsid: int) -> Any:
        """Which job instances of the run failed, and how (e.g. ``job packstack on x86_64:
        failure (failed 'run')``); the plain "gate pipeline failed" if that cannot be read."""
        from gating.runsdb import UI_PLAN_SERVICE, RunReader

        reason = ""
        try:
            reader = RunReader(self.master)
            requests, builds, children = yield reader.rows([bsid])
            names = yield reader.builder_names({r["builderid"] for r in requests})
            svc = self.master.service_manager.namedServices.get(UI_PLAN_SERVICE)
            plan = getattr(svc, "plan", None) or {}
            runs = gateview.assemble_runs(
                [bsid], requests, builds, children, names, plan, {}, time.time()
            )
            reason = gateview.failure_reason(runs[bsid]["jobs"])
            if not reason:
                bad = [p for p in runs[bsid]["pipelines"] if p["state"] not in ("success",)]
                reason = "; ".join(f"pipeline {p['pipeline']}: {p['state']}" for p in bad)
        except Exception as exc:  # the reason is for people; never block the gate on it
            log.err(exc, f"gate: cannot read why buildset {bsid} failed")
        return reason or "gate pipeline failed"

    def _run_of(self, bsid: int) -> tuple[str, int] | None:
        assert self.gate is not None
        for item in self.gate.live_items():
            for attempt, run_bsid in item.info.get("runs", {}).items():
                if run_bsid == bsid:
                    return item.key, int(attempt)
        return None
