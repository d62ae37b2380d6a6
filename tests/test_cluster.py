"""gating.cluster: liveness marks, dead masters declared after ``expire-after``, and a
master that lost its claims gives its schedulers up (fake master, fake clock)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from buildbot.util import epoch2datetime
from buildbot.util.service import ClusteredBuildbotService
from twisted.internet import defer, task
from twisted.trial import unittest

from gating.cluster import Liveness, set_claim_interval

ME = 1


class FakeClustered(ClusteredBuildbotService):
    def __init__(self, name: str, serviceid: int, active: bool) -> None:
        super().__init__(name=name)
        self.serviceid = serviceid
        self.active = active
        self.running = True
        self.events: list[str] = []

    def deactivate(self) -> defer.Deferred:
        self.events.append("deactivate")
        return defer.succeed(None)

    def _startActivityPolling(self) -> None:
        self.events.append("poll")


class FakeMaster:
    def __init__(self, clock: task.Clock) -> None:
        self.reactor = clock
        self.masterid = ME
        self.name = "host:/srv/master-a"
        self.masters: list[Any] = []
        self.claims = {"schedulers": set(), "sources": set()}
        self.updates: list[tuple[str, str, int]] = []
        self.scheduler_manager: list[Any] = []
        self.change_svc: list[Any] = []
        self.consumers: list[tuple[Any, Any]] = []
        self.kicks = 0
        self.produced: list[tuple[Any, Any]] = []
        self.mq = SimpleNamespace(
            startConsuming=self._consume,
            produce=lambda key, msg: self.produced.append((key, msg)),
        )
        self.claimed_requests: dict[int, list[int]] = {}  # masterid -> brids
        self.botmaster = SimpleNamespace(maybeStartBuildsForAllBuilders=self._kick)
        self.db = SimpleNamespace(
            masters=SimpleNamespace(getMasters=lambda: defer.succeed(self.masters)),
            schedulers=SimpleNamespace(getSchedulers=self._claimed("schedulers")),
            changesources=SimpleNamespace(getChangeSources=self._claimed("sources")),
            buildrequests=SimpleNamespace(
                getBuildRequests=self._requests,
                _unclaim_buildrequests_for_master=self._unclaim,
            ),
        )
        self.data = SimpleNamespace(
            updates=SimpleNamespace(
                masterActive=self._update("active"), masterStopped=self._update("stopped")
            )
        )

    def _consume(self, callback: Any, topic: Any) -> defer.Deferred:
        self.consumers.append((topic, callback))
        return defer.succeed(SimpleNamespace(stopConsuming=lambda: None))

    def _requests(self, complete: bool, claimed: int) -> defer.Deferred:
        assert complete is False
        brids = self.claimed_requests.get(claimed, [])
        return defer.succeed([SimpleNamespace(buildrequestid=b) for b in brids])

    def _unclaim(self, brids: list[int], masterid: int) -> defer.Deferred:
        self.claimed_requests[masterid] = [
            b for b in self.claimed_requests.get(masterid, []) if b not in brids
        ]
        return defer.succeed(None)

    def _kick(self) -> None:
        self.kicks += 1

    def _claimed(self, kind: str) -> Any:
        def get(masterid: int) -> defer.Deferred:
            assert masterid == ME
            return defer.succeed([SimpleNamespace(id=i) for i in self.claims[kind]])

        return get

    def _update(self, what: str) -> Any:
        def update(name: str, masterid: int) -> defer.Deferred:
            self.updates.append((what, name, masterid))
            return defer.succeed(None)

        return update

    def add_master(self, masterid: int, last_active: float | None, active: bool = True) -> None:
        when = epoch2datetime(last_active) if last_active is not None else None
        self.masters.append(
            SimpleNamespace(id=masterid, name=f"m{masterid}", active=active, last_active=when)
        )


class LivenessTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.master = FakeMaster(self.clock)
        self.master.add_master(ME, self.clock.seconds())
        self.liveness = Liveness(heartbeat=2, expire_after=10)
        self.liveness.parent = SimpleNamespace(master=self.master)
        self.liveness.reconfigService(heartbeat=2, expire_after=10)

    @defer.inlineCallbacks
    def test_marks_itself_alive_and_declares_silent_masters_dead(self):
        now = self.clock.seconds()
        self.master.add_master(2, now - 11)  # silent too long
        self.master.add_master(3, now - 9)  # still alive
        self.master.add_master(4, now - 500, active=False)  # already known dead
        self.master.add_master(5, None)  # never marked alive
        yield self.liveness.beat()
        self.assertEqual(
            self.master.updates,
            [
                ("active", "host:/srv/master-a", ME),
                ("stopped", "m2", 2),
                ("stopped", "m5", 5),
            ],
        )

    @defer.inlineCallbacks
    def test_the_build_requests_of_a_dead_master_are_released_and_announced(self):
        # Buildbot's housekeeping, run by a peer, leaves them claimed by the dead master.
        self.master.add_master(2, self.clock.seconds() - 60)
        self.master.claimed_requests = {2: [11, 12], 3: [13]}
        yield self.liveness.beat()
        self.assertEqual(self.master.claimed_requests, {2: [], 3: [13]})
        self.assertEqual(
            self.master.produced,
            [(("gating", "requests-released", "2"), {"masterid": 2, "brids": [11, 12]})],
        )

    @defer.inlineCallbacks
    def test_beats_every_heartbeat_once_started(self):
        self.liveness.startService()
        self.addCleanup(self.liveness.stopService)
        self.clock.pump([2, 2, 2])
        yield self.liveness._beating
        self.assertEqual([u[0] for u in self.master.updates], ["active"] * 3)

    @defer.inlineCallbacks
    def test_when_a_master_stops_the_others_look_for_its_released_requests(self):
        yield self.liveness.startService()
        self.addCleanup(self.liveness.stopService)
        topics = dict(self.master.consumers)
        self.assertEqual(
            list(topics), [("masters", None, "stopped"), ("gating", "requests-released", None)]
        )
        stopped, released = topics.values()
        stopped(("masters", "2", "stopped"), {"masterid": 2, "name": "m2", "active": False})
        self.assertEqual(self.master.kicks, 1)
        released(("gating", "requests-released", "2"), {"masterid": 2, "brids": [11]})
        self.assertEqual(self.master.kicks, 2)
        stopped(("masters", "1", "stopped"), {"masterid": ME, "name": "me", "active": False})
        self.assertEqual(self.master.kicks, 2)  # not for itself

    @defer.inlineCallbacks
    def test_a_master_declared_dead_gives_its_released_schedulers_up(self):
        gate = FakeClustered("gate", 7, active=True)
        gate.parent = self.master.scheduler_manager
        force = FakeClustered("force", 8, active=True)
        force.parent = self.master.scheduler_manager
        forge = FakeClustered("forge", 9, active=True)
        forge.parent = self.master.change_svc
        idle = FakeClustered("koji", 10, active=False)
        self.master.scheduler_manager.extend([gate, force, idle])
        self.master.change_svc.append(forge)
        # A peer released the gate and the forge poller; the force scheduler is still ours.
        self.master.claims = {"schedulers": {8}, "sources": set()}
        yield self.liveness.beat()
        self.assertEqual((gate.active, gate.events), (False, ["deactivate", "poll"]))
        self.assertEqual((forge.active, forge.events), (False, ["deactivate", "poll"]))
        self.assertEqual((force.active, force.events), (True, []))
        self.assertEqual(idle.events, [])

    def test_expire_after_must_cover_three_heartbeats(self):
        from buildbot.config.errors import ConfigErrors, capture_config_errors

        with self.assertRaises(ConfigErrors), capture_config_errors(raise_on_error=True):
            Liveness(heartbeat=10, expire_after=20)


def test_the_claim_interval_applies_to_clustered_services_only():
    svc = FakeClustered("gate", 1, active=False)
    other = SimpleNamespace(POLL_INTERVAL_SEC=300)
    set_claim_interval([svc, other], 4)
    assert svc.POLL_INTERVAL_SEC == 4
    assert ClusteredBuildbotService.POLL_INTERVAL_SEC == 300
    assert other.POLL_INTERVAL_SEC == 300
