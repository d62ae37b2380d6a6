"""The master's HTTP API for the gate, mounted by Buildbot's web server as a www plugin
at ``/plugins/gating/`` (enabled by ``c['www']['plugins']['gating']``).

* ``GET  api/queue``: every queue with its items in order (``gating queue --json``), and
  ``notes``: what holds the whole gate up (a koji hub unreachable: :func:`gate_notes`);
* ``POST api/approve`` ``{"project": P, "change": N}``: put a change in the gate
  (``gating approve P N``); errors are ``400 {"error": message}`` and change nothing;
  ``503`` when no master of a cluster holds the gate within 30 s (a takeover);
* ``GET  repos/overlays/<name>/...``: the overlay repositories of the built-in jobs,
  ``repos/repofiles/<name>.repo`` their ``.repo`` files, ``repos/tags/<tag>/...`` the
  local backend's tag repositories (what workers install from);
* ``GET  api/compose-reports[/<compose id>]``: the compose check reports (JSON), and
  ``compose/[<compose id>]`` the same as HTML pages.

* ``GET  api/gate``: what the Gate page draws (:func:`gating.gateview.gate_view`): the
  queues with each item's place in its speculative chain, resets, pipeline runs and job
  instances with their progress;
* ``GET  api/runs/<buildid>``: one pipeline run as its stages (the pipeline view);
* ``POST api/dequeue`` ``{"change": "P~N", "reason": TEXT}``: take a change out of the gate;
* ``GET  api/whoami``: the logged-in user and whether they may control the gate;
* ``scripts.js``: the web UI plugin (the Gate, pipeline run, compose and task repo pages).

Control actions (approve, dequeue) go through Buildbot's authz, as ``("gating", action)``
endpoints with that action: with :class:`buildbot.www.authz.endpointmatchers.
AnyControlEndpointMatcher` rules (the site's ``web`` stanza), only the admin role may.

The gate API answers on every master of a cluster (multi-master): where the gate
scheduler is not active, ``api/queue`` reads the queues the active master saved in the
shared database (``"active": false``), and ``api/approve`` is forwarded to the active
master through the message queue (:mod:`gating.gaterpc`).
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from buildbot.www.authz.authz import Forbidden
from buildbot.www.plugin import Application
from twisted.internet import defer
from twisted.python import log
from twisted.web import resource, server, static

from gating import gaterpc, gateview
from gating import runsdb as runs
from gating.composepoller import COMPOSE_SCHEDULER, list_reports, report_path
from gating.kojipoller import KOJI_SCHEDULER
from gating.queue import QueueError

GATE = "gate"


def gate_notes(master: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Gate-level notes: each koji hub this master's build backend or koji events poller
    cannot reach right now (``kind`` ``hub-unreachable``, ``text``, ``hub`` without
    credentials, ``since``, ``seconds``, ``failures``, ``error``). Builds and exports wait
    for such a hub; no item fails for it before the backend's ``outage-timeout``."""
    if master is None:
        return []
    now = time.time() if now is None else now
    found: list[Any] = []
    services = getattr(getattr(master, "service_manager", None), "namedServices", {})
    backend = getattr(services.get("gating-backend"), "backend", None)
    if backend is not None and hasattr(backend, "hub_outage"):
        found.append(("build backend", backend.hub_outage()))
    schedulers = getattr(getattr(master, "scheduler_manager", None), "namedServices", {})
    poller = schedulers.get(KOJI_SCHEDULER)
    if poller is not None and hasattr(poller, "hub_outage"):
        found.append(("koji events", poller.hub_outage()))
    notes: list[dict[str, Any]] = []
    for user, outage in found:
        if outage is None:
            continue
        note = outage.to_json(now)
        same = next((n for n in notes if n["hub"] == note["hub"]), None)
        if same is not None:
            same["users"].append(user)
            continue
        notes.append({"kind": "hub-unreachable", "users": [user], **note})
    return notes


