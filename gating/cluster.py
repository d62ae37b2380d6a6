"""Multi-master liveness: how fast a cluster notices a dead master and moves its work.

Buildbot's own machinery, with its timing made configurable:

* every master marks itself alive in the ``masters`` table (``last_active``) every 60 s,
  and declares dead (``expireMasters``) any master silent for 10 minutes
  (``buildbot.data.masters.EXPIRE_MINUTES``); the housekeeping of a dead master marks its
  builds RETRY, unclaims its build requests and releases its schedulers and change
  sources (``scheduler_masters`` / ``changesource_masters`` rows);
* a scheduler or poller (a ``ClusteredBuildbotService``) that is idle on a master tries
  to claim itself every ``POLL_INTERVAL_SEC`` (300 s), and the first master to claim it
  runs it (``activate``).

So Buildbot takes 10 to 16 minutes to move the gate off a dead master, and the build
requests it released wait until a build ends on another master (nothing announces them).

:class:`Liveness` (in ``c['services']`` of every master) marks its master alive every
``heartbeat`` seconds and declares dead a master silent for ``expire-after`` seconds,
through the same update methods (``masterActive``, ``masterStopped``); ``claim-interval``
becomes the ``POLL_INTERVAL_SEC`` of every scheduler and change source
(:func:`set_claim_interval`). The takeover then takes between ``expire-after`` and
``expire-after + claim-interval + heartbeat`` seconds. When a master stops or is declared
dead (``('masters', ID, 'stopped')``), every other master looks for builds to start at
once, so the requests of the dead master are claimed again. (Buildbot 4.3 leaves the
requests of a master that a peer declared dead claimed by it: :class:`Liveness` releases
them itself.)

A master that was declared dead while it still ran (stalled longer than ``expire-after``)
finds its schedulers released: it deactivates them and lets them claim again, rather
than keep running a gate that another master may run too.
"""

from __future__ import annotations

from typing import Any

from buildbot import config
from buildbot.util import datetime2epoch, service
from buildbot.util.service import ClusteredBuildbotService
from twisted.internet import defer, task
from twisted.python import log

SERVICE_NAME = "gating-liveness"
RELEASED_TOPIC = ("gating", "requests-released", None)  # + the dead master's id


def set_claim_interval(services: list[Any], seconds: float) -> None:
    """Idle schedulers and change sources try to take over every ``seconds``."""
    for svc in services:
        if isinstance(svc, ClusteredBuildbotService):
            svc.POLL_INTERVAL_SEC = seconds


