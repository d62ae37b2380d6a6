"""The speculative gate: shared queues of approved changes (pure logic, no Twisted).

Zuul's dependent pipeline, made precise in ``DESIGN.md`` ("Gate semantics"):

* Items of a queue are tested in parallel, each on its *speculative state*: the branch
  tips plus every live, non-failing item ahead of it, merged in order. Only the first
  ``window`` items run (start 20, floor 3, +1 per merge, halved per failure).
* An item whose jobs fail (or that does not merge onto the items ahead) is *failing*:
  every item behind it that was tested on top of it is reset at once (its run cancelled
  and restarted without it); the failing item leaves the queue, reported, when it
  reaches the head.
* An item merges only at the head, once its jobs passed.
* ``Depends-On``: an item waits outside the queue until every change it depends on is
  either merged or live ahead of it in the same queue; if a needed change in its own
  queue fails, the item fails too.

The model only decides; it returns :class:`Action` objects (start, cancel, merge,
report) for the Buildbot glue to carry out, and takes their outcomes back as events.
Every event names the ``attempt`` it is about, so a late result of a cancelled run is
ignored. The whole state round-trips through JSON, so a restarted master resumes it.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

WINDOW_START = 20
WINDOW_FLOOR = 3
WINDOW_INCREASE = 1
WINDOW_DECREASE_FACTOR = 2
KEEP_FINISHED = 200


class State(StrEnum):
    WAITING = "waiting"  # approved, held outside the queue by a Depends-On
    QUEUED = "queued"  # in the queue, outside the window
    TESTING = "testing"  # its jobs run (or ran and passed: ``passed``) on its speculative state
    FAILING = "failing"  # failed; out of everyone's speculative state; leaves at the head
    MERGING = "merging"  # at the head, passed, being merged
    MERGED = "merged"
    DEQUEUED = "dequeued"  # left without merging


LIVE = frozenset({State.QUEUED, State.TESTING, State.FAILING, State.MERGING})


class QueueError(Exception):
    """A request the gate refuses (unknown queue, change already queued...); nothing changed."""


@dataclass(frozen=True)
class Change:
    """What the gate needs to know of a change."""

    project: str
    number: int
    branch: str
    revision: str
    depends_on: tuple[str, ...] = ()  # keys ("project~number") of needed changes
    subject: str = ""
    url: str = ""

    @property
    def key(self) -> str:
        return f"{self.project}~{self.number}"


@dataclass
class Item:
    change: Change
    queue: str
    state: State = State.QUEUED
    attempt: int = 0
    ahead: list[str] = field(default_factory=list)  # keys its current attempt is tested on
    passed: bool = False
    export: str = ""  # the serial export section: "", "waiting", "holding", "landed", "failed"
    reason: str = ""
    history: list[str] = field(default_factory=list)  # one line per event, for people
    info: dict[str, Any] = field(default_factory=dict)  # glue's data (merge commit, build ids)

    @property
    def key(self) -> str:
        return self.change.key

    def to_json(self) -> dict[str, Any]:
        """The item as JSON data (for ``json.dumps``: lists and ``info`` are copied one
        level deep, what ``info`` holds is shared). Written out rather than
        ``dataclasses.asdict``, whose deep copy was most of the cost of saving a gate of
        500 items after every event (about 40 of 50 ms)."""
        c = self.change
        return {
            "change": {
                "project": c.project,
                "number": c.number,
                "branch": c.branch,
                "revision": c.revision,
                "depends_on": list(c.depends_on),
                "subject": c.subject,
                "url": c.url,
            },
            "queue": self.queue,
            "state": self.state.value,
            "attempt": self.attempt,
            "ahead": list(self.ahead),
            "passed": self.passed,
            "export": self.export,
            "reason": self.reason,
            "history": list(self.history),
            "info": dict(self.info),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        change = dict(data["change"])
        change["depends_on"] = tuple(change.get("depends_on", ()))
        return cls(
            change=Change(**change),
            queue=data["queue"],
            state=State(data["state"]),
            attempt=data["attempt"],
            ahead=list(data["ahead"]),
            passed=data["passed"],
            export=data.get("export", ""),
            reason=data["reason"],
            history=list(data.get("history", [])),
            info=dict(data.get("info", {})),
        )


@dataclass(frozen=True)
class Start:
    """Test ``key`` (attempt ``attempt``) on the branch tips plus ``ahead``, in order."""

    queue: str
    key: str
    attempt: int
    ahead: tuple[str, ...]


@dataclass(frozen=True)
class Cancel:
    """Stop the run of ``key``'s attempt ``attempt`` (its state is no longer current)."""

    queue: str
    key: str
    attempt: int


