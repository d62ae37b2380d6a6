"""The export journal: what an export did, step by step, so that a master killed in the
middle finishes it or rolls it back on restart (pure logic, no Twisted).

An export (``DESIGN.md``, "Export semantics") is a transaction over three systems that
share no transaction: the build backend (koji or the local backend: build, tag, untag,
repository), git (the merge into the branch) and the gate's own state. The invariant is
"a change is merged iff its RPM landed, and merged at most once".

Each export attempt of an item has one :class:`Entry`. Its steps are recorded in order,
each one *before* the world changes when the change must be undone or finished after a
crash (``tagging``, ``merging``, ``untagging``), and *after* it when the step only saves
work on restart (``tagged``, ``repo-ready``, ``merged``...)::

    intent -> built -> tagging -> tagged -> [candidate-untagged] -> repo-ready
           -> merging -> merged                                     (then closed: merged)
    ... -> merge-failed -> untagging -> untagged -> repo-ready-after-untag
                                                               (then closed: rolled-back)

``intent`` is recorded once the attempt holds its queue's export section; ``built`` once
its NVR is known (the non-scratch build in mode ``rebuild``, the candidate in ``promote``).
An entry is *closed* (``merged``, ``rolled-back`` or ``abandoned``) only once the gate's
own state agrees with it (the item merged, failed or reset), so an open entry is exactly
an export whose outcome the gate may not know yet.

:func:`recover` decides what to do with an open entry from its steps and from what the
world shows now (:class:`Observed`: is the NVR in the destination tag, does the branch
contain the change). The rule: the change goes **forward** (its merge is completed) when
its RPM landed because of this attempt, i.e. the NVR is in the destination tag and the
attempt recorded ``tagging``; otherwise, or when the merge was refused, it goes **back**
(the NVR is untagged if this attempt tagged it, and the item is tested again, or fails
with the forge's reason). Every action is guarded: the merge only when the branch does not
contain the change, the untag only when the NVR is in the tag, and steps recorded as done
(``candidate-untagged``, ``repo-ready``) are not run again, so recovering an entry twice
(a master killed during its recovery) does no step twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

# The steps, in the order an export records them.
INTENT = "intent"  # holds the export section (before any backend call of the section)
BUILT = "built"  # the NVR is known (rebuild: after the build; promote: the candidate)
TAGGING = "tagging"  # BEFORE the tag call into the destination tag
TAGGED = "tagged"  # after it
CANDIDATE_UNTAGGED = "candidate-untagged"  # promote: after the untag from the candidate tag
REPO_READY = "repo-ready"  # after the destination's repository was regenerated: landed
MERGING = "merging"  # BEFORE the merge (expected tip and commit recorded)
MERGED = "merged"  # after the merge
MERGE_FAILED = "merge-failed"  # the forge refused the merge (reason, retest recorded)
UNTAGGING = "untagging"  # BEFORE the untag of a rollback
UNTAGGED = "untagged"  # after it
REPO_AFTER_UNTAG = "repo-ready-after-untag"  # after the repository without the NVR

STEPS = (
    INTENT,
    BUILT,
    TAGGING,
    TAGGED,
    CANDIDATE_UNTAGGED,
    REPO_READY,
    MERGING,
    MERGED,
    MERGE_FAILED,
    UNTAGGING,
    UNTAGGED,
    REPO_AFTER_UNTAG,
)
# The steps an export job records itself (the gate records the merge and the rollback).
JOB_STEPS = (INTENT, BUILT, TAGGING, TAGGED, CANDIDATE_UNTAGGED, REPO_READY)

# How an entry was closed.
CLOSED_MERGED = "merged"
CLOSED_ROLLED_BACK = "rolled-back"
CLOSED_ABANDONED = "abandoned"  # nothing of the attempt landed: nothing to undo
CLOSINGS = (CLOSED_MERGED, CLOSED_ROLLED_BACK, CLOSED_ABANDONED)

KEEP_CLOSED = 100  # closed entries kept for people (the newest)

MODES = ("rebuild", "promote")


class JournalError(ValueError):
    """A record the journal cannot take (unknown step, changed NVR...)."""


@dataclass(frozen=True)
class Entry:
    """One export attempt of a gate item."""

    key: str  # the item ("project~number")
    attempt: int
    queue: str
    project: str
    branch: str  # the target branch
    revision: str  # the change's own commit
    commit: str  # the tested (speculative merge) commit the branch moves to
    mode: str  # "rebuild" or "promote"
    tag: str  # the destination tag
    candidate_tag: str = ""  # promote mode
    nvr: str = ""  # known from ``built`` on
    expected_tip: str = ""  # the branch tip the merge expects (recorded with ``merging``)
    reason: str = ""  # why the merge was refused (``merge-failed``)
    retest: bool = False  # the refusal was "the branch moved": test again, not fail
    steps: tuple[str, ...] = ()
    times: tuple[float, ...] = ()  # when each step was recorded (for people)
    closed: str = ""  # "", or one of CLOSINGS
    note: str = ""  # what the recovery found, for people

    @property
    def ident(self) -> tuple[str, int]:
        return (self.key, self.attempt)

    @property
    def last(self) -> str:
        return self.steps[-1] if self.steps else ""

    def has(self, step: str) -> bool:
        return step in self.steps

    @property
    def number(self) -> int:
        return int(self.key.rsplit("~", 1)[1])

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "attempt": self.attempt,
            "queue": self.queue,
            "project": self.project,
            "branch": self.branch,
            "revision": self.revision,
            "commit": self.commit,
            "mode": self.mode,
            "tag": self.tag,
            "candidate_tag": self.candidate_tag,
            "nvr": self.nvr,
            "expected_tip": self.expected_tip,
            "reason": self.reason,
            "retest": self.retest,
            "steps": list(self.steps),
            "times": list(self.times),
            "closed": self.closed,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            **{
                **data,
                "steps": tuple(data.get("steps", ())),
                "times": tuple(data.get("times", ())),
            }
        )


# Fields a step may set (a field already set keeps its value: a resent record is harmless).
_STEP_FIELDS: dict[str, tuple[str, ...]] = {
    INTENT: ("nvr",),
    BUILT: ("nvr",),
    TAGGING: ("nvr",),
    MERGING: ("expected_tip",),
    MERGE_FAILED: ("reason", "retest"),
}


def begin(
    *,
    key: str,
    attempt: int,
    queue: str,
    project: str,
    branch: str,
    revision: str,
    commit: str,
    mode: str,
    tag: str,
    candidate_tag: str = "",
    nvr: str = "",
    now: float | None = None,
) -> Entry:
    """A new entry, its ``intent`` recorded."""
    if mode not in MODES:
        raise JournalError(f"unknown export mode {mode!r} (one of {', '.join(MODES)})")
    if not tag:
        raise JournalError("an export needs a destination tag")
    entry = Entry(
        key=key,
        attempt=attempt,
        queue=queue,
        project=project,
        branch=branch,
        revision=revision,
        commit=commit,
        mode=mode,
        tag=tag,
        candidate_tag=candidate_tag if mode == "promote" else "",
        nvr=nvr,
    )
    return record(entry, INTENT, now=now)


def record(entry: Entry, step: str, now: float | None = None, **values: Any) -> Entry:
    """``entry`` with ``step`` recorded (once: recording it again changes nothing, as a
    call resent after a takeover does). ``values``: the step's fields (``nvr`` with
    ``built``/``tagging``, ``expected_tip`` with ``merging``, ``reason`` and ``retest``
    with ``merge-failed``). A closed entry takes no more steps."""
    if step not in STEPS:
        raise JournalError(f"unknown export step {step!r}")
    if entry.closed:
        raise JournalError(f"export {entry.key} attempt {entry.attempt} is closed")
    allowed = _STEP_FIELDS.get(step, ())
    unknown = set(values) - set(allowed)
    if unknown:
        raise JournalError(f"step {step} takes no {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    for name, value in values.items():
        current = getattr(entry, name)
        if name == "nvr" and current and value and value != current:
            raise JournalError(
                f"export {entry.key} attempt {entry.attempt}: NVR {value} recorded after {current}"
            )
        if not current and value:
            changes[name] = value
    if (step == TAGGING or step in _AFTER_TAG) and not (changes.get("nvr") or entry.nvr):
        raise JournalError(f"step {step} of {entry.key} needs the NVR")
    if not entry.has(step):
        changes["steps"] = (*entry.steps, step)
        changes["times"] = (*entry.times, time.time() if now is None else now)
    return replace(entry, **changes) if changes else entry


_AFTER_TAG = (TAGGED, CANDIDATE_UNTAGGED, REPO_READY)


def close(entry: Entry, how: str, note: str = "") -> Entry:
    if how not in CLOSINGS:
        raise JournalError(f"unknown closing {how!r}")
    return replace(entry, closed=how, note=note or entry.note)


def reopen(entry: Entry) -> Entry:
    """A closed entry open again (a tag that landed after its attempt was given up)."""
    return replace(entry, closed="")


# -- recovery --------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What the world shows now."""

    in_tag: bool  # the entry's NVR is in the destination tag
    merged: bool  # the branch contains the change (its tested commit, or Gerrit: MERGED)