class Liveness(service.BuildbotService):
    name = SERVICE_NAME

    def checkConfig(self, heartbeat: float, expire_after: float) -> None:  # type: ignore[override]
        if heartbeat <= 0 or expire_after < 3 * heartbeat:
            config.error("liveness: expire_after must be at least 3 heartbeats")

    def reconfigService(self, heartbeat: float, expire_after: float) -> Any:  # type: ignore[override]
        self.heartbeat = heartbeat
        self.expire_after = expire_after
        if self.running:
            self._restart()
        return defer.succeed(None)

    _loop: task.LoopingCall | None = None
    _beating: defer.Deferred | None = None
    _consumers: list[Any] = []

    @defer.inlineCallbacks
    def startService(self) -> Any:
        yield super().startService()
        self._consumers = []
        for topic in (("masters", None, "stopped"), RELEASED_TOPIC):
            consumer = yield self.master.mq.startConsuming(self._master_stopped, topic)
            self._consumers.append(consumer)
        self._restart()

    def _master_stopped(self, _key: Any, msg: dict[str, Any]) -> None:
        """A master stopped, or its build requests were released after it was declared
        dead: look for work now (the requests were released in the database only, with
        no message) rather than at the next build that ends here."""
        if msg.get("masterid") != self.master.masterid:
            self.master.botmaster.maybeStartBuildsForAllBuilders()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        for consumer in self._consumers:
            consumer.stopConsuming()
        self._consumers = []
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._beating is not None:
            yield self._beating
        yield super().stopService()

    def _restart(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = task.LoopingCall(self._beat)
        self._loop.clock = self.master.reactor
        # not now: the master marks itself active as it finishes starting
        self._loop.start(self.heartbeat, now=False).addErrback(log.err, "liveness loop")

    def _beat(self) -> Any:
        if self._beating is not None:  # the previous beat still runs (slow database)
            return None
        self._beating = self.beat()
        self._beating.addErrback(log.err, "liveness: heartbeat failed")

        def done(_: Any) -> None:
            self._beating = None

        self._beating.addBoth(done)
        return None

    @defer.inlineCallbacks
    def beat(self) -> Any:
        master = self.master
        if master.masterid is None:
            return
        yield self._check_claims()
        yield master.data.updates.masterActive(name=master.name, masterid=master.masterid)
        now = master.reactor.seconds()
        for other in (yield master.db.masters.getMasters()):
            if other.id == master.masterid or not other.active:
                continue
            last = datetime2epoch(other.last_active) if other.last_active else None
            if last is None or now - last > self.expire_after:
                silent = "never" if last is None else f"{now - last:.0f}s"
                log.msg(
                    f"liveness: master {other.name} (id {other.id}) silent for {silent}: "
                    "declaring it dead; its schedulers and builds are released"
                )
                yield master.data.updates.masterStopped(name=other.name, masterid=other.id)
                yield self._release_requests(other.id, other.name)

    @defer.inlineCallbacks
    def _release_requests(self, masterid: int, name: str) -> Any:
        """Release the build requests a dead master had claimed.

        Buildbot 4.3's housekeeping (``_masterDeactivatedHousekeeping``) finds them but
        unclaims them with ``db.buildrequests.unclaimBuildRequests``, which deletes only
        the claims of the master that runs it: done by a peer, the requests stay claimed
        by the dead master until it restarts, and the builds that wait for them (a
        pipeline's jobs) never end."""
        db = self.master.db.buildrequests
        requests = yield db.getBuildRequests(complete=False, claimed=masterid)
        brids = [r.buildrequestid for r in requests]
        if not brids:
            return
        yield db._unclaim_buildrequests_for_master(brids, masterid)
        log.msg(f"liveness: released {len(brids)} build requests of master {name}: {brids}")
        self.master.mq.produce(
            (*RELEASED_TOPIC[:2], str(masterid)), {"masterid": masterid, "brids": brids}
        )

    def _clustered(self) -> list[ClusteredBuildbotService]:
        out: list[ClusteredBuildbotService] = []
        for parent in (self.master.scheduler_manager, self.master.change_svc):
            for svc in list(parent):
                if isinstance(svc, ClusteredBuildbotService):
                    out.append(svc)
        return out

    @defer.inlineCallbacks
    def _check_claims(self) -> Any:
        """Services this master runs must still be claimed by it in the database."""
        master = self.master
        local = [s for s in self._clustered() if s.active and s.serviceid is not None]
        if not local:
            return
        claimed_schedulers = {
            s.id for s in (yield master.db.schedulers.getSchedulers(masterid=master.masterid))
        }
        claimed_sources = {
            s.id for s in (yield master.db.changesources.getChangeSources(masterid=master.masterid))
        }
        for svc in local:
            claimed = claimed_sources if svc.parent is master.change_svc else claimed_schedulers
            if svc.serviceid in claimed or not svc.active or not svc.running:
                continue
            log.msg(
                f"liveness: {svc.name} is no longer claimed by this master (another master "
                "declared it dead): deactivating it; it will try to claim itself again"
            )
            svc.active = False
            try:
                yield svc.deactivate()
            except Exception as exc:
                log.err(exc, f"liveness: deactivating {svc.name}")
            svc._startActivityPolling()
