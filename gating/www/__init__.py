"""The master's HTTP API for the gate, mounted by Buildbot's web server as a www plugin
at ``/plugins/gating/`` (enabled by ``c['www']['plugins']['gating']``).

* ``GET  api/queue``: every queue with its items in order (``gating queue --json``);
* ``POST api/approve`` ``{"project": P, "change": N}``: put a change in the gate
  (``gating approve P N``); errors are ``400 {"error": message}`` and change nothing;
  ``503`` when no master of a cluster holds the gate within 30 s (a takeover);
* ``GET  repos/overlays/<name>/...``: the overlay repositories of the built-in jobs,
  ``repos/repofiles/<name>.repo`` their ``.repo`` files, ``repos/tags/<tag>/...`` the
  local backend's tag repositories (what workers install from);
* ``GET  api/compose-reports[/<compose id>]``: the compose check reports (JSON), and
  ``compose/[<compose id>]`` the same as HTML pages.

The gate API answers on every master of a cluster (multi-master): where the gate
scheduler is not active, ``api/queue`` reads the queues the active master saved in the
shared database (``"active": false``), and ``api/approve`` is forwarded to the active
master through the message queue (:mod:`gating.gaterpc`).
"""

from __future__ import annotations

import html
import json
from typing import Any

from buildbot.www.plugin import Application
from twisted.internet import defer
from twisted.python import log
from twisted.web import resource, server, static

from gating import gaterpc
from gating.composepoller import COMPOSE_SCHEDULER, list_reports, report_path
from gating.queue import QueueError

GATE = "gate"


def _json(request: Any, code: int, payload: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache")
    return json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n"


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
        if getattr(scheduler, "gate", None) is not None:
            return _json(request, 200, scheduler.status())
        # Not active here (another master of the cluster holds the gate, or none yet):
        # the queues as last saved in the shared database.

        def done(status: Any) -> None:
            request.write(_json(request, 200, status))
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

        def done(answer: dict[str, str]) -> None:
            request.write(_json(request, 200, answer))
            request.finish()

        def failed(f: Any) -> None:
            from gating.forge import ForgeError

            if f.check(gaterpc.GateUnavailable):
                request.write(_json(request, 503, {"error": str(f.value)}))
            elif f.check(QueueError, ForgeError):
                request.write(_json(request, 400, {"error": str(f.value)}))
            else:
                log.err(f, "gate: approve")
                request.write(_json(request, 500, {"error": "internal error; see the master log"}))
            request.finish()

        # Straight to the local gate, or through the message queue to the master that
        # holds it (multi-master; gating.gaterpc).
        d = gaterpc.call(
            self.app.master, "approve", project, number, deadline=gaterpc.APPROVE_DEADLINE
        )
        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


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
        files = static.File(str(folder), defaultType="application/octet-stream")
        files.contentTypes.update({".repo": "text/plain", ".xml": "text/xml"})
        return files


def _reports_dir(app: Any) -> str | None:
    master = getattr(app, "master", None)
    if master is None:
        return None
    scheduler = master.scheduler_manager.namedServices.get(COMPOSE_SCHEDULER)
    return scheduler.settings.reports_dir if scheduler is not None else None


class ComposeReportsResource(resource.Resource):
    """``api/compose-reports``: every compose check report (newest first);
    ``api/compose-reports/<compose id>``: one."""

    def __init__(self, app: GatingApp) -> None:
        super().__init__()
        self.app = app

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"":
            return self
        return _OneReport(self.app, path.decode("utf-8", "replace"))

    def render_GET(self, request: Any) -> bytes:
        folder = _reports_dir(self.app)
        if folder is None:
            return _json(request, 404, {"error": "no compose locations are watched"})
        return _json(request, 200, {"reports": list_reports(folder)})


class _OneReport(resource.Resource):
    isLeaf = True

    def __init__(self, app: GatingApp, compose_id: str) -> None:
        super().__init__()
        self.app = app
        self.compose_id = compose_id

    def render_GET(self, request: Any) -> bytes:
        data = _load_report(self.app, self.compose_id)
        if data is None:
            return _json(request, 404, {"error": f"no report of compose {self.compose_id}"})
        return _json(request, 200, data)


def _load_report(app: Any, compose_id: str) -> dict[str, Any] | None:
    folder = _reports_dir(app)
    if folder is None:
        return None
    try:
        return json.loads(report_path(folder, compose_id).read_text())
    except (ValueError, OSError):
        return None


class ComposePageResource(resource.Resource):
    """``compose/``: the compose check reports as HTML pages (``compose/<id>``)."""

    def __init__(self, app: GatingApp) -> None:
        super().__init__()
        self.app = app

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"":
            return self
        return _ReportPage(self.app, path.decode("utf-8", "replace"))

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


class _ReportPage(resource.Resource):
    isLeaf = True

    def __init__(self, app: GatingApp, compose_id: str) -> None:
        super().__init__()
        self.app = app
        self.compose_id = compose_id

    def render_GET(self, request: Any) -> bytes:
        data = _load_report(self.app, self.compose_id)
        if data is None:
            return _page(request, 404, "No report", "<p>No report of this compose.</p>")
        return _page(request, 200, data.get("subject", self.compose_id), report_html(data))


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


class GatingApp(Application):
    def __init__(self) -> None:
        super().__init__(__name__, "buildbot-gating: the gate's queues", ui=False)
        api = resource.Resource()
        api.putChild(b"queue", QueueResource(self))
        api.putChild(b"approve", ApproveResource(self))
        api.putChild(b"compose-reports", ComposeReportsResource(self))
        self.resource.putChild(b"api", api)
        self.resource.putChild(b"compose", ComposePageResource(self))
        self.resource.putChild(b"repos", ReposResource(self))


ep = GatingApp()