@dataclass(frozen=True)
class Merge:
    """Merge ``key``'s tested state into its branch (it is at the head and passed)."""

    queue: str
    key: str
    attempt: int


@dataclass(frozen=True)
class Report:
    """Tell the change's owner: ``status`` is "merged" or "failed"."""

    queue: str
    key: str
    status: str
    reason: str = ""


Action = Start | Cancel | Merge | Report


@dataclass
class Queue:
    """A shared queue. The window knobs are Zuul's: it starts at ``window``, grows by
    ``increase`` per merge up to ``ceiling`` (None: no limit) and is divided by
    ``decrease_factor`` per failure down to ``floor``."""

    name: str
    window: int = WINDOW_START
    items: list[Item] = field(default_factory=list)  # live, in order
    floor: int = WINDOW_FLOOR
    ceiling: int | None = None
    increase: int = WINDOW_INCREASE
    decrease_factor: int = WINDOW_DECREASE_FACTOR

    def grow(self) -> None:
        self.window += self.increase
        if self.ceiling is not None:
            self.window = min(self.window, self.ceiling)

    def shrink(self) -> None:
        floor = min(self.floor, self.window)  # a queue configured narrower stays so
        self.window = max(floor, self.window // self.decrease_factor)

    def settings(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "floor": self.floor,
            "ceiling": self.ceiling,
            "increase": self.increase,
            "decrease_factor": self.decrease_factor,
        }

    def position(self, key: str) -> int:
        for i, item in enumerate(self.items):
            if item.key == key:
                return i
        raise KeyError(key)

    def ahead_of(self, key: str) -> list[Item]:
        """The items whose changes ``key``'s speculative state contains, in order."""
        return [i for i in self.items[: self.position(key)] if i.state != State.FAILING]


@dataclass
class Gate:
    """All queues of a site, the changes waiting on dependencies, and what has finished."""

    queues: dict[str, Queue] = field(default_factory=dict)
    project_queues: dict[str, str] = field(default_factory=dict)  # project -> queue name
    waiting: list[Item] = field(default_factory=list)
    finished: list[Item] = field(default_factory=list)  # newest last, capped
    merged: set[str] = field(default_factory=set)

    @classmethod
    def for_projects(
        cls,
        project_queues: dict[str, str],
        windows: dict[str, int] | None = None,
        settings: dict[str, dict[str, Any]] | None = None,
    ) -> Gate:
        """A new gate; ``windows`` sets a queue's starting window (default 20);
        ``settings`` any of a queue's knobs (window, floor, ceiling, increase,
        decrease_factor)."""
        gate = cls(project_queues=dict(project_queues))
        for name in sorted(set(project_queues.values())):
            queue = Queue(name, window=(windows or {}).get(name, WINDOW_START))
            for key, value in (settings or {}).get(name, {}).items():
                setattr(queue, key, value)
            gate.queues[name] = queue
        return gate

    # -- lookups -------------------------------------------------------------------

    def find(self, key: str) -> Item | None:
        for queue in self.queues.values():
            for item in queue.items:
                if item.key == key:
                    return item
        return next((i for i in self.waiting if i.key == key), None)

    def item(self, key: str) -> Item:
        found = self.find(key)
        if found is None:
            raise QueueError(f"change {key} is not in the gate")
        return found

    def live_items(self) -> Iterable[Item]:
        for queue in self.queues.values():
            yield from queue.items
        yield from self.waiting

    # -- events --------------------------------------------------------------------

    def enqueue(self, change: Change) -> list[Action]:
        """An approved change enters its project's queue (or waits for its dependencies)."""
        queue_name = self.project_queues.get(change.project)
        if queue_name is None:
            raise QueueError(f"project {change.project} is not gated by any queue")
        if self.find(change.key) is not None:
            raise QueueError(f"change {change.key} is already in the gate")
        if change.key in self.merged:
            raise QueueError(f"change {change.key} is already merged")
        # A change approved again continues its attempt numbers, so that a late result of a
        # run of its previous passage (e.g. one cancelled when it was dequeued) is ignored.
        attempt = max((i.attempt for i in self.finished if i.key == change.key), default=0)
        item = Item(change=change, queue=queue_name, state=State.WAITING, attempt=attempt)
        item.history.append("approved")
        self.waiting.append(item)
        actions: list[Action] = []
        self._release_waiting(actions)
        self._schedule(actions)
        return actions

    def job_result(self, key: str, attempt: int, passed: bool, reason: str = "") -> list[Action]:
        """The jobs of ``key``'s attempt finished (a stale attempt is ignored)."""
        item = self.find(key)
        actions: list[Action] = []
        if item is None or item.attempt != attempt or item.state != State.TESTING:
            return actions
        if item.passed:
            return actions
        if passed:
            item.passed = True
            item.history.append(f"attempt {attempt}: jobs passed")
        else:
            self._fail(item, reason or "jobs failed", actions)
        self._schedule(actions)
        return actions

    def merge_conflict(self, key: str, attempt: int) -> list[Action]:
        """``key`` does not merge onto the items ahead of it."""
        return self.job_result(key, attempt, False, "merge conflict")

    def merged_ok(self, key: str, attempt: int) -> list[Action]:
        """The merge of the head item landed."""
        item = self.find(key)
        actions: list[Action] = []
        if item is None or item.state != State.MERGING or item.attempt != attempt:
            return actions
        queue = self.queues[item.queue]
        queue.items.remove(item)
        item.state = State.MERGED
        item.history.append("merged")
        self.merged.add(item.key)
        self._finish(item)
        queue.grow()
        actions.append(Report(queue.name, item.key, "merged"))
        self._release_waiting(actions)
        self._schedule(actions)
        return actions

    def merge_failed(self, key: str, attempt: int, reason: str, *, retest: bool) -> list[Action]:
        """The merge did not land. ``retest``: the branch moved outside the gate, so the
        item and everything behind it are tested again on the new tip; otherwise the item
        fails (e.g. its export failed)."""
        item = self.find(key)
        actions: list[Action] = []
        if item is None or item.state != State.MERGING or item.attempt != attempt:
            return actions
        queue = self.queues[item.queue]
        if retest:
            item.history.append(f"not merged: {reason}; testing again")
            for other in queue.items:
                if other.state in (State.TESTING, State.MERGING):
                    self._reset(other, actions, why=reason)
        else:
            self._fail(item, reason, actions)
        self._schedule(actions)
        return actions

    def dequeue(self, key: str, reason: str) -> list[Action]:
        """Take a change out of the gate (an admin's decision); items behind are reset."""
        item = self.item(key)
        actions: list[Action] = []
        if item.state == State.MERGING:
            raise QueueError(f"change {key} is being merged; it cannot be dequeued now")
        if item.export in ("holding", "landed") and item.state == State.TESTING:
            raise QueueError(
                f"change {key} is in its export section (its RPM may be landing); "
                "it cannot be dequeued now"
            )
        if item.state == State.WAITING:
            self.waiting.remove(item)
        else:
            queue = self.queues[item.queue]
            if item.state == State.TESTING and not item.passed:
                actions.append(Cancel(queue.name, item.key, item.attempt))
            position = queue.position(key)
            queue.items.remove(item)
            for other in queue.items[position:]:
                if other.state == State.FAILING:
                    continue  # failing stays failing, as in _fail (items behind skip it)
                if key in other.change.depends_on:
                    # It needs the dequeued change: testing it without it would be wrong.
                    if other.state == State.TESTING and not other.passed:
                        actions.append(Cancel(queue.name, other.key, other.attempt))
                    self._fail(other, f"depends on {key}, which was dequeued", actions)
                elif key in other.ahead:
                    self._reset(other, actions, why=f"{key} was dequeued")
        item.state = State.DEQUEUED
        item.reason = reason
        item.history.append(f"dequeued: {reason}")
        self._finish(item)
        actions.append(Report(item.queue, key, "failed", reason))
        self._schedule(actions)
        return actions

    def restart_all(self, why: str) -> list[Action]:
        """After a master restart: every unfinished run is started again from scratch
        (results of the old runs are no longer awaited); merges in flight are redone."""
        actions: list[Action] = []
        for queue in self.queues.values():
            for item in queue.items:
                if item.state == State.TESTING and not item.passed and item.export == "landed":
                    # Its export is the last job: everything else had passed, and its RPM
                    # is in the repository. Merge it rather than test it again.
                    item.passed = True
                    item.history.append(f"attempt {item.attempt}: export had landed ({why})")
                elif item.state == State.TESTING and not item.passed:
                    self._reset(item, actions, why=why)
                elif item.state == State.MERGING:
                    actions.append(Merge(queue.name, item.key, item.attempt))
        self._schedule(actions)
        return actions

    # -- internals -----------------------------------------------------------------

    def _fail(self, item: Item, reason: str, actions: list[Action]) -> None:
        queue = self.queues[item.queue]
        item.state = State.FAILING
        item.reason = reason
        item.history.append(f"attempt {item.attempt}: failing: {reason}")
        queue.shrink()
        for other in queue.items[queue.position(item.key) + 1 :]:
            if other.state == State.FAILING:
                continue
            if item.change.key in other.change.depends_on:
                if other.state == State.TESTING and not other.passed:
                    actions.append(Cancel(queue.name, other.key, other.attempt))
                self._fail(other, f"depends on {item.key}, which failed", actions)
            elif item.key in other.ahead:
                self._reset(other, actions, why=f"{item.key} failed")

    def _reset(self, item: Item, actions: list[Action], why: str) -> None:
        """Forget ``item``'s run: cancel it if running; it will be started again."""
        queue = self.queues[item.queue]
        if item.state == State.TESTING and not item.passed and item.attempt:
            actions.append(Cancel(queue.name, item.key, item.attempt))
        item.history.append(f"attempt {item.attempt}: reset ({why})")
        item.state = State.QUEUED
        item.passed = False
        item.ahead = []
        # A landed export is given up too: a reset after landing (the merge refused, the
        # branch moved) rolled the tag back (gating.gate), the new attempt exports again.
        if item.export in ("waiting", "holding", "landed"):
            item.export = ""

    # -- the serial export section (an ordered lock) ------------------------------------
    #
    # The section of an item is: (rebuild mode) the non-scratch build, the tag into the
    # destination, the new repository, and the git merge; (promote mode) the same without
    # the build. It starts when the item asks and every live, non-failing item ahead of it
    # has left the queue (merged or dequeued), and ends when the item leaves the queue
    # (merged, or dequeued after a failure) or is reset. Exports land in gate order, and an
    # item's RPM lands only when nothing ahead of it can still change the repository.

    def export_request(self, key: str, attempt: int) -> bool:
        """``key``'s attempt asks to enter its queue's export section; True if it holds it
        now (else it waits, and :meth:`export_grants` lets it in later)."""
        item = self.find(key)
        if item is None or item.attempt != attempt or item.state != State.TESTING:
            return False
        if item.export in ("holding", "landed"):
            return True
        if item.export != "waiting":
            item.export = "waiting"
            item.history.append(f"attempt {attempt}: waiting for the export section")
        return key in self.export_grants() or item.export == "holding"

    def export_landed(self, key: str, attempt: int, what: str = "") -> bool:
        """The holder's RPM landed; it keeps the section until it merged. False for a
        stale attempt or an item that does not hold the section."""
        item = self.find(key)
        if item is None or item.attempt != attempt or item.export != "holding":
            return False
        item.export = "landed"
        item.history.append(f"attempt {attempt}: export landed" + (f": {what}" if what else ""))
        return True

    def branch_moved(self, key: str, attempt: int, reason: str) -> list[Action]:
        """``key``'s attempt holds its export section, and before its export did anything
        (no build, no tag) the gate saw that the branch moved outside the gate: its tested
        state is not what would merge. As when its merge is refused for that reason, the
        item and every item of its queue being tested are tested again on the new tip;
        nothing of the old attempt lands. Ignored for a stale attempt or an item that does
        not hold the section (or whose RPM landed: the merge decides then)."""
        item = self.find(key)
        actions: list[Action] = []
        if (
            item is None
            or item.attempt != attempt
            or item.state != State.TESTING
            or item.export != "holding"
        ):
            return actions
        queue = self.queues[item.queue]
        item.history.append(f"attempt {attempt}: not exported: {reason}; testing again")
        for other in queue.items:
            if other.state in (State.TESTING, State.MERGING):
                self._reset(other, actions, why=reason)
        self._schedule(actions)
        return actions

    def export_failed(self, key: str, attempt: int, reason: str) -> list[Action]:
        """The export of ``key``'s attempt failed: the change is not merged, it fails (and
        is dequeued at the head) and the items behind it are reset."""
        item = self.find(key)
        actions: list[Action] = []
        if item is None or item.attempt != attempt or item.state != State.TESTING:
            return actions
        item.export = "failed"
        self._fail(item, f"export failed: {reason}", actions)
        self._schedule(actions)
        return actions

    def export_recovered(
        self, key: str, attempt: int, outcome: str, reason: str = ""
    ) -> list[Action]:
        """The export journal's recovery (``gating.exportjournal``) settled ``key``'s
        attempt after a restart, before :meth:`restart_all`: the model is made to agree
        with git and the tag. ``outcome``: "merged" (git has the change: the item merged,
        whatever attempt it is at now), "retest" (nothing of it landed: its section is
        given up and it is tested again) or "failed" (it fails with ``reason``). Nothing
        is scheduled here: :meth:`restart_all` does that next."""
        item = self.find(key)
        actions: list[Action] = []
        if outcome == "merged":
            if item is None or item.state == State.WAITING:
                self.merged.add(key)  # merged in git: it must never be merged again
                return actions
            queue = self.queues[item.queue]
            if item.state == State.TESTING and not item.passed:
                # Its run (the export's, or a newer attempt's) must not go on.
                actions.append(Cancel(queue.name, item.key, item.attempt))
            queue.items.remove(item)
            item.state = State.MERGED
            item.history.append(f"attempt {attempt}: merged (export completed after a restart)")
            self.merged.add(item.key)
            self._finish(item)
            queue.grow()
            actions.append(Report(queue.name, item.key, "merged"))
            self._release_waiting(actions)
            return actions
        in_section = (State.TESTING, State.MERGING)
        if item is None or item.attempt != attempt or item.state not in in_section:
            return actions
        item.export = ""
        item.passed = False
        if outcome == "failed":
            item.state = State.TESTING  # a merging item fails as a tested one does
            self._fail(item, reason or "export rolled back", actions)
        else:
            item.state = State.TESTING
            self._reset(item, actions, why=reason or "export rolled back")
        return actions

    def export_holders(self) -> dict[str, int]:
        """Items in an export section (holding or landed, not yet merged): key -> attempt."""
        return {
            i.key: i.attempt
            for q in self.queues.values()
            for i in q.items
            if i.export in ("holding", "landed") and i.state in (State.TESTING, State.MERGING)
        }

    def export_grants(self) -> list[str]:
        """Let waiting items into free sections; the keys let in now (call after every
        event: a merge, a failure or a dequeue ahead may have unblocked one)."""
        granted: list[str] = []
        for queue in self.queues.values():
            first = next((i for i in queue.items if i.state != State.FAILING), None)
            if first is not None and first.state == State.TESTING and first.export == "waiting":
                first.export = "holding"
                first.history.append(f"attempt {first.attempt}: holding the export section")
                granted.append(first.key)
        return granted

    def _release_waiting(self, actions: list[Action]) -> None:
        """Move waiting items whose dependencies are satisfied into their queues."""
        moved = True
        while moved:
            moved = False
            for item in list(self.waiting):
                if self._dependencies_met(item):
                    self.waiting.remove(item)
                    item.state = State.QUEUED
                    item.history.append(f"enqueued in {item.queue}")
                    self.queues[item.queue].items.append(item)
                    moved = True

    def _dependencies_met(self, item: Item) -> bool:
        queue = self.queues[item.queue]
        for dep in item.change.depends_on:
            if dep in self.merged:
                continue
            if any(i.key == dep and i.state != State.FAILING for i in queue.items):
                continue  # ahead of it in the same queue, once it enters
            return False
        return True

    def _schedule(self, actions: list[Action]) -> None:
        """Start what the window allows, dequeue failing heads, merge passed heads."""
        for queue in self.queues.values():
            while queue.items:
                head = queue.items[0]
                if head.state == State.FAILING:
                    queue.items.pop(0)
                    head.state = State.DEQUEUED
                    self._finish(head)
                    actions.append(Report(queue.name, head.key, "failed", head.reason))
                    continue
                if head.state == State.TESTING and head.passed:
                    head.state = State.MERGING
                    head.history.append(f"attempt {head.attempt}: merging")
                    actions.append(Merge(queue.name, head.key, head.attempt))
                break
            for position, item in enumerate(queue.items):
                if position >= queue.window:
                    break
                if item.state != State.QUEUED:
                    continue
                item.attempt += 1
                item.state = State.TESTING
                item.passed = False
                item.ahead = [i.key for i in queue.ahead_of(item.key)]
                shown = ", ".join(item.ahead) or "the branch tip"
                item.history.append(f"attempt {item.attempt}: testing on {shown}")
                actions.append(Start(queue.name, item.key, item.attempt, tuple(item.ahead)))

    def _finish(self, item: Item) -> None:
        self.finished.append(item)
        del self.finished[:-KEEP_FINISHED]

    # -- persistence -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "project_queues": dict(self.project_queues),
            "queues": {
                name: {**q.settings(), "items": [i.to_json() for i in q.items]}
                for name, q in self.queues.items()
            },
            "waiting": [i.to_json() for i in self.waiting],
            "finished": [i.to_json() for i in self.finished],
            "merged": sorted(self.merged),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], project_queues: dict[str, str]) -> Gate:
        """Restore a saved gate; ``project_queues`` is the current configuration's."""
        gate = cls.for_projects(project_queues)
        for name, q in data.get("queues", {}).items():
            queue = gate.queues.setdefault(name, Queue(name))
            queue.window = q["window"]
            for key in ("floor", "ceiling", "increase", "decrease_factor"):
                if key in q:
                    setattr(queue, key, q[key])
            queue.items = [Item.from_json(i) for i in q["items"]]
        gate.waiting = [Item.from_json(i) for i in data.get("waiting", [])]
        gate.finished = [Item.from_json(i) for i in data.get("finished", [])]
        gate.merged = set(data.get("merged", []))
        return gate

    def status(self) -> dict[str, Any]:
        """What ``gating queue --json`` and the web UI show."""

        def describe(item: Item) -> dict[str, Any]:
            return {
                "change": item.key,
                "project": item.change.project,
                "number": item.change.number,
                "branch": item.change.branch,
                "revision": item.change.revision,
                "subject": item.change.subject,
                "url": item.change.url,
                "state": item.state.value,
                "passed": item.passed,
                "export": item.export,
                "attempt": item.attempt,
                "ahead": list(item.ahead),
                "reason": item.reason,
                "depends_on": list(item.change.depends_on),
                "info": item.info,
                "history": list(item.history),
            }

        return {
            "queues": [
                {
                    "name": q.name,
                    "window": q.window,
                    "projects": sorted(p for p, n in self.project_queues.items() if n == q.name),
                    "items": [describe(i) for i in q.items],
                }
                for q in self.queues.values()
            ],
            "waiting": [describe(i) for i in self.waiting],
            "finished": [describe(i) for i in reversed(self.finished)],
        }


