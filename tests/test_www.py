"""gating.www: the master's gate API resources, with a fake gate scheduler."""

from __future__ import annotations

import json
from types import SimpleNamespace

from twisted.internet import defer
from twisted.web.test.requesthelper import DummyRequest

from gating.forge import ForgeError
from gating.queue import QueueError
from gating.www import ApproveResource, GatingApp, QueueResource


class FakeScheduler:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.approved: list[tuple[str, int]] = []
        self.gate = SimpleNamespace(
            find=lambda key: SimpleNamespace(state=SimpleNamespace(value="testing"))
        )

    def status(self):
        return {
            "active": True,
            "queues": [{"name": "rdo", "items": []}],
            "waiting": [],
            "finished": [],
        }

    def approve(self, project, number):
        if self.error:
            return defer.fail(self.error)
        self.approved.append((project, number))
        return defer.succeed([])


def app_with(scheduler) -> GatingApp:
    app = GatingApp()
    services = {"gate": scheduler} if scheduler else {}
    app.setMaster(SimpleNamespace(scheduler_manager=SimpleNamespace(namedServices=services)))
    return app


def post(resource, body: bytes) -> DummyRequest:
    request = DummyRequest([b""])
    request.method = b"POST"
    request.content = __import__("io").BytesIO(body)
    result = resource.render(request)
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    return request


def answer(request: DummyRequest) -> dict:
    return json.loads(b"".join(request.written))


def test_queue_serves_the_scheduler_status():
    request = DummyRequest([b""])
    body = QueueResource(app_with(FakeScheduler())).render_GET(request)
    assert json.loads(body)["queues"][0]["name"] == "rdo"
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


def test_queue_without_a_gate_is_404():
    request = DummyRequest([b""])
    body = QueueResource(app_with(None)).render_GET(request)
    assert request.responseCode == 404
    assert json.loads(body) == {"error": "no gate is configured on this master"}


def test_approve_enqueues_and_answers_the_state():
    scheduler = FakeScheduler()
    request = post(ApproveResource(app_with(scheduler)), b'{"project": "nova", "change": 3}')
    assert scheduler.approved == [("nova", 3)]
    assert answer(request) == {"change": "nova~3", "state": "testing"}


def test_approve_refusals_are_400_with_the_message():
    for error in (
        QueueError("change nova~3 is already in the gate"),
        ForgeError("no change nova~9"),
    ):
        request = post(
            ApproveResource(app_with(FakeScheduler(error))), b'{"project": "nova", "change": 3}'
        )
        assert request.responseCode == 400
        assert answer(request) == {"error": str(error)}


def test_approve_with_a_malformed_body_is_400_and_changes_nothing():
    scheduler = FakeScheduler()
    for body in (
        b"not json",
        b'{"project": "nova"}',
        b'{"project": 3, "change": 1}',
        b'{"project": "n", "change": "x"}',
    ):
        request = post(ApproveResource(app_with(scheduler)), body)
        assert request.responseCode == 400
    assert scheduler.approved == []
