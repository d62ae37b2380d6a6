"""Calls into the gate scheduler from any master of a cluster (multi-master mode).

The gate scheduler is active on one master at a time (Buildbot's
``ClusteredBuildbotService``), but the web API (``api/approve``) answers on every
master, and a built-in job (``koji-export``, ``koji-scratch-build``) runs on whichever
master's coordinator took its build. Both reach the active gate through Buildbot's
message queue (crossbar in multi-master mode):

* the caller listens on ``('gating', 'gate-reply', ID)``, then produces
  ``('gating', 'gate-call', METHOD)`` with ``{"id": ID, "args": [...]}``;
* the active gate scheduler (:class:`CallServer`) consumes ``('gating', 'gate-call', *)``,
  runs the call and produces ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "kind": "QueueError", "error": "..."}`` on the reply topic;
* a call that got no reply is sent again every :data:`RESEND` seconds until its
  deadline: during a takeover no master holds the gate, and a WAMP message nobody
  listens to is gone. The server answers each call ID once: a resent call still
  running is not started again, one already answered gets the same answer.

The message queue only carries the call: what it changes is saved by the gate in the
database (object state) before it answers, as every other event of the gate.

A call whose server died after it ran and before its reply arrived is sent again to
the next active master, which runs it again: ``approve`` then answers "already in the
gate" (true), the export calls of a stale attempt answer "not current" (the new master
restarted every run anyway).

With one master (``multiMaster`` off) calls go straight to the local scheduler.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python import log

from gating.forge import ForgeError
from gating.queue import QueueError

GATE = "gate"
CALL_TOPIC = ("gating", "gate-call")
REPLY_TOPIC = ("gating", "gate-reply")
RESEND = 2.0  # seconds between sends of an unanswered call
APPROVE_DEADLINE = 30.0  # seconds an API approval waits for the active gate
ANSWERS_KEPT = 1000

CALLS = frozenset(
    {
        "approve",
        "dequeue",
        "export_acquire",
        "export_check_branch",
        "export_step",
        "export_tagging",
        "export_landed",
        "export_failed",
        "job_failed",
    }
)
_ERRORS: dict[str, type[Exception]] = {"QueueError": QueueError, "ForgeError": ForgeError}


class GateUnavailable(QueueError):
    """No master answered for the gate before the call's deadline."""


def local_gate(master: Any) -> Any:
    """The gate scheduler configured on this master (active or not), or None."""
    return master.scheduler_manager.namedServices.get(GATE)


def _multi_master(master: Any) -> bool:
    config = getattr(master, "config", None)
    return bool(getattr(config, "multiMaster", False))


def call(master: Any, method: str, *args: Any, deadline: float | None = None) -> defer.Deferred:
    """Call ``method`` of the active gate scheduler, wherever it runs.

    Fires with the call's (JSON) result; fails with QueueError / ForgeError as the gate
    raised them, or :class:`GateUnavailable` after ``deadline`` seconds without an
    answer (None: wait until cancelled). Cancelling stops waiting.
    """
    if method not in CALLS:
        return defer.fail(QueueError(f"unknown gate call {method!r}"))
    scheduler = local_gate(master)
    if scheduler is None:
        return defer.fail(QueueError("no gate is configured on this master"))
    if not _multi_master(master) or getattr(scheduler, "gate", None) is not None:
        return handle(scheduler, method, list(args))
    return _RemoteCall(master, method, list(args), deadline).start()


def handle(scheduler: Any, method: str, args: list[Any]) -> defer.Deferred:
    """Run one call on a local gate scheduler (the server side, or a local caller)."""
    if method not in CALLS:
        return defer.fail(QueueError(f"unknown gate call {method!r}"))
    if method == "approve":
        project, number = args[0], int(args[1])
        d = defer.maybeDeferred(scheduler.approve, project, number)

        def state(_actions: Any) -> dict[str, str]:
            key = f"{project}~{number}"
            gate = getattr(scheduler, "gate", None)
            item = gate.find(key) if gate is not None else None
            return {"change": key, "state": item.state.value if item else "unknown"}

        return d.addCallback(state)
    if method == "dequeue":
        key = args[0]
        d = defer.maybeDeferred(scheduler.dequeue, key, args[1])
        return d.addCallback(lambda _actions: {"change": key, "state": "dequeued"})
    return defer.maybeDeferred(getattr(scheduler, method), *args)