def _json(request: Any, code: int, payload: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache")
    return json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n"


def _respond(request: Any, d: defer.Deferred, what: str) -> Any:
    """Answer ``request`` with the JSON the Deferred gives ``(code, payload)``; a
    :class:`Forbidden` is a 403, anything unexpected a logged 500."""

    def done(value: tuple[int, Any]) -> None:
        code, payload = value
        request.write(_json(request, code, payload))
        request.finish()

    def failed(f: Any) -> None:
        if f.check(Forbidden):
            request.write(_json(request, 403, {"error": f"forbidden: {f.value.message.decode()}"}))
        else:
            log.err(f, f"gate: {what}")
            request.write(_json(request, 500, {"error": "internal error; see the master log"}))
        request.finish()

    d.addCallbacks(done, failed)
    return server.NOT_DONE_YET


def _user(request: Any) -> dict[str, Any]:
    return getattr(request.getSession(), "user_info", None) or {}


@defer.inlineCallbacks
def assert_allowed(master: Any, request: Any, action: str) -> Any:
    """Buildbot's authz for a gate action (``approve``, ``dequeue``, ``get``): raises
    :class:`Forbidden` unless the site's rules let the request's user do it."""
    www = getattr(master, "www", None)
    if www is None:
        return
    yield www.assertUserAllowed(request, ("gating", action), action, {})


@defer.inlineCallbacks
def is_allowed(master: Any, request: Any, action: str) -> Any:
    try:
        yield assert_allowed(master, request, action)
    except Forbidden:
        return False
    return True


class _GateResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: GatingApp) -> None:
        super().__init__()
        self.app = app

    def scheduler(self) -> Any:
        master = getattr(self.app, "master", None)
        if master is None:
            return None
        return master.scheduler_manager.namedServices.get(GATE)


class QueueResource(_GateResource):
    def render_GET(self, request: Any) -> Any:
        scheduler = self.scheduler()
        if scheduler is None:
            return _json(request, 404, {"error": "no gate is configured on this master"})
        notes = gate_notes(self.app.master)
        if getattr(scheduler, "gate", None) is not None:
            return _json(request, 200, {**scheduler.status(), "notes": notes})
        # Not active here (another master of the cluster holds the gate, or none yet):
        # the queues as last saved in the shared database.

        def done(status: Any) -> None:
            request.write(_json(request, 200, {**status, "notes": notes}))
            request.finish()

        def failed(f: Any) -> None:
            log.err(f, "gate: queue")
            request.write(_json(request, 500, {"error": "internal error; see the master log"}))
            request.finish()

        defer.maybeDeferred(scheduler.saved_status).addCallbacks(done, failed)
        return server.NOT_DONE_YET


class ApproveResource(_GateResource):
    def render_POST(self, request: Any) -> Any:
        scheduler = self.scheduler()
        if scheduler is None:
            return _json(request, 404, {"error": "no gate is configured on this master"})
        try:
            body = json.loads(request.content.read() or b"{}")
            project = body["project"]
            number = int(body["change"])
            if not isinstance(project, str):
                raise TypeError("project")
        except (ValueError, KeyError, TypeError):
            return _json(
                request, 400, {"error": 'expected JSON {"project": NAME, "change": NUMBER}'}
            )

        return _respond(request, self.control(request, "approve", project, number), "approve")

    @defer.inlineCallbacks
    def control(self, request: Any, action: str, *args: Any) -> Any:
        """Check the user may, then call the gate: straight to the local gate, or through
        the message queue to the master that holds it (multi-master; gating.gaterpc)."""
        from gating.forge import ForgeError

        yield assert_allowed(self.app.master, request, action)
        try:
            answer = yield gaterpc.call(
                self.app.master, action, *args, deadline=gaterpc.APPROVE_DEADLINE
            )
        except gaterpc.GateUnavailable as exc:
            return 503, {"error": str(exc)}
        except (QueueError, ForgeError) as exc:
            return 400, {"error": str(exc)}
        return 200, answer


