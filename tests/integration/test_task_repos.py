"""Task repositories on koji events: a real master polls the koji test hub, shallow-clones the
package's task repository (a git repository over file://, tests/support/taskrepos.py) and adds
one ``task-repo`` build per task; a real worker over PB checks out the same commit and runs
the task. The site has no pipelines: the task repositories alone make the koji scheduler."""

from __future__ import annotations

import time

import pytest
import yaml

from gating.taskrunner import TASK_BUILDER
from tests.integration.conftest import FAILURE, SUCCESS
from tests.support.browser import artifacts_dir, browser_page
from tests.support.koji_hub import KojiTestHub
from tests.support.taskrepos import BROKEN_MESSAGES, head, make_task_repo


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("hub")) as hub:
        hub.create_tag("f40")  # a hub always has events
        yield hub


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-repos")
    make_task_repo(root, "nova")
    return root


@pytest.fixture(scope="module")
def site(make_site, hub, repos):
    site = make_site("task-repos", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["koji-events"].update(server=hub.url, topurl=hub.topurl)
    data["task-repos"]["url"] = f"file://{repos}/{{package}}.git"
    conf.write_text(yaml.safe_dump(data))
    site.start()
    return site


def wait_for_polls(hub: KojiTestHub, count: int, timeout: float = 60) -> None:
    def polls() -> int:
        return sum(1 for entry in hub.rpc_log if entry[1][:1] == ("getLastEvent",))

    deadline = time.monotonic() + timeout
    start = polls()
    while polls() < start + count:
        assert time.monotonic() < deadline, "the master does not poll the hub"
        time.sleep(0.2)


def wait_for_task_builds(site, count: int, timeout: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        builds = site.builds_of(TASK_BUILDER)
        if len(builds) >= count and all(b["complete"] for b in builds):
            return builds
        time.sleep(0.5)
    raise TimeoutError(f"{count} {TASK_BUILDER} builds did not finish within {timeout}s")


def build_requests(site) -> list[dict]:
    builderid = site.builder_ids()[TASK_BUILDER]
    return site.api(f"builders/{builderid}/buildrequests")["buildrequests"]


def test_a_completed_build_runs_its_koji_build_task_and_reports_the_broken_one(site, hub, repos):
    wait_for_polls(hub, 2)  # the first cycle only learns where the hub is
    hub.import_build("nova", "1.0", "1.fc40", owner="packager")
    builds = wait_for_task_builds(site, 2)
    by_task = {site.properties(b["buildid"])["task_name"]: b for b in builds}
    # 'disabled' (run: false) and 'on_tag' (koji_tag only) did not run
    assert sorted(by_task) == ["broken", "check_nvr"]

    good = by_task["check_nvr"]
    assert good["results"] == SUCCESS
    out = site.step_log(good["buildid"], "run")
    assert "checked nova-1.0-1.fc40 (koji_build, package nova)" in out.splitlines()
    assert "check.sh ran in check_nvr for nova-1.0-1.fc40" in out.splitlines()
    props = site.properties(good["buildid"])
    assert {k: props[k] for k in ("package", "nvr", "task_event", "task_item")} == {
        "package": "nova",
        "nvr": "nova-1.0-1.fc40",
        "task_event": "koji_build",
        "task_item": "nova-1.0-1.fc40",
    }
    assert (props["task_branch"], props["task_commit"]) == ("f40", head(repos / "nova.git"))
    assert props["task_repo"] == f"file://{repos}/nova.git"
    steps = site.api(f"builds/{good['buildid']}/steps")["steps"][1:]  # after worker_preparation
    assert [s["name"] for s in steps] == ["task", "clean", "init", "fetch", "checkout", "run"]
    assert steps[0]["state_string"] == "task check_nvr on nova-1.0-1.fc40 (koji_build)"

    bad = by_task["broken"]
    assert bad["results"] == FAILURE
    lines = site.step_log(bad["buildid"], "task").splitlines()
    assert lines[-2:] == list(BROKEN_MESSAGES)
    steps = site.api(f"builds/{bad['buildid']}/steps")["steps"][1:]
    assert [s["name"] for s in steps] == ["task"]  # no checkout, no action
    assert steps[0]["state_string"] == (
        "task broken on nova-1.0-1.fc40 (koji_build): broken broken/runtask.yaml (failure)"
    )

    # the Task repos page of the web UI, in headless Chromium
    with browser_page(artifacts_dir(), "task-repos") as page:
        page.goto(site.url + "#/gate/tasks")
        rows = page.locator("[data-testid=task-row]")
        rows.nth(1).wait_for()
        shown = {
            rows.nth(i).locator("[data-testid=task-name]").inner_text(): rows.nth(i)
            .locator("[data-testid=task-result] .gating-badge")
            .inner_text()
            for i in range(rows.count())
        }
        assert shown == {"check_nvr": "success", "broken": "failure"}
        assert "nova-1.0-1.fc40" in rows.first.inner_text()

    # a package without a task repository, a release whose branch does not exist: no builds
    hub.import_build("glance", "1.0", "1.fc40")
    hub.import_build("nova", "1.0", "1.el9")
    wait_for_polls(hub, 4)
    assert len(site.builds_of(TASK_BUILDER)) == 2
    assert len(build_requests(site)) == 2
    master_log = (site.master_dir / "twistd.log").read_text()
    assert master_log.count(f"no task repository for glance at file://{repos}/glance.git") == 1
    assert "no task repository for nova at" in master_log and "(branch epel9)" in master_log
    assert not list((site.master_dir / "task-repos").iterdir())  # every clone was removed