@dataclass(frozen=True)
class UntagCandidate:
    tag: str
    nvr: str
    after: str = CANDIDATE_UNTAGGED


@dataclass(frozen=True)
class PublishRepo:
    tag: str
    after: str  # REPO_READY (forward) or REPO_AFTER_UNTAG (back)


@dataclass(frozen=True)
class Merge:
    """Move ``branch`` to ``commit`` if it is still at ``expected_tip`` (compare and
    swap); ``expected_tip`` "" means: the glue reads it (the commit's first parent)."""

    project: str
    branch: str
    commit: str
    expected_tip: str
    before: str = MERGING
    after: str = MERGED


@dataclass(frozen=True)
class Untag:
    tag: str
    nvr: str
    before: str = UNTAGGING
    after: str = UNTAGGED


RecoveryAction = UntagCandidate | PublishRepo | Merge | Untag

FORWARD = "forward"
BACK = "back"

# What the gate does with the item afterwards.
OUTCOME_MERGED = "merged"  # the item merged (git has it): the model marks it merged
OUTCOME_RETEST = "retest"  # not merged, nothing landed: tested again from scratch
OUTCOME_FAILED = "failed"  # not merged, nothing landed: fails with ``reason``
OUTCOME_NONE = "none"  # the gate already decided (the item left the gate unmerged)


