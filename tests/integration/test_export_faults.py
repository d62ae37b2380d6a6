"""Faults around the export (issue 9), with the local build backend: a real master, real
workers over PB, real git, ``rpmbuild`` on a worker and ``createrepo_c``.

* A branch moved outside the gate (someone pushes to ``main`` directly) while an item is
  tested, or while it passed and waits for the export section: the item is tested again on
  the new tip before anything is built or tagged, never merged blindly; it merges once,
  with its RPM landed once.
* A full disk where the repositories are written (a small tmpfs mounted over the
  backend's ``overlays/``, then over ``tags/``, and filled up): the item fails with an error
  naming the place and ``No space left on device``, nothing is half published (the
  destination's repodata stays the previous one, no partial RPM or repodata is visible),
  nothing is merged; once there is room again, the change approved again merges.
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
from tests.integration.test_gate import git, propose, queue_json
from tests.support import smallfs

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpmbuild", "createrepo_c", "git")),
    reason="needs rpmbuild, createrepo_c and git",
)

JOB = "packstack/packstack/x86_64"


@pytest.fixture(scope="module")
def site(make_site):
    site = make_site("export-faults", start=False)
    for project, version in (("nova", "12.0.0"), ("ceilometer", "8.0.0")):
        repo = site.basedir / "seeds" / project
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project}.spec").write_text(spec(project, version))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"Import {project} {version}")
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


def forge(site, project: str = "nova") -> Path:
    return site.master_dir / "git" / f"{project}.git"


def push_outside(site, name: str, content: str, message: str, project: str = "nova") -> str:
    """Someone pushes a commit to ``main`` directly, not through the gate; its id."""
    work = site.basedir / "dev" / f"outside-{time.monotonic_ns()}"
    git(site.basedir, "clone", "-q", str(forge(site, project)), str(work))
    (work / name).write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "HEAD:main")
    return git(work, "rev-parse", "HEAD").strip()


def is_ancestor(site, ancestor: str, commit: str, project: str = "nova") -> bool:
    import subprocess

    return (
        subprocess.run(
            [
                "git",
                "-C",
                str(forge(site, project)),
                "merge-base",
                "--is-ancestor",
                ancestor,
                commit,
            ],
            capture_output=True,
        ).returncode
        == 0
    )


def main_subjects(site, project: str = "nova") -> list[str]:
    return git(forge(site, project), "log", "--format=%s", "main").splitlines()


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
    project, version = nvr.split("-")[0], nvr.split("-")[1]
    subjects = main_subjects(site, project)
    assert subjects.count(f"{project} {version}") == 1, subjects
    assert is_ancestor(site, outside, "main", project)
    # The commit that merged is the one its last run tested, on top of the outside commit.
    runs = job_runs(site, key)
    last = [r for r in runs if r["attempt"] == item["attempt"]]
    assert last and last[-1]["results"] == 0, runs
    tested = last[-1]["commit"]
    assert is_ancestor(site, outside, tested, project), (outside, runs)
    assert git(forge(site, project), "rev-parse", "main").strip() == tested
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


def test_a_branch_moved_while_the_item_waits_for_its_export_is_tested_again_first(site, tmp_path):
    """B (ceilometer) passed and waits for the export section behind A (nova, still
    tested); ceilometer's branch moves: when B gets the section it builds nothing, is
    tested again on the new tip, then merges; A merges as if nothing happened."""
    marks = tmp_path / "marks"
    marks.mkdir()
    a = propose(
        site, "nova", {"nova.spec": spec("nova", "12.0.2"), "MARKS": str(marks)}, "nova 12.0.2"
    )
    files = {"ceilometer.spec": spec("ceilometer", "8.0.2")}
    b = propose(site, "ceilometer", files, "ceilometer 8.0.2")
    a_key, b_key = f"nova~{a}", f"ceilometer~{b}"
    approve(site, "nova", a)
    approve(site, "ceilometer", b)

    def b_waits() -> bool:
        items = {i["change"]: i for q in queue_json(site)["queues"] for i in q["items"]}
        return items.get(b_key, {}).get("export") == "waiting"

    wait_until("B waits for the export section", b_waits)
    outside = push_outside(site, "README", "pushed directly\n", "outside: README", "ceilometer")
    (marks / "go").write_text("")
    done = wait_finished(site, [a_key, b_key])
    assert done[a_key]["state"] == "merged" and done[a_key]["attempt"] == 1, done[a_key]
    check_merged_once_on_top_of(site, b_key, done[b_key], outside, "ceilometer-8.0.2-1")
    assert any(
        "not exported: branch 'main' of project ceilometer moved" in line
        for line in done[b_key]["history"]
    ), done[b_key]["history"]
    assert nvr_events(site, "nova-12.0.2-1") == ["tag"]


# -- a full disk where the repositories are written ------------------------------------


@pytest.fixture
def small_fs():
    why = smallfs.unavailable()
    if why is not None:
        pytest.skip(why)
    mounted: list[smallfs.SmallFilesystem] = []

    def mount(path: Path, size: str = "8m") -> smallfs.SmallFilesystem:
        fs = smallfs.SmallFilesystem(path, size).mount()
        mounted.append(fs)
        return fs

    yield mount
    for fs in reversed(mounted):
        fs.unmount()


def wait_state(site, key: str, state: str, timeout: float = 300) -> dict:
    """The newest finished entry of ``key`` once it is in ``state``."""

    def found() -> dict | None:
        status = queue_json(site)
        live = {i["change"] for q in status["queues"] for i in q["items"]}
        mine = [i for i in status["finished"] if i["change"] == key]
        if key not in live and mine and mine[0]["state"] == state:
            return mine[0]
        return None

    try:
        return wait_until(f"{key} {state}", found, timeout)
    except TimeoutError:
        raise TimeoutError(f"{key} not {state}: {json.dumps(queue_json(site), indent=1)}") from None


def published(repo: Path) -> dict[str, bytes]:
    """The repository's repodata, and every file it names exists."""
    import xml.etree.ElementTree as ET

    data = {p.name: p.read_bytes() for p in sorted((repo / "repodata").iterdir())}
    root = ET.fromstring(data["repomd.xml"])
    for loc in root.iter("{http://linux.duke.edu/metadata/repo}location"):
        assert (repo / loc.get("href")).exists(), loc.get("href")
    return data


