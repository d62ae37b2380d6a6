"""gating.gate: the pure helpers of the gate scheduler (the scheduler itself runs against a
real master in tests/integration/test_gate.py)."""

from __future__ import annotations

import json

import pytest

from gating.gate import GateSettings, depends_key
from gating.queue import Change, Item


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("nova~3", "nova~3"),
        ("nova/3", "nova~3"),
        ("  nova-distgit~042 ", "nova-distgit~42"),
        ("https://review.example.org/c/nova/+/3", "nova~3"),
        ("https://review.example.org/c/nova/+/3/", "nova~3"),
        ("https://review.example.org/nova/+/17", "nova~17"),
        ("https://review.example.org/c/rpms/nova/+/3", "rpms/nova~3"),
        ("I0123456789abcdef0123456789abcdef01234567", None),
        ("$(rm -rf /)~3", None),
        ("", None),
    ],
)
def test_depends_on_values_become_change_keys(value, key):
    assert depends_key(value) == key


def test_settings_lookups():
    settings = GateSettings(
        forge_root="/srv/git",
        workdir="/srv/work",
        project_queues=(("nova", "rdo"), ("ceilometer", "rdo")),
        project_branches=(("nova", ("main", "rdo-liberty")),),
        project_pipelines=(("nova", ("packstack",)),),
    )
    assert settings.queues() == {"nova": "rdo", "ceilometer": "rdo"}
    assert settings.branches("nova") == ("main", "rdo-liberty")
    assert settings.branches("glance") == ()
    assert settings.pipelines("ceilometer") == ()


def test_run_ref_names_queue_change_and_attempt():
    from gating.gate import run_ref

    item = Item(change=Change("nova", 7, "main", "a" * 40), queue="rdo", attempt=3)
    assert run_ref(item) == "refs/gating/rdo/nova/7/3"


class _Backend:
    kind = "local"

    def __init__(self) -> None:
        self.untagged: list[tuple[str, str]] = []

    def untag(self, tag: str, nvr: str) -> bool:
        self.untagged.append((tag, nvr))
        return True


@pytest.fixture
def in_line(monkeypatch):
    """Blocking calls run in line (no reactor, no threads) for these tests."""
    from twisted.internet import defer

    import gating.gate

    monkeypatch.setattr(
        gating.gate.threads, "deferToThread", lambda f, *a, **k: defer.maybeDeferred(f, *a, **k)
    )


def _scheduler_with(item: Item):
    from types import SimpleNamespace

    from gating.gate import GateScheduler
    from gating.queue import Gate

    backend = _Backend()

    class Scheduler(GateScheduler):
        master = SimpleNamespace(
            service_manager=SimpleNamespace(
                namedServices={"gating-backend": SimpleNamespace(backend=backend)}
            )
        )

    scheduler = Scheduler.__new__(Scheduler)
    scheduler.gate = Gate.for_projects({"nova": "rdo"})
    scheduler.gate.finished.append(item)
    return scheduler, backend


def test_an_unmerged_change_whose_export_was_tagged_is_untagged(in_line):
    item = Item(Change("nova", 1, "main", "a" * 40), "rdo")
    item.info["export"] = {"nvr": "nova-12.0.1-1", "tag": "dist", "attempt": 1}
    scheduler, backend = _scheduler_with(item)
    d = scheduler._roll_back_export("nova~1")
    assert d.called and backend.untagged == [("dist", "nova-12.0.1-1")]
    assert item.history[-1] == "untagged nova-12.0.1-1 from dist (not merged)"
    scheduler._roll_back_export("nova~1")  # once only
    assert len(backend.untagged) == 1


def test_an_unmerged_change_that_never_reached_its_tag_untags_nothing(in_line):
    scheduler, backend = _scheduler_with(Item(Change("nova", 1, "main", "a" * 40), "rdo"))
    assert scheduler._roll_back_export("nova~1").called
    assert backend.untagged == []


def _bare_scheduler(basedir, set_state):
    """A GateScheduler without a master: ``set_state(key, value)`` stands for setState."""
    from types import SimpleNamespace

    from twisted.internet import defer

    from gating.gate import GateScheduler
    from gating.queue import Gate, GateEncoder

    class Scheduler(GateScheduler):
        master = SimpleNamespace(basedir=str(basedir))

    scheduler = Scheduler.__new__(Scheduler)
    scheduler.gate = Gate.for_projects({"nova": "rdo"})
    scheduler._lock = defer.DeferredLock()
    scheduler._export_waiters, scheduler._holds, scheduler._save_waiters = {}, {}, []
    scheduler._encoder = GateEncoder()
    scheduler.setState = set_state
    scheduler._do = lambda action: defer.succeed([])  # no git, no builds
    return scheduler


