"""The speculative gate with a real master, a real worker over PB and real git
repositories in the embedded forge: changes are proposed with ``git push
HEAD:refs/for/main``, approved with ``gating approve`` and watched with ``gating queue``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from gating.forge import LocalForge
from tests.integration.conftest import CANCELLED, SUCCESS

GATING = str(Path(sys.executable).parent / "gating")
FAILURE = 2


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def make_seeds(base: Path) -> None:
    for project in ("nova", "ceilometer"):
        repo = base / "seeds" / project
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project}.spec").write_text(f"Name: openstack-{project}\n")
        (repo / "shared.txt").write_text("base\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"Import {project}")


def start_gate_site(make_site, window: int | None = None):
    site = make_site("gate", start=False)
    make_seeds(site.basedir)
    if window is not None:
        conf = site.config_dir / "gating.yaml"
        data = yaml.safe_load(conf.read_text())
        data["queues"]["rdo"] = {"window": window, "window-ceiling": window}
        conf.write_text(yaml.safe_dump(data))
    site.start()
    return site


def propose(site, project: str, files: dict[str, str], message: str = "") -> int:
    """A developer's change: clone the forge repository, commit, push to refs/for/main."""
    work = site.basedir / "dev" / f"{project}-{time.monotonic_ns()}"
    git(site.basedir, "clone", "-q", str(site.master_dir / "git" / f"{project}.git"), str(work))
    for name, content in files.items():
        (work / name).write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message or f"Change {sorted(files)} of {project}")
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


def gating(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GATING, *args, "--url", site.url], capture_output=True, text=True, timeout=120
    )


def queue_json(site) -> dict:
    proc = gating(site, "queue", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class Watcher(threading.Thread):
    """Polls ``gating queue --json`` and records every state each change was seen in."""

    def __init__(self, site) -> None:
        super().__init__(daemon=True)
        self.site = site
        self.seen: dict[str, list[str]] = {}
        self.max_testing = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status = queue_json(self.site)
            except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired):
                time.sleep(0.2)
                continue
            testing = 0
            for queue in status["queues"]:
                for item in queue["items"]:
                    self.note(item["change"], item["state"])
                    testing += item["state"] == "testing" and not item["passed"]
            for item in status["finished"]:
                self.note(item["change"], item["state"])
            self.max_testing = max(self.max_testing, testing)
            time.sleep(0.2)

    def note(self, change: str, state: str) -> None:
        states = self.seen.setdefault(change, [])
        if not states or states[-1] != state:
            states.append(state)


