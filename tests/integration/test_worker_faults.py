"""Workers that die while they run a job (issue 9): a real master, a pool of two real
workers over PB (``buildbot-worker`` processes), the local build backend (``rpmbuild`` on a
worker, ``createrepo_c``), real git.

A worker is killed with SIGKILL while its job runs (the job waits for a marker file): the
job runs again on the other worker of the pool, and the change merges once with its RPM
landed once. A job whose script fails is never run again. When every attempt
(``job-attempts``, 2 in this site) is lost with its worker, the item fails with a reason
that says it was the infrastructure, and the gate goes on once workers are back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import FAILURE, RETRY, SUCCESS
from tests.integration.test_export_local import (
    DEST,
    approve,
    backend_of,
    main_log,
    spec,
    tag_states,
    wait_finished,
)
from tests.integration.test_gate import git, propose

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpmbuild", "createrepo_c", "git")),
    reason="needs rpmbuild, createrepo_c and git",
)

JOB = "packstack/packstack/x86_64"
WORKERS = ("pool-a", "pool-b")


@pytest.fixture(scope="module")
def site(make_site):
    site = make_site("worker-faults", start=False)
    repo = site.basedir / "seeds" / "nova"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "--initial-branch=main")
    (repo / "nova.spec").write_text(spec("nova", "12.0.0"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Import nova 12.0.0")
    site.start()
    return site


@pytest.fixture
def workers_back(site):
    """Every worker of the pool runs again after the test (a test kills some)."""
    yield
    for name in WORKERS:
        site.start_worker(name)
    site.wait_for_workers(list(WORKERS), timeout=120)


def wait_until(what: str, check: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout}s")


def started(marks: Path) -> list[str]:
    """The workers the job started on, in order (from the build directories it ran in)."""
    path = marks / "started"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [Path(line).relative_to(Path(line).parents[2]).parts[0] for line in lines]


def kill_worker(site, name: str) -> None:
    pid = site.worker_pid(name)
    assert pid is not None, f"worker {name} is not running"
    os.kill(pid, signal.SIGKILL)
    wait_until(f"worker {name} exits", lambda: site.worker_pid(name) is None, timeout=30)


def job_builds(site, change: str) -> list[dict[str, Any]]:
    """The job builds of ``change`` (every attempt of the item), oldest first, with the
    name of their worker."""
    names = {w["workerid"]: w["name"] for w in site.api("workers")["workers"]}
    out = []
    for build in sorted(site.builds_of(JOB), key=lambda b: b["buildid"]):
        if site.properties(build["buildid"]).get("gating_change") == change:
            out.append({**build, "worker": names.get(build["workerid"])})
    return out


def nvr_events(site, nvr: str) -> list[str]:
    return [action for action, n, _content in tag_states(site) if n == nvr]


def test_a_job_whose_worker_is_killed_runs_again_on_the_other_worker_and_merges_once(
    site, tmp_path, workers_back
):
    marks = tmp_path / "marks"
    marks.mkdir()
    n = propose(
        site, "nova", {"nova.spec": spec("nova", "12.0.1"), "MARKS": str(marks)}, "nova 12.0.1"
    )
    key = f"nova~{n}"
    approve(site, "nova", n)
    first = wait_until("the job starts", lambda: started(marks))[0]
    other = next(w for w in WORKERS if w != first)
    kill_worker(site, first)
    # Buildbot puts the request back; the other worker of the pool takes it.
    assert wait_until("the job starts again", lambda: started(marks)[1:]) == [other]
    (marks / "go").write_text("")
    done = wait_finished(site, [key])
    assert done[key]["state"] == "merged", json.dumps(done[key], indent=1)

    builds = job_builds(site, key)
    assert [(b["worker"], b["results"]) for b in builds] == [(first, RETRY), (other, SUCCESS)]
    attempts = {site.properties(b["buildid"])["gating_attempt"] for b in builds}
    assert attempts == {done[key]["attempt"]}  # the same run of the item: no reset
    # Merged once, its RPM landed once.
    assert main_log(site, "nova").splitlines().count("nova 12.0.1") == 1
    assert nvr_events(site, "nova-12.0.1-1") == ["tag"]
    assert "nova-12.0.1-1" in backend_of(site).tagged(DEST)


def test_a_job_whose_script_fails_is_not_run_again(site):
    n = propose(site, "nova", {"nova.spec": spec("nova", "12.0.2"), "FAIL": "yes\n"}, "nova 12.0.2")
    key = f"nova~{n}"
    approve(site, "nova", n)
    done = wait_finished(site, [key])
    item = done[key]
    assert item["state"] == "dequeued", json.dumps(item, indent=1)
    assert "job packstack on x86_64: failure" in item["reason"], item["reason"]
    assert "infrastructure" not in item["reason"], item["reason"]
    builds = job_builds(site, key)
    assert [b["results"] for b in builds] == [FAILURE], builds
    assert "nova 12.0.2" not in main_log(site, "nova")
    assert nvr_events(site, "nova-12.0.2-1") == []


def test_a_job_lost_with_every_attempt_fails_as_infrastructure_and_the_gate_goes_on(
    site, tmp_path, workers_back
):
    marks = tmp_path / "marks"
    marks.mkdir()
    n = propose(
        site, "nova", {"nova.spec": spec("nova", "12.0.3"), "MARKS": str(marks)}, "nova 12.0.3"
    )
    key = f"nova~{n}"
    approve(site, "nova", n)
    first = wait_until("the job starts", lambda: started(marks))[0]
    kill_worker(site, first)
    second = wait_until("the job starts again", lambda: started(marks)[1:])[0]
    assert second != first
    kill_worker(site, second)  # job-attempts: 2, both used up
    done = wait_finished(site, [key])
    item = done[key]
    assert item["state"] == "dequeued", json.dumps(item, indent=1)
    assert "infrastructure failure" in item["reason"], item["reason"]
    assert "packstack[0]@x86_64 did not finish in 2 attempts" in item["reason"], item["reason"]
    assert f"on {first}" in item["reason"] and f"on {second}" in item["reason"], item["reason"]
    builds = job_builds(site, key)
    assert [(b["worker"], b["results"]) for b in builds] == [(first, RETRY), (second, RETRY)]
    assert "nova 12.0.3" not in main_log(site, "nova")
    assert nvr_events(site, "nova-12.0.3-1") == []
    (marks / "go").write_text("")  # the orphaned job scripts of the killed workers end

    # Workers back: the gate goes on, the next change merges.
    for name in WORKERS:
        site.start_worker(name)
    site.wait_for_workers(list(WORKERS), timeout=120)
    m = propose(site, "nova", {"nova.spec": spec("nova", "12.0.4")}, "nova 12.0.4")
    approve(site, "nova", m)
    done = wait_finished(site, [f"nova~{m}"])
    assert done[f"nova~{m}"]["state"] == "merged", json.dumps(done, indent=1)
    assert nvr_events(site, "nova-12.0.4-1") == ["tag"]
    assert main_log(site, "nova").splitlines().count("nova 12.0.4") == 1
