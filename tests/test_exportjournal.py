"""gating.exportjournal: the export journal and its recovery (pure, no Twisted).

Two kinds of tests:

* a table: (steps recorded, what the world shows) -> the decision, the actions, the
  item's outcome and how the entry closes;
* a simulation: an export (both modes) is killed after every one of its points (each
  journal record and each change of the world), then recovered, itself possibly killed
  at any of its points and recovered again; every end state must satisfy the invariant:
  the change is merged iff its RPM is in the destination tag, merged at most once, tagged
  at most once, and untagged only if it was tagged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pytest

from gating import exportjournal as ej
from gating.exportjournal import (
    BACK,
    BUILT,
    CANDIDATE_UNTAGGED,
    FORWARD,
    INTENT,
    MERGE_FAILED,
    MERGED,
    MERGING,
    REPO_AFTER_UNTAG,
    REPO_READY,
    TAGGED,
    TAGGING,
    UNTAGGED,
    UNTAGGING,
    Entry,
    Journal,
    JournalError,
    Observed,
    PublishRepo,
    Untag,
    UntagCandidate,
)

NVR = "nova-12.0.1-1"
DEST = "rdo-liberty"
CAND = "rdo-candidate"
BASE = "b" * 40
COMMIT = "c" * 40


def entry(mode: str = "rebuild", steps: tuple[str, ...] = (), **values) -> Entry:
    e = ej.begin(
        key="nova~1",
        attempt=1,
        queue="rdo",
        project="nova",
        branch="main",
        revision="a" * 40,
        commit=COMMIT,
        mode=mode,
        tag=DEST,
        candidate_tag=CAND,
        nvr=NVR if mode == "promote" else "",
        now=1.0,
    )
    for step in steps:
        extra = {}
        if step in (BUILT, TAGGING):
            extra["nvr"] = NVR
        if step == MERGING:
            extra["expected_tip"] = BASE
        if step == MERGE_FAILED:
            extra = {"reason": values.get("reason", "branch moved"), "retest": True}
        e = ej.record(e, step, now=2.0, **extra)
    return e


# -- records -----------------------------------------------------------------------------


def test_a_step_is_recorded_once_and_a_resent_record_changes_nothing():
    e = entry(steps=(BUILT, TAGGING))
    assert e.steps == (INTENT, BUILT, TAGGING) and e.nvr == NVR
    assert ej.record(e, TAGGING, nvr=NVR) is e  # resent after a takeover: the same entry
    assert ej.record(e, BUILT) is e


@pytest.mark.parametrize(
    ("step", "values", "message"),
    [
        ("landed", {}, "unknown export step 'landed'"),
        (TAGGED, {"nvr": NVR}, "step tagged takes no nvr"),
        (BUILT, {"nvr": "nova-12.0.2-1"}, "NVR nova-12.0.2-1 recorded after nova-12.0.1-1"),
    ],
)
def test_records_the_journal_refuses(step, values, message):
    with pytest.raises(JournalError, match=message):
        ej.record(entry(steps=(BUILT,)), step, **values)


def test_the_tag_steps_need_the_nvr():
    with pytest.raises(JournalError, match="step tagging of nova~1 needs the NVR"):
        ej.record(entry(), TAGGING)


def test_a_closed_entry_takes_no_more_steps_until_it_is_reopened():
    e = ej.close(entry(steps=(BUILT, TAGGING)), ej.CLOSED_ABANDONED, "gave up")
    with pytest.raises(JournalError, match="closed"):
        ej.record(e, TAGGED)
    assert ej.record(ej.reopen(e), TAGGED).steps[-1] == TAGGED


def test_begin_checks_the_mode_and_the_tag():
    with pytest.raises(JournalError, match="unknown export mode 'copy'"):
        ej.begin(
            key="k~1", attempt=1, queue="q", project="p", branch="main", revision="r",
            commit="c", mode="copy", tag=DEST,
        )  # fmt: skip
    with pytest.raises(JournalError, match="needs a destination tag"):
        ej.begin(
            key="k~1", attempt=1, queue="q", project="p", branch="main", revision="r",
            commit="c", mode="rebuild", tag="",
        )  # fmt: skip


def test_the_journal_round_trips_through_json_and_keeps_the_newest_closed_entries():
    journal = Journal()
    count = 2 * ej.KEEP_CLOSED + 10
    for n in range(count):
        e = ej.begin(
            key=f"nova~{n}", attempt=1, queue="rdo", project="nova", branch="main",
            revision="a" * 40, commit=COMMIT, mode="rebuild", tag=DEST,
        )  # fmt: skip
        journal.put(e if n % 10 == 0 else ej.close(e, ej.CLOSED_MERGED))
    restored = Journal.from_json(json.loads(json.dumps(journal.to_json())))
    assert restored == journal
    closed = [e.key for e in restored.entries.values() if e.closed]
    assert len(closed) == ej.KEEP_CLOSED and closed[-1] == f"nova~{count - 1}"
    assert len(restored.open_entries()) == count // 10  # every open entry is kept
    assert restored.open_for("nova~0")[0].steps == (INTENT,)
    assert Journal.from_json(None) == Journal()


# -- the decision table -----------------------------------------------------------------

M, T = True, False  # readability of the table: merged?, in the tag?
LANDING = (INTENT, BUILT, TAGGING, TAGGED, REPO_READY)

TABLE = [
    # steps after intent, merged, in tag -> decision, actions, outcome, closed
    ((), False, False, BACK, [], "retest", "abandoned"),
    ((BUILT,), False, False, BACK, [], "retest", "abandoned"),
    # a tag call may have run: the tag says it did not land
    ((BUILT, TAGGING), False, False, BACK, [], "retest", "abandoned"),
    # it landed (the tag call ran): forward, the steps not recorded as done run
    ((BUILT, TAGGING), False, True, FORWARD, ["publish", "merge"], "merged", "merged"),
    ((BUILT, TAGGING, TAGGED), False, True, FORWARD, ["publish", "merge"], "merged", "merged"),
    (LANDING[1:], False, True, FORWARD, ["merge"], "merged", "merged"),
    ((*LANDING[1:], MERGING), False, True, FORWARD, ["merge"], "merged", "merged"),
    # merged, the record of it lost (or not): nothing runs again
    ((*LANDING[1:], MERGING), True, True, FORWARD, [], "merged", "merged"),
    ((*LANDING[1:], MERGING, MERGED), True, True, FORWARD, [], "merged", "merged"),
    ((BUILT, TAGGING, TAGGED), True, True, FORWARD, ["publish"], "merged", "merged"),
    # the merge was refused: back, untagging what it tagged
    (
        (*LANDING[1:], MERGING, MERGE_FAILED),
        False,
        True,
        BACK,
        ["untag", "publish"],
        "retest",
        "rolled-back",
    ),
    # killed during the rollback: it goes on from where it was
    (
        (*LANDING[1:], MERGING, MERGE_FAILED, UNTAGGING),
        False,
        True,
        BACK,
        ["untag", "publish"],
        "retest",
        "rolled-back",
    ),
    (
        (*LANDING[1:], MERGING, MERGE_FAILED, UNTAGGING),
        False,
        False,
        BACK,
        ["publish"],
        "retest",
        "rolled-back",
    ),
    (
        (*LANDING[1:], MERGING, MERGE_FAILED, UNTAGGING, UNTAGGED, REPO_AFTER_UNTAG),
        False,
        False,
        BACK,
        [],
        "retest",
        "rolled-back",
    ),
    # someone else's doing: nothing of ours to undo or to finish
    ((BUILT,), False, True, BACK, [], "retest", "abandoned"),  # in the tag, never tagged by us
    ((BUILT, TAGGING, TAGGED), False, False, BACK, [], "retest", "abandoned"),  # untagged
    ((BUILT,), True, False, FORWARD, [], "merged", "merged"),  # merged outside the gate
    ((*LANDING[1:], MERGING, MERGED), False, True, FORWARD, [], "merged", "merged"),  # moved back
]


def kinds(actions) -> list[str]:
    names = {UntagCandidate: "untag-candidate", PublishRepo: "publish", ej.Merge: "merge"}
    return [names.get(type(a), "untag") for a in actions]


@pytest.mark.parametrize(
    ("steps", "merged", "in_tag", "decision", "actions", "outcome", "closed"), TABLE
)
def test_recovery_table(steps, merged, in_tag, decision, actions, outcome, closed):
    plan = ej.recover(entry(steps=steps), Observed(in_tag=in_tag, merged=merged))
    assert (plan.decision, kinds(plan.actions), plan.outcome, plan.closed) == (
        decision,
        actions,
        outcome,
        closed,
    ), plan.reason


def test_promote_untags_the_candidate_once_when_it_goes_forward():
    e = entry("promote", steps=(TAGGING, TAGGED))
    plan = ej.recover(e, Observed(in_tag=True, merged=False))
    assert kinds(plan.actions) == ["untag-candidate", "publish", "merge"]
    assert plan.actions[0] == UntagCandidate(CAND, NVR)
    done = ej.record(ej.record(e, CANDIDATE_UNTAGGED), REPO_READY)
    assert kinds(ej.recover(done, Observed(True, False)).actions) == ["merge"]


def test_a_refused_merge_that_was_not_a_moved_branch_fails_the_item_with_the_forges_words():
    e = ej.record(
        entry(steps=(*LANDING[1:], MERGING)),
        MERGE_FAILED,
        reason="Gerrit: change is abandoned",
        retest=False,
    )
    plan = ej.recover(e, Observed(in_tag=True, merged=False))
    assert plan.outcome == "failed" and plan.actions == (
        Untag(DEST, NVR),
        PublishRepo(DEST, REPO_AFTER_UNTAG),
    )
    assert "the merge was refused: Gerrit: change is abandoned" in plan.reason


def test_an_item_leaving_the_gate_never_goes_forward():
    for steps in [(), (BUILT,), (BUILT, TAGGING), LANDING[1:], (*LANDING[1:], MERGING)]:
        e = entry(steps=steps)
        plan = ej.recover(e, Observed(in_tag=e.has(TAGGING), merged=False), leaving=True)
        assert plan.decision == BACK and plan.outcome == "none"
        assert ("untag" in kinds(plan.actions)) is e.has(TAGGING)


def test_the_reasons_say_what_was_found():
    plan = ej.recover(entry(steps=(BUILT,)), Observed(in_tag=False, merged=True))
    assert plan.warning and "an admin must tag it" in plan.reason
    plan = ej.recover(entry(steps=LANDING[1:]), Observed(in_tag=True, merged=False))
    assert plan.reason == (
        f"nova~1 attempt 1: {NVR} is in {DEST}: completing the merge"
    )  # fmt: skip


# -- the simulation: killed at every point ----------------------------------------------


class Killed(Exception):
    pass


class BranchMoved(Exception):
    pass


@dataclass
class World:
    """The backend's tags and the branch, with a count of every change made to them."""

    dest: set[str] = field(default_factory=set)
    candidate: set[str] = field(default_factory=set)
    branch: list[str] = field(default_factory=lambda: [BASE])
    ops: Counter = field(default_factory=Counter)
    refuse: str = ""  # "moved": someone pushed to the branch; "forge": the forge says no

    def observe(self, e: Entry) -> Observed:
        return Observed(in_tag=bool(e.nvr) and e.nvr in self.dest, merged=e.commit in self.branch)

    def tag(self, nvr: str) -> None:
        self.ops["tag"] += nvr not in self.dest
        self.dest.add(nvr)

    def untag(self, tags: set[str], nvr: str, op: str) -> None:
        self.ops[op] += nvr in tags
        tags.discard(nvr)

    def publish(self) -> None:
        self.ops["publish"] += 1

    def merge(self, commit: str, expected: str) -> None:
        if self.refuse == "forge":
            raise ValueError("the forge refused")
        if self.branch[-1] != expected:
            raise BranchMoved(expected)
        self.ops["merge"] += 1
        self.branch.append(commit)


