"""Faults of the master itself (issue 9): a master SIGKILLed at the worst moments, then
restarted. A real master with real workers over PB, the koji test hub (the real ``koji``
library on loopback), real git, ``rpmbuild`` and ``createrepo_c``.

* killed in the middle of a koji-events poll cycle that found events, after one event's
  pipelines were started and before the cycle was saved: each event starts its pipelines
  exactly once after the restart (none lost, none repeated);
* killed in a compose poll, after the first of a compose's two pipelines was started and
  before the compose was saved as started: after the restart each pipeline ran once for the
  compose, the run started before the kill is adopted (its failed job is in the report) and
  one report is written;
* killed in the middle of a poll cycle of the embedded forge that found two new patchsets,
  after the first one's Buildbot change was added and before it was saved as seen: each
  patchset becomes one Buildbot change and runs its ``trigger: check`` pipeline once;
* killed while the gate's koji scratch builds run on the hub: the gate resumes by itself,
  every change merges once with its RPM landed, in gate order, and the orphaned scratch
  tasks are adopted (their results are the ones the overlays use: no second task for the
  same (package, commit)).

The kill in the export section itself (between the koji tag and the git merge) is in
tests/integration/test_export_koji.py, next to the other koji export tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import koji
import pytest
import yaml

from tests.integration.conftest import FAILURE, RETRY, SUCCESS
from tests.support.composes import ComposeServer, image, set_status, write_compose
from tests.support.koji_hub import KojiTestHub

TAGS = ["f40-updates", "f40-updates-testing"]


def kill_master(site) -> None:
    """SIGKILL the site's master (its workers live on and reconnect to the next one)."""
    pid = site.master_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while site.master_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.master_pid() is None


def wait_for(condition, what: str, timeout: float = 300, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def object_state(site, name: str):
    with sqlite3.connect(site.master_dir / "state.sqlite") as db:
        rows = db.execute("SELECT value_json FROM object_state WHERE name = ?", (name,)).fetchall()
    return [json.loads(r[0]) for r in rows]


# -- (c) a kill in the middle of a koji-events poll cycle ---------------------------------


@pytest.fixture(scope="module")
def events_hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("events-hub"), first_event_id=2**31 + 101) as hub:
        for tag in TAGS:
            hub.create_tag(tag)
        yield hub