def test_each_event_records_the_schedulers_time_on_it(tmp_path):
    """gate-events.jsonl: one line per event, with the model step, the save and the actions."""
    import json

    from twisted.internet import defer

    from gating.gate import EVENTS_FILE

    saved: list[str] = []
    scheduler = _bare_scheduler(tmp_path, lambda key, value: defer.succeed(saved.append(value)))

    d = scheduler._event(lambda gate: gate.enqueue(Change("nova", 1, "main", "a" * 40)))
    # Saved after the event; not again after its Start, which changed nothing here.
    assert d.called and len(saved) == 1
    (line,) = (tmp_path / EVENTS_FILE).read_text().splitlines()
    record = json.loads(line)
    assert record["event"] == "test_each_event_records_the_schedulers_time_on_it"
    assert (record["items"], record["waiting"], record["kinds"]) == (1, 0, ["Start"])
    assert (record["actions"], record["state_bytes"]) == (1, len(saved[0]))
    assert record["event_ms"] == pytest.approx(record["step_ms"] + record["serialize_ms"], abs=0.01)
    assert all(record[k] >= 0 for k in ("write_ms", "actions_ms", "action_saves_ms"))

    scheduler._event(lambda gate: gate.job_result("nova~1", 7, False))  # a stale attempt
    assert len(saved) == 1 and len((tmp_path / EVENTS_FILE).read_text().splitlines()) == 2


def test_states_saved_while_a_write_is_under_way_are_coalesced(tmp_path):
    """The gate is not held during a write; the events meanwhile are written once, as the
    newest state, and each event's actions wait until its state is in the database."""
    from twisted.internet import defer

    writes: list[tuple[str, defer.Deferred]] = []

    def set_state(key, value):
        writes.append((value, defer.Deferred()))
        return writes[-1][1]

    scheduler = _bare_scheduler(tmp_path, set_state)
    scheduler.gate.queues["rdo"].window = 0  # no actions
    events = [
        scheduler._event(lambda gate, n=n: gate.enqueue(Change("nova", n, "main", "a" * 40)))
        for n in (1, 2, 3)
    ]
    assert len(writes) == 1 and not any(e.called for e in events)  # nova~1's state
    writes[0][1].callback(None)
    assert events[0].called and len(writes) == 2  # then nova~2 and nova~3 at once
    assert '"number": 2' not in writes[0][0] and '"number": 3' in writes[1][0]
    writes[1][1].callback(None)
    assert all(e.called for e in events) and len(writes) == 2