class Run:
    """Carries out journal records and world changes, killed at the ``kill_at``-th."""

    def __init__(self, world: World, e: Entry, kill_at: int | None) -> None:
        self.world, self.entry, self.kill_at, self.points = world, e, kill_at, 0

    def point(self) -> None:
        self.points += 1
        if self.kill_at is not None and self.points >= self.kill_at:
            raise Killed

    def rec(self, step: str, **values) -> None:
        self.entry = ej.record(self.entry, step, **values)
        self.point()

    def do(self, fn, *args) -> None:
        fn(*args)
        self.point()

    def export(self, mode: str) -> None:
        """The live path: the export job, then the gate's merge, then the close."""
        w = self.world
        self.point()  # intent recorded by begin()
        if mode == "rebuild":
            self.rec(BUILT, nvr=NVR)
        self.rec(TAGGING, nvr=NVR)
        self.do(w.tag, NVR)
        self.rec(TAGGED)
        if mode == "promote":
            self.do(w.untag, w.candidate, NVR, "untag-candidate")
            self.rec(CANDIDATE_UNTAGGED)
        self.do(w.publish)
        self.rec(REPO_READY)
        self.rec(MERGING, expected_tip=BASE)
        self.do(w.merge, COMMIT, BASE)
        self.rec(MERGED)
        self.entry = ej.close(self.entry, ej.CLOSED_MERGED)

    def recover(self, leaving: bool = False) -> ej.Plan:
        """The glue's recovery (gating.gate: _settle), against the simulated world."""
        w = self.world
        for _ in range(3):
            plan = ej.recover(self.entry, w.observe(self.entry), leaving=leaving)
            refused = False
            for action in plan.actions:
                if isinstance(action, UntagCandidate):
                    self.do(w.untag, w.candidate, action.nvr, "untag-candidate")
                    self.rec(action.after)
                elif isinstance(action, PublishRepo):
                    self.do(w.publish)
                    self.rec(action.after)
                elif isinstance(action, Untag):
                    self.rec(action.before)
                    self.do(w.untag, w.dest, action.nvr, "untag")
                    self.rec(action.after)
                else:
                    expected = action.expected_tip or BASE
                    self.rec(MERGING, expected_tip=expected)
                    try:
                        self.do(w.merge, action.commit, expected)
                    except (BranchMoved, ValueError) as exc:
                        moved = isinstance(exc, BranchMoved)
                        self.rec(MERGE_FAILED, reason=str(exc), retest=moved)
                        refused = True
                        break
                    self.rec(MERGED)
            if not refused:
                self.entry = ej.close(self.entry, plan.closed, plan.reason)
                return plan
        raise AssertionError("recovery did not settle")


