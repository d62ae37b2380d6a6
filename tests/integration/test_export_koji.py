"""The gate with the koji backend: a real master and workers, real git, and the koji hub
test server (real ``rpmbuild``, ``createrepo_c``) reached only through the ``koji`` library.

Exports land in gate order (from koji's tag history); in promote mode no build task runs
while the export lock is held (the lock's own hold intervals against the hub's task log);
scratch builds are made once per (package, commit); a failed task fails the item with its
id and log link; hub faults delay but never lose or duplicate a build or a tag; a master
SIGKILLed between the koji tag and the git merge finishes or undoes its export on restart
(a tag task it left pending on the hub is cancelled, a repository it asked for is not
made again)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import koji
import pytest
import yaml

from tests.integration.test_export_local import (
    approve,
    journal_entries,
    kill_master,
    make_seeds,
    release_after_packstack,
    spec,
    wait_finished,
    wait_for,
)
from tests.integration.test_gate import git, propose
from tests.support.koji_hub import KojiTestHub

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpmbuild", "createrepo_c", "git")),
    reason="needs rpmbuild, createrepo_c and git",
)

USER, PASSWORD = "gating-bot", "koji-s3cret"
TASK = koji.TASK_STATES
DEST, CANDIDATE = "rdo-liberty", "rdo-liberty-candidate"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("hub"), first_event_id=2**31 + 5) as hub:
        hub.add_user(USER, PASSWORD, perms=["repo"])
        hub.create_tag("rdo-build", arches="x86_64")
        hub.create_tag(DEST)
        hub.create_tag(CANDIDATE)
        hub.create_target("rdo-liberty", "rdo-build", DEST)
        yield hub


def seed_destination(hub: KojiTestHub, base: Path) -> None:
    """The liberty repository before the gate: nova 12.0.0 and ceilometer 8.0.0, built
    and tagged in koji (once per hub), and a repo of it."""
    from gating.kojiclient import KojiSession, KojiSettings

    if hub.tagged(DEST):
        return
    settings = KojiSettings(
        server=hub.url, topurl=hub.topurl, auth="password", user=USER, password=PASSWORD
    )
    with KojiSession(settings) as session:
        for project in ("nova", "ceilometer"):
            seed = base / "seeds" / project
            head = git(seed, "rev-parse", "HEAD").strip()
            task = session.build_from_scm(f"git+file://{seed}#{head}", "rdo-liberty", False)
            session.wait_task(task, poll_interval=0.2)
        event = session.latest_event()
        session.new_repo(DEST)
        session.wait_repo(DEST, event.id, poll_interval=0.2)


def koji_site(make_site, hub: KojiTestHub, mode: str):
    site = make_site("export-local", start=False)
    make_seeds(site.basedir)
    seed_destination(hub, site.basedir)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["backend"] = {
        "type": "koji",
        "server": hub.url,
        "topurl": hub.topurl,
        "auth": "password",
        "user": USER,
        "password-secret": "koji-password",
        "target": "rdo-liberty",
        "destination-tag": DEST,
        "candidate-tag": CANDIDATE,
        "export-mode": mode,
        "poll-interval": 1,
    }
    conf.write_text(yaml.safe_dump(data))
    secret = site.master_dir / "secrets" / "koji-password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    site.start()
    return site


@pytest.fixture(scope="module")
def rebuild_site(make_site, hub):
    return koji_site(make_site, hub, "rebuild")


def scratch_tasks(hub: KojiTestHub) -> list[dict]:
    return [t for t in hub.tasks("build") if (t["request"][2] or {}).get("scratch")]


def release_tasks(hub: KojiTestHub) -> list[dict]:
    return [t for t in hub.tasks("build") if not (t["request"][2] or {}).get("scratch")]


def dest_history(hub: KojiTestHub) -> list[tuple[int, str, str]]:
    """(event id, action, nvr) of the destination tag, read through the koji library."""
    from gating.kojiclient import KojiSession, KojiSettings

    with KojiSession(KojiSettings(server=hub.url, topurl=hub.topurl)) as session:
        events = session.tag_history([DEST], None).events
    return [(e.event_id, e.action, e.nvr) for e in events]


def test_exports_land_in_gate_order_from_koji_tag_history(rebuild_site, hub, tmp_path):
    site = rebuild_site
    go = tmp_path / "b-tested"  # A's tests go on until B's are done
    a = propose(
        site,
        "nova",
        {"nova.spec": spec("nova", "12.0.1"), "DURATION": "8", "WAIT_FOR": f"{go}\n"},
        "nova 12.0.1",
    )
    b = propose(
        site,
        "ceilometer",
        {"ceilometer.spec": spec("ceilometer", "8.0.1"), "DURATION": "0"},
        "ceilometer 8.0.1",
    )
    approve(site, "nova", a)
    approve(site, "ceilometer", b)
    release_after_packstack(site, f"ceilometer~{b}", go)
    done = wait_finished(site, [f"nova~{a}", f"ceilometer~{b}"])
    assert [done[k]["state"] for k in (f"nova~{a}", f"ceilometer~{b}")] == [
        "merged",
        "merged",
    ], json.dumps(done, indent=1)
    tagged = [nvr for _e, action, nvr in dest_history(hub) if action == "tag"]
    assert tagged[-2:] == ["nova-12.0.1-1", "ceilometer-8.0.1-1"]  # after the seeds
    # B finished its tests long before A (8 s of tests): its export still waited for A's.
    packstack = {
        site.properties(b_["buildid"]).get("gating_change"): b_
        for b_ in site.builds_of("packstack/packstack/x86_64")
    }
    assert packstack[f"ceilometer~{b}"]["complete_at"] < packstack[f"nova~{a}"]["complete_at"]
    # One scratch build per (package, commit): B reused A's nova build from A's overlay.
    commits = [(t["request"][0]) for t in scratch_tasks(hub)]
    assert len(commits) == len(set(commits)) == 2, commits
    # B's packstack installed A's nova from its overlay (koji scratch RPMs).
    log = site.step_log(packstack[f"ceilometer~{b}"]["buildid"], "run")
    assert "installed: nova-12.0.1-1.noarch" in log.splitlines(), log


def test_a_failed_koji_task_fails_the_item_with_the_task_and_its_log(rebuild_site, hub):
    site = rebuild_site
    hub.fail_builds("ceilometer")
    try:
        b = propose(site, "ceilometer", {"ceilometer.spec": spec("ceilometer", "8.0.9")}, "broken")
        approve(site, "ceilometer", b)
        done = wait_finished(site, [f"ceilometer~{b}"])
    finally:
        hub.fail_builds(None)
    item = done[f"ceilometer~{b}"]
    assert item["state"] == "dequeued"
    failed = [t for t in hub.tasks("build") if t["state"] == 5]  # koji.TASK_STATES FAILED
    assert failed
    task_id = failed[-1]["id"]
    assert f"koji task {task_id}" in item["reason"], item["reason"]
    assert f"{hub.topurl}/work/tasks/" in item["reason"], item["reason"]
    assert "ceilometer-8.0.9-1" not in hub.tagged(DEST)


def test_hub_faults_delay_but_never_lose_or_duplicate_a_build_or_a_tag(rebuild_site, hub):
    site = rebuild_site
    before_builds = len(hub.tasks("build"))
    a = propose(site, "nova", {"nova.spec": spec("nova", "12.0.5")}, "nova 12.0.5")
    hub.fail_next(kind="offline", duration=30)
    started = time.monotonic()
    approve(site, "nova", a)
    time.sleep(5)
    hub.fail_next(kind="refused", duration=3)
    hub.fail_next(3, kind="http500")
    done = wait_finished(site, [f"nova~{a}"], timeout=400)
    assert done[f"nova~{a}"]["state"] == "merged", json.dumps(done, indent=1)
    assert time.monotonic() - started >= 30  # delayed by the offline hub
    new = hub.tasks("build")[before_builds:]
    assert sorted((t["request"][2] or {}).get("scratch", False) for t in new) == [False, True]
    assert [e for e in dest_history(hub) if e[2] == "nova-12.0.5-1"] == [
        e for e in dest_history(hub) if e[2] == "nova-12.0.5-1" and e[1] == "tag"
    ][:1]
    assert hub.tagged(DEST).count("nova-12.0.5-1") == 1


def propose_series(site, project: str, versions: list[str]) -> list[int]:
    """Changes that build on one another (each one's parent is the previous change)."""
    import re
    import subprocess

    work = site.basedir / "dev" / f"{project}-series-{time.monotonic_ns()}"
    git(site.basedir, "clone", "-q", str(site.master_dir / "git" / f"{project}.git"), str(work))
    numbers = []
    for version in versions:
        (work / f"{project}.spec").write_text(spec(project, version))
        # Tests outlast the builds: the candidates are built while the items are tested.
        (work / "DURATION").write_text("6")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"{project} {version}")
        out = subprocess.run(
            ["git", "push", "origin", "HEAD:refs/for/main"],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        )
        numbers.append(int(re.search(rf"change {project}~(\d+)", out.stdout + out.stderr)[1]))
    return numbers