def test_a_starts_git_work_does_not_hold_the_gate_and_a_reset_item_gets_no_run(
    tmp_path, monkeypatch
):
    """While a Start's speculative merge runs, other events (the export section's) go on;
    an item dequeued meanwhile gets no run, a current one gets its run on the merge."""
    from types import SimpleNamespace

    from twisted.internet import defer

    import gating.gate
    from gating.forge import MergeResult
    from gating.gate import GateScheduler, GateSettings
    from gating.queue import Gate

    merges: list[defer.Deferred] = []

    def in_thread(fn, *args, **kwargs):
        if fn is gating.gate.forgemod.speculative_merge:
            merges.append(defer.Deferred())
            return merges[-1]
        return defer.maybeDeferred(fn, *args, **kwargs)

    monkeypatch.setattr(gating.gate.threads, "deferToThread", in_thread)
    monkeypatch.setattr(gating.gate.forgemod, "publish", lambda *args: None)

    class Scheduler(GateScheduler):
        master = SimpleNamespace(basedir=str(tmp_path))

    scheduler = Scheduler.__new__(Scheduler)
    scheduler.gate = Gate.for_projects({"nova": "rdo"})
    scheduler.settings = GateSettings(
        forge_root=str(tmp_path / "git"),
        workdir=str(tmp_path / "work"),
        project_queues=(("nova", "rdo"),),
        project_branches=(("nova", ("main",)),),
        project_pipelines=(("nova", ("gate",)),),
    )
    scheduler.forge = SimpleNamespace(
        repo_path=lambda project: tmp_path / "git" / f"{project}.git",
        branch_tip=lambda project, branch: "t" * 40,
        set_result=lambda *args: None,
    )
    _init_without_buildbot(scheduler, monkeypatch)
    scheduler.setState = lambda key, value: defer.succeed(None)
    buildsets: list[str] = []

    def add_buildset(**kwargs):
        buildsets.append(kwargs["sourcestamps"][0]["revision"])
        return defer.succeed((len(buildsets), {}))

    scheduler.addBuildsetForSourceStamps = add_buildset

    first = scheduler._event(lambda gate: gate.enqueue(Change("nova", 1, "main", "a" * 40)))
    assert len(merges) == 1 and not first.called  # nova~1's merge runs ...
    second = scheduler._event(lambda gate: gate.enqueue(Change("nova", 2, "main", "b" * 40)))
    assert len(merges) == 2  # ... and the gate took the next events meanwhile
    assert scheduler._event(lambda gate: []).called
    # nova~1 leaves: nova~2 (tested on it) starts again, as attempt 2.
    dequeued = scheduler._event(lambda gate: gate.dequeue("nova~1", "not wanted"))
    assert len(merges) == 3
    for merge, commit in zip(merges, "cde", strict=True):
        merge.callback(MergeResult(commit * 40))
    assert first.called and second.called and dequeued.called
    assert buildsets == ["e" * 40]  # no run for nova~1 (dequeued), nor nova~2's attempt 1
    item = scheduler.gate.find("nova~2")
    assert (item.attempt, item.info["runs"]) == (2, {"2": 1})
    assert not scheduler._lock.locked


def _settings(pipelines: tuple[str, ...]) -> GateSettings:
    return GateSettings(
        forge_root="/srv/git",
        workdir="/srv/work",
        project_queues=(("nova", "rdo"),),
        project_branches=(("nova", ("main",)),),
        project_pipelines=(("nova", pipelines),),
    )


def _init_without_buildbot(scheduler, monkeypatch) -> None:
    """What GateScheduler.__init__ sets up (its lock, the export section's bookkeeping...),
    without Buildbot's scheduler machinery."""
    from buildbot.schedulers.base import ReconfigurableBaseScheduler

    from gating.gate import GateScheduler

    with monkeypatch.context() as m:
        m.setattr(ReconfigurableBaseScheduler, "__init__", lambda self, *a, **k: None)
        GateScheduler.__init__(scheduler)


def test_an_export_section_record_has_the_time_its_job_spent_in_backend_calls(
    tmp_path, monkeypatch
):
    """export-holds.jsonl: the section's start and end, and ``backend``: what its export
    job reported of its time in koji calls (None when it reported nothing)."""
    import json
    from types import SimpleNamespace

    from twisted.internet import defer

    from gating.gate import HOLDS_FILE, GateScheduler
    from gating.queue import Gate

    class Scheduler(GateScheduler):
        master = SimpleNamespace(basedir=str(tmp_path))

    scheduler = Scheduler.__new__(Scheduler)
    _init_without_buildbot(scheduler, monkeypatch)
    scheduler.gate = Gate.for_projects({"nova": "rdo"})
    scheduler.settings = _settings(("gate",))
    scheduler.setState = lambda key, value: defer.succeed(None)
    scheduler._do = lambda action: defer.succeed([])  # no git, no builds

    def section(number: int, backend: float | None) -> None:
        key = f"nova~{number}"
        scheduler._event(lambda gate: gate.enqueue(Change("nova", number, "main", "a" * 40)))
        scheduler._event(lambda gate: [] if gate.export_request(key, 1) else [])
        intent = {"mode": "rebuild", "tag": "dist", "commit": "c" * 40}
        assert scheduler.export_step(key, 1, "intent", intent).result is True
        assert scheduler.export_tagging(key, 1, f"nova-{number}-1", "dist").result is True
        assert scheduler.export_landed(key, 1, f"nova-{number}-1", backend).result is True
        scheduler._event(lambda gate: gate.job_result(key, 1, True))  # -> Merge (faked)
        scheduler._event(lambda gate: gate.merged_ok(key, 1))  # leaves: the section ends

    section(1, 2.5)
    section(2, None)
    records = [json.loads(line) for line in (tmp_path / HOLDS_FILE).read_text().splitlines()]
    assert [(r["change"], r["outcome"], r["nvr"], r["backend"]) for r in records] == [
        ("nova~1", "merged", "nova-1-1", 2.5),
        ("nova~2", "merged", "nova-2-1", None),
    ]
    assert all(r["end"] >= r["start"] for r in records)


