"""gating.gateview: what the Gate page and the pipeline view show (pure)."""

from __future__ import annotations

import pytest

from gating import gateview
from gating.diagnostics import Collector
from gating.inventory import Inventory, Worker
from gating.pipeline import parse_pipeline
from gating.plan import make_plan

PIPELINE = """
trigger: gate
pipeline:
  - unit
  - packstack
jobs:
  unit:
    architectures: [x86_64, aarch64]
    run: "true"
  packstack:
    architectures: [x86_64]
    run: "true"
"""


@pytest.fixture
def plan():
    errors = Collector()
    pipeline = parse_pipeline(PIPELINE, "gate.yaml", "gate", errors)
    assert pipeline is not None
    inventory = Inventory(
        (Worker("w1", "x86_64"), Worker("w2", "aarch64")),
    )
    return gateview.ui_plan(make_plan([pipeline], inventory, errors))


def test_ui_plan_gives_each_pipeline_its_stages_and_each_builder_its_job(plan):
    stages = plan["pipelines"]["gate"]["stages"]
    assert [s["number"] for s in stages] == [1, 2]
    assert [(i["job"], i["arch"], i["builder"]) for i in stages[0]["instances"]] == [
        ("unit", "x86_64", "gate/unit/x86_64"),
        ("unit", "aarch64", "gate/unit/aarch64"),
    ]
    assert plan["builders"]["gate/packstack/x86_64"] == {
        "kind": "job",
        "pipeline": "gate",
        "job": "packstack",
        "index": 0,
        "arch": "x86_64",
        "stage": 1,
    }
    assert plan["builders"]["gate"]["kind"] == "pipeline"


def test_progress_is_elapsed_over_the_estimate_and_never_full_while_running():
    assert gateview.progress(100.0, 40.0, 120.0) == 0.5
    assert gateview.progress(100.0, 40.0, 500.0) == 0.99
    assert gateview.progress(100.0, None, 120.0) is None
    assert gateview.progress(None, 40.0, 120.0) is None


def test_the_estimate_is_the_median_of_previous_durations():
    assert gateview.median_duration([10, 30, 20, 1000]) == 25
    assert gateview.median_duration([]) is None


def test_job_state_from_request_and_build():
    assert gateview.job_state(None, None) == "waiting"
    assert gateview.job_state({"complete": False}, None) == "pending"
    assert gateview.job_state({"complete": True, "results": 6}, None) == "cancelled"
    assert gateview.job_state({}, {"complete_at": None}) == "running"
    assert gateview.job_state({}, {"complete_at": 5, "results": 2}) == "failure"
    assert gateview.job_state({}, {"complete_at": 5, "results": 99}) == "unknown"


BUILDERS = {
    10: "gate",
    11: "gate/unit/x86_64",
    12: "gate/unit/aarch64",
    13: "gate/packstack/x86_64",
}


def rows():
    """Buildset 1 (a gate attempt): pipeline build 100 triggered the unit jobs (buildsets
    2 and 3); the x86_64 one passed, the aarch64 one runs; packstack is not requested yet.
    The x86_64 unit request was retried: its latest build counts."""
    requests = [
        {"brid": 1, "bsid": 1, "builderid": 10, "complete": False, "results": None},
        {"brid": 2, "bsid": 2, "builderid": 11, "complete": True, "results": 0},
        {"brid": 3, "bsid": 3, "builderid": 12, "complete": False, "results": None},
    ]
    builds = [
        {
            "buildid": 100,
            "number": 7,
            "builderid": 10,
            "brid": 1,
            "started_at": 1000,
            "complete_at": None,
            "results": None,
            "state_string": "building",
        },
        {
            "buildid": 101,
            "number": 1,
            "builderid": 11,
            "brid": 2,
            "started_at": 1001,
            "complete_at": 1002,
            "results": 5,
            "state_string": "retry",
        },
        {
            "buildid": 103,
            "number": 2,
            "builderid": 11,
            "brid": 2,
            "started_at": 1003,
            "complete_at": 1010,
            "results": 0,
            "state_string": "build successful",
        },
        {
            "buildid": 102,
            "number": 4,
            "builderid": 12,
            "brid": 3,
            "started_at": 1005,
            "complete_at": None,
            "results": None,
            "state_string": "building",
        },
    ]
    children = [{"bsid": 2, "parent_buildid": 100}, {"bsid": 3, "parent_buildid": 100}]
    return requests, builds, children