class DequeueResource(ApproveResource):
    def render_POST(self, request: Any) -> Any:
        if self.scheduler() is None:
            return _json(request, 404, {"error": "no gate is configured on this master"})
        try:
            body = json.loads(request.content.read() or b"{}")
            key = body["change"]
            reason = body.get("reason") or "dequeued by an admin"
            if not isinstance(key, str) or not isinstance(reason, str) or "~" not in key:
                raise TypeError("change")
        except (ValueError, KeyError, TypeError):
            return _json(
                request,
                400,
                {"error": 'expected JSON {"change": "PROJECT~NUMBER", "reason": TEXT}'},
            )
        user = _user(request).get("username")
        if user:
            reason = f"{reason} (by {user})"
        return _respond(request, self.control(request, "dequeue", key, reason[:500]), "dequeue")


class WhoAmIResource(_GateResource):
    """``api/whoami``: ``{"user": NAME or null, "admin": BOOL}`` (admin: may control the gate)."""

    def render_GET(self, request: Any) -> Any:
        @defer.inlineCallbacks
        def answer() -> Any:
            admin = yield is_allowed(self.app.master, request, "dequeue")
            return 200, {"user": _user(request).get("username"), "admin": admin}

        return _respond(request, answer(), "whoami")


class _Collection(resource.Resource):
    """A resource answering at its own path (``name/``) and giving ``name/<id>`` to a
    :class:`_Member` of class ``member``."""

    member: type[_Member]

    def __init__(self, app: GatingApp) -> None:
        super().__init__()
        self.app = app

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"":
            return self
        return self.member(self.app, path.decode("utf-8", "replace"))


class _Member(resource.Resource):
    isLeaf = True

    def __init__(self, app: GatingApp, name: str) -> None:
        super().__init__()
        self.app = app
        self.name = name


def _plan(master: Any) -> dict[str, Any]:
    svc = master.service_manager.namedServices.get(runs.UI_PLAN_SERVICE)
    return getattr(svc, "plan", None) or {"pipelines": {}, "builders": {}}


class GateViewResource(_GateResource):
    """``api/gate``: what the Gate page draws (:func:`gating.gateview.gate_view`)."""

    def render_GET(self, request: Any) -> Any:
        return _respond(request, self.view(request), "gate view")

    @defer.inlineCallbacks
    def view(self, request: Any) -> Any:
        master = self.app.master
        yield assert_allowed(master, request, "get")
        scheduler = self.scheduler()
        if scheduler is None:
            return 404, {"error": "no gate is configured on this master"}
        if getattr(scheduler, "gate", None) is not None:
            status = scheduler.status()
        else:
            status = yield scheduler.saved_status()
        reader = self.app.reader()
        tops = gateview.top_bsids(status)
        requests, builds, children = yield reader.rows(tops)
        names = yield reader.builder_names({r["builderid"] for r in requests})
        estimates = yield reader.estimates(
            {r["builderid"] for r in requests if r["bsid"] not in tops}
        )
        now = time.time()
        found = gateview.assemble_runs(
            tops, requests, builds, children, names, _plan(master), estimates, now
        )
        return 200, {**gateview.gate_view(status, found, now), "notes": gate_notes(master, now)}


class RunResource(_Collection):
    """``api/runs``: the latest pipeline runs; ``api/runs/<buildid>``: one pipeline run as
    its stages (the pipeline view)."""

    def render_GET(self, request: Any) -> Any:
        @defer.inlineCallbacks
        def answer() -> Any:
            master = self.app.master
            yield assert_allowed(master, request, "get")
            plan = _plan(master)
            found = yield self.app.reader().recent_runs(list(plan["pipelines"]))
            for run in found:
                run["state"] = gateview.job_state(None, run)
                run["url"] = gateview.build_url(run["builderid"], run["number"])
            return 200, {"pipelines": plan["pipelines"], "runs": found}

        return _respond(request, answer(), "pipeline runs")