@pytest.fixture(scope="module")
def events_site(make_site, events_hub):
    site = make_site("koji-events", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["koji-events"].update(server=events_hub.url, topurl=events_hub.topurl)
    conf.write_text(yaml.safe_dump(data))
    return site


def event_lines(site, pipeline: str) -> list[str]:
    """The ``event=...`` line each finished run of ``pipeline`` printed."""
    lines = []
    for build in site.builds_of(f"{pipeline}/check/x86_64"):
        assert build["complete"] and build["results"] == SUCCESS, build
        log = site.step_log(build["buildid"], "run")
        lines += [line for line in log.splitlines() if line.startswith("event=")]
    return sorted(lines)


def runs_done(site, pipeline: str) -> int:
    try:
        builds = site.builds_of(f"{pipeline}/check/x86_64")
    except KeyError:
        return 0
    return sum(1 for b in builds if b["complete"])


def test_a_master_killed_in_a_poll_cycle_neither_loses_nor_repeats_an_event(
    events_site, events_hub, tmp_path, monkeypatch
):
    site, hub = events_site, events_hub
    from gating.testhooks import TEST_HOOKS_ENV

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv(TEST_HOOKS_ENV, str(hooks))
    site.start()
    # The first cycle sets the cursor at the hub's last event.
    wait_for(lambda: object_state(site, "koji_cursor"), "the master never polled", 120)

    # Three events the next cycle finds together (the hub is offline meanwhile): a completed
    # nova build (on-build) and two taggings of it (on-tag).
    (hooks / "pause-koji-fire-after-buildsets").write_text("")
    hub.fail_next(kind="offline", duration=4)
    build = hub.import_build("nova", "12.0.1", "1.fc40", owner="packager")
    hub.tag_build("f40-updates", "nova-12.0.1-1.fc40", user="bodhi")
    hub.tag_build("f40-updates-testing", "nova-12.0.1-1.fc40", user="bodhi")

    # The cycle found them, started the first event's pipeline and stopped there.
    wait_for(lambda: (hooks / "paused-koji-fire-after-buildsets").exists(), "no cycle paused")
    (firing,) = object_state(site, "koji_firing")
    assert firing and firing not in (object_state(site, "koji_fired") or [[]])[0]
    kill_master(site)
    (hooks / "pause-koji-fire-after-buildsets").unlink()
    site.start()

    expected_tags = [
        "event=koji_tag nvr=nova-12.0.1-1.fc40 tag=f40-updates owner=packager",
        "event=koji_tag nvr=nova-12.0.1-1.fc40 tag=f40-updates-testing owner=packager",
    ]
    expected_builds = [f"event=koji_build nvr=nova-12.0.1-1.fc40 task={build['task_id']}"]
    wait_for(lambda: runs_done(site, "on-tag") >= 2, "the tag events did not run")
    wait_for(lambda: runs_done(site, "on-build") >= 1, "the build event did not run")
    # A few more cycles: nothing else starts.
    polls = len(hub.rpc_log)
    wait_for(lambda: len(hub.rpc_log) >= polls + 3, "the master stopped polling", 60)
    time.sleep(2)  # a run started by a late duplicate would be requested by now
    assert event_lines(site, "on-tag") == expected_tags
    assert event_lines(site, "on-build") == expected_builds
    for pipeline in ("on-tag", "on-build"):
        requests = site.api(f"builders/{site.builder_ids()[pipeline]}/buildrequests")
        assert len(requests["buildrequests"]) == len(
            expected_tags if pipeline == "on-tag" else expected_builds
        )
    (fired,) = object_state(site, "koji_fired")
    assert len(fired) == len(set(fired)) == 3
    assert object_state(site, "koji_firing") == [None]


# -- (c') a kill in the middle of a compose poll ---------------------------------------

COMPOSE = "Fedora-Rawhide-20261105.n.0"
COMPOSE_JOB = "compose-tests/workstation-live/x86_64"
# A second compose pipeline, added to this test's copy of the site (it runs after
# compose-tests: pipelines are started in name order).
UPGRADE_PIPELINE = """\
trigger:
  compose: {location: rawhide}
pipeline:
  - upgrade
jobs:
  upgrade:
    architectures: [x86_64]
    run: echo "upgrade from compose=$GATING_COMPOSE_ID"
"""


@pytest.fixture(scope="module")
def compose_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("composes")
    (root / "rawhide").mkdir()
    with ComposeServer(root) as server:
        yield root, server


def compose_site(make_site, server):
    site = make_site("composes", start=False)
    (site.config_dir / "pipelines" / "compose-upgrade.yaml").write_text(UPGRADE_PIPELINE)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["composes"] = [
        {"name": "rawhide", "location": server.url_for("rawhide/latest"), "poll-interval": 1}
    ]
    del data["mail"]  # no mail reporter: the report is counted in the master's log
    conf.write_text(yaml.safe_dump(data))
    return site


def compose_requests(site, pipeline: str) -> list[dict]:
    builderid = site.builder_ids()[pipeline]
    return site.api(f"builders/{builderid}/buildrequests")["buildrequests"]


def test_a_master_killed_in_a_compose_poll_neither_loses_nor_repeats_its_pipelines(
    make_site, compose_tree, tmp_path, monkeypatch
):
    from gating.testhooks import TEST_HOOKS_ENV

    root, server = compose_tree
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv(TEST_HOOKS_ENV, str(hooks))
    (hooks / "pause-compose-fire-after-buildsets").write_text("")
    # No Workstation image: compose-tests' job fails (its failure must reach the report).
    write_compose(root / "rawhide", COMPOSE, [image("Server", "dvd", "x86_64")], "STARTED")
    (root / "rawhide" / "latest").symlink_to(COMPOSE)
    site = compose_site(make_site, server)
    site.start()
    set_status(root / "rawhide" / COMPOSE, "FINISHED")

    # The poll started compose-tests, the first pipeline, and stopped there.
    wait_for(
        lambda: (hooks / "paused-compose-fire-after-buildsets").exists(), "no compose poll paused"
    )
    (state,) = object_state(site, "compose:rawhide")
    assert state["fired"] == [COMPOSE] and state["pending"][COMPOSE]["firing"] is True
    assert len(compose_requests(site, "compose-tests")) == 1
    assert compose_requests(site, "compose-upgrade") == []
    # Its run finishes while the scheduler is stuck (the news of it is lost with the master).
    first = wait_for(
        lambda: [b for b in site.builds_of("compose-tests") if b["complete"]],
        "compose-tests did not run",
    )
    assert [b["results"] for b in first] == [FAILURE]
    kill_master(site)
    (hooks / "pause-compose-fire-after-buildsets").unlink()
    site.start()

    report_file = site.master_dir / "compose-reports" / f"{COMPOSE}.json"
    wait_for(report_file.exists, "no compose check report after the restart")
    # A few more polls: nothing else starts.
    asked = len(server.requests)
    wait_for(lambda: len(server.requests) >= asked + 6, "the master stopped polling", 60)
    report = json.loads(report_file.read_text())
    for pipeline in ("compose-tests", "compose-upgrade"):
        (request,) = compose_requests(site, pipeline)
        (run,) = site.builds_of(pipeline)
        assert run["complete"] and run["buildrequestid"] == request["buildrequestid"]
        assert site.properties(run["buildid"])["compose_id"] == COMPOSE
        assert request["buildsetid"] in report["buildsets"]
    assert site.builds_of("compose-upgrade")[0]["results"] == SUCCESS
    assert len(report["buildsets"]) == 2
    # The adopted run's failed job is in the report.
    assert report["result"] == "failed"
    assert [(j["name"], j["result"]) for j in report["failed_jobs"]] == [(COMPOSE_JOB, "failure")]
    # One report, and the compose is no longer pending nor being started.
    log = (site.master_dir / "twistd.log").read_text()
    assert log.count(f"compose check report of {COMPOSE}:") == 1
    (state,) = object_state(site, "compose:rawhide")
    assert state["fired"] == [COMPOSE] and state["pending"] == {}


# -- (c') a kill in the middle of a poll cycle of the embedded forge ----------------------


def check_runs(site) -> list[tuple[str, int]]:
    """(gating_change, gating_patchset) of each run of the gate site's check pipeline: its
    build requests (a build a killed master left is retried in the same request)."""
    builderid = site.builder_ids()["check"]
    runs = []
    for request in site.api(f"builders/{builderid}/buildrequests")["buildrequests"]:
        props = site.api(f"buildsets/{request['buildsetid']}/properties")["properties"][0]
        runs.append((props["gating_change"][0], props["gating_patchset"][0]))
    return sorted(runs)


def check_results(site) -> dict[str, list[int]]:
    """The results of the finished builds of the check pipeline, by gating_change."""
    builderid = site.builder_ids()["check"]
    builds = site.api(f"builders/{builderid}/builds?property=gating_change")["builds"]
    out: dict[str, list[int]] = {}
    for b in builds:
        if not b["complete"]:
            continue
        change = b["properties"].get("gating_change")
        if change is None:
            # a build the killed master had just started (its properties never reached the
            # database): Buildbot ends it as RETRY, and its request runs again
            assert b["results"] == RETRY, b
            continue
        out.setdefault(change[0], []).append(b["results"])
    return out


def patchset_changes(site) -> list[tuple[str, int]]:
    """(gating_change, gating_patchset) of each Buildbot change the forge reported."""
    return sorted(
        (c["properties"]["gating_change"][0], c["properties"]["gating_patchset"][0])
        for c in site.api("changes")["changes"]
        if c["category"] == "patchset-created"
    )


def test_a_master_killed_in_a_forge_poll_cycle_neither_loses_nor_repeats_a_patchset(
    make_site, tmp_path, monkeypatch
):
    from gating.testhooks import TEST_HOOKS_ENV
    from tests.integration.test_gate import propose, start_gate_site

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv(TEST_HOOKS_ENV, str(hooks))
    site = start_gate_site(make_site)
    wait_for(lambda: object_state(site, "polled") == [True], "the forge was never polled", 120)
    # Two ceilometer changes (checked by the site's check pipeline) that the next master's
    # first poll cycle finds together: pushed while no master runs.
    kill_master(site)
    a = propose(site, "ceilometer", {"a.txt": "A\n"}, "ceilometer: A")
    b = propose(site, "ceilometer", {"b.txt": "B\n"}, "ceilometer: B")
    expected = [(f"ceilometer~{a}", 1), (f"ceilometer~{b}", 1)]
    (hooks / "pause-forge-after-change").write_text("")
    site.start()

    # The cycle added the first patchset's Buildbot change and stopped there.
    wait_for(lambda: (hooks / "paused-forge-after-change").exists(), "no forge cycle paused")
    # Killed once the master has said it is up (the launch cycle may pause before): Buildbot
    # frees the claims of a master killed before that only when they expire (10 min).
    wait_for(lambda: site.api("masters")["masters"][0]["active"], "the master never came up")
    (adding,) = object_state(site, "adding")
    assert adding in (f"ceilometer~{a}/1", f"ceilometer~{b}/1")
    assert adding not in json.loads(object_state(site, "seen")[0])
    kill_master(site)
    (hooks / "pause-forge-after-change").unlink()
    site.start()

    keys = [f"ceilometer~{a}", f"ceilometer~{b}"]
    wait_for(
        lambda: all(SUCCESS in check_results(site).get(k, []) for k in keys),
        "the check runs did not pass",
    )
    # A later cycle (it saves a nova patchset as seen) starts nothing else.
    c = propose(site, "nova", {"c.txt": "C\n"}, "nova: not checked")
    wait_for(
        lambda: f"nova~{c}/1" in json.loads(object_state(site, "seen")[0]),
        "the master stopped polling the forge",
        120,
    )
    time.sleep(2)  # a run of a late duplicate would be requested by now
    assert check_runs(site) == expected
    # One passed build each (the run the kill interrupted, if any, was retried: RETRY).
    assert {k: [r for r in v if r != RETRY] for k, v in check_results(site).items()} == {
        k: [SUCCESS] for k in keys
    }
    assert patchset_changes(site) == sorted([*expected, (f"nova~{c}", 1)])
    (seen,) = object_state(site, "seen")
    assert {f"ceilometer~{a}/1", f"ceilometer~{b}/1"} <= set(json.loads(seen))
    assert object_state(site, "adding") == [None]


# -- (b) a kill while the gate's koji scratch builds run on the hub -----------------------


@pytest.fixture(scope="module")
def gate_hub(tmp_path_factory):
    from tests.integration.test_export_koji import CANDIDATE, DEST, PASSWORD, USER

    with KojiTestHub(tmp_path_factory.mktemp("gate-hub"), first_event_id=2**31 + 201) as hub:
        hub.add_user(USER, PASSWORD, perms=["repo"])
        hub.create_tag("rdo-build", arches="x86_64")
        hub.create_tag(DEST)
        hub.create_tag(CANDIDATE)
        hub.create_target("rdo-liberty", "rdo-build", DEST)
        yield hub


def test_a_master_killed_with_scratch_builds_in_flight_adopts_them_and_the_gate_resumes(
    make_site, gate_hub
):
    """Two gate items (nova A, then ceilometer B behind it: B's overlay needs A's nova and
    B's ceilometer) whose scratch builds wait on the hub when the master dies. After the
    restart the gate resumes by itself, the orphaned scratch tasks are adopted (no second
    task for a (package, commit)), and both changes merge once, their RPMs landed in gate
    order."""
    from tests.integration.test_export_koji import dest_history, koji_site, scratch_tasks
    from tests.integration.test_export_local import (
        approve,
        journal_entries,
        spec,
        wait_finished,
    )
    from tests.integration.test_gate import git, propose

    hub = gate_hub
    site = koji_site(make_site, hub, "rebuild")
    before = {t["id"] for t in scratch_tasks(hub)}
    hub.hold_tasks("build")
    try:
        a = propose(
            site, "nova", {"nova.spec": spec("nova", "12.0.1"), "DURATION": "0"}, "nova 12.0.1"
        )
        b = propose(
            site,
            "ceilometer",
            {"ceilometer.spec": spec("ceilometer", "8.0.1"), "DURATION": "0"},
            "ceilometer 8.0.1",
        )
        approve(site, "nova", a)
        approve(site, "ceilometer", b)
        # Both scratch builds asked for (nova at A, ceilometer at B), held on the hub.
        orphans = wait_for(
            lambda: (lambda new: new if len(new) == 2 else None)(
                [t for t in scratch_tasks(hub) if t["id"] not in before]
            ),
            "the gate's two scratch builds were not asked for",
        )
        assert all(t["state"] == koji.TASK_STATES["FREE"] for t in orphans)  # in flight
        kill_master(site)
        site.start()
    finally:
        hub.release_tasks("build")
    keys = [f"nova~{a}", f"ceilometer~{b}"]
    done = wait_finished(site, keys, timeout=600)
    assert [done[k]["state"] for k in keys] == ["merged", "merged"], json.dumps(done, indent=1)
    assert all(done[k]["attempt"] >= 2 for k in keys)  # restarted by the new master

    # Adopted: each (package, commit) has the one task the killed master started.
    new = [t for t in scratch_tasks(hub) if t["id"] not in before]
    assert sorted(t["id"] for t in new) == sorted(t["id"] for t in orphans), new
    assert all(t["state"] == koji.TASK_STATES["CLOSED"] for t in new)
    # Merged once each, RPMs landed once each, in gate order.
    tags = [(action, nvr) for _e, action, nvr in dest_history(hub)]
    assert [n for act, n in tags if n in ("nova-12.0.1-1", "ceilometer-8.0.1-1")] == [
        "nova-12.0.1-1",
        "ceilometer-8.0.1-1",
    ]
    assert all(act == "tag" for act, _n in tags)
    for project, subject in (("nova", "nova 12.0.1"), ("ceilometer", "ceilometer 8.0.1")):
        log = git(site.master_dir / "git" / f"{project}.git", "log", "--format=%s", "main")
        assert log.splitlines().count(subject) == 1
    # B was tested on A's nova from the adopted scratch build (its overlay).
    runs = {
        site.properties(r["buildid"]).get("gating_change"): r
        for r in site.builds_of("packstack/packstack/x86_64")
        if r["complete"]
    }
    log = site.step_log(runs[f"ceilometer~{b}"]["buildid"], "run")
    assert "installed: nova-12.0.1-1.noarch" in log.splitlines(), log
    assert not [e for e in journal_entries(site) if not e["closed"]]