@pytest.mark.parametrize(
    ("pipelines", "state"), [(("gate",), "merging"), (("gate", "docs"), "testing")]
)
def test_an_item_whose_export_landed_merges_then_if_nothing_else_runs_for_it(
    tmp_path, monkeypatch, pipelines, state
):
    """The export is the only job of its pipeline's last stage, run once every other job
    passed: when it landed, an item with no other gate pipeline has passed and merges at
    once; with another pipeline, it waits for its runs' results."""
    from types import SimpleNamespace

    from twisted.internet import defer

    from gating.gate import GateScheduler
    from gating.queue import Gate, Merge

    class Scheduler(GateScheduler):
        master = SimpleNamespace(basedir=str(tmp_path))

    done: list[object] = []
    scheduler = Scheduler.__new__(Scheduler)
    _init_without_buildbot(scheduler, monkeypatch)
    scheduler.gate = Gate.for_projects({"nova": "rdo"})
    scheduler.settings = _settings(pipelines)
    scheduler.setState = lambda key, value: defer.succeed(None)
    scheduler._do = lambda action: defer.succeed(done.append(action) or [])
    scheduler._event(lambda gate: gate.enqueue(Change("nova", 1, "main", "a" * 40)))
    scheduler._event(lambda gate: [] if gate.export_request("nova~1", 1) else [])
    assert scheduler.export_landed("nova~1", 1, "nova-1-1", 0.5).result is True
    assert scheduler.gate.find("nova~1").state.value == state
    assert any(isinstance(a, Merge) for a in done) is (state == "merging")


# -- the export journal (gating.exportjournal) in the scheduler ---------------------------

COMMIT, BASE = "c" * 40, "b" * 40


class _World:
    """The build backend (tags) and the forge (one branch) the journal's glue acts on."""

    kind = "local"

    def __init__(self) -> None:
        self.tags: dict[str, set[str]] = {"dist": set(), "cand": set()}
        self.branch = [BASE]
        self.calls: list[str] = []
        self.refuse: Exception | None = None

    def tagged(self, tag: str) -> list[str]:
        return sorted(self.tags[tag])

    def tag(self, tag: str, nvr: str) -> bool:
        self.calls.append(f"tag {tag} {nvr}")
        fresh = nvr not in self.tags[tag]
        self.tags[tag].add(nvr)
        return fresh

    def untag(self, tag: str, nvr: str) -> bool:
        self.calls.append(f"untag {tag} {nvr}")
        present = nvr in self.tags[tag]
        self.tags[tag].discard(nvr)
        return present

    def publish_repo(self, tag: str) -> str:
        self.calls.append(f"repo {tag}")
        return "1"

    def branch_tip(self, project: str, branch: str) -> str:
        return self.branch[-1]

    def merge(self, project: str, branch: str, commit: str, expected: str) -> None:
        from gating.forge import BranchMoved

        if self.refuse is not None:
            raise self.refuse
        if self.branch[-1] != expected:
            raise BranchMoved(project, branch, expected, self.branch[-1])
        self.calls.append(f"merge {commit[:4]}")
        self.branch.append(commit)

    def repo_path(self, project: str) -> str:
        return f"/nonexistent/{project}.git"

    def set_result(self, project: str, number: int, status: str, reason: str = "") -> None:
        self.calls.append(f"report {project}~{number} {status}")

    @property
    def merged(self) -> bool:
        return COMMIT in self.branch

    def landed(self, nvr: str = "nova-1-1") -> bool:
        return nvr in self.tags["dist"]


class _Database:
    """Object state: what a master killed now would find (the last write of each key)."""

    def __init__(self) -> None:
        self.state: dict[str, object] = {}
        self.writes: list[str] = []

    def set_state(self, key, value):
        from twisted.internet import defer

        self.state[key] = json.loads(json.dumps(value))
        self.writes.append(key)
        return defer.succeed(None)


