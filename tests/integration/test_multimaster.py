"""Two masters of one configuration (Buildbot's multi-master mode) with a real PostgreSQL
and a real crossbar router on loopback: the gate's builds run on both masters' workers,
approvals go through either master's API, and when the master that holds the gate
scheduler is killed (SIGKILL) the other takes the gate over and every change merges
exactly once."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from gating.localsite import free_port
from tests.integration.conftest import SITES, SUCCESS, Site
from tests.support.crossbar import CrossbarRouter, find_crossbar
from tests.support.postgres import PostgresServer, find_bindir

pytestmark = [
    pytest.mark.skipif(find_crossbar() is None, reason="needs crossbar (scripts/bootstrap.sh)"),
    pytest.mark.skipif(find_bindir() is None, reason="needs PostgreSQL's server binaries"),
]

# The takeover knobs (gating.cluster): a dead master is noticed after 10 s instead of
# Buildbot's 10 minutes, and the gate claimed within 2 s instead of 5 minutes.
HEARTBEAT, EXPIRE_AFTER, CLAIM_INTERVAL = 2, 10, 2
WORKERS = {"a": ("gate-x86-1", "gate-x86-2"), "b": ("gate-x86-3",)}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


class Cluster:
    def __init__(self, root: Path, sites: dict[str, Site], shared: Path) -> None:
        self.root = root
        self.sites = sites
        self.shared = shared

    def forge(self, project: str) -> Path:
        return self.shared / "git" / f"{project}.git"

    def propose(self, project: str, files: dict[str, str], message: str) -> int:
        work = self.root / "dev" / f"{project}-{time.monotonic_ns()}"
        git(self.root, "clone", "-q", str(self.forge(project)), str(work))
        for name, content in files.items():
            (work / name).write_text(content)
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", message)
        out = subprocess.run(
            ["git", "push", "origin", "HEAD:refs/for/main"],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        )
        found = re.search(rf"change {project}~(\d+)", out.stdout + out.stderr)
        assert found, out.stderr
        return int(found.group(1))

    def masterids(self) -> dict[int, str]:
        """masterid -> site key ('a' or 'b'), from the masters' names (host:basedir)."""
        site = next(s for s in self.sites.values() if s.master_pid() is not None)
        out = {}
        for m in site.api("masters")["masters"]:
            for key, s in self.sites.items():
                if m["name"].endswith(":" + str(s.master_dir)):
                    out[m["masterid"]] = key
        return out

    def gate_holder(self, site: Site) -> int | None:
        scheds = site.api("schedulers?name=gate")["schedulers"]
        master = scheds[0]["master"] if scheds else None
        return master["masterid"] if master else None

    def merged_subjects(self, project: str) -> list[str]:
        repo = self.forge(project)
        merges = git(repo, "rev-list", "--first-parent", "--merges", "--reverse", "main").split()
        return [git(repo, "log", "-1", "--format=%s", f"{m}^2").strip() for m in merges]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multimaster")
    shared = root / "shared"
    for project in ("nova", "ceilometer"):
        repo = shared / "seeds" / project
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project}.spec").write_text(f"Name: openstack-{project}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"Import {project}")
    pg = PostgresServer().start()
    router = None
    sites: dict[str, Site] = {}
    try:
        router = CrossbarRouter(root / "crossbar").start()
        for key in ("a", "b"):
            base = root / f"master-{key}"
            shutil.copytree(SITES / "gate", base / "config")
            (base / "config" / "pipelines" / "check.yaml").unlink()
            conf = base / "config" / "gating.yaml"
            data = yaml.safe_load(conf.read_text())
            data.update(
                {
                    "database": pg.url,
                    "shared-dir": str(shared),
                    "multi-master": {
                        "router-url": router.url,
                        "realm": router.realm,
                        "heartbeat": HEARTBEAT,
                        "expire-after": EXPIRE_AFTER,
                        "claim-interval": CLAIM_INTERVAL,
                    },
                }
            )
            for project in data["projects"]:
                project["repository"] = str(shared / "seeds" / project["name"])
            conf.write_text(yaml.safe_dump(data, sort_keys=False))
            if sites:  # every master has the same worker secrets
                shutil.copytree(sites["a"].master_dir / "secrets", base / "master" / "secrets")
            site = Site(base, www_port=free_port(), pb_port=free_port(), workers=WORKERS[key])
            site.create()
            sites[key] = site
        for site in sites.values():
            site.start()
        yield Cluster(root, sites, shared)
    finally:
        for site in sites.values():
            site.stop()
        if router is not None:
            router.stop()
        pg.stop()


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout}s")


JOB = "packstack/packstack/x86_64"  # the job's builder (on the PB workers)