def http_status(site, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(site.url + path, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_full_overlay_disk_fails_the_item_saying_where_and_it_merges_once_there_is_room(
    site, small_fs
):
    root = site.master_dir / "backend" / "local"
    overlays = small_fs(root / "overlays")
    dest_before = published(root / "tags" / DEST)
    overlays.fill()
    n = propose(site, "nova", {"nova.spec": spec("nova", "12.0.5")}, "nova 12.0.5")
    key = f"nova~{n}"
    approve(site, "nova", n)
    item = wait_state(site, key, "dequeued")
    name = f"gate-rdo-nova-{n}-{item['attempt']}"
    assert item["reason"].startswith(
        f"overlay repository {name}: cannot write repository {overlays.path / name}: "
        "No space left on device"
    ), item["reason"]
    # Nothing half published: no metadata for the overlay, no partial RPM left over.
    assert not (overlays.path / name / "repodata").exists()
    assert list((overlays.path / name / "Packages").iterdir()) == []
    assert list((overlays.path / ".staging").iterdir()) == []
    assert http_status(site, "plugins/gating/repos/overlays/.staging/") == 404
    assert http_status(site, "plugins/gating/repos/overlays/.filler") == 404
    assert published(root / "tags" / DEST) == dest_before
    assert "nova 12.0.5" not in main_subjects(site)
    assert nvr_events(site, "nova-12.0.5-1") == []

    overlays.free()
    approve(site, "nova", n)  # recheck
    item = wait_state(site, key, "merged")
    assert main_subjects(site).count("nova 12.0.5") == 1
    assert nvr_events(site, "nova-12.0.5-1") == ["tag"]
    assert (overlays.path / f"gate-rdo-nova-{n}-{item['attempt']}" / "repodata").exists()


def test_a_full_destination_disk_fails_the_export_leaves_the_repository_and_git_alone(
    site, small_fs
):
    root = site.master_dir / "backend" / "local"
    tags = small_fs(root / "tags")
    repo = tags.path / DEST
    before = published(repo)
    packages = sorted(p.name for p in (repo / "Packages").iterdir())
    tags.fill()
    n = propose(site, "nova", {"nova.spec": spec("nova", "12.0.6")}, "nova 12.0.6")
    key = f"nova~{n}"
    approve(site, "nova", n)
    item = wait_state(site, key, "dequeued")
    assert item["reason"].startswith(
        f"export failed: cannot write repository {repo}: No space left on device"
    ), item["reason"]
    # The published repository is the previous one, byte for byte; nothing half written.
    assert published(repo) == before
    assert sorted(p.name for p in (repo / "Packages").iterdir()) == packages
    assert list((tags.path / ".staging").iterdir()) == []
    assert "nova-12.0.6-1" not in backend_of(site).tagged(DEST)
    assert nvr_events(site, "nova-12.0.6-1") == []
    assert "nova 12.0.6" not in main_subjects(site)

    tags.free()
    approve(site, "nova", n)  # recheck
    wait_state(site, key, "merged")
    assert main_subjects(site).count("nova 12.0.6") == 1
    assert nvr_events(site, "nova-12.0.6-1") == ["tag"]
    assert "nova-12.0.6-1" in backend_of(site).tagged(DEST)
    assert published(repo) != before