def _journaled_scheduler(
    tmp_path, monkeypatch, world: _World, db: _Database, saved=None, pipelines=("gate",)
):
    """A GateScheduler on ``world`` and ``db``, blocking calls in line; ``saved``: start
    from the database's gate and journal, as a restarted master does. With a second
    pipeline, a landed export waits for it before the merge."""
    from types import SimpleNamespace

    from twisted.internet import defer

    import gating.gate
    from gating.exportjournal import Journal
    from gating.gate import GateScheduler
    from gating.queue import Gate

    monkeypatch.setattr(
        gating.gate.threads, "deferToThread", lambda f, *a, **k: defer.maybeDeferred(f, *a, **k)
    )
    monkeypatch.setattr(gating.gate.forgemod, "first_parent", lambda repo, commit: BASE)
    backend = SimpleNamespace(backend=world)

    class Scheduler(GateScheduler):
        master = SimpleNamespace(
            basedir=str(tmp_path),
            service_manager=SimpleNamespace(namedServices={"gating-backend": backend}),
        )

    scheduler = Scheduler.__new__(Scheduler)
    _init_without_buildbot(scheduler, monkeypatch)
    scheduler.settings = _settings(pipelines)
    scheduler.forge = world
    scheduler.setState = db.set_state
    scheduler._contains = lambda project, branch, number, commit: commit in world.branch

    def start(item):  # no git: the speculative merge is COMMIT, on BASE
        item.info.update(merge_commit=COMMIT, base=BASE)
        return defer.succeed([])

    scheduler._start = start
    if saved is None:
        scheduler.gate = Gate.for_projects({"nova": "rdo"})
    else:
        scheduler.gate = Gate.from_json(json.loads(db.state["gate"]), {"nova": "rdo"})
        scheduler._journal = Journal.from_json(db.state.get("export-journal"))
    return scheduler


def _holding(scheduler) -> None:
    """nova~1 attempt 1 tested, holding its queue's export section."""
    scheduler._event(lambda gate: gate.enqueue(Change("nova", 1, "main", "a" * 40)))
    scheduler._event(lambda gate: [] if gate.export_request("nova~1", 1) else [])
    assert scheduler.gate.find("nova~1").export == "holding"


def _export_until(scheduler, world: _World, last: str) -> None:
    """The export job's side of the section (rebuild mode), up to and with ``last``."""
    intent = {"mode": "rebuild", "tag": "dist", "commit": COMMIT}
    steps = [
        ("intent", lambda: scheduler.export_step("nova~1", 1, "intent", intent)),
        ("built", lambda: scheduler.export_step("nova~1", 1, "built", {"nvr": "nova-1-1"})),
        ("tagging", lambda: scheduler.export_tagging("nova~1", 1, "nova-1-1", "dist")),
        ("tag", lambda: world.tag("dist", "nova-1-1")),
        ("tagged", lambda: scheduler.export_step("nova~1", 1, "tagged")),
        ("repo", lambda: world.publish_repo("dist")),
        ("repo-ready", lambda: scheduler.export_step("nova~1", 1, "repo-ready")),
        ("landed", lambda: scheduler.export_landed("nova~1", 1, "nova-1-1")),
    ]
    for name, run in steps:
        result = run()
        if hasattr(result, "result"):
            assert result.result is not False, name
        if name == last:
            return
    raise AssertionError(last)


def _restart(tmp_path, monkeypatch, world, db):
    """A master started on what ``db`` holds: the journal recovered, then restart_all."""
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db, saved=True)
    d = scheduler._lock.acquire().addCallback(lambda _: scheduler._recover_journal())
    d.addBoth(lambda r: (scheduler._lock.release(), r)[1])
    actions = d.result + scheduler.gate.restart_all("the master restarted")
    done = scheduler._apply(actions)
    assert done.called, done
    return scheduler, actions