def fresh(mode: str) -> tuple[World, Entry]:
    world = World(candidate={NVR} if mode == "promote" else set())
    e = ej.begin(
        key="nova~1", attempt=1, queue="rdo", project="nova", branch="main",
        revision="a" * 40, commit=COMMIT, mode=mode, tag=DEST, candidate_tag=CAND,
        nvr=NVR if mode == "promote" else "",
    )  # fmt: skip
    return world, e


def export_points(mode: str) -> int:
    world, e = fresh(mode)
    run = Run(world, e, None)
    run.export(mode)
    return run.points


def check_invariant(world: World, e: Entry) -> None:
    merged, landed = COMMIT in world.branch, NVR in world.dest
    assert merged == landed, (world, e.steps)
    assert world.ops["merge"] <= 1 and world.ops["tag"] <= 1, world.ops
    assert world.ops["untag"] <= world.ops["tag"], world.ops
    assert world.ops["untag-candidate"] <= 1, world.ops
    if e.mode == "promote" and merged:
        assert NVR not in world.candidate  # promoted: moved, not copied


def recover_until_settled(world: World, e: Entry, kill_at: int | None, **kw) -> Run:
    """Recovery killed at its ``kill_at``-th point (None: not killed), then run again."""
    run = Run(world, e, kill_at)
    try:
        run.recover(**kw)
    except Killed:
        run = Run(world, run.entry, None)
        run.recover(**kw)
    return run


