"""gating.forgepoller: which patchsets are news (the change source runs in
tests/integration/test_gate.py)."""

from __future__ import annotations

from gating.forge import ChangeInfo
from gating.forgepoller import new_patchsets


def change(number: int, patchset: int = 1, status: str = "new") -> ChangeInfo:
    return ChangeInfo(
        project="nova",
        number=number,
        branch="main",
        revision=f"{number:040d}",
        parent="0" * 40,
        subject="s",
        message="s\n",
        owner="Dev <dev@example.org>",
        depends_on=(),
        status=status,
        patchset=patchset,
    )


def test_unseen_patchsets_are_news_once():
    changes = [change(1), change(2, patchset=2), change(3)]
    assert [c.key for c in new_patchsets(changes, {"nova~1/1", "nova~2/1"})] == [
        "nova~2",
        "nova~3",
    ]
    assert new_patchsets(changes, {"nova~1/1", "nova~2/2", "nova~3/1"}) == []


def test_merged_changes_are_not_checked():
    assert new_patchsets([change(1, status="merged")], set()) == []
