"""Reads what the Gate page and the pipeline view show from Buildbot's database.

A gate attempt's run is a buildset of pipeline builds; each pipeline build triggers a
child buildset per job instance (``parent_buildid``). Whatever the number of items, one
refresh is five queries over the buildsets concerned (requests, builds, children, their
requests and builds), plus one per builder whose duration estimate is not cached. The
answers are plain dicts for :mod:`gating.gateview`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from buildbot.util.service import BuildbotService
from twisted.internet import defer

from gating.gateview import ESTIMATE_SAMPLES, median_duration

ESTIMATE_TTL = 60.0  # seconds a builder's duration estimate is kept
SUCCESS_RESULTS = (0, 1)


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class RunReader:
    """The database reads of the UI, for one master (builder names and duration estimates
    are cached)."""

    def __init__(self, master: Any) -> None:
        self.master = master
        self._estimates: dict[int, tuple[float, float | None]] = {}
        self._builder_names: dict[int, str] = {}

    @defer.inlineCallbacks
    def builder_names(self, ids: Iterable[int]) -> Any:
        missing = {i for i in ids if i not in self._builder_names}
        if missing:
            model = self.master.db.model

            def thd(conn: Any) -> dict[int, str]:
                t = model.builders
                rows = conn.execute(sa.select(t.c.id, t.c.name).where(t.c.id.in_(missing)))
                return {r.id: r.name for r in rows}

            self._builder_names.update((yield self.master.db.pool.do(thd)))
        return self._builder_names

    def rows(self, top_bsids: list[int]) -> Any:
        """(requests, builds, children) of the runs of ``top_bsids`` and of the job
        instances their pipeline builds triggered."""
        model = self.master.db.model

        def thd(conn: Any) -> tuple[list[dict], list[dict], list[dict]]:
            requests = _requests(conn, model, top_bsids)
            builds = _builds(conn, model, [r["brid"] for r in requests])
            children = _children(
                conn, model, [b["buildid"] for b in builds], min(top_bsids, default=0)
            )
            child_requests = _requests(conn, model, [c["bsid"] for c in children])
            child_builds = _builds(conn, model, [r["brid"] for r in child_requests])
            return requests + child_requests, builds + child_builds, children

        return self.master.db.pool.do(thd)

    def run_rows(self, buildid: int) -> Any:
        """One pipeline build, its request, and the requests and builds it triggered."""
        model = self.master.db.model

        def thd(conn: Any) -> Any:
            builds = _builds(conn, model, [], buildid=buildid)
            if not builds:
                return None
            build = builds[0]
            b = model.buildrequests
            req = conn.execute(
                sa.select(b.c.id, b.c.buildsetid, b.c.builderid, b.c.complete, b.c.results).where(
                    b.c.id == build["brid"]
                )
            ).first()
            request = (
                {
                    "brid": req.id,
                    "bsid": req.buildsetid,
                    "builderid": req.builderid,
                    "complete": req.complete,
                    "results": req.results,
                }
                if req
                else None
            )
            children = _children(conn, model, [buildid], request["bsid"] if request else 0)
            child_requests = _requests(conn, model, [c["bsid"] for c in children])
            child_builds = _builds(conn, model, [r["brid"] for r in child_requests])
            return build, request, child_requests, child_builds

        return self.master.db.pool.do(thd)

    def recent_runs(self, pipelines: list[str], limit: int = 100) -> Any:
        """The latest ``limit`` builds of the pipeline builders (newest first), with the
        pipeline's name."""
        model = self.master.db.model

        def thd(conn: Any) -> list[dict[str, Any]]:
            b, t = model.builders, model.builds
            out: list[dict[str, Any]] = []
            for chunk in _chunks(sorted(set(pipelines))):
                q = (
                    sa.select(
                        t.c.id,
                        t.c.number,
                        t.c.builderid,
                        t.c.started_at,
                        t.c.complete_at,
                        t.c.results,
                        t.c.state_string,
                        b.c.name,
                    )
                    .select_from(t.join(b, t.c.builderid == b.c.id))
                    .where(b.c.name.in_(chunk))
                    .order_by(t.c.id.desc())
                    .limit(limit)
                )
                out.extend(
                    {
                        "buildid": r.id,
                        "number": r.number,
                        "builderid": r.builderid,
                        "pipeline": r.name,
                        "started_at": r.started_at,
                        "complete_at": r.complete_at,
                        "results": r.results,
                        "state_string": r.state_string or "",
                    }
                    for r in conn.execute(q)
                )
            out.sort(key=lambda r: -r["buildid"])
            return out[:limit]

        return self.master.db.pool.do(thd)

    @defer.inlineCallbacks
    def estimates(self, builderids: Iterable[int]) -> Any:
        """The duration estimate of each builder: the median of its last successful builds
        (None without any), cached for a minute."""
        now = time.monotonic()
        wanted = set(builderids)
        stale = [i for i in wanted if i not in self._estimates or self._estimates[i][0] < now]
        if stale:
            model = self.master.db.model

            def thd(conn: Any) -> dict[int, float | None]:
                t = model.builds
                out = {}
                for builderid in stale:
                    rows = conn.execute(
                        sa.select(t.c.started_at, t.c.complete_at)
                        .where(
                            t.c.builderid == builderid,
                            t.c.complete_at.isnot(None),
                            t.c.results.in_(SUCCESS_RESULTS),
                        )
                        .order_by(t.c.id.desc())
                        .limit(ESTIMATE_SAMPLES)
                    )
                    out[builderid] = median_duration(
                        r.complete_at - r.started_at for r in rows if r.started_at
                    )
                return out

            found = yield self.master.db.pool.do(thd)
            for builderid, value in found.items():
                self._estimates[builderid] = (now + ESTIMATE_TTL, value)
        return {i: self._estimates[i][1] for i in wanted if i in self._estimates}