class _OneRun(_Member):
    def render_GET(self, request: Any) -> Any:
        if not self.name.isdigit():
            return _json(request, 400, {"error": "expected api/runs/<pipeline build id>"})
        return _respond(request, self.view(request, int(self.name)), "pipeline run")

    @defer.inlineCallbacks
    def view(self, request: Any, buildid: int) -> Any:
        master = self.app.master
        yield assert_allowed(master, request, "get")
        reader = self.app.reader()
        found = yield reader.run_rows(buildid)
        if found is None:
            return 404, {"error": f"no build {buildid}"}
        build, req, child_requests, child_builds = found
        names = yield reader.builder_names(
            {build["builderid"], *(r["builderid"] for r in child_requests)}
        )
        name = names.get(build["builderid"], "")
        plan = _plan(master)
        if name not in plan["pipelines"]:
            return 404, {"error": f"build {buildid} is not a pipeline run"}
        estimates = yield reader.estimates({r["builderid"] for r in child_requests})
        latest: dict[int, Any] = {}
        for b in sorted(child_builds, key=lambda b: b["buildid"]):
            latest[b["brid"]] = b
        triggered: dict[str, Any] = {}
        for r in sorted(child_requests, key=lambda r: r["brid"]):
            triggered[names.get(r["builderid"], "")] = (r, latest.get(r["brid"]))
        props = yield master.db.builds.getBuildProperties(buildid)
        values = {k: v[0] for k, v in (props or {}).items()}
        return 200, gateview.run_view(
            build, name, req, triggered, plan, estimates, values, time.time()
        )


class _PublicFiles(static.File):
    """Static files that never serve or list a hidden entry (``.staging/``: the work
    directories of the repositories, where half-written files may be)."""

    def getChild(self, path: bytes, request: Any) -> Any:
        if path.startswith(b"."):
            return resource.NoResource("no such file")
        return super().getChild(path, request)

    def listNames(self) -> list[str]:  # noqa: N802 (Twisted's name)
        return [name for name in super().listNames() if not name.startswith(".")]


class ReposResource(resource.Resource):
    """Static files of the build backend's public directories (read-only)."""

    def __init__(self, app: GatingApp) -> None:
        super().__init__()
        self.app = app

    def getChild(self, path: bytes, request: Any) -> Any:
        master = getattr(self.app, "master", None)
        svc = (
            master.service_manager.namedServices.get("gating-backend")
            if master is not None
            else None
        )
        if svc is None:
            return resource.NoResource("no build backend is configured on this master")
        dirs = svc.public_dirs()
        folder = dirs.get(path.decode("utf-8", "replace"))
        if folder is None:
            return resource.NoResource(f"no such repository folder (known: {', '.join(dirs)})")
        folder.mkdir(parents=True, exist_ok=True)
        files = _PublicFiles(str(folder), defaultType="application/octet-stream")
        files.contentTypes.update({".repo": "text/plain", ".xml": "text/xml"})
        return files


def _reports_dir(app: Any) -> str | None:
    master = getattr(app, "master", None)
    if master is None:
        return None
    scheduler = master.scheduler_manager.namedServices.get(COMPOSE_SCHEDULER)
    return scheduler.settings.reports_dir if scheduler is not None else None


class ComposeReportsResource(_Collection):
    """``api/compose-reports``: every compose check report (newest first);
    ``api/compose-reports/<compose id>``: one."""

    def render_GET(self, request: Any) -> bytes:
        folder = _reports_dir(self.app)
        if folder is None:
            return _json(request, 404, {"error": "no compose locations are watched"})
        return _json(request, 200, {"reports": list_reports(folder)})


class _OneReport(_Member):
    def render_GET(self, request: Any) -> bytes:
        data = _load_report(self.app, self.name)
        if data is None:
            return _json(request, 404, {"error": f"no report of compose {self.name}"})
        return _json(request, 200, data)


def _load_report(app: Any, compose_id: str) -> dict[str, Any] | None:
    folder = _reports_dir(app)
    if folder is None:
        return None
    try:
        return json.loads(report_path(folder, compose_id).read_text())
    except (ValueError, OSError):
        return None