def test_promote_mode_holds_the_export_lock_without_any_build_task(make_site, hub):
    site = koji_site(make_site, hub, "promote")
    before = {t["id"] for t in hub.tasks()}
    versions = [f"13.0.{i}" for i in range(1, 6)]
    numbers = propose_series(site, "nova", versions)
    for number in numbers:
        approve(site, "nova", number)
    keys = [f"nova~{n}" for n in numbers]
    done = wait_finished(site, keys, timeout=600)
    assert [done[k]["state"] for k in keys] == ["merged"] * 5, json.dumps(done, indent=1)

    # Gate order in the destination tag.
    tagged = [nvr for _e, action, nvr in dest_history(hub) if action == "tag"]
    assert tagged[-5:] == [f"nova-{v}-1" for v in versions]

    # The lock's hold intervals (recorded by the master for the benchmark), one per item,
    # in gate order and never overlapping ...
    holds = [
        json.loads(line)
        for line in (site.master_dir / "export-holds.jsonl").read_text().splitlines()
    ]
    holds = [h for h in holds if h["change"] in keys]
    assert [h["change"] for h in holds] == keys
    for first, second in zip(holds, holds[1:], strict=False):
        assert first["end"] <= second["start"]
    # ... and each item's build (its candidate, with its subtasks) ended before its hold
    # began: the export only moves it. (The candidates of the items behind are built while
    # they are tested, which may be during an earlier item's hold.)
    tasks = {t["id"]: t for t in hub.tasks()}

    def root(task_id: int) -> int:
        while tasks[task_id].get("parent"):
            task_id = tasks[task_id]["parent"]
        return task_id

    build_task = {b["nvr"]: b["task_id"] for b in hub.builds()}
    builds = [
        (root(task_id), start, end)
        for task_id, method, start, end in hub.task_log
        if method in ("build", "buildArch", "buildSRPMFromSCM") and task_id not in before
    ]
    assert builds
    for hold, version in zip(holds, versions, strict=True):
        own = build_task[f"nova-{version}-1"]
        mine = [(start, end) for top, start, end in builds if top == own]
        assert mine, (hold, own)
        for start, end in mine:
            assert end is not None and end <= hold["start"], (hold, start, end)

    # Scratch builds reused: one per distinct (package, commit), five items on one package.
    new_scratch = [t for t in scratch_tasks(hub) if t["id"] not in before]
    urls = [t["request"][0] for t in new_scratch]
    assert len(urls) == len(set(urls)) == 5
    # Candidates were built during testing and moved: none is left in the candidate tag.
    assert not [n for n in hub.tagged(CANDIDATE) if n.startswith("nova-13.")]