def wait_until_finished(site, changes: list[str], timeout: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue_json(site)
        finished = {i["change"]: i for i in status["finished"]}
        if all(c in finished for c in changes):
            return finished
        time.sleep(0.5)
    raise TimeoutError(f"{changes} did not finish: {json.dumps(queue_json(site), indent=1)}")


def gate_builds(site) -> list[dict]:
    builderid = site.builder_ids()["packstack"]
    props = "&".join(
        f"property={p}"
        for p in ("gating_change", "gating_ahead", "gating_attempt", "gating_merge_commit")
    )
    builds = site.api(f"builders/{builderid}/builds?{props}")["builds"]
    for build in builds:
        build["props"] = {k: v[0] for k, v in build["properties"].items()}
    return builds


def merged_changes(site, project: str) -> list[str]:
    """Subjects of the changes merged into main, oldest first (second parents of merges)."""
    repo = site.master_dir / "git" / f"{project}.git"
    merges = git(repo, "rev-list", "--first-parent", "--merges", "--reverse", "main").split()
    return [git(repo, "log", "-1", "--format=%s", f"{m}^2").strip() for m in merges]


def test_shared_queue_failure_resets_the_items_behind_and_merges_in_order(make_site, tmp_path):
    site = start_gate_site(make_site)
    # B fails only once C's first run has started on top of it, however loaded the host.
    go = tmp_path / "b-may-fail"
    a = propose(site, "nova", {"a.txt": "A\n"}, "A: nova change")
    b = propose(
        site,
        "ceilometer",
        {"FAIL": "x\n", "DURATION": "1\n", "WAIT_FOR": f"{go}\n"},
        "B: ceilometer change",
    )
    c = propose(site, "nova", {"c.txt": "C\n"}, "C: nova change")
    watcher = Watcher(site)
    watcher.start()
    for project, number in (("nova", a), ("ceilometer", b), ("nova", c)):
        proc = gating(site, "approve", project, str(number))
        assert proc.returncode == 0, proc.stderr
    A, B, C = f"nova~{a}", f"ceilometer~{b}", f"nova~{c}"
    deadline = time.monotonic() + 240
    while not any(
        (x["props"]["gating_change"], x["props"]["gating_attempt"]) == (C, 1)
        for x in gate_builds(site)
    ):
        assert time.monotonic() < deadline, "C's first run never started"
        time.sleep(0.5)
    go.touch()
    finished = wait_until_finished(site, [A, B, C])
    watcher.stop.set()
    watcher.join()

    assert finished[A]["state"] == "merged"
    assert finished[C]["state"] == "merged"
    assert finished[B]["state"] == "dequeued"
    # The reason names the failed job instance and its arch.
    reason = finished[B]["reason"]
    assert reason.startswith("job packstack on x86_64: failure"), reason
    assert merged_changes(site, "nova") == ["A: nova change", "C: nova change"]
    assert merged_changes(site, "ceilometer") == []

    runs = {
        (b["props"]["gating_change"], b["props"]["gating_attempt"]): b for b in gate_builds(site)
    }
    first, second = runs[(C, 1)], runs[(C, 2)]
    # C is first tested on top of A and B. A may have merged before B's failure
    # reset C: then A is part of C's base rather than an item ahead of it.
    assert [x["change"] for x in first["props"]["gating_ahead"]] in ([A, B], [B])
    assert first["results"] == CANCELLED
    assert [x["change"] for x in second["props"]["gating_ahead"]] in ([A], [])
    assert second["results"] == SUCCESS
    tested = second["props"]["gating_merge_commit"]
    repo = site.master_dir / "git" / "nova.git"
    assert git(repo, "show", f"{tested}:a.txt") == "A\n"
    assert runs[(B, 1)]["results"] == FAILURE
    assert runs[(A, 1)]["results"] == SUCCESS
    # C's tested commit is exactly what landed on main.
    assert git(repo, "rev-parse", "main").strip() == second["props"]["gating_merge_commit"]

    # gating queue --json showed the states as they happened.
    assert "testing" in watcher.seen[A] and watcher.seen[A][-1] == "merged"
    assert watcher.seen[B][-1] == "dequeued"
    # B may be failing for less than one poll of the watcher: its history has every state.
    assert f"attempt 1: failing: {reason}" in finished[B]["history"]
    assert watcher.seen[C][-1] == "merged"
    # The verdict is recorded on the changes.
    forge = LocalForge(site.master_dir / "git")
    assert forge.change("nova", a).status == "merged"
    assert forge.change("nova", c).status == "merged"
    assert forge.change("ceilometer", b).status == "failed"
    assert forge.change("ceilometer", b).result_reason == reason


def test_merge_conflict_fails_the_item_and_leaves_the_items_behind_alone(make_site, tmp_path):
    site = start_gate_site(make_site)
    # A is still being tested when D and E come, however loaded the host.
    go = tmp_path / "a-may-finish"
    a = propose(site, "nova", {"shared.txt": "from A\n", "WAIT_FOR": f"{go}\n"}, "A: edits shared")
    d = propose(site, "nova", {"shared.txt": "from D\n"}, "D: conflicts with A")
    e = propose(site, "nova", {"e.txt": "E\n"}, "E: independent")
    for number in (a, d, e):
        assert gating(site, "approve", "nova", str(number)).returncode == 0
    go.touch()
    A, D, E = f"nova~{a}", f"nova~{d}", f"nova~{e}"
    finished = wait_until_finished(site, [A, D, E])
    assert finished[D]["state"] == "dequeued"
    assert finished[D]["reason"] == "merge conflict"
    assert finished[A]["state"] == finished[E]["state"] == "merged"
    builds = gate_builds(site)
    e_builds = [b for b in builds if b["props"]["gating_change"] == E]
    assert len(e_builds) == 1  # never cancelled nor restarted
    assert [x["change"] for x in e_builds[0]["props"]["gating_ahead"]] == [A]
    assert not [b for b in builds if b["props"]["gating_change"] == D]
    assert merged_changes(site, "nova") == ["A: edits shared", "E: independent"]


def test_window_of_two_runs_no_more_than_two_items_at_once(make_site, tmp_path):
    # window 2 with ceiling 2: merges do not widen it (Zuul's window-ceiling).
    site = start_gate_site(make_site, window=2)
    go = tmp_path / "all-approved"  # no run ends before every change is in the gate
    numbers = [
        propose(site, "nova", {f"f{i}.txt": f"{i}\n", "WAIT_FOR": f"{go}\n"}, f"change {i}")
        for i in range(5)
    ]
    watcher = Watcher(site)
    watcher.start()
    for number in numbers:
        assert gating(site, "approve", "nova", str(number)).returncode == 0
    go.touch()
    keys = [f"nova~{n}" for n in numbers]
    finished = wait_until_finished(site, keys)
    watcher.stop.set()
    watcher.join()
    assert all(finished[k]["state"] == "merged" for k in keys)
    assert merged_changes(site, "nova") == [f"change {i}" for i in range(5)]
    builds = gate_builds(site)

    def peak(shrink: int) -> int:
        # Whole-second timestamps, and a build's complete_at is written after its requests
        # completed: a 1 s shrink drops that artefact; a real excess overlaps for a whole run.
        events = sorted(
            [(b["started_at"], 1) for b in builds]
            + [(b["complete_at"] - shrink, -1) for b in builds]
        )
        running = top = 0
        for _when, delta in events:
            running += delta
            top = max(top, running)
        return top

    assert peak(shrink=1) <= 2
    assert peak(shrink=0) >= 2  # the window was used
    assert watcher.max_testing <= 2


def test_master_killed_while_items_test_resumes_and_merges_each_change_once(make_site, tmp_path):
    site = start_gate_site(make_site)
    go = tmp_path / "restarted"  # the runs are still going when the master is killed
    hold = {"DURATION": "8\n", "WAIT_FOR": f"{go}\n"}
    numbers = {
        "nova": [propose(site, "nova", {"k1.txt": "1\n", **hold}, "K1")],
        "ceilometer": [propose(site, "ceilometer", {"k2.txt": "2\n", **hold}, "K2")],
    }
    numbers["nova"].append(propose(site, "nova", {"k3.txt": "3\n", **hold}, "K3"))
    for project, nums in numbers.items():
        for number in nums:
            assert gating(site, "approve", project, str(number)).returncode == 0
    keys = [f"{p}~{n}" for p, nums in numbers.items() for n in nums]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [b for b in gate_builds(site) if not b["complete"]]
        if len(running) == 3:
            break
        time.sleep(0.3)
    else:
        pytest.fail("three items never tested at once")
    before = queue_json(site)
    os.kill(site.master_pid(), signal.SIGKILL)
    time.sleep(1)
    site.start()  # the workers are still running; they reconnect
    go.touch()
    after = queue_json(site)
    assert [i["change"] for q in after["queues"] for i in q["items"]] == [
        i["change"] for q in before["queues"] for i in q["items"]
    ]
    finished = wait_until_finished(site, keys, timeout=300)
    assert all(finished[k]["state"] == "merged" for k in keys)
    assert merged_changes(site, "nova") == ["K1", "K3"]
    assert merged_changes(site, "ceilometer") == ["K2"]


def test_bad_approvals_are_refused_with_a_clear_error_and_change_nothing(make_site):
    site = start_gate_site(make_site)
    number = propose(site, "nova", {"x.txt": "x\n", "DURATION": "30\n"})
    before = queue_json(site)
    proc = gating(site, "approve", "nova", "999")
    assert proc.returncode == 1
    assert "nova~999" in proc.stderr
    proc = gating(site, "approve", "glance", "1")
    assert proc.returncode == 1
    assert "project glance is not gated by any queue" in proc.stderr
    # A change for a branch the gate does not gate.
    work = site.basedir / "dev" / "stable"
    git(site.basedir, "clone", "-q", str(site.master_dir / "git" / "nova.git"), str(work))
    git(work, "push", "-q", "origin", "HEAD:refs/heads/stable")
    (work / "s.txt").write_text("s\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "stable change")
    out = subprocess.run(
        ["git", "push", "origin", "HEAD:refs/for/stable"], cwd=work, capture_output=True, text=True
    )
    stable = int(re.search(r"change nova~(\d+)", out.stdout + out.stderr).group(1))
    proc = gating(site, "approve", "nova", str(stable))
    assert proc.returncode == 1
    assert f"change nova~{stable} is for branch stable, which is not gated" in proc.stderr
    assert queue_json(site) == before
    assert gating(site, "approve", "nova", str(number)).returncode == 0
    proc = gating(site, "approve", "nova", str(number))
    assert proc.returncode == 1
    assert f"change nova~{number} is already in the gate" in proc.stderr
    status = queue_json(site)
    assert [i["change"] for i in status["queues"][0]["items"]] == [f"nova~{number}"]


def test_check_pipeline_runs_on_each_new_patchset_without_speculation(make_site):
    site = start_gate_site(make_site)
    good = propose(site, "ceilometer", {"ok.txt": "ok\n"}, "ceilometer: fine")
    bad = propose(site, "ceilometer", {"FAIL_CHECK": "x\n"}, "ceilometer: breaks lint")
    propose(site, "nova", {"n.txt": "n\n"}, "nova: not checked by this pipeline")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        builds = site.api("builds?complete=true&property=gating_change&property=branch")["builds"]
        names = {b["builderid"]: b["name"] for b in site.api("builders")["builders"]}
        checks = {
            b["properties"]["gating_change"][0]: (b["properties"]["branch"][0], b["results"])
            for b in builds
            if names[b["builderid"]] == "check"
        }
        if len(checks) >= 2:
            break
        time.sleep(1)
    assert checks == {
        f"ceilometer~{good}": (f"refs/changes/{good}/1", SUCCESS),
        f"ceilometer~{bad}": (f"refs/changes/{bad}/1", FAILURE),
    }
    # Checking is not gating: nothing entered a queue.
    assert all(not q["items"] for q in queue_json(site)["queues"])
