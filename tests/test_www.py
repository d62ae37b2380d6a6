"""gating.www: the master's gate API resources, with a fake gate scheduler."""

from __future__ import annotations

import json
from types import SimpleNamespace

from buildbot.www.authz.authz import Authz
from buildbot.www.authz.endpointmatchers import AnyControlEndpointMatcher
from buildbot.www.authz.roles import RolesFromUsername
from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gating.forge import ForgeError
from gating.outage import OutageTracker
from gating.queue import QueueError
from gating.www import (
    ApproveResource,
    DequeueResource,
    GatingApp,
    QueueResource,
    WhoAmIResource,
    gate_notes,
)


class FakeScheduler:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.approved: list[tuple[str, int]] = []
        self.dequeued: list[tuple[str, str]] = []
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

    def dequeue(self, key, reason):
        if self.error:
            return defer.fail(self.error)
        self.dequeued.append((key, reason))
        return defer.succeed([])

    def approve(self, project, number):
        if self.error:
            return defer.fail(self.error)
        self.approved.append((project, number))
        return defer.succeed([])


class FakeWWW:
    """Buildbot's www service as far as authz goes, with the rules a site with a ``web``
    stanza gets: control actions for the "admins" role (user "admin")."""

    def __init__(self):
        self.authz = Authz(
            allowRules=[AnyControlEndpointMatcher(role="admins")],
            roleMatchers=[RolesFromUsername(roles=["admins"], usernames=["admin"])],
        )
        self.authz.setMaster(None)

    def assertUserAllowed(self, request, ep, action, options):
        return self.authz.assertUserAllowed(ep, action, options, request.getSession().user_info)


def app_with(scheduler, www=None) -> GatingApp:
    app = GatingApp()
    services = {"gate": scheduler} if scheduler else {}
    app.setMaster(
        SimpleNamespace(scheduler_manager=SimpleNamespace(namedServices=services), www=www)
    )
    return app


def post(resource, body: bytes, user: str | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    session = SimpleNamespace(user_info={"username": user} if user else {})
    request.getSession = lambda: session
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


def test_an_unreachable_koji_hub_is_a_gate_note_in_the_queue():
    hub = "https://bot:pw@koji.example.org/kojihub"
    backend, poller = OutageTracker(hub, lambda: 1000.0), OutageTracker(hub, lambda: 1010.0)
    services = {"gating-backend": SimpleNamespace(backend=SimpleNamespace(hub_outage=None))}
    services["gating-backend"].backend.hub_outage = backend.current
    app = app_with(FakeScheduler())
    app.master.service_manager = SimpleNamespace(namedServices=services)
    app.master.scheduler_manager.namedServices["koji-events"] = SimpleNamespace(
        hub_outage=poller.current
    )
    assert json.loads(QueueResource(app).render_GET(DummyRequest([b""])))["notes"] == []
    backend.failed("getTaskInfo(7)", ConnectionRefusedError(111, "Connection refused"))
    poller.failed("multiCall(getLastEvent)", ConnectionRefusedError(111, "Connection refused"))
    (note,) = json.loads(QueueResource(app).render_GET(DummyRequest([b""])))["notes"]
    assert note["kind"] == "hub-unreachable" and note["hub"] == "https://koji.example.org/kojihub"
    assert note["users"] == ["build backend", "koji events"]  # one hub, one note
    assert note["since"] == 1000.0 and note["failures"] == 1
    assert note["text"].startswith("koji hub https://koji.example.org/kojihub unreachable since")
    assert "pw" not in json.dumps(note)
    assert gate_notes(None) == []


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


def test_dequeue_takes_the_change_out_with_the_reason_and_who():
    scheduler = FakeScheduler()
    request = post(
        DequeueResource(app_with(scheduler, FakeWWW())),
        b'{"change": "nova~3", "reason": "breaks the compose"}',
        user="admin",
    )
    assert answer(request) == {"change": "nova~3", "state": "dequeued"}
    assert scheduler.dequeued == [("nova~3", "breaks the compose (by admin)")]


def test_control_actions_are_refused_to_anonymous_and_non_admin_users():
    scheduler = FakeScheduler()
    app = app_with(scheduler, FakeWWW())
    for user in (None, "dev"):
        request = post(DequeueResource(app), b'{"change": "nova~3"}', user=user)
        assert request.responseCode == 403
        assert answer(request)["error"].startswith("forbidden: you need to have role 'admins'")
        request = post(ApproveResource(app), b'{"project": "nova", "change": 3}', user=user)
        assert request.responseCode == 403
    assert scheduler.dequeued == [] and scheduler.approved == []
    request = post(ApproveResource(app), b'{"project": "nova", "change": 3}', user="admin")
    assert request.responseCode == 200 and scheduler.approved == [("nova", 3)]


def test_dequeue_refusals_and_malformed_bodies_change_nothing():
    error = QueueError("change nova~3 is being merged; it cannot be dequeued now")
    request = post(DequeueResource(app_with(FakeScheduler(error))), b'{"change": "nova~3"}')
    assert request.responseCode == 400
    assert answer(request) == {"error": str(error)}
    scheduler = FakeScheduler()
    for body in (b"[]", b'{"change": 3}', b'{"change": "nova"}', b'{"reason": "x"}'):
        request = post(DequeueResource(app_with(scheduler)), body)
        assert request.responseCode == 400
    assert scheduler.dequeued == []


def test_whoami_says_who_may_control_the_gate():
    app = app_with(FakeScheduler(), FakeWWW())
    for user, admin in ((None, False), ("dev", False), ("admin", True)):
        request = DummyRequest([b""])
        session = SimpleNamespace(user_info={"username": user} if user else {})
        request.getSession = lambda session=session: session
        result = WhoAmIResource(app).render_GET(request)
        assert result == NOT_DONE_YET
        assert answer(request) == {"user": user, "admin": admin}


def test_repository_folders_never_serve_or_list_hidden_entries(tmp_path):
    """The repositories' work directories (``.staging/``, where a write may be half done)
    and other dot files are neither served nor listed."""
    from gating.www import _PublicFiles

    (tmp_path / ".staging" / "pkgs-1").mkdir(parents=True)
    (tmp_path / ".staging" / "pkgs-1" / "half.rpm").write_bytes(b"half")
    (tmp_path / "repo" / "repodata").mkdir(parents=True)
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd/>")
    (tmp_path / "repo" / ".hidden").write_text("x")
    files = _PublicFiles(str(tmp_path))
    request = DummyRequest([b""])
    assert files.listNames() == ["repo"]
    assert files.getChild(b".staging", request).code == 404
    repo = files.getChild(b"repo", request)
    assert repo.getChild(b".hidden", request).code == 404
    assert repo.listNames() == ["repodata"]
    assert repo.getChild(b"repodata", request).getChild(b"repomd.xml", request).exists()