# -- crash safety: a master SIGKILLed in the export section (gating.exportjournal) --------
# These restart the rebuild site's master: they come last in the module.


@pytest.fixture
def koji_hooks(rebuild_site, tmp_path, monkeypatch):
    """The export job's test hook (GATING_TEST_HOOKS_DIR) on: the master is restarted with
    it in its environment."""
    from gating.testhooks import TEST_HOOKS_ENV

    folder = tmp_path / "hooks"
    folder.mkdir()
    monkeypatch.setenv(TEST_HOOKS_ENV, str(folder))
    rebuild_site.stop()
    rebuild_site.start()
    return folder


def build_id(hub: KojiTestHub, nvr: str) -> int:
    return next(b["id"] for b in hub.builds() if b["nvr"] == nvr)


def tag_tasks(hub: KojiTestHub, nvr: str) -> list[dict]:
    """The hub's tagBuild tasks of ``nvr`` (into any tag), oldest first."""
    build = build_id(hub, nvr) if any(b["nvr"] == nvr for b in hub.builds()) else None
    return [t for t in hub.tasks("tagBuild") if t["request"][1] == build]


def dest_tag_id(hub: KojiTestHub) -> int:
    from gating.kojiclient import KojiSession, KojiSettings

    with KojiSession(KojiSettings(server=hub.url, topurl=hub.topurl)) as session:
        return session.call("getTag", DEST)["id"]


