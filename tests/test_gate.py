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
