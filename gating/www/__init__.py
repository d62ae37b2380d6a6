"""The master's HTTP API for the gate, mounted by Buildbot's web server as a www plugin
at ``/plugins/gating/`` (enabled by ``c['www']['plugins']['gating']``).

* ``GET  api/queue``: every queue with its items in order (``gating queue --json``);
* ``POST api/approve`` ``{"project": P, "change": N}``: put a change in the gate
  (``gating approve P N``); errors are ``400 {"error": message}`` and change nothing;
* ``GET  repos/overlays/<name>/...``: the overlay repositories of the built-in jobs,
  ``repos/repofiles/<name>.repo`` their ``.repo`` files, ``repos/tags/<tag>/...`` the
  local backend's tag repositories (what workers install from).
"""

from __future__ import annotations

import json
from typing import Any

from buildbot.www.plugin import Application
from twisted.internet import defer
from twisted.python import log
from twisted.web import resource, server, static

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
    def render_GET(self, request: Any) -> bytes:
        scheduler = self.scheduler()
        if scheduler is None:
            return _json(request, 404, {"error": "no gate is configured on this master"})
        return _json(request, 200, scheduler.status())


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

        def done(_actions: Any) -> None:
            item = scheduler.gate.find(f"{project}~{number}")
            state = item.state.value if item else "unknown"
            request.write(_json(request, 200, {"change": f"{project}~{number}", "state": state}))
            request.finish()

        def failed(f: Any) -> None:
            from gating.forge import ForgeError

            if f.check(QueueError, ForgeError):
                request.write(_json(request, 400, {"error": str(f.value)}))
            else:
                log.err(f, "gate: approve")
                request.write(_json(request, 500, {"error": "internal error; see the master log"}))
            request.finish()

        d = defer.maybeDeferred(scheduler.approve, project, number)
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


class GatingApp(Application):
    def __init__(self) -> None:
        super().__init__(__name__, "buildbot-gating: the gate's queues", ui=False)
        api = resource.Resource()
        api.putChild(b"queue", QueueResource(self))
        api.putChild(b"approve", ApproveResource(self))
        self.resource.putChild(b"api", api)
        self.resource.putChild(b"repos", ReposResource(self))


ep = GatingApp()
