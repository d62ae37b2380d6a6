"""Faults around the export (issue 9), with the local build backend: a real master, real
workers over PB, real git, ``rpmbuild`` on a worker and ``createrepo_c``.

* A branch moved outside the gate (someone pushes to ``main`` directly) while an item is
  tested, or while it waits to merge after its RPM landed: the item is tested again on
  the new tip, never merged blindly; it merges once, with its RPM landed once.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_export_local import (
    DEST,
    approve,
    backend_of,
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


@pytest.fixture(scope="module")
def site(make_site):
    site = make_site("export-faults", start=False)
    repo = site.basedir / "seeds" / "nova"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "--initial-branch=main")
    (repo / "nova.spec").write_text(spec("nova", "12.0.0"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Import nova 12.0.0")
    site.start()
    return site


def wait_until(what: str, check: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout}s")


def forge(site) -> Path:
    return site.master_dir / "git" / "nova.git"


def push_outside(site, name: str, content: str, message: str) -> str:
    """Someone pushes a commit to ``main`` directly, not through the gate; its id."""
    work = site.basedir / "dev" / f"outside-{time.monotonic_ns()}"
    git(site.basedir, "clone", "-q", str(forge(site)), str(work))
    (work / name).write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "HEAD:main")
    return git(work, "rev-parse", "HEAD").strip()


def is_ancestor(site, ancestor: str, commit: str) -> bool:
    import subprocess

    return (
        subprocess.run(
            ["git", "-C", str(forge(site)), "merge-base", "--is-ancestor", ancestor, commit],
            capture_output=True,
        ).returncode
        == 0
    )


def main_subjects(site) -> list[str]:
    return git(forge(site), "log", "--format=%s", "main").splitlines()


def nvr_events(site, nvr: str) -> list[str]:
    return [action for action, n, _content in tag_states(site) if n == nvr]


def job_runs(site, change: str) -> list[dict[str, Any]]:
    """The packstack builds of ``change``: attempt, tested commit, result."""
    out = []
    for build in sorted(site.builds_of(JOB), key=lambda b: b["buildid"]):
        props = site.properties(build["buildid"])
        if props.get("gating_change") == change and build["complete"]:
            out.append(
                {
                    "attempt": props["gating_attempt"],
                    "commit": props["gating_merge_commit"],
                    "results": build["results"],
                }
            )
    return out


def check_merged_once_on_top_of(site, key: str, item: dict, outside: str, nvr: str) -> None:
    assert item["state"] == "merged", json.dumps(item, indent=1)
    subjects = main_subjects(site)
    version = nvr.split("-")[1]
    assert subjects.count(f"nova {version}") == 1, subjects
    assert is_ancestor(site, outside, "main")
    # The commit that merged is the one its last run tested, on top of the outside commit.
    runs = job_runs(site, key)
    last = [r for r in runs if r["attempt"] == item["attempt"]]
    assert last and last[-1]["results"] == 0, runs
    tested = last[-1]["commit"]
    assert is_ancestor(site, outside, tested), (outside, runs)
    assert git(forge(site), "rev-parse", "main").strip() == tested
    # Its RPM landed once, from the commit that was tested and merged.
    assert nvr_events(site, nvr) == ["tag"], tag_states(site)
    assert nvr in backend_of(site).tagged(DEST)
    assert backend_of(site).get_build(nvr).commit == tested


def test_a_branch_moved_while_the_item_is_tested_is_tested_again_on_the_new_tip(site, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    n = propose(
        site, "nova", {"nova.spec": spec("nova", "12.0.1"), "MARKS": str(marks)}, "nova 12.0.1"
    )
    key = f"nova~{n}"
    approve(site, "nova", n)
    wait_until("the job starts", lambda: (marks / "started").exists())
    outside = push_outside(site, "README", "pushed directly\n", "outside: README")
    (marks / "go").write_text("")
    done = wait_finished(site, [key])
    check_merged_once_on_top_of(site, key, done[key], outside, "nova-12.0.1-1")
    assert done[key]["attempt"] >= 2
