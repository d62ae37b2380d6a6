"""What the web UI shows of the gate and of pipeline runs (pure logic, no Twisted).

The Gate page (``/#/gate``) draws every queue as Zuul's status page does: items in order,
each with the items its current attempt is tested on top of, its job instances (arch,
state, a progress bar from the builder's previous durations), its failing reason and its
export state. The pipeline view (``/#/gate/runs/<buildid>``) draws one run of a pipeline
as its stages, each with its job instances per arch, linked to the Buildbot builds.

Everything here works on plain data: the gate's status (:meth:`gating.queue.Gate.status`),
rows read from Buildbot's database by :mod:`gating.www.runs` (build requests, builds and
the child buildsets a pipeline build triggered), and :func:`ui_plan` of the configuration.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gating.pipeline import Pipeline
from gating.plan import Plan
from gating.rungraph import RESULT_NAMES

# How many previous successful builds of a builder its duration estimate is the median of.
ESTIMATE_SAMPLES = 10
# Finished items the Gate page lists under the queues.
RECENT_FINISHED = 20


def ui_plan(plan: Plan) -> dict[str, Any]:
    """The configuration as the UI needs it: for each pipeline its file and its stages as
    job instances with their builders; for each builder what it runs."""
    pipelines: dict[str, Any] = {}
    builders: dict[str, Any] = {}
    by_name = {p.name: p for p in plan.pipelines}
    for p in plan.pipelines:
        pipelines[p.name] = {
            "file": p.file,
            "triggers": [t.kind for t in p.triggers],
            "stages": _stages(p, plan),
        }
    for b in plan.builders:
        stage = None
        if b.job is not None:
            stage = by_name[b.pipeline].stage_of(b.job)
        builders[b.name] = {
            "kind": b.kind,
            "pipeline": b.pipeline,
            "job": b.job,
            "index": b.index,
            "arch": b.arch,
            "stage": stage,
        }
    return {"pipelines": pipelines, "builders": builders}


def _stages(p: Pipeline, plan: Plan) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = [
        {"number": n + 1, "jobs": list(names), "instances": []} for n, names in enumerate(p.stages)
    ]
    for number, inst in p.instances():
        stages[number]["instances"].append(
            {
                "job": inst.job,
                "index": inst.index,
                "arch": inst.lane,
                "builder": plan.instance_builder(p, inst),
            }
        )
    return [s for s in stages if s["instances"]]


def median_duration(durations: Iterable[float]) -> float | None:
    """The estimate of a builder's next build: the median of its previous durations."""
    values = [d for d in durations if d >= 0]
    return statistics.median(values) if values else None


def progress(started_at: float | None, estimate: float | None, now: float) -> float | None:
    """How far a running build is, 0..0.99, from its estimated duration; None if unknown
    (no estimate): the UI draws an indeterminate bar."""
    if started_at is None or not estimate:
        return None
    return max(0.0, min((now - started_at) / estimate, 0.99))


def build_url(builderid: int, number: int) -> str:
    """The build's page in Buildbot's web UI (a route of its single-page app)."""
    return f"#/builders/{builderid}/builds/{number}"


def job_state(request: Mapping[str, Any] | None, build: Mapping[str, Any] | None) -> str:
    """``waiting`` (not requested yet), ``pending`` (requested, no worker yet),
    ``running``, or the result's name (``success``, ``failure``, ``cancelled``...)."""
    if build is not None:
        if build.get("complete_at") is None:
            return "running"
        return _result_name(build.get("results"))
    if request is None:
        return "waiting"
    if request.get("complete"):
        return _result_name(request.get("results"))
    return "pending"


def _result_name(results: int | None) -> str:
    if results is None or not 0 <= results < len(RESULT_NAMES):
        return "unknown"
    return RESULT_NAMES[results]