class ComposePageResource(_Collection):
    """``compose/``: the compose check reports as HTML pages (``compose/<id>``)."""

    def render_GET(self, request: Any) -> bytes:
        folder = _reports_dir(self.app)
        reports = list_reports(folder) if folder else []
        rows = "".join(
            f'<tr><td><a href="{html.escape(r["compose"]["id"])}">'
            f"{html.escape(r['compose']['id'])}</a></td><td>{html.escape(r.get('name', ''))}"
            f"</td><td>{html.escape(str(r['compose']['status']))}</td>"
            f'<td class="{html.escape(r.get("result", ""))}">{html.escape(r.get("result", ""))}'
            "</td></tr>"
            for r in reports
        )
        body = (
            "<h1>Compose check reports</h1><table><tr><th>compose</th><th>location</th>"
            f"<th>STATUS</th><th>result</th></tr>{rows}</table>"
        )
        return _page(request, 200, "Compose check reports", body)


class _ReportPage(_Member):
    def render_GET(self, request: Any) -> bytes:
        data = _load_report(self.app, self.name)
        if data is None:
            return _page(request, 404, "No report", "<p>No report of this compose.</p>")
        return _page(request, 200, data.get("subject", self.name), report_html(data))


def _image_rows(images: list[dict[str, Any]]) -> str:
    if not images:
        return "<p class='none'>None.</p>"
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(i.get(k) or ''))}</td>"
            for k in ("subvariant", "type", "format", "arch", "path")
        )
        + "</tr>"
        for i in images
    )
    return (
        "<table><tr><th>subvariant</th><th>type</th><th>format</th><th>arch</th><th>path</th>"
        f"</tr>{rows}</table>"
    )


def report_html(data: dict[str, Any]) -> str:
    """A compose check report as an HTML fragment (every value escaped)."""
    compose = data["compose"]
    previous = data.get("previous") or "no previous compose"
    missing = "".join(
        f"<li>{html.escape(e['subvariant'])} {html.escape(e['type'])} {html.escape(e['arch'])}</li>"
        for e in data["missing_expected"]
    )
    failed = "".join(
        f'<li><a href="{html.escape(j["url"])}">{html.escape(j["name"])}</a> '
        f"({html.escape(j['result'])})</li>"
        for j in data["failed_jobs"]
    )
    return (
        f"<h1>Compose check report: {html.escape(compose['id'])}</h1>"
        f"<p>Location {html.escape(data.get('name', ''))}: {html.escape(compose['location'])}"
        f"<br>STATUS: {html.escape(str(compose['status']))}; result: "
        f"<b class='result'>{html.escape(data.get('result', ''))}</b></p>"
        f"<h2>Images in this compose but not in {html.escape(previous)}</h2>"
        f"<div id='added'>{_image_rows(data['added'])}</div>"
        f"<h2>Images in {html.escape(previous)} but not in this compose</h2>"
        f"<div id='removed'>{_image_rows(data['removed'])}</div>"
        f"<h2>Missing expected images</h2><ul id='missing'>{missing}</ul>"
        + ("" if missing else "<p class='none'>None.</p>")
        + f"<h2>Failed jobs</h2><ul id='failed'>{failed}</ul>"
        + ("" if failed else "<p class='none'>None.</p>")
    )


def _page(request: Any, code: int, title: str, body: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", b"default-src 'self'")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}.failed{color:#b00}</style></head>"
        f"<body>{body}</body></html>"
    ).encode()


RunResource.member = _OneRun
ComposeReportsResource.member = _OneReport
ComposePageResource.member = _ReportPage


class GatingApp(Application):
    def __init__(self) -> None:
        super().__init__(__name__, "buildbot-gating: the gate's queues and pages")
        self._reader: runs.RunReader | None = None
        api = resource.Resource()
        api.putChild(b"queue", QueueResource(self))
        api.putChild(b"gate", GateViewResource(self))
        api.putChild(b"runs", RunResource(self))
        api.putChild(b"approve", ApproveResource(self))
        api.putChild(b"dequeue", DequeueResource(self))
        api.putChild(b"whoami", WhoAmIResource(self))
        api.putChild(b"compose-reports", ComposeReportsResource(self))
        self.resource.putChild(b"api", api)
        self.resource.putChild(b"compose", ComposePageResource(self))
        self.resource.putChild(b"repos", ReposResource(self))

    def reader(self) -> runs.RunReader:
        if self._reader is None or self._reader.master is not self.master:
            self._reader = runs.RunReader(self.master)
        return self._reader


ep = GatingApp()