@pytest.mark.parametrize(
    ("killed_after", "forward"),
    [
        ("intent", False),
        ("built", False),
        ("tagging", False),  # the tag call never ran: nothing landed
        ("tag", True),  # landed, not recorded yet: the tag says so
        ("tagged", True),
        ("repo", True),  # the repository is made again (its step was not recorded)
        ("repo-ready", True),
        ("landed", True),
    ],
)
def test_a_master_killed_during_an_export_finishes_or_undoes_it_on_restart(
    tmp_path, monkeypatch, killed_after, forward
):
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db, pipelines=("gate", "docs"))
    _holding(scheduler)
    _export_until(scheduler, world, killed_after)  # landed: docs still runs, no merge yet
    assert not world.merged
    world.calls.clear()

    restarted, actions = _restart(tmp_path, monkeypatch, world, db)
    assert world.merged is world.landed() is forward
    assert world.calls.count("merge cccc") == (1 if forward else 0)
    entry = restarted.journal().get("nova~1", 1)
    assert entry.closed == ("merged" if forward else "abandoned"), entry
    item = restarted.gate.find("nova~1")
    if forward:
        assert item is None and "nova~1" in restarted.gate.merged
        assert restarted.gate.finished[-1].state.value == "merged"
        assert "report nova~1 merged" in world.calls
        assert world.calls.count("repo dist") == (
            0 if killed_after in ("repo-ready", "landed") else 1
        )
    else:
        assert (item.state.value, item.attempt, item.export) == ("testing", 2, "")
    # The gate's state said so in the database before the entry closed.
    last_gate, last_journal = (
        max(i for i, k in enumerate(db.writes) if k == key) for key in ("gate", "export-journal")
    )
    assert db.state["export-journal"]["entries"][0]["closed"] == entry.closed
    assert json.loads(db.state["gate"])["merged"] == (["nova~1"] if forward else [])
    assert last_gate < last_journal or not forward

    # Killed again at once: the next master has nothing left to do.
    world.calls.clear()
    again, _ = _restart(tmp_path, monkeypatch, world, db)
    assert "merge cccc" not in world.calls and not any(c.startswith("untag") for c in world.calls)
    assert world.merged is world.landed() is forward


def test_a_merge_refused_at_recovery_untags_and_the_item_is_tested_again(tmp_path, monkeypatch):
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    _export_until(scheduler, world, "repo-ready")
    world.branch.append("d" * 40)  # pushed outside the gate while the master was down
    world.calls.clear()
    restarted, _ = _restart(tmp_path, monkeypatch, world, db)
    assert not world.merged and not world.landed()
    assert world.calls[:2] == ["untag dist nova-1-1", "repo dist"]
    entry = restarted.journal().get("nova~1", 1)
    assert (entry.closed, entry.steps[-4:]) == (
        "rolled-back",
        ("merge-failed", "untagging", "untagged", "repo-ready-after-untag"),
    )
    item = restarted.gate.find("nova~1")
    assert (item.state.value, item.attempt, item.export) == ("testing", 2, "")


def test_the_merge_of_a_landed_export_is_journaled_and_its_entry_closes_once_reported(
    tmp_path, monkeypatch
):
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    _export_until(scheduler, world, "landed")  # alone in its pipeline: merges now
    assert world.merged and world.calls.count("merge cccc") == 1
    entry = scheduler.journal().get("nova~1", 1)
    assert entry.steps[-2:] == ("merging", "merged") and entry.closed == "merged"
    assert entry.expected_tip == BASE
    assert world.calls[-1] == "report nova~1 merged"


def test_a_merge_refused_live_untags_at_once_and_the_item_is_tested_again(tmp_path, monkeypatch):
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    world.branch.append("d" * 40)  # the branch moved: the merge is refused
    _export_until(scheduler, world, "landed")
    assert not world.merged and not world.landed()
    entry = scheduler.journal().get("nova~1", 1)
    assert entry.closed == "rolled-back" and entry.retest
    item = scheduler.gate.find("nova~1")
    assert (item.state.value, item.attempt, item.export) == ("testing", 2, "")


def test_a_failed_item_whose_export_tagged_is_untagged_through_the_journal(tmp_path, monkeypatch):
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    _export_until(scheduler, world, "tagged")
    scheduler.export_failed("nova~1", 1, "koji: newRepo failed")
    assert not world.landed() and world.calls.count("untag dist nova-1-1") == 1
    assert scheduler.journal().get("nova~1", 1).closed == "rolled-back"
    assert scheduler.gate.finished[-1].info["export_rolled_back"] is True
    assert world.calls[-1] == "report nova~1 failed"


def test_a_tag_that_lands_after_the_gate_gave_the_attempt_up_is_undone(tmp_path, monkeypatch):
    """The item failed while its tag call ran (nothing was in the tag yet): when the job
    reports the tag, the gate untags it and tells the job to stop."""
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    _export_until(scheduler, world, "tagging")
    scheduler.export_failed("nova~1", 1, "packstack failed")
    assert scheduler.journal().get("nova~1", 1).closed == "abandoned"
    world.tag("dist", "nova-1-1")  # the tag call returns now
    assert scheduler.export_step("nova~1", 1, "tagged").result is False
    assert not world.landed() and scheduler.journal().get("nova~1", 1).closed == "rolled-back"