def merged_log(site, project: str) -> list[str]:
    return git(
        site.master_dir / "git" / f"{project}.git", "log", "--format=%s", "main"
    ).splitlines()


def propose_pair(site, version: str, cversion: str) -> tuple[int, int]:
    a = propose(site, "nova", {"nova.spec": spec("nova", version), "DURATION": "0"}, version)
    b = propose(
        site,
        "ceilometer",
        {"ceilometer.spec": spec("ceilometer", cversion), "DURATION": "0"},
        f"ceilometer {cversion}",
    )
    approve(site, "nova", a)
    approve(site, "ceilometer", b)
    return a, b


def assert_merged_once_and_landed_once(site, hub, keys, version, nvr, cversion) -> None:
    done = wait_finished(site, keys, timeout=600)
    assert {k: v["state"] for k, v in done.items()} == dict.fromkeys(keys, "merged"), json.dumps(
        done, indent=1
    )
    # Merged exactly once; its RPM tagged exactly once (one tag event, never untagged)...
    assert merged_log(site, "nova").count(version) == 1
    assert [(action, n) for _e, action, n in dest_history(hub) if n == nvr] == [("tag", nvr)]
    assert hub.tagged(DEST).count(nvr) == 1
    # ... and in gate order: the item behind landed after it, and merged too.
    tagged = [n for _e, action, n in dest_history(hub) if action == "tag"]
    assert tagged.index(nvr) < tagged.index(f"ceilometer-{cversion}-1")
    assert merged_log(site, "ceilometer").count(f"ceilometer {cversion}") == 1
    assert not [e for e in journal_entries(site) if not e["closed"]]


@pytest.mark.parametrize(
    ("killed_after", "version", "cversion", "forward"),
    [("tagged", "12.0.6", "8.0.6", True), ("tagging", "12.0.7", "8.0.7", False)],
)
def test_a_master_killed_between_the_koji_tag_and_the_merge_finishes_or_undoes_it(
    rebuild_site, hub, koji_hooks, killed_after, version, cversion, forward
):
    """SIGKILL right after the export recorded ``killed_after`` (tagged: tagBuild ran on the
    hub; tagging: it was never called). On restart the change ends merged exactly once with
    its RPM tagged exactly once (finished, or tested again and exported), and the item
    behind it merges."""
    site = rebuild_site
    nvr = f"nova-{version}-1"
    (koji_hooks / f"pause-export-after-{killed_after}").write_text("")
    a, b = propose_pair(site, version, cversion)
    wait_for(koji_hooks / f"paused-export-after-{killed_after}")
    assert (nvr in hub.tagged(DEST)) is forward
    closed = [t for t in tag_tasks(hub, nvr) if t["state"] == TASK["CLOSED"]]
    assert len(closed) == (1 if forward else 0)
    assert version not in merged_log(site, "nova")
    (entry,) = [e for e in journal_entries(site) if e["key"] == f"nova~{a}" and not e["closed"]]
    assert entry["steps"][-1] == killed_after

    kill_master(site)
    (koji_hooks / f"pause-export-after-{killed_after}").unlink()
    site.start()
    assert_merged_once_and_landed_once(
        site, hub, [f"nova~{a}", f"ceilometer~{b}"], version, nvr, cversion
    )
    # One tagBuild task did it (the hub's history: no second task for the same build).
    assert len([t for t in tag_tasks(hub, nvr) if t["request"][0] == dest_tag_id(hub)]) == 1
    mine = {e["attempt"]: e for e in journal_entries(site) if e["key"] == f"nova~{a}"}
    killed = mine[entry["attempt"]]
    assert killed["closed"] == ("merged" if forward else "abandoned"), killed
    if forward:
        assert killed["steps"][-2:] == ["merging", "merged"], killed
        assert len(mine) == 1  # finished by the recovery: no second attempt
    else:
        assert max(mine) > entry["attempt"] and mine[max(mine)]["closed"] == "merged"


