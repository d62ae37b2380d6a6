"""Seed 000 with the local build backend: scratch builds of in-flight changes in an overlay,
the serial export section, and git in lock-step with the destination repository.

A real master, real workers over PB, real git, real ``rpmbuild`` (on a worker),
``createrepo_c`` and ``dnf --installroot`` in the test job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gating.localbackend import LocalBackend
from tests.integration.test_gate import gating, git, propose, queue_json

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpmbuild", "createrepo_c", "dnf", "git")),
    reason="needs rpmbuild, createrepo_c, dnf and git",
)

DEST = "rdo-liberty"

SPEC = """\
Name: {name}
Version: {version}
Release: {release}
Summary: {name} for the gate tests
License: MIT
BuildArch: noarch
AutoReqProv: no

%description
{name} for the gate tests.

%prep

%build

%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo {version}-{release} > %{{buildroot}}/usr/share/{name}/VERSION

%files
/usr/share/{name}/VERSION
"""


def spec(name: str, version: str, release: str = "1") -> str:
    return SPEC.format(name=name, version=version, release=release)


def make_seeds(base: Path) -> None:
    for project, version in (("nova", "12.0.0"), ("ceilometer", "8.0.0")):
        repo = base / "seeds" / project
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project}.spec").write_text(spec(project, version))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"Import {project} {version}")


@pytest.fixture(scope="module")
def site(make_site):
    site = make_site("export-local", start=False)
    make_seeds(site.basedir)
    # The liberty repository as it is before the gate: nova 12.0.0 and ceilometer 8.0.0.
    backend = LocalBackend(site.master_dir / "backend" / "local", check_build_deps=False)
    for project in ("nova", "ceilometer"):
        seed = site.basedir / "seeds" / project
        head = git(seed, "rev-parse", "HEAD").strip()
        build = backend.build(project, seed, head, scratch=False)
        backend.tag(DEST, build.nvr)
    site.start()
    return site


def backend_of(site) -> LocalBackend:
    return LocalBackend(site.master_dir / "backend" / "local", check_build_deps=False)


def wait_finished(site, keys: list[str], timeout: float = 300) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue_json(site)
        done = {i["change"]: i for i in status["finished"] if i["change"] in keys}
        live = [i["change"] for q in status["queues"] for i in q["items"]]
        if set(done) == set(keys) and not set(keys) & set(live):
            return done
        time.sleep(0.5)
    raise TimeoutError(f"{keys} did not finish: {json.dumps(queue_json(site), indent=1)}")


def approve(site, project: str, number: int) -> None:
    proc = gating(site, "approve", project, str(number))
    assert proc.returncode == 0, proc.stderr


def packstack_logs(site) -> dict[tuple[str, int], str]:
    """(change, attempt) -> the installed NVRs printed by each packstack build."""
    out = {}
    for build in site.builds_of("packstack/packstack/x86_64"):
        if not build["complete"]:
            continue
        props = site.properties(build["buildid"])
        try:
            log = site.step_log(build["buildid"], "run")
        except StopIteration:
            continue
        prefix = "installed: "
        installed = "\n".join(
            line[len(prefix) :] for line in log.splitlines() if line.startswith(prefix)
        )
        out[(props.get("gating_change"), props.get("gating_attempt"))] = installed
    return out


def package(nvr: str) -> str:
    return nvr.rsplit("-", 2)[0]


def latest(nvrs: list[str]) -> set[str]:
    """What the tag's repository serves: the newest tagged build of each package (as a koji
    repo holds the latest build per package)."""
    newest: dict[str, str] = {}
    for nvr in nvrs:
        newest[package(nvr)] = nvr
    return set(newest.values())


def tag_states(site) -> list[tuple[str, str, set[str]]]:
    """After each event of the destination tag: (action, nvr, what its repo serves)."""
    content: list[str] = []
    states = []
    for event in backend_of(site).history(DEST):
        if event.action == "tag":
            content.append(event.nvr)
        elif event.nvr in content:
            content.remove(event.nvr)
        states.append((event.action, event.nvr, latest(content)))
    return states


def main_log(site, project: str) -> str:
    return git(site.master_dir / "git" / f"{project}.git", "log", "--format=%s", "main")


def release_after_packstack(site, change: str, marker: Path, timeout: float = 300) -> None:
    """Create ``marker`` (a job's ``WAIT_FOR``) once ``change``'s packstack run completed:
    the order the test needs, however loaded the host."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for build in site.builds_of("packstack/packstack/x86_64"):
            props = site.properties(build["buildid"])
            if props.get("gating_change") == change and build["complete"]:
                marker.touch()
                return
        time.sleep(0.5)
    raise TimeoutError(f"{change}'s packstack never completed")


def test_ceilometer_is_tested_with_the_new_nova_ahead_and_exports_land_in_gate_order(
    site, tmp_path
):
    # A: nova 12.0.1, slow tests; B: ceilometer 8.0.1, fast tests (they finish first: A's
    # go on until B's are done, however loaded the host).
    go = tmp_path / "b-tested"
    a = propose(
        site,
        "nova",
        {"nova.spec": spec("nova", "12.0.1"), "DURATION": "6", "WAIT_FOR": f"{go}\n"},
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
    assert {k: v["state"] for k, v in done.items()} == {
        f"nova~{a}": "merged",
        f"ceilometer~{b}": "merged",
    }, json.dumps(done, indent=1)

    # B's packstack installed A's nova from its overlay, not the liberty repo's 12.0.0.
    logs = packstack_logs(site)
    b_runs = {att: text for (change, att), text in logs.items() if change == f"ceilometer~{b}"}
    assert b_runs, logs
    for text in b_runs.values():
        assert "nova-12.0.1-1.noarch" in text, text
        assert "ceilometer-8.0.1-1.noarch" in text, text

    # Exports landed in gate order (A's RPM first) although B's tests finished first.
    tagged = [nvr for action, nvr, _ in tag_states(site) if action == "tag"]
    assert tagged[-2:] == ["nova-12.0.1-1", "ceilometer-8.0.1-1"], tagged
    assert latest(backend_of(site).tagged(DEST)) == {"nova-12.0.1-1", "ceilometer-8.0.1-1"}
    assert "nova 12.0.1" in main_log(site, "nova")
    assert "ceilometer 8.0.1" in main_log(site, "ceilometer")

    # The export sections were held one at a time, in gate order, and recorded.
    holds = [
        json.loads(line)
        for line in (site.master_dir / "export-holds.jsonl").read_text().splitlines()
    ]
    mine = [h for h in holds if h["change"] in (f"nova~{a}", f"ceilometer~{b}")]
    assert [h["change"] for h in mine] == [f"nova~{a}", f"ceilometer~{b}"]
    assert mine[0]["end"] <= mine[1]["start"]
    assert [h["outcome"] for h in mine] == ["merged", "merged"]

    # The RPMs came from builds made on a worker (rpmbuild builder), none on the master.
    rpmbuilds = site.builds_of("gating-rpmbuild")
    assert rpmbuilds and all(b["results"] == 0 for b in rpmbuilds if b["complete"])


def test_a_failed_export_leaves_git_and_the_repository_untouched_and_resets_the_item_behind(
    site, tmp_path
):
    # Someone already built nova-12.0.2-1, from another commit: A's export must fail.
    other = tmp_path / "other-nova"
    git(tmp_path, "clone", "-q", str(site.master_dir / "git" / "nova.git"), str(other))
    (other / "nova.spec").write_text(spec("nova", "12.0.2"))
    (other / "NOTE").write_text("built outside the gate\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "nova 12.0.2 built elsewhere")
    commit = git(other, "rev-parse", "HEAD").strip()
    backend_of(site).build("nova", other, commit, scratch=False)
    before = latest(backend_of(site).tagged(DEST))
    old_nova = next(n for n in before if n.startswith("nova-"))

    a = propose(site, "nova", {"nova.spec": spec("nova", "12.0.2"), "DURATION": "0"}, "nova 12.0.2")
    b = propose(
        site,
        "ceilometer",
        {"ceilometer.spec": spec("ceilometer", "8.0.2"), "DURATION": "2"},
        "ceilometer 8.0.2",
    )
    approve(site, "nova", a)
    approve(site, "ceilometer", b)
    done = wait_finished(site, [f"nova~{a}", f"ceilometer~{b}"])
    a_item, b_item = done[f"nova~{a}"], done[f"ceilometer~{b}"]
    assert a_item["state"] == "dequeued", json.dumps(a_item, indent=1)
    assert (
        "NVR nova-12.0.2-1 already built from a different commit: bump Release"
        in (a_item["reason"])
    )
    assert b_item["state"] == "merged", json.dumps(b_item, indent=1)
    assert b_item["attempt"] >= 2  # reset when A's export failed

    # A is not merged and its RPM never landed.
    assert "nova 12.0.2" not in main_log(site, "nova")
    tagged = backend_of(site).tagged(DEST)
    assert "nova-12.0.2-1" not in tagged
    assert all(nvr != "nova-12.0.2-1" for _a, nvr, _c in tag_states(site))
    assert latest(tagged) == {"ceilometer-8.0.2-1", old_nova}

    # B's last run was tested with the old nova, and its RPM landed next to that nova only.
    logs = packstack_logs(site)
    final = logs[(f"ceilometer~{b}", b_item["attempt"])]
    assert f"{old_nova}.noarch" in final, final
    for action, nvr, content in tag_states(site):
        if nvr == "ceilometer-8.0.2-1" and action == "tag":
            assert {n for n in content if n.startswith("nova-")} == {old_nova}


def test_scratch_builds_are_made_once_per_package_and_commit(site):
    overlays = site.master_dir / "backend" / "local" / "builds" / "scratch"
    for package in ("nova", "ceilometer"):
        commits = [p.name for p in (overlays / package).iterdir()]
        assert len(commits) == len(set(commits))
    rpmbuilds = [
        site.properties(b["buildid"]) for b in site.builds_of("gating-rpmbuild") if b["complete"]
    ]
    keys = [
        (p["gating_build_package"], p["gating_build_commit"], p["gating_build_scratch"])
        for p in rpmbuilds
    ]
    assert len(keys) == len(set(keys)), keys


def test_the_destination_repository_installs_with_dnf(site, tmp_path):
    repos = tmp_path / "repos"
    repos.mkdir()
    url = f"{site.url.rstrip('/')}/plugins/gating/repos/tags/{DEST}/"
    (repos / "dest.repo").write_text(f"[dest]\nname=dest\nbaseurl={url}\ngpgcheck=0\n")
    proc = subprocess.run(
        [
            "dnf",
            "-y",
            "-q",
            f"--installroot={tmp_path / 'root'}",
            "--releasever=12",
            f"--setopt=reposdir={repos}",
            f"--setopt=cachedir={tmp_path / 'cache'}",
            "--disableplugin=*",
            "install",
            "nova",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- crash safety: the export journal (gating.exportjournal) ------------------------------
# These restart the site's master: they come last in the module.


def journal_entries(site) -> list[dict]:
    """The export journal as the master's database holds it."""
    import sqlite3

    with sqlite3.connect(site.master_dir / "state.sqlite") as db:
        row = db.execute(
            "SELECT value_json FROM object_state WHERE name = 'export-journal'"
        ).fetchone()
    return json.loads(row[0])["entries"] if row else []


def wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


def kill_master(site) -> None:
    import signal

    pid = site.master_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while site.master_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.master_pid() is None


@pytest.fixture
def hooks(site, tmp_path, monkeypatch):
    """The export job's test hook (GATING_TEST_HOOKS_DIR) on: the master is restarted with
    it in its environment."""
    from gating.testhooks import TEST_HOOKS_ENV

    folder = tmp_path / "hooks"
    folder.mkdir()
    monkeypatch.setenv(TEST_HOOKS_ENV, str(folder))
    site.stop()
    site.start()
    return folder


@pytest.mark.parametrize(
    ("killed_after", "version", "forward"),
    [("tagged", "12.0.3", True), ("tagging", "12.0.4", False)],
)
def test_a_master_killed_in_the_export_section_finishes_or_undoes_it_on_restart(
    site, hooks, killed_after, version, forward
):
    """SIGKILL right after the export recorded ``killed_after`` (tagged: the RPM is in the
    tag; tagging: the tag call never ran). On restart the change ends merged exactly once
    with its RPM in the tag, or tested again (nothing landed) and then merged, and the
    gate goes on with the item behind it."""
    nvr = f"nova-{version}-1"
    (hooks / f"pause-export-after-{killed_after}").write_text("")
    a = propose(site, "nova", {"nova.spec": spec("nova", version), "DURATION": "0"}, version)
    cver = "8.0.3" if forward else "8.0.4"
    b = propose(
        site,
        "ceilometer",
        {"ceilometer.spec": spec("ceilometer", cver), "DURATION": "0"},
        f"ceilometer {cver}",
    )
    approve(site, "nova", a)
    approve(site, "ceilometer", b)
    wait_for(hooks / f"paused-export-after-{killed_after}")
    assert (nvr in backend_of(site).tagged(DEST)) is forward
    assert version not in main_log(site, "nova").splitlines()
    (entry,) = [e for e in journal_entries(site) if e["key"] == f"nova~{a}" and not e["closed"]]
    assert entry["steps"][-1] == killed_after

    kill_master(site)
    (hooks / f"pause-export-after-{killed_after}").unlink()
    site.start()
    done = wait_finished(site, [f"nova~{a}", f"ceilometer~{b}"])
    assert {k: v["state"] for k, v in done.items()} == {
        f"nova~{a}": "merged",
        f"ceilometer~{b}": "merged",
    }, json.dumps(done, indent=1)
    # Merged exactly once, its RPM tagged exactly once and never untagged.
    assert main_log(site, "nova").splitlines().count(version) == 1
    events = [(action, n) for action, n, _ in tag_states(site) if n == nvr]
    assert events == [("tag", nvr)], events
    assert latest(backend_of(site).tagged(DEST)) >= {nvr, f"ceilometer-{cver}-1"}
    # The journal: the killed attempt was finished (forward) or abandoned (back).
    mine = {e["attempt"]: e for e in journal_entries(site) if e["key"] == f"nova~{a}"}
    killed = mine[entry["attempt"]]
    assert killed["closed"] == ("merged" if forward else "abandoned"), killed
    if forward:
        assert killed["steps"][-2:] == ["merging", "merged"], killed
        assert len(mine) == 1  # no second attempt
    else:
        assert max(mine) > entry["attempt"] and mine[max(mine)]["closed"] == "merged"
    assert not [e for e in journal_entries(site) if not e["closed"]]
