"""gating.forgepoller: which patchsets are news, and what a restarted master does with the
patchset a killed one was adding (the change source runs in tests/integration/test_gate.py,
the kill in tests/integration/test_master_faults.py)."""

from __future__ import annotations

import json

from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.changesource import ChangeSourceMixin
from twisted.internet import defer
from twisted.trial import unittest

from gating.forge import ChangeInfo
from gating.forgepoller import (
    CATEGORY,
    ForgeChangeSource,
    interrupted_patchset,
    is_change_of,
    new_patchsets,
    patchset_key,
    poll_plan,
)
from tests.test_steps import silence_deprecations


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


def plan(news, adding, added_before):
    return [(patchset_key(c), add) for c, add in poll_plan(news, adding, added_before)]


def test_without_a_mark_every_new_patchset_is_added_in_order():
    news = [change(1), change(2, patchset=3)]
    assert interrupted_patchset(news, None) is None
    assert plan(news, None, False) == [("nova~1/1", True), ("nova~2/3", True)]


def test_the_patchset_being_added_at_a_kill_comes_first_and_once():
    news = [change(1), change(2), change(3)]
    assert interrupted_patchset(news, "nova~2/1") == news[1]
    # Its change was found: it is only saved as seen; the others are added.
    assert plan(news, "nova~2/1", True) == [
        ("nova~2/1", False),
        ("nova~1/1", True),
        ("nova~3/1", True),
    ]
    # Not found (killed before Buildbot had it): added like the others.
    assert plan(news, "nova~2/1", False) == [
        ("nova~2/1", True),
        ("nova~1/1", True),
        ("nova~3/1", True),
    ]


def test_a_mark_for_a_patchset_that_is_no_longer_news_changes_nothing():
    # Saved as seen before the kill, or replaced by a newer patchset meanwhile.
    news = [change(1, patchset=2)]
    assert interrupted_patchset(news, "nova~1/1") is None
    assert plan(news, "nova~1/1", False) == [("nova~1/2", True)]


def buildbot_change(ps, **over):
    data = {
        "changeid": 7,
        "revision": ps.revision,
        "category": CATEGORY,
        "properties": {
            "gating_change": (ps.key, "Change"),
            "gating_patchset": (ps.patchset, "Change"),
            "target_branch": ("main", "Change"),
        },
    }
    data.update(over)
    return data


def test_a_buildbot_change_reports_a_patchset_by_revision_change_and_patchset_number():
    ps = change(4, patchset=2)
    assert is_change_of(buildbot_change(ps), ps)
    # JSON turns the (value, source) pairs into lists.
    props = {k: list(v) for k, v in buildbot_change(ps)["properties"].items()}
    assert is_change_of(buildbot_change(ps, properties=props), ps)
    assert not is_change_of(buildbot_change(ps), change(4, patchset=3))
    assert not is_change_of(buildbot_change(ps), change(5, patchset=2))
    assert not is_change_of(buildbot_change(ps, revision="f" * 40), ps)
    assert not is_change_of(buildbot_change(ps, category="push"), ps)
    assert not is_change_of(buildbot_change(ps, properties={}), ps)


class ChangeAddedBeforeAKillTests(ChangeSourceMixin, TestReactorMixin, unittest.TestCase):
    """The patchset a killed master was adding, looked up by a restarted one among the
    Buildbot changes (Buildbot's database and data API, in memory)."""

    PATCHSET = change(4, patchset=2)

    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setUpChangeSource()
        self.source = yield self.attachChangeSource(
            ForgeChangeSource(root=self.mktemp(), projects=("nova",), name="forge")
        )

    def insert_change(self, changeid, ps, buildset=None):
        rows = [
            fakedb.SourceStamp(id=changeid, revision=ps.revision, branch=ps.ref),
            fakedb.Change(
                changeid=changeid,
                revision=ps.revision,
                branch=ps.ref,
                category=CATEGORY,
                sourcestampid=changeid,
            ),
            fakedb.ChangeProperty(
                changeid=changeid,
                property_name="gating_change",
                property_value=json.dumps([ps.key, "Change"]),
            ),
            fakedb.ChangeProperty(
                changeid=changeid,
                property_name="gating_patchset",
                property_value=json.dumps([ps.patchset, "Change"]),
            ),
        ]
        if buildset is not None:
            rows += [
                fakedb.Buildset(id=buildset),
                fakedb.BuildsetSourceStamp(buildsetid=buildset, sourcestampid=changeid),
            ]
        return self.master.db.insert_test_data(rows)

    def announced(self):
        return [
            data["changeid"]
            for key, data in self.master.mq.productions
            if key[0] == "changes" and key[-1] == "new"
        ]

    @defer.inlineCallbacks
    def test_a_change_not_in_buildbot_is_to_be_added(self):
        # Another patchset of the same commit is not this one.
        yield self.insert_change(1, change(4, patchset=1))
        assert not (yield self.source._added_before(self.PATCHSET))  # noqa: SLF001
        assert self.announced() == []

    @defer.inlineCallbacks
    def test_a_change_its_pipelines_started_from_is_not_added_again(self):
        yield self.insert_change(1, self.PATCHSET, buildset=50)
        assert (yield self.source._added_before(self.PATCHSET))  # noqa: SLF001
        assert self.announced() == []

    @defer.inlineCallbacks
    def test_a_change_killed_before_its_schedulers_had_it_is_announced_again(self):
        yield self.insert_change(1, self.PATCHSET)
        assert (yield self.source._added_before(self.PATCHSET))  # noqa: SLF001
        assert self.announced() == [1]

    @defer.inlineCallbacks
    def test_the_forge_is_not_polled_before_the_master_has_started(self):
        master_id = fakedb.FakeDBConnector.MASTER_ID
        yield self.master.db.masters.setMasterState(master_id, active=False)
        assert not (yield self.source._master_started())  # noqa: SLF001
        yield self.master.db.masters.setMasterState(master_id, active=True)
        assert (yield self.source._master_started())  # noqa: SLF001