def assemble_runs(
    top_bsids: Iterable[int],
    requests: Sequence[Mapping[str, Any]],
    builds: Sequence[Mapping[str, Any]],
    children: Sequence[Mapping[str, Any]],
    builder_names: Mapping[int, str],
    plan: Mapping[str, Any],
    estimates: Mapping[int, float | None],
    now: float,
) -> dict[int, dict[str, Any]]:
    """For each top-level buildset (a gate attempt's run), its pipeline builds and every
    job instance of those pipelines: the ones triggered, with their latest build, and the
    ones not requested yet (``waiting``; ``skipped`` once the pipeline build finished)."""
    by_bsid: dict[int, list[Mapping[str, Any]]] = {}
    for r in requests:
        by_bsid.setdefault(r["bsid"], []).append(r)
    latest: dict[int, Mapping[str, Any]] = {}
    for b in sorted(builds, key=lambda b: b["buildid"]):
        latest[b["brid"]] = b
    child_bsids: dict[int, list[int]] = {}
    for c in children:
        child_bsids.setdefault(c["parent_buildid"], []).append(c["bsid"])
    out: dict[int, dict[str, Any]] = {}
    for bsid in top_bsids:
        pipelines = []
        jobs = []
        for request in sorted(by_bsid.get(bsid, []), key=lambda r: r["brid"]):
            name = builder_names.get(request["builderid"], "")
            build = latest.get(request["brid"])
            pipelines.append(
                {
                    "pipeline": name,
                    "builderid": request["builderid"],
                    "buildid": build["buildid"] if build else None,
                    "number": build["number"] if build else None,
                    "url": build_url(request["builderid"], build["number"]) if build else None,
                    "state": job_state(request, build),
                }
            )
            triggered: dict[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = {}
            for child in child_bsids.get(build["buildid"], []) if build else []:
                for creq in by_bsid.get(child, []):
                    cname = builder_names.get(creq["builderid"], "")
                    prev = triggered.get(cname)
                    if prev is None or creq["brid"] > prev[0]["brid"]:
                        triggered[cname] = (creq, latest.get(creq["brid"]))
            finished = build is not None and build.get("complete_at") is not None
            jobs.extend(
                pipeline_jobs(name, plan, triggered, estimates, now, pipeline_finished=finished)
            )
        out[bsid] = {"pipelines": pipelines, "jobs": jobs}
    return out


def pipeline_jobs(
    pipeline: str,
    plan: Mapping[str, Any],
    triggered: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]],
    estimates: Mapping[int, float | None],
    now: float,
    *,
    pipeline_finished: bool,
) -> list[dict[str, Any]]:
    """Every job instance of one pipeline run, in stage order (then arch)."""
    info = plan.get("pipelines", {}).get(pipeline)
    out = []
    if info is None:
        # A pipeline no longer configured: show what ran, by builder name.
        for name, (request, build) in sorted(triggered.items()):
            out.append(_job(pipeline, None, {"builder": name}, request, build, estimates, now))
        return out
    for stage in info["stages"]:
        for inst in stage["instances"]:
            request, build = triggered.get(inst["builder"], (None, None))
            job = _job(pipeline, stage["number"], inst, request, build, estimates, now)
            if job["state"] == "waiting" and pipeline_finished:
                job["state"] = "skipped"
            out.append(job)
    return out


def _job(
    pipeline: str,
    stage: int | None,
    inst: Mapping[str, Any],
    request: Mapping[str, Any] | None,
    build: Mapping[str, Any] | None,
    estimates: Mapping[int, float | None],
    now: float,
) -> dict[str, Any]:
    state = job_state(request, build)
    builderid = request["builderid"] if request else None
    estimate = estimates.get(builderid) if builderid is not None else None
    started = build.get("started_at") if build else None
    if state == "running":
        done = progress(started, estimate, now)
    elif state in ("waiting", "pending"):
        done = 0.0
    else:
        done = 1.0
    return {
        "pipeline": pipeline,
        "stage": stage,
        "job": inst.get("job"),
        "index": inst.get("index"),
        "arch": inst.get("arch"),
        "builder": inst.get("builder"),
        "builderid": builderid,
        "state": state,
        "buildid": build["buildid"] if build else None,
        "number": build["number"] if build else None,
        "url": build_url(builderid, build["number"]) if build and builderid else None,
        "started_at": started,
        "complete_at": build.get("complete_at") if build else None,
        "state_string": build.get("state_string", "") if build else "",
        "estimate": estimate,
        "progress": done,
    }


def chain_parent(item: Mapping[str, Any]) -> str | None:
    """The item directly ahead of ``item`` in its speculative chain (the last change its
    current attempt is tested on top of), or None when it is tested on the branch tip."""
    ahead = item.get("ahead") or []
    return ahead[-1] if ahead else None


def resets(history: Sequence[str]) -> list[str]:
    """The history lines that record a reset (the item was tested again without, or on
    top of, other changes)."""
    return [line for line in history if ": reset (" in line or "testing again" in line]


def top_bsids(status: Mapping[str, Any]) -> list[int]:
    """The buildsets of the current attempts of the live items (what the page shows jobs of)."""
    out = []
    for item in _all_items(status):
        bsid = _current_bsid(item)
        if bsid is not None:
            out.append(bsid)
    return out


def _current_bsid(item: Mapping[str, Any]) -> int | None:
    runs = (item.get("info") or {}).get("runs") or {}
    bsid = runs.get(str(item.get("attempt")))
    return int(bsid) if bsid is not None else None