def job_builds(site: Site) -> list[dict[str, Any]]:
    builderid = site.builder_ids()[JOB]
    return site.api(f"builders/{builderid}/builds")["builds"]


def test_two_masters_share_the_gate_and_the_survivor_takes_it_over(cluster):
    a, b = cluster.sites["a"], cluster.sites["b"]
    ids = cluster.masterids()
    assert sorted(ids.values()) == ["a", "b"]
    holder = ids[wait_for("a master holds the gate", lambda: cluster.gate_holder(a), 60)]
    other = "b" if holder == "a" else "a"
    held, survivor = cluster.sites[holder], cluster.sites[other]

    changes = []
    for i in range(6):
        project = ("nova", "ceilometer")[i % 2]
        number = cluster.propose(project, {f"f{i}.txt": f"{i}\n", "DURATION": "6\n"}, f"M{i}")
        changes.append((project, number, f"M{i}"))
    keys = [f"{p}~{n}" for p, n, _s in changes]
    # Approvals through both masters' APIs: the one without the gate forwards them to the
    # one with it, and answers with its verdict.
    for i, (project, number, _subject) in enumerate(changes[:5]):
        answer = (a, b)[i % 2].approve(project, number)
        assert answer["change"] == keys[i]
        assert answer["state"] in ("testing", "merging", "merged"), answer
    # Both answer the queue: the survivor from the state saved in the shared database.
    for site, active in ((held, True), (survivor, False)):
        status = queue_of(site)
        assert status["active"] is active
        seen = {i["change"] for q in status["queues"] for i in q["items"]}
        seen |= {i["change"] for i in status["finished"]}
        assert seen == set(keys[:5])

    # Job builds run on both masters, each on its own workers.
    workers = {w["workerid"]: w["name"] for w in survivor.api("workers")["workers"]}

    def spread() -> Any:
        builds = job_builds(survivor)
        return builds if {ids[bd["masterid"]] for bd in builds} == {"a", "b"} else None

    before = wait_for("job builds on both masters", spread, 120)
    for key in ("a", "b"):
        used = {workers[bd["workerid"]] for bd in before if ids[bd["masterid"]] == key}
        assert used and used <= set(WORKERS[key]), (key, used)

    # Kill the master that holds the gate while items are still testing.
    assert [i for q in queue_of(survivor)["queues"] for i in q["items"]], "gate done too soon"
    killed_at = time.monotonic()
    os.kill(held.master_pid(), signal.SIGKILL)
    # An approval sent during the takeover waits for the new holder (within 30 s).
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(survivor.approve, changes[5][0], changes[5][1])
        assert queue_of(survivor)["active"] is False  # still answers meanwhile
        wait_for(
            "the surviving master takes the gate over",
            lambda: cluster.gate_holder(survivor) == _id_of(ids, other),
            EXPIRE_AFTER + 60,
            interval=0.25,
        )
        takeover = time.monotonic() - killed_at
        print(f"\ntakeover after {takeover:.1f}s")
        assert takeover < EXPIRE_AFTER + 30
        assert late.result(timeout=60)["change"] == keys[5]
    assert queue_of(survivor)["active"] is True

    def all_finished() -> dict[str, Any] | None:
        finished = {i["change"]: i for i in queue_of(survivor)["finished"]}
        return finished if set(keys) <= set(finished) else None

    finished = wait_for("every change finished on the survivor", all_finished, 180, 1)
    assert {k: finished[k]["state"] for k in keys} == dict.fromkeys(keys, "merged")
    # Each change landed on main exactly once, in gate order.
    for project in ("nova", "ceilometer"):
        expected = [s for p, _n, s in changes if p == project]
        assert cluster.merged_subjects(project) == expected
    # The runs restarted after the takeover passed on the survivor's workers.
    earlier = {x["buildid"] for x in before}
    after = [bd for bd in job_builds(survivor) if bd["buildid"] not in earlier]
    assert any(bd["results"] == SUCCESS and ids[bd["masterid"]] == other for bd in after)
    # Nothing is left behind: the dead master's build requests were released (Buildbot
    # 4.3 alone leaves them claimed by it), so the pipeline runs that waited for them end.
    wait_for(
        "no build or build request left unfinished",
        lambda: (
            not survivor.api("builds?complete=false")["builds"]
            and not survivor.api("buildrequests?complete=false")["buildrequests"]
        ),
        60,
    )


def _id_of(ids: dict[int, str], key: str) -> int:
    return next(mid for mid, k in ids.items() if k == key)


def queue_of(site: Site) -> dict[str, Any]:
    with urllib.request.urlopen(site.url + "plugins/gating/api/queue", timeout=10) as resp:
        return json.load(resp)