@pytest.mark.parametrize("mode", ["rebuild", "promote"])
def test_killed_after_every_point_of_the_export_and_of_its_recovery(mode):
    total = export_points(mode)
    assert total == (10 if mode == "rebuild" else 11)
    seen: set[tuple[int, str, str]] = set()
    for kill_at in range(1, total + 1):
        for recovery_kill in [None, *range(1, 8)]:
            world, e = fresh(mode)
            run = Run(world, e, kill_at)
            with pytest.raises(Killed):
                run.export(mode)
            tagged_before_kill = NVR in world.dest
            after = recover_until_settled(world, run.entry, recovery_kill)
            check_invariant(world, after.entry)
            assert after.entry.closed
            # Forward exactly when the tag had landed: RPM and merge, no re-test.
            merged = COMMIT in world.branch
            assert merged is tagged_before_kill, (kill_at, recovery_kill, after.entry.steps)
            # A settled entry recovered again does nothing more.
            ops = Counter(world.ops)
            again = ej.recover(ej.reopen(after.entry), world.observe(after.entry))
            assert not any(isinstance(a, (ej.Merge, Untag)) for a in again.actions)
            assert again.outcome == ("merged" if merged else "retest")
            assert world.ops == ops
            seen.add((kill_at, "merged" if merged else "back", after.entry.closed))
    # Both ends were reached: back before the tag landed, forward from then on.
    assert {s[1] for s in seen} == {"merged", "back"}


