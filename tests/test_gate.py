"""gating.gate: the pure helpers of the gate scheduler (the scheduler itself runs against a
real master in tests/integration/test_gate.py)."""

from __future__ import annotations

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
        scheduler.export_tagging(key, 1, f"nova-{number}-1", "dist")
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