def test_a_tag_task_left_pending_on_the_hub_by_a_killed_master_never_lands_late(
    rebuild_site, hub, koji_hooks
):
    """The master dies while its tagBuild task waits on the hub (busy builders): the
    recovery cancels the task before it decides, so it cannot land after the decision
    ("back": the change is tested again); the next attempt tags and merges once."""
    site = rebuild_site
    version, cversion = "12.0.8", "8.0.8"
    nvr = f"nova-{version}-1"
    hub.hold_tasks("tagBuild")
    try:
        a, b = propose_pair(site, version, cversion)
        (orphan,) = wait_for_value(lambda: tag_tasks(hub, nvr), "no tagBuild task of " + nvr)
        assert orphan["state"] == TASK["FREE"]  # held on the hub
        (entry,) = [e for e in journal_entries(site) if e["key"] == f"nova~{a}" and not e["closed"]]
        assert entry["steps"][-1] == "tagging"
        kill_master(site)
        site.start()
        # The recovery cancelled it (it stays held until then: nothing else ends it).
        wait_for_value(
            lambda: [
                t
                for t in hub.tasks("tagBuild")
                if t["id"] == orphan["id"] and t["state"] == TASK["CANCELED"]
            ],
            f"the orphaned tagBuild task {orphan['id']} was not cancelled",
        )
    finally:
        hub.release_tasks("tagBuild")
    assert_merged_once_and_landed_once(
        site, hub, [f"nova~{a}", f"ceilometer~{b}"], version, nvr, cversion
    )
    states = [t["state"] for t in tag_tasks(hub, nvr)]
    # The orphan CANCELED, the next attempt's CLOSED.
    assert states == [TASK["CANCELED"], TASK["CLOSED"]], states
    mine = {e["attempt"]: e for e in journal_entries(site) if e["key"] == f"nova~{a}"}
    assert mine[entry["attempt"]]["closed"] == "abandoned"
    assert mine[max(mine)]["closed"] == "merged" and max(mine) > entry["attempt"]


def test_a_repository_the_killed_master_asked_for_is_not_regenerated_by_the_recovery(
    rebuild_site, hub, koji_hooks
):
    """The master dies while it waits for its newRepo task after the tag: the task runs on
    without it; the recovery finds the repository current and only completes the merge."""
    site = rebuild_site
    version, cversion = "12.0.9", "8.0.9"
    nvr = f"nova-{version}-1"
    before = {t["id"] for t in hub.tasks("newRepo")}
    hub.hold_tasks("newRepo")
    try:
        a, b = propose_pair(site, version, cversion)
        wait_for_value(lambda: nvr in hub.tagged(DEST), f"{nvr} was not tagged")
        (orphan,) = wait_for_value(
            lambda: [t for t in hub.tasks("newRepo") if t["id"] not in before],
            "no newRepo task after the tag",
        )
        kill_master(site)
    finally:
        hub.release_tasks("newRepo")
    site.start()
    assert_merged_once_and_landed_once(
        site, hub, [f"nova~{a}", f"ceilometer~{b}"], version, nvr, cversion
    )
    repos = [t for t in hub.tasks("newRepo") if t["id"] not in before]
    # The orphan made nova's repository; the only other one is ceilometer's export's.
    assert [t["id"] for t in repos][:1] == [orphan["id"]] and len(repos) == 2, repos
    (entry,) = [e for e in journal_entries(site) if e["key"] == f"nova~{a}"]
    assert entry["closed"] == "merged" and entry["steps"].count("repo-ready") == 1


def wait_for_value(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.3)