def test_assemble_runs_lists_every_instance_in_stage_order(plan):
    requests, builds, children = rows()
    runs = gateview.assemble_runs(
        [1], requests, builds, children, BUILDERS, plan, {12: 20.0}, now=1015.0
    )
    run = runs[1]
    assert run["pipelines"] == [
        {
            "pipeline": "gate",
            "builderid": 10,
            "buildid": 100,
            "number": 7,
            "url": "#/builders/10/builds/7",
            "state": "running",
        }
    ]
    jobs = [(j["job"], j["arch"], j["state"], j["number"], j["progress"]) for j in run["jobs"]]
    assert jobs == [
        ("unit", "x86_64", "success", 2, 1.0),
        ("unit", "aarch64", "running", 4, 0.5),
        ("packstack", "x86_64", "waiting", None, 0.0),
    ]
    assert run["jobs"][1]["url"] == "#/builders/12/builds/4"


def test_instances_never_requested_are_skipped_once_the_pipeline_finished(plan):
    requests, builds, children = rows()
    builds[0] = {**builds[0], "complete_at": 1020, "results": 2}
    builds[3] = {**builds[3], "complete_at": 1019, "results": 2, "state_string": "failed run"}
    runs = gateview.assemble_runs([1], requests, builds, children, BUILDERS, plan, {}, 1030.0)
    states = [j["state"] for j in runs[1]["jobs"]]
    assert states == ["success", "failure", "skipped"]
    assert gateview.failure_reason(runs[1]["jobs"]) == "job unit on aarch64: failure (failed run)"


def test_failure_reason_names_every_failed_instance_with_its_matrix_entry():
    jobs = [
        {"job": "test", "index": 1, "arch": "ppc64le", "state": "failure", "state_string": ""},
        {"job": "lint", "index": 0, "arch": "x86_64", "state": "exception", "state_string": "x"},
        {"job": "ok", "index": 0, "arch": "x86_64", "state": "success", "state_string": ""},
    ]
    assert gateview.failure_reason(jobs) == (
        "job test#1 on ppc64le: failure; job lint on x86_64: exception (x)"
    )
    assert gateview.failure_reason(jobs[2:]) == ""


def status():
    item = {
        "change": "nova~1",
        "state": "testing",
        "attempt": 2,
        "ahead": ["ceilometer~4", "nova~0"],
        "history": ["approved", "attempt 1: reset (ceilometer~3 failed)"],
        "info": {"runs": {"1": 7, "2": 1}, "base": "abc", "merge_commit": "def"},
    }
    failing = {
        "change": "ceilometer~3",
        "state": "failing",
        "attempt": 1,
        "ahead": [],
        "history": [],
        "info": {},
        "reason": "job x failed",
    }
    return {
        "active": True,
        "queues": [{"name": "rdo", "window": 1, "items": [failing, item]}],
        "waiting": [],
        "finished": [
            {
                "change": "old~1",
                "state": "merged",
                "attempt": 1,
                "history": [],
                "info": {"runs": {"1": 3}},
            }
        ],
    }


def test_gate_view_adds_chain_window_resets_and_the_current_run():
    view = gateview.gate_view(status(), {1: {"pipelines": ["P"], "jobs": ["J"]}}, now=5.0)
    failing, item = view["queues"][0]["items"]
    assert item["chain_parent"] == "nova~0"
    assert item["resets"] == ["attempt 1: reset (ceilometer~3 failed)"]
    assert (item["position"], item["in_window"]) == (1, False)
    assert (item["bsid"], item["pipelines"], item["jobs"]) == (1, ["P"], ["J"])
    assert (item["base"], item["merge_commit"]) == ("abc", "def")
    assert "info" not in item
    assert failing["chain_parent"] is None and failing["jobs"] == []
    assert view["finished"][0]["bsid"] == 3
    assert gateview.top_bsids(status()) == [1, 3]


def test_run_view_groups_each_stage_by_arch(plan):
    requests, builds, children = rows()
    triggered = {
        "gate/unit/x86_64": (requests[1], builds[2]),
        "gate/unit/aarch64": (requests[2], builds[3]),
    }
    view = gateview.run_view(
        builds[0],
        "gate",
        requests[0],
        triggered,
        plan,
        {},
        {"gating_change": "nova~1", "secret": "x"},
        1015.0,
    )
    assert [s["state"] for s in view["stages"]] == ["running", "waiting"]
    first = view["stages"][0]
    assert [a["arch"] for a in first["arches"]] == ["x86_64", "aarch64"]
    assert view["properties"] == {"gating_change": "nova~1"}
    assert view["url"] == "#/builders/10/builds/7"
