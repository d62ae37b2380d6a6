"""gating.gaterpc: calls into the gate from a master where it is not active, through a real
Buildbot message queue (SimpleMQ, shared by two fake masters) and a fake clock."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from buildbot.mq.simple import SimpleMQ
from twisted.internet import defer, task
from twisted.trial import unittest

from gating import gaterpc
from gating.buildjobs import GateProxy
from gating.forge import ForgeError
from gating.queue import QueueError


class FakeGateScheduler:
    """What gaterpc uses of GateScheduler: ``gate`` (None when inactive) and the calls."""

    def __init__(self, active: bool) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.gate = (
            SimpleNamespace(
                find=lambda key: SimpleNamespace(state=SimpleNamespace(value="testing"))
            )
            if active
            else None
        )
        self.error: Exception | None = None
        self.grant: defer.Deferred = defer.Deferred()

    def approve(self, project: str, number: int) -> defer.Deferred:
        self.calls.append(("approve", (project, number)))
        if self.gate is None:
            return defer.fail(QueueError("the gate is not active on this master"))
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed([])

    def export_acquire(self, key: str, attempt: int) -> defer.Deferred:
        self.calls.append(("export_acquire", (key, attempt)))
        return self.grant

    def export_landed(self, key: str, attempt: int, nvr: str) -> defer.Deferred:
        self.calls.append(("export_landed", (key, attempt, nvr)))
        return defer.succeed(True)


def fake_master(mq: SimpleMQ, clock: task.Clock, scheduler: Any, multi: bool = True) -> Any:
    return SimpleNamespace(
        mq=mq,
        reactor=clock,
        config=SimpleNamespace(multiMaster=multi),
        scheduler_manager=SimpleNamespace(namedServices={"gate": scheduler}),
    )


class GateCallTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.mq = SimpleMQ()
        self.active = FakeGateScheduler(active=True)
        self.idle = FakeGateScheduler(active=False)
        self.holder = fake_master(self.mq, self.clock, self.active)
        self.other = fake_master(self.mq, self.clock, self.idle)
        self.sent: list[Any] = []
        self.mq.startConsuming(
            lambda key, msg: self.sent.append((key, msg)), (*gaterpc.CALL_TOPIC, None)
        )

    @defer.inlineCallbacks
    def serve(self) -> Any:
        server = gaterpc.CallServer(
            self.holder, lambda method, args: gaterpc.handle(self.active, method, args)
        )
        yield server.start()
        self.addCleanup(server.stop)
        return server

    @defer.inlineCallbacks
    def test_an_approval_on_the_idle_master_is_answered_by_the_active_one(self):
        yield self.serve()
        answer = yield gaterpc.call(self.other, "approve", "nova", 3, deadline=30)
        self.assertEqual(answer, {"change": "nova~3", "state": "testing"})
        self.assertEqual(self.active.calls, [("approve", ("nova", 3))])
        self.assertEqual(self.idle.calls, [])

    @defer.inlineCallbacks
    def test_the_gate_errors_come_back_with_their_kind_and_message(self):
        yield self.serve()
        self.active.error = QueueError("change nova~3 is already in the gate")
        with self.assertRaisesRegex(QueueError, "nova~3 is already in the gate"):
            yield gaterpc.call(self.other, "approve", "nova", 3, deadline=30)
        self.active.error = ForgeError("no change nova~9")
        with self.assertRaisesRegex(ForgeError, "no change nova~9"):
            yield gaterpc.call(self.other, "approve", "nova", 9, deadline=30)

    @defer.inlineCallbacks
    def test_with_no_active_master_the_call_is_resent_until_its_deadline(self):
        d = gaterpc.call(self.other, "approve", "nova", 3, deadline=10)
        self.clock.pump([gaterpc.RESEND] * 4)
        self.assertEqual(len(self.sent), 5)  # at 0, 2, 4, 6, 8 s
        self.assertEqual(len({msg["id"] for _key, msg in self.sent}), 1)
        self.clock.advance(2)
        with self.assertRaisesRegex(gaterpc.GateUnavailable, "no master answered .* 10s"):
            yield d
        self.clock.advance(10)
        self.assertEqual(len(self.sent), 5)  # nothing after the deadline

    @defer.inlineCallbacks
    def test_a_call_sent_during_a_takeover_is_answered_by_the_new_holder(self):
        d = gaterpc.call(self.other, "approve", "nova", 3, deadline=30)
        self.clock.advance(5)
        self.assertFalse(d.called)
        yield self.serve()  # this master takes the gate over
        self.clock.advance(gaterpc.RESEND)
        self.assertEqual((yield d), {"change": "nova~3", "state": "testing"})
        self.assertEqual(self.active.calls, [("approve", ("nova", 3))])

    @defer.inlineCallbacks
    def test_a_resent_call_runs_once_and_is_answered_once(self):
        yield self.serve()
        d = gaterpc.call(self.other, "export_acquire", "nova~3", 1)
        self.clock.pump([gaterpc.RESEND] * 5)  # no deadline: waits for the grant
        self.assertFalse(d.called)
        self.assertEqual(self.active.calls, [("export_acquire", ("nova~3", 1))])
        self.active.grant.callback(None)
        self.assertIsNone((yield d))
        self.clock.pump([gaterpc.RESEND] * 3)
        self.assertEqual(len(self.active.calls), 1)

    @defer.inlineCallbacks
    def test_cancelling_stops_resending(self):
        d = gaterpc.call(self.other, "export_acquire", "nova~3", 1)
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.cancel()
        yield d
        sent = len(self.sent)
        self.clock.pump([gaterpc.RESEND] * 3)
        self.assertEqual(len(self.sent), sent)
        self.assertEqual(
            [q.filter for q in self.mq.qrefs], [(*gaterpc.CALL_TOPIC, None)]
        )  # the reply consumer is gone

    @defer.inlineCallbacks
    def test_built_in_jobs_reach_the_gate_of_another_master(self):
        yield self.serve()
        landed = yield GateProxy(self.other).export_landed("nova~3", 2, "nova-1-1")
        self.assertIs(landed, True)
        self.assertEqual(self.active.calls, [("export_landed", ("nova~3", 2, "nova-1-1"))])

    @defer.inlineCallbacks
    def test_an_active_local_gate_is_called_directly(self):
        yield gaterpc.call(self.holder, "approve", "nova", 3)
        self.assertEqual(self.active.calls, [("approve", ("nova", 3))])
        self.assertEqual(self.sent, [])

    @defer.inlineCallbacks
    def test_one_master_never_goes_through_the_queue(self):
        single = fake_master(self.mq, self.clock, self.idle, multi=False)
        with self.assertRaisesRegex(QueueError, "not active on this master"):
            yield gaterpc.call(single, "approve", "nova", 3)
        self.assertEqual(self.sent, [])

    @defer.inlineCallbacks
    def test_unknown_calls_are_refused_on_both_sides(self):
        with self.assertRaisesRegex(QueueError, "unknown gate call 'status'"):
            yield gaterpc.call(self.other, "status")
        yield self.serve()
        replies: list[Any] = []
        self.mq.startConsuming(lambda k, m: replies.append(m), (*gaterpc.REPLY_TOPIC, "x1"))
        self.mq.produce((*gaterpc.CALL_TOPIC, "_save"), {"id": "x1", "args": []})
        self.assertEqual(
            replies, [{"ok": False, "kind": "QueueError", "error": "unknown gate call '_save'"}]
        )