@dataclass(frozen=True)
class Plan:
    decision: str  # FORWARD or BACK
    actions: tuple[RecoveryAction, ...]
    outcome: str
    closed: str  # how the entry is closed once the actions ran and the gate agrees
    reason: str = ""  # for people: why, and anything an admin must look at
    warning: bool = False  # the world disagrees with the journal in a way no step fixes


def recover(entry: Entry, observed: Observed, *, leaving: bool = False) -> Plan:
    """What to do with an open entry.

    ``leaving``: the item has left (or is leaving) the gate unmerged (it failed, or was
    dequeued): never forward, only the rollback of what the attempt landed.

    After a :class:`Merge` the glue records ``merged`` (or ``merge-failed`` when the
    forge refused: then it calls :func:`recover` again, which goes back)."""
    who = f"{entry.key} attempt {entry.attempt}"
    ours = entry.has(TAGGING)  # this attempt may have tagged the NVR
    if observed.merged:
        # Git has the change: nothing can take it out, the RPM must be (stay) in.
        if observed.in_tag:
            actions = _finish_landing(entry) if not leaving else ()
            return Plan(FORWARD, actions, OUTCOME_MERGED, CLOSED_MERGED, f"{who}: merged")
        what = entry.nvr or "its RPM (never built by the gate)"
        return Plan(
            FORWARD,
            (),
            OUTCOME_MERGED,
            CLOSED_MERGED,
            f"{who}: the branch contains the change but {what} is not in {entry.tag}: "
            "an admin must tag it (the gate tags only before merging)",
            warning=True,
        )
    if entry.has(MERGED):
        # The merge happened (recorded after it) and the branch no longer has it: someone
        # moved the branch back. Never merge twice: leave it to an admin.
        return Plan(
            FORWARD,
            (),
            OUTCOME_MERGED,
            CLOSED_MERGED,
            f"{who}: merged, but branch {entry.branch} no longer contains it (moved back "
            "outside the gate?): not merged again, an admin must look",
            warning=True,
        )
    refused = entry.has(MERGE_FAILED)
    if observed.in_tag and ours and not (leaving or refused or entry.has(UNTAGGING)):
        # The RPM landed because of this attempt: complete the merge.
        merge = Merge(entry.project, entry.branch, entry.commit, entry.expected_tip)
        return Plan(
            FORWARD,
            (*_finish_landing(entry), merge),
            OUTCOME_MERGED,
            CLOSED_MERGED,
            f"{who}: {entry.nvr} is in {entry.tag}: completing the merge",
        )
    # Back: the change is not merged (and will not be by this attempt).
    if refused:
        outcome = OUTCOME_RETEST if entry.retest else OUTCOME_FAILED
        why = f"the merge was refused: {entry.reason}" if entry.reason else "not merged"
    else:
        outcome = OUTCOME_RETEST
        why = "the master stopped during its export" if not leaving else "it left the gate"
    if leaving:
        outcome = OUTCOME_NONE
    if observed.in_tag and ours:
        actions: tuple[RecoveryAction, ...] = (
            Untag(entry.tag, entry.nvr),
            PublishRepo(entry.tag, REPO_AFTER_UNTAG),
        )
        return Plan(
            BACK,
            actions,
            outcome,
            CLOSED_ROLLED_BACK,
            f"{who}: {why}; untagging {entry.nvr} from {entry.tag}",
        )
    if observed.in_tag:  # in the tag, but this attempt never asked for it
        return Plan(
            BACK,
            (),
            outcome,
            CLOSED_ABANDONED,
            f"{who}: {why}; {entry.nvr} is in {entry.tag} but this attempt never tagged "
            "it: left as it is",
            warning=True,
        )
    closed = CLOSED_ROLLED_BACK if entry.has(UNTAGGING) else CLOSED_ABANDONED
    if entry.has(UNTAGGING) and not entry.has(REPO_AFTER_UNTAG):
        # Killed after the untag, before the repository without the NVR: finish that.
        return Plan(
            BACK,
            (PublishRepo(entry.tag, REPO_AFTER_UNTAG),),
            outcome,
            closed,
            f"{who}: {why}; {entry.nvr} was untagged, regenerating the repository",
        )
    nothing = f"{entry.nvr or 'its RPM'} is not in {entry.tag}" if ours else "nothing landed"
    return Plan(BACK, (), outcome, closed, f"{who}: {why}; {nothing}")


