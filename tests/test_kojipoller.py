"""gating.kojipoller: the scheduler's settings (the polling itself runs against the koji test
hub in tests/integration/test_koji_events.py, and its logic in tests/test_kojievents.py)."""

from __future__ import annotations

from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.scheduler import SchedulerMixin
from twisted.internet import defer
from twisted.trial import unittest

from gating.kojievents import KOJI_TAG, KojiBuildEvent, WatchSet, watch_of
from gating.kojipoller import (
    KojiEventScheduler,
    KojiEventSettings,
    _with_password,
    buildset_idstring,
)
from gating.outage import RetryPolicy
from tests.test_steps import silence_deprecations


def test_the_amqp_password_goes_into_the_url_quoted():
    url = _with_password("amqps://gating@rabbit.example.org:5671/%2Fpub", "p@ss:/word")
    assert url == "amqps://gating:p%40ss%3A%2Fword@rabbit.example.org:5671/%2Fpub"
    assert _with_password("amqp://rabbit/", "x") == "amqp://guest:x@rabbit/"


def test_settings_are_hashable_and_compare_by_value():
    watches = WatchSet((watch_of("p", KOJI_TAG, {"tag": ["a", "b"]}),))
    a = KojiEventSettings(watches=watches, server="http://h/kojihub", topurl="http://h/files")
    b = KojiEventSettings(
        watches=WatchSet((watch_of("p", KOJI_TAG, {"tag": ["a", "b"]}),)),
        server="http://h/kojihub",
        topurl="http://h/files",
    )
    assert a == b and hash(a) == hash(b)
    session = a.session()
    assert session.hub == "http://h/kojihub"
    session.close()


def test_a_poll_cycle_gives_a_down_hub_about_one_poll_interval():
    watches = WatchSet((watch_of("p", KOJI_TAG, {"tag": ["a"]}),))
    settings = KojiEventSettings(
        watches=watches, server="http://h/kojihub", topurl="http://h/files", poll_interval=30
    )
    session = settings.session()
    # the next cycle asks again from the same cursor: no 6-hour wait inside a cycle
    assert session.settings.retry == RetryPolicy(total=30, initial=1, maximum=15)
    assert session.outage() is None
    session.close()


def test_a_buildset_idstring_names_the_event_and_pipeline_and_fits_buildbots_column():
    from gating.kojipoller import IDSTRING_MAX

    assert buildset_idstring("koji_tag:f40:7:99", "on-tag") == "koji-event koji_tag:f40:7:99 on-tag"
    long_tag = "t" * 300
    ident = buildset_idstring(f"koji_tag:{long_tag}:7:99", "on-tag")
    assert len(ident) <= IDSTRING_MAX and ident.startswith("koji-event sha256:")
    assert ident != buildset_idstring(f"koji_tag:{long_tag}:7:99", "other")


class FiringAfterAKillTests(SchedulerMixin, TestReactorMixin, unittest.TestCase):
    """A master killed between starting an event's pipelines and saving the event as fired:
    on restart, the event is found again (the cursor was not saved) and only its pipelines
    without a buildset are started."""

    OBJECTID = 41
    SCHEDULERID = 14
    EVENT = KojiBuildEvent(
        kind=KOJI_TAG,
        build_id=7,
        nvr="nova-12.0.1-1.fc40",
        name="nova",
        version="12.0.1",
        release="1.fc40",
        tag="f40-updates",
        event_id=99,
    )

    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setUpScheduler()
        watches = WatchSet(
            (
                watch_of("on-tag", KOJI_TAG, {"tag": ["f40-updates"]}),
                watch_of("audit", KOJI_TAG, {"tag": ["f40-updates"]}),
            )
        )
        settings = KojiEventSettings(
            watches=watches, server="http://h/kojihub", topurl="http://h/f"
        )
        self.sched = yield self.attachScheduler(
            KojiEventScheduler(
                name="koji-events", builderNames=["on-tag", "audit"], settings=settings
            ),
            self.OBJECTID,
            self.SCHEDULERID,
            createBuilderDB=True,
        )
        # Configured as the scheduler manager does, not started (no polling).
        yield self.sched.reconfigService(builderNames=["on-tag", "audit"], settings=settings)

    @defer.inlineCallbacks
    def buildsets(self):
        rows = yield self.master.db.buildsets.getBuildsets()
        return sorted(b.external_idstring for b in rows)

    @defer.inlineCallbacks
    def test_only_the_pipelines_without_a_buildset_are_started_again(self):
        # The killed master started "on-tag" for the event, then died.
        yield self.master.db.insert_test_data(
            [fakedb.Buildset(id=501, external_idstring=buildset_idstring(self.EVENT.key, "on-tag"))]
        )
        yield self.sched.setState("koji_firing", self.EVENT.key)
        assert (yield self.buildsets()) == ["koji-event koji_tag:f40-updates:7:99 on-tag"]

        # The restarted master: a new scheduler object reading the saved state.
        self.sched._fired = []  # noqa: SLF001
        self.sched._interrupted = yield self.sched.getState("koji_firing", None)  # noqa: SLF001
        started = yield self.sched._fire(self.EVENT)  # noqa: SLF001
        assert [p for p, _ in started] == ["audit"]
        assert (yield self.buildsets()) == [
            "koji-event koji_tag:f40-updates:7:99 audit",
            "koji-event koji_tag:f40-updates:7:99 on-tag",
        ]
        assert (yield self.sched.getState("koji_firing", None)) is None
        assert (yield self.sched.getState("koji_fired")) == [self.EVENT.key]
        # Fired once: the event found again later starts nothing.
        assert (yield self.sched._fire(self.EVENT)) == []  # noqa: SLF001

    @defer.inlineCallbacks
    def test_without_an_interrupted_event_nothing_is_looked_up(self):
        calls = []
        original = self.master.db.buildsets.getBuildsets
        self.patch(
            self.master.db.buildsets,
            "getBuildsets",
            lambda *a, **k: calls.append(k) or original(*a, **k),
        )
        started = yield self.sched._fire(self.EVENT)  # noqa: SLF001
        assert [p for p, _ in started] == ["on-tag", "audit"] and calls == []