def _requests(conn: Any, model: Any, bsids: list[int]) -> list[dict[str, Any]]:
    t = model.buildrequests
    out = []
    for chunk in _chunks(sorted(set(bsids))):
        rows = conn.execute(
            sa.select(
                t.c.id, t.c.buildsetid, t.c.builderid, t.c.complete, t.c.results, t.c.submitted_at
            ).where(t.c.buildsetid.in_(chunk))
        )
        out.extend(
            {
                "brid": r.id,
                "bsid": r.buildsetid,
                "builderid": r.builderid,
                "complete": bool(r.complete),
                "results": r.results,
                "submitted_at": r.submitted_at,
            }
            for r in rows
        )
    return out


def _builds(
    conn: Any, model: Any, brids: list[int], buildid: int | None = None
) -> list[dict[str, Any]]:
    t = model.builds
    columns = (
        t.c.id,
        t.c.number,
        t.c.builderid,
        t.c.buildrequestid,
        t.c.started_at,
        t.c.complete_at,
        t.c.results,
        t.c.state_string,
    )
    if buildid is not None:
        batches = [conn.execute(sa.select(*columns).where(t.c.id == buildid))]
    else:
        batches = [
            conn.execute(sa.select(*columns).where(t.c.buildrequestid.in_(chunk)))
            for chunk in _chunks(sorted(set(brids)))
        ]
    return [
        {
            "buildid": r.id,
            "number": r.number,
            "builderid": r.builderid,
            "brid": r.buildrequestid,
            "started_at": r.started_at,
            "complete_at": r.complete_at,
            "results": r.results,
            "state_string": r.state_string or "",
        }
        for rows in batches
        for r in rows
    ]


def _children(conn: Any, model: Any, buildids: list[int], after: int) -> list[dict[str, Any]]:
    """The buildsets triggered by ``buildids``. ``parent_buildid`` has no index: the scan is
    bounded to the buildsets newer than ``after`` (the first run's own buildset)."""
    t = model.buildsets
    out = []
    for chunk in _chunks(sorted(set(buildids))):
        rows = conn.execute(
            sa.select(t.c.id, t.c.parent_buildid).where(
                t.c.id > after, t.c.parent_buildid.in_(chunk)
            )
        )
        out.extend({"bsid": r.id, "parent_buildid": r.parent_buildid} for r in rows)
    return out


UI_PLAN_SERVICE = "gating-ui-plan"


class UIPlanService(BuildbotService):
    """Holds :func:`gating.gateview.ui_plan` of the loaded configuration for the web API
    (which pipeline a builder belongs to, its job, arch and stage)."""

    name = UI_PLAN_SERVICE

    def checkConfig(self, plan: dict[str, Any]) -> None:  # type: ignore[override]
        pass

    def reconfigService(self, plan: dict[str, Any]) -> Any:  # type: ignore[override]
        self.plan = plan
        return defer.succeed(None)