def _finish_landing(entry: Entry) -> tuple[RecoveryAction, ...]:
    """The steps of a landing not recorded as done (each runs at most once)."""
    actions: list[RecoveryAction] = []
    if entry.mode == "promote" and entry.candidate_tag and not entry.has(CANDIDATE_UNTAGGED):
        actions.append(UntagCandidate(entry.candidate_tag, entry.nvr))
    if not entry.has(REPO_READY):
        actions.append(PublishRepo(entry.tag, REPO_READY))
    return tuple(actions)


# -- the journal ------------------------------------------------------------------------


@dataclass
class Journal:
    """Every open entry, and the newest closed ones (for people)."""

    entries: dict[tuple[str, int], Entry] = field(default_factory=dict)

    def get(self, key: str, attempt: int) -> Entry | None:
        return self.entries.get((key, attempt))

    def open_entries(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.closed]

    def open_for(self, key: str) -> list[Entry]:
        return [e for e in self.entries.values() if e.key == key and not e.closed]

    def put(self, entry: Entry) -> Entry:
        self.entries.pop(entry.ident, None)
        self.entries[entry.ident] = entry  # the newest last
        self._prune()
        return entry

    def _prune(self) -> None:
        closed = [ident for ident, e in self.entries.items() if e.closed]
        for ident in closed[: max(0, len(closed) - KEEP_CLOSED)]:
            del self.entries[ident]

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "entries": [e.to_json() for e in self.entries.values()]}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Journal:
        journal = cls()
        for item in (data or {}).get("entries", []):
            entry = Entry.from_json(item)
            journal.entries[entry.ident] = entry
        return journal
