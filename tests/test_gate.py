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