def _all_items(status: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for queue in status.get("queues", []):
        yield from queue.get("items", [])
    yield from status.get("finished", [])[:RECENT_FINISHED]


def gate_view(
    status: Mapping[str, Any], runs: Mapping[int, Mapping[str, Any]], now: float
) -> dict[str, Any]:
    """The Gate page's data: the gate's status with, for each item, its place in its
    queue's speculative chain, its resets, its pipeline runs and job instances."""

    def describe(item: Mapping[str, Any], position: int | None, window: int | None) -> Any:
        bsid = _current_bsid(item)
        run = runs.get(bsid, {}) if bsid is not None else {}
        info = item.get("info") or {}
        return {
            **{k: v for k, v in item.items() if k != "info"},
            "position": position,
            "in_window": window is not None and position is not None and position < window,
            "chain_parent": chain_parent(item),
            "resets": resets(item.get("history", [])),
            "base": info.get("base"),
            "merge_commit": info.get("merge_commit"),
            "merged_commit": info.get("merged_commit"),
            "export_info": info.get("export"),
            "bsid": bsid,
            "pipelines": run.get("pipelines", []),
            "jobs": run.get("jobs", []),
        }

    queues = []
    for queue in status.get("queues", []):
        items = queue.get("items", [])
        queues.append(
            {
                **{k: v for k, v in queue.items() if k != "items"},
                "items": [describe(i, n, queue.get("window")) for n, i in enumerate(items)],
            }
        )
    return {
        "active": status.get("active", True),
        "now": now,
        "queues": queues,
        "waiting": [describe(i, None, None) for i in status.get("waiting", [])],
        "finished": [describe(i, None, None) for i in status.get("finished", [])[:RECENT_FINISHED]],
    }


def run_view(
    pipeline_build: Mapping[str, Any],
    builder_name: str,
    request: Mapping[str, Any] | None,
    triggered: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]],
    plan: Mapping[str, Any],
    estimates: Mapping[int, float | None],
    properties: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    """The pipeline view's data: one pipeline build as its stages, each stage with its job
    instances grouped by arch."""
    finished = pipeline_build.get("complete_at") is not None
    jobs = pipeline_jobs(builder_name, plan, triggered, estimates, now, pipeline_finished=finished)
    info = plan.get("pipelines", {}).get(builder_name)
    stages = []
    for stage in info["stages"] if info else [{"number": None, "jobs": []}]:
        mine = [j for j in jobs if j["stage"] == stage["number"]]
        arches: dict[str, list[dict[str, Any]]] = {}
        for job in mine:
            arches.setdefault(job["arch"] or "", []).append(job)
        stages.append(
            {
                "number": stage["number"],
                "jobs": stage["jobs"],
                "arches": [{"arch": a, "jobs": js} for a, js in arches.items()],
                "state": _stage_state([j["state"] for j in mine]),
            }
        )
    return {
        "pipeline": builder_name,
        "file": info["file"] if info else None,
        "buildid": pipeline_build["buildid"],
        "builderid": pipeline_build["builderid"],
        "number": pipeline_build["number"],
        "url": build_url(pipeline_build["builderid"], pipeline_build["number"]),
        "state": job_state(request, pipeline_build),
        "started_at": pipeline_build.get("started_at"),
        "complete_at": pipeline_build.get("complete_at"),
        "properties": {k: v for k, v in properties.items() if k in RUN_PROPERTIES},
        "stages": stages,
    }


# The properties of a pipeline run the view shows (what started it; never secrets).
RUN_PROPERTIES = frozenset(
    {
        "gating_queue",
        "gating_change",
        "gating_attempt",
        "gating_project",
        "gating_branch",
        "gating_merge_commit",
        "event",
        "nvr",
        "tag",
        "compose_id",
        "branch",
        "revision",
        "project",
    }
)


def _stage_state(states: Sequence[str]) -> str:
    if not states:
        return "waiting"
    for state in ("running", "pending"):
        if state in states:
            return state
    if all(s == "waiting" for s in states):
        return "waiting"
    failed = [s for s in states if s not in ("success", "warnings", "waiting", "skipped")]
    if failed:
        return failed[0]
    if "waiting" in states:
        return "running"
    if all(s == "skipped" for s in states):
        return "skipped"
    return "success"


def failure_reason(jobs: Sequence[Mapping[str, Any]]) -> str:
    """Why a gate run failed, for the item's reason: the failed job instances, e.g.
    ``job test on aarch64 failed (build 12: 'run' failed)``."""
    bad = [
        j
        for j in jobs
        if j["state"] not in ("success", "warnings", "skipped", "waiting", "pending", "running")
    ]
    if not bad:
        return ""
    parts = []
    for j in bad:
        name = j.get("job") or j.get("builder") or "?"
        if j.get("index"):
            name += f"#{j['index']}"
        where = f" on {j['arch']}" if j.get("arch") else ""
        detail = f" ({j['state_string']})" if j.get("state_string") else ""
        parts.append(f"job {name}{where}: {j['state']}{detail}")
    return "; ".join(parts)