class _RemoteCall:
    def __init__(self, master: Any, method: str, args: list[Any], deadline: float | None):
        self.master = master
        self.method = method
        self.args = args
        self.deadline = deadline
        self.id = uuid.uuid4().hex
        self.result: defer.Deferred = defer.Deferred(lambda _d: self._stop())
        self._consumer: Any = None
        self._resend: Any = None
        self._expire: Any = None

    def start(self) -> defer.Deferred:
        reactor = self.master.reactor
        d = self.master.mq.startConsuming(self._reply, (*REPLY_TOPIC, self.id))

        @d.addCallback
        def listening(consumer: Any) -> None:
            if self.result.called:  # cancelled meanwhile
                consumer.stopConsuming()
                return
            self._consumer = consumer
            self._send()

        d.addErrback(self._fail)
        if self.deadline is not None:
            self._expire = reactor.callLater(self.deadline, self._timeout)
        return self.result

    def _send(self) -> None:
        if self.result.called:
            return
        self.master.mq.produce((*CALL_TOPIC, self.method), {"id": self.id, "args": self.args})
        self._resend = self.master.reactor.callLater(RESEND, self._send)

    def _reply(self, _key: Any, msg: dict[str, Any]) -> None:
        if self.result.called:
            return
        self._stop()
        if msg.get("ok"):
            self.result.callback(msg.get("result"))
        else:
            error = _ERRORS.get(msg.get("kind", ""), QueueError)
            self.result.errback(error(msg.get("error") or "the gate call failed"))

    def _timeout(self) -> None:
        self._expire = None
        self._fail(
            GateUnavailable(
                f"no master answered for the gate within {self.deadline:g}s "
                "(a takeover may be in progress; try again)"
            )
        )

    def _fail(self, error: Any) -> None:
        self._stop()
        if not self.result.called:
            self.result.errback(error)

    def _stop(self) -> None:
        for name in ("_resend", "_expire"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)
        if self._consumer is not None:
            self._consumer.stopConsuming()
            self._consumer = None


class CallServer:
    """The active gate scheduler's side: consumes calls, answers each call ID once."""

    def __init__(self, master: Any, run: Callable[[str, list[Any]], defer.Deferred]) -> None:
        self.master = master
        self.run = run
        self._consumer: Any = None
        self._running: dict[str, defer.Deferred] = {}
        self._answers: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @defer.inlineCallbacks
    def start(self) -> Any:
        self._consumer = yield self.master.mq.startConsuming(self._call, (*CALL_TOPIC, None))

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.stopConsuming()
            self._consumer = None
        for d in list(self._running.values()):
            d.cancel()
        self._running.clear()

    def _call(self, key: Any, msg: dict[str, Any]) -> None:
        call_id = str(msg.get("id") or "")
        method = key[-1] if key else ""
        if not call_id:
            return
        if call_id in self._answers:
            self._answer(call_id, self._answers[call_id])
            return
        if call_id in self._running:
            return
        d = defer.maybeDeferred(self.run, method, list(msg.get("args") or []))
        self._running[call_id] = d

        def ok(result: Any) -> dict[str, Any]:
            return {"ok": True, "result": result}

        def failed(f: Any) -> dict[str, Any] | None:
            if f.check(defer.CancelledError):
                return None  # this master stopped serving: the caller sends again
            kind = next((name for name, cls in _ERRORS.items() if f.check(cls)), None)
            if kind is None:
                log.err(f, f"gate: call {method} failed")
                return {"ok": False, "kind": "error", "error": "internal error; see the log"}
            return {"ok": False, "kind": kind, "error": str(f.value)}

        def answer(reply: dict[str, Any] | None) -> None:
            self._running.pop(call_id, None)
            if reply is None or self._consumer is None:
                return
            self._answers[call_id] = reply
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)
            self._answer(call_id, reply)

        d.addCallbacks(ok, failed).addCallback(answer)

    def _answer(self, call_id: str, reply: dict[str, Any]) -> None:
        self.master.mq.produce((*REPLY_TOPIC, call_id), reply)