@pytest.mark.parametrize("mode", ["rebuild", "promote"])
@pytest.mark.parametrize("refuse", ["moved", "forge"])
def test_a_merge_refused_after_the_restart_rolls_the_tag_back(mode, refuse):
    total = export_points(mode)
    for kill_at in range(1, total + 1):
        world, e = fresh(mode)
        run = Run(world, e, kill_at)
        with pytest.raises(Killed):
            run.export(mode)
        if COMMIT in world.branch:
            continue  # merged before the kill: nothing to refuse
        world.refuse = refuse
        if refuse == "moved":
            world.branch.append("d" * 40)  # pushed outside the gate meanwhile
        after = recover_until_settled(world, run.entry, None)
        check_invariant(world, after.entry)
        assert COMMIT not in world.branch and NVR not in world.dest
        plan = ej.recover(ej.reopen(after.entry), world.observe(after.entry))
        if after.entry.has(MERGE_FAILED):
            assert plan.outcome == ("retest" if refuse == "moved" else "failed")


@pytest.mark.parametrize("mode", ["rebuild", "promote"])
def test_an_item_that_fails_during_its_export_leaves_nothing_landed(mode):
    """The live rollback (the item reported failed): killed at any point before its merge,
    recovered as leaving, itself killed anywhere."""
    total = export_points(mode)
    for kill_at in range(1, total - 2):  # before the merge
        for recovery_kill in [None, 1, 2, 3, 4]:
            world, e = fresh(mode)
            run = Run(world, e, kill_at)
            with pytest.raises(Killed):
                run.export(mode)
            after = recover_until_settled(world, run.entry, recovery_kill, leaving=True)
            check_invariant(world, after.entry)
            assert COMMIT not in world.branch and NVR not in world.dest
            assert world.ops["untag"] == world.ops["tag"]


def test_the_live_export_without_a_kill_closes_merged_and_recovery_has_nothing_to_do():
    for mode in ("rebuild", "promote"):
        world, e = fresh(mode)
        run = Run(world, e, None)
        run.export(mode)
        check_invariant(world, run.entry)
        assert run.entry.closed == "merged" and world.ops["publish"] == 1