def test_export_steps_of_an_attempt_not_holding_the_section_are_refused(tmp_path, monkeypatch):
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    scheduler._event(lambda gate: gate.enqueue(Change("nova", 1, "main", "a" * 40)))
    intent = {"mode": "rebuild", "tag": "dist", "commit": COMMIT}
    assert scheduler.export_step("nova~1", 1, "intent", intent).result is False
    assert scheduler.export_tagging("nova~1", 1, "nova-1-1", "dist").result is False
    assert "export-journal" not in db.state
    refused = scheduler.export_step("nova~1", 1, "merged")
    assert "unknown export step 'merged'" in str(refused.result.value)
    refused.addErrback(lambda failure: None)
    # Holding: recorded, in the database before the call returns.
    scheduler._event(lambda gate: [] if gate.export_request("nova~1", 1) else [])
    assert scheduler.export_step("nova~1", 1, "intent", intent).result is True
    assert db.state["export-journal"]["entries"][0]["steps"] == ["intent"]
    assert scheduler.export_step("nova~1", 2, "tagging", {"nvr": "x-1-1"}).result is False


def test_a_branch_moved_before_the_export_sends_the_item_back_to_testing_untouched(
    tmp_path, monkeypatch
):
    """The export job asks, holding its section, before it builds or tags: the branch
    moved outside the gate, so nothing is built, tagged or journaled, and the item is
    tested again on the new tip."""
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    assert scheduler.export_check_branch("nova~1", 1).result is True  # not moved
    world.branch.append("d" * 40)  # someone pushed to the branch directly
    assert scheduler.export_check_branch("nova~1", 1).result is False
    item = scheduler.gate.find("nova~1")
    assert (item.state.value, item.attempt, item.export) == ("testing", 2, "")
    assert item.history[-3].startswith(
        "attempt 1: not exported: branch 'main' of project nova moved outside the gate: "
        f"tested on top of {BASE}, it is now at {'d' * 40}"
    )
    assert world.calls == [] and scheduler.journal().get("nova~1", 1) is None
    # The old attempt's job is told to stop; so is any attempt that does not hold it.
    assert scheduler.export_check_branch("nova~1", 1).result is False
    assert scheduler.export_check_branch("nova~1", 2).result is False


def test_an_export_the_restart_cannot_recover_yet_stays_open_and_the_gate_goes_on(
    tmp_path, monkeypatch
):
    """The backend is down at the restart: the entry stays open, the gate starts anyway
    (the landed item merges by the journaled merge, which then closes the entry)."""
    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db, pipelines=("gate", "docs"))
    _holding(scheduler)
    _export_until(scheduler, world, "landed")

    def down(tag):
        raise OSError("backend unreachable")

    monkeypatch.setattr(world, "tagged", down)
    restarted, actions = _restart(tmp_path, monkeypatch, world, db)
    assert world.merged and world.calls.count("merge cccc") == 1
    entry = restarted.journal().get("nova~1", 1)
    assert entry.closed == "merged" and entry.steps[-2:] == ("merging", "merged")


def test_a_failed_item_whose_rollback_the_kill_prevented_is_untagged_not_merged_on_restart(
    tmp_path, monkeypatch
):
    """Its other pipeline failed after the tag (the gate saved it failing) and the master
    died before the rollback: the restart undoes the tag; it never merges."""
    from twisted.internet import defer

    world, db = _World(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db, pipelines=("gate", "docs"))
    _holding(scheduler)
    _export_until(scheduler, world, "landed")
    scheduler._do = lambda action: defer.succeed([])  # killed before its Report ran
    scheduler._event(lambda gate: gate.job_result("nova~1", 1, False, "docs failed"))
    assert json.loads(db.state["gate"])["finished"][-1]["state"] == "dequeued"
    assert world.landed()
    restarted, _ = _restart(tmp_path, monkeypatch, world, db)
    assert not world.merged and not world.landed()
    assert restarted.journal().get("nova~1", 1).closed == "rolled-back"
    assert restarted.gate.finished[-1].state.value == "dequeued"