# The fields of an item whose JSON is the value itself (to_json copies them as they are).
_PLAIN_FIELDS = tuple(f.name for f in fields(Item) if f.name not in ("change", "state"))
_plain_values = operator.attrgetter(*_PLAIN_FIELDS)


class GateEncoder:
    """``json.dumps(gate.to_json())`` for a gate saved after every event: the same data
    (the same text, unless an item's dict only changed its key order). The JSON of each
    item is kept with a copy of what it encoded (made by reading the JSON back, so nothing
    is shared with the item) and is made again only when the item differs from that copy:
    a save of a gate of 500 items costs the JSON of the few that changed, not of all
    (``json.dumps`` of the whole state was the scheduler's main cost per event). A field
    whose JSON is not its value would always differ: correct, only slower."""

    def __init__(self) -> None:
        # id(item) -> (item, its change, its state, copy of _plain_values(item), JSON)
        self._items: dict[int, tuple[Item, Change, State, tuple[Any, ...], str]] = {}

    def encode(self, gate: Gate) -> str:
        seen: dict[int, tuple[Item, Change, State, tuple[Any, ...], str]] = {}

        def items(items: list[Item]) -> str:
            return "[" + ", ".join(self._item(i, seen) for i in items) + "]"

        queues = ", ".join(
            f'{json.dumps(name)}: {json.dumps(q.settings())[:-1]}, "items": {items(q.items)}}}'
            for name, q in gate.queues.items()
        )
        text = (
            f'{{"version": 1, "project_queues": {json.dumps(dict(gate.project_queues))}, '
            f'"queues": {{{queues}}}, "waiting": {items(gate.waiting)}, '
            f'"finished": {items(gate.finished)}, "merged": {json.dumps(sorted(gate.merged))}}}'
        )
        self._items = seen
        return text

    def _item(self, item: Item, seen: dict[int, Any]) -> str:
        kept = self._items.get(id(item))
        if (
            kept is None
            or kept[0] is not item
            or kept[1] is not item.change
            or kept[2] is not item.state
            or kept[3] != _plain_values(item)
        ):
            text = json.dumps(item.to_json())
            data = json.loads(text)
            kept = (item, item.change, item.state, tuple(data[n] for n in _PLAIN_FIELDS), text)
        seen[id(item)] = kept
        return kept[4]