def test_with_gerrit_a_change_counts_as_merged_when_gerrit_says_so():
    """Gerrit makes its own merge commits: the journal asks Gerrit, not the branch."""
    from types import SimpleNamespace

    from gating.gate import GateScheduler
    from gating.gerrit import GerritForge

    forge = GerritForge.__new__(GerritForge)
    statuses = {3: "merged", 4: "new"}
    forge.change = lambda project, number: SimpleNamespace(status=statuses[number])
    scheduler = GateScheduler.__new__(GateScheduler)
    scheduler.forge = forge
    assert scheduler._contains("nova", "main", 3, COMMIT) is True
    assert scheduler._contains("nova", "main", 4, COMMIT) is False


@pytest.mark.parametrize(
    ("builds", "control"),
    [
        ([], ["cancel request 5"]),  # not started
        ([{"buildid": 7, "complete": False}], ["stop build 7"]),  # running
        # only a build a killed master left (RETRY): Buildbot would run it again
        ([{"buildid": 7, "complete": True}], ["cancel request 5"]),
    ],
)
def test_cancelling_a_run_cancels_its_requests_that_would_run_again(builds, control):
    from types import SimpleNamespace

    from twisted.internet import defer

    from gating.gate import GateScheduler

    done: list[str] = []

    def get(path, filters=None):
        if path == ("buildrequests",):
            return defer.succeed(
                [{"buildrequestid": 5, "complete": False}, {"buildrequestid": 6, "complete": True}]
            )
        return defer.succeed(builds)

    def do(action, args, path):
        done.append(f"{'cancel request' if action == 'cancel' else 'stop build'} {path[1]}")
        return defer.succeed(None)

    class Scheduler(GateScheduler):
        master = SimpleNamespace(data=SimpleNamespace(get=get, control=do))

    scheduler = Scheduler.__new__(Scheduler)
    assert scheduler._cancel(3, "gate reset").called
    assert done == control


class _KojiWorld(_World):
    """A koji-like backend: a tag call is a task that can outlive the master that asked
    for it (``pending``), and a repository records the tag content it was made of."""

    kind = "koji"

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, str]] = []
        self.repo_of: dict[str, frozenset[str]] = {}

    def settle_tag(self, tag: str, nvr: str) -> list[int]:
        self.calls.append(f"settle {tag} {nvr}")
        found = [p for p in self.pending if p == (tag, nvr)]
        self.pending = [p for p in self.pending if p != (tag, nvr)]
        return list(range(len(found)))

    def publish_repo(self, tag: str) -> str:
        self.repo_of[tag] = frozenset(self.tags[tag])
        return super().publish_repo(tag)

    def ensure_repo(self, tag: str) -> str:
        if self.repo_of.get(tag) == frozenset(self.tags[tag]):
            return "1"
        return self.publish_repo(tag)

    def hub_runs_pending_tasks(self) -> None:
        for tag, nvr in self.pending:
            self.tag(tag, nvr)
        self.pending = []


def test_a_tag_task_pending_when_the_master_died_is_cancelled_before_the_recovery_decides(
    tmp_path, monkeypatch
):
    """Killed while its tag task waited on the hub: the recovery cancels it before it reads
    the tag, so the task cannot land after the decision ("back": tested again)."""
    world, db = _KojiWorld(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    _export_until(scheduler, world, "tagging")
    world.pending.append(("dist", "nova-1-1"))  # the tag call was made, its task waits
    world.calls.clear()
    restarted, _ = _restart(tmp_path, monkeypatch, world, db)
    assert world.calls[0] == "settle dist nova-1-1"
    world.hub_runs_pending_tasks()  # too late: nothing is left to run
    assert not world.landed() and not world.merged
    assert restarted.journal().get("nova~1", 1).closed == "abandoned"
    item = restarted.gate.find("nova~1")
    assert (item.state.value, item.attempt) == ("testing", 2)


def test_a_recovery_does_not_regenerate_a_repository_the_killed_master_had_made(
    tmp_path, monkeypatch
):
    world, db = _KojiWorld(), _Database()
    scheduler = _journaled_scheduler(tmp_path, monkeypatch, world, db)
    _holding(scheduler)
    _export_until(scheduler, world, "repo")  # made, not recorded
    world.calls.clear()
    restarted, _ = _restart(tmp_path, monkeypatch, world, db)
    assert world.merged and world.landed()
    assert "repo dist" not in world.calls and not any(c.startswith("settle") for c in world.calls)
    entry = restarted.journal().get("nova~1", 1)
    assert entry.closed == "merged" and "repo-ready" in entry.steps
