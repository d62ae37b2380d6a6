"""In-repo pipelines (``uses: in-repo-pipeline``) with a real master, real workers over PB,
real git in the embedded forge and the local build backend (``rpmbuild`` on a worker).

The site's gate (trusted) runs the project's own ``.gating.yaml`` (untrusted) on an x86_64
worker, at the item's speculative merge, then exports. A change to the file is tested with
its own version; a file that asks for what only the site may do is refused with its place,
the change is not merged and nothing is exported; a job gets none of the site's secrets."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from gating import __version__, inrepo
from gating.localbackend import LocalBackend
from tests.integration.conftest import FAILURE, SUCCESS
from tests.integration.test_gate import gating, git, propose, queue_json
from tests.support import secretscan

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpmbuild", "createrepo_c", "git")),
    reason="needs rpmbuild, createrepo_c and git",
)

DEST = "rdo-liberty"
BUILDER = "gate/in-repo/x86_64"
SITE_TOKEN = "in-repo-site-token-7f3a9c51e2"  # a site secret the jobs must never see

# Release: the number of commits of the built commit, so that each tested (merge) commit
# has its own NVR (an NVR is built from one commit only).
SPEC = """\
Name: nova
Version: {version}
Release: %(git -C %{{_sourcedir}} rev-list --count HEAD)
Summary: nova for the in-repo pipeline tests
License: MIT
BuildArch: noarch
AutoReqProv: no

%description
nova for the in-repo pipeline tests.

%prep

%build

%install
mkdir -p %{{buildroot}}/usr/share/nova
echo {version} > %{{buildroot}}/usr/share/nova/VERSION

%files
/usr/share/nova/VERSION
"""

GATING_YAML = """\
pipeline:
  - unit
jobs:
  unit:
    architectures: [x86_64]
    run: |
      sleep "$(cat DURATION 2>/dev/null || echo 0)"
      echo "unit ran for $GATING_CHANGE"
"""

WITH_LINT = """\
pipeline:
  - unit
  - lint
jobs:
  unit:
    architectures: [x86_64]
    run: echo "unit ran for $GATING_CHANGE"
  lint:
    architectures: [x86_64]
    environment: {WHO: the changed file}
    run: |
      echo "lint ran: added by $WHO"
      echo "a.txt holds: $(cat a.txt)"
"""

USES_EXPORT = """\
pipeline:
  - unit
  - sneak
jobs:
  unit: {architectures: [x86_64], run: echo unit}
  sneak: {uses: koji-export}
"""

CHANGES_QUEUE = """\
queue: fast-lane
pipeline: [unit]
jobs:
  unit:
    architectures: [x86_64]
    run: echo unit
"""

LEAKY = """\
pipeline: [leak]
jobs:
  leak:
    architectures: [x86_64]
    environment:
      ASKED: "%(secret:site-token)s %(secret:worker-inrepo-x86-1)s"
    run: |
      echo "asked: $ASKED"
      echo "--- environment"
      env | sort
      echo "--- end"
      echo "site config: ${GATING_CONFIG:-unset}"
"""


def make_seed(base: Path) -> None:
    repo = base / "seeds" / "nova"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "--initial-branch=main")
    (repo / "nova.spec").write_text(SPEC.format(version="12.0.0"))
    (repo / ".gating.yaml").write_text(GATING_YAML)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Import nova")


@pytest.fixture(scope="module")
def site(make_site):
    site = make_site("inrepo", start=False, secrets={"site-token": SITE_TOKEN})
    make_seed(site.basedir)
    site.start()
    return site


def approve(site, number: int) -> None:
    proc = gating(site, "approve", "nova", str(number))
    assert proc.returncode == 0, proc.stderr


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


def in_repo_builds(site, change: str) -> list[dict]:
    """The complete in-repo job builds of ``change``, each with its properties."""
    out = []
    for build in site.builds_of(BUILDER):
        if not build["complete"]:
            continue
        props = site.properties(build["buildid"])
        if props.get("gating_change") == change:
            build["props"] = props
            out.append(build)
    return sorted(out, key=lambda b: b["props"]["gating_attempt"])


def step_logs(site, buildid: int, step: str = "in-repo-pipeline") -> dict[str, str]:
    """Every log of one step of a build, by log name."""
    steps = site.api(f"builds/{buildid}/steps")["steps"]
    stepid = next(s["stepid"] for s in steps if s["name"] == step)
    out = {}
    for log in site.api(f"steps/{stepid}/logs")["logs"]:
        chunks = site.api(f"logs/{log['logid']}/contents")["logchunks"]
        lines = "".join(c["content"] for c in chunks).splitlines()
        if log["type"] == "s":  # a stream log: each line starts with its stream's letter
            lines = [line[1:] for line in lines]
        out[log["name"]] = "\n".join(lines)
    return out


def merged_subjects(site) -> list[str]:
    repo = site.master_dir / "git" / "nova.git"
    merges = git(repo, "rev-list", "--first-parent", "--merges", "--reverse", "main").split()
    return [git(repo, "log", "-1", "--format=%s", f"{m}^2").strip() for m in merges]


def tagged(site) -> list[str]:
    backend = LocalBackend(site.master_dir / "backend" / "local", check_build_deps=False)
    return [e.nvr for e in backend.history(DEST) if e.action == "tag"]


def test_a_change_to_the_in_repo_file_is_tested_with_its_own_version_on_top_of_the_change_ahead(
    site,
):
    started = time.monotonic()
    # A: slow enough to still be in the queue when B is tested behind it.
    a = propose(
        site,
        "nova",
        {"a.txt": "from A\n", "DURATION": "12", "nova.spec": SPEC.format(version="12.0.1")},
        "A: nova 12.0.1",
    )
    b = propose(site, "nova", {".gating.yaml": WITH_LINT}, "B: add a lint job")
    approve(site, a)
    approve(site, b)
    A, B = f"nova~{a}", f"nova~{b}"
    finished = wait_finished(site, [A, B])
    assert finished[A]["state"] == "merged", finished[A]
    assert finished[B]["state"] == "merged", finished[B]
    assert merged_subjects(site)[-2:] == ["A: nova 12.0.1", "B: add a lint job"]

    (build_b,) = [b for b in in_repo_builds(site, B) if b["results"] == SUCCESS]
    # B was tested speculatively on top of A (A still in the queue, ahead of it).
    assert [x["change"] for x in build_b["props"]["gating_ahead"]] == [A]
    logs = step_logs(site, build_b["buildid"])
    # One log per job of B's own file: the new job ran, and saw A's file.
    assert "job lint" in logs and "job unit" in logs, sorted(logs)
    assert "lint ran: added by the changed file" in logs["job lint"]
    assert "a.txt holds: from A" in logs["job lint"]
    assert f"unit ran for {B}" in logs["job unit"]
    assert "unit ran" not in logs["job lint"]
    # The runner is the worker's own buildbot-gating, and says which.
    runner = build_b["props"]["gating_runner"]
    assert runner.startswith(f"buildbot-gating {__version__} (Python "), runner
    (line,) = [x for x in logs["stdio"].splitlines() if x.startswith(f"{inrepo.MARKER} ")][:1]
    assert line.endswith(f" runner {runner}"), line  # the runner's first line
    assert "runner version" not in logs and "no gating runner" not in logs
    # A was tested with the file of main, which has no lint job.
    (build_a,) = [b for b in in_repo_builds(site, A) if b["results"] == SUCCESS]
    logs_a = step_logs(site, build_a["buildid"])
    assert "job lint" not in logs_a and f"unit ran for {A}" in logs_a["job unit"]
    # Both exported, in gate order.
    assert [n.rsplit("-", 2)[0] for n in tagged(site)] == ["nova", "nova"]
    print(f"in-repo speculative test: {time.monotonic() - started:.1f}s")


def test_a_file_that_asks_for_what_only_the_site_may_do_fails_with_its_place(site):
    started = time.monotonic()
    before_tags = tagged(site)
    repo = site.master_dir / "git" / "nova.git"
    main_before = git(repo, "rev-parse", "main").strip()
    # One after the other: both edit .gating.yaml, so D would not merge on top of C.
    c = propose(site, "nova", {".gating.yaml": USES_EXPORT}, "C: export from the repo")
    approve(site, c)
    C = f"nova~{c}"
    finished = wait_finished(site, [C])
    d = propose(site, "nova", {".gating.yaml": CHANGES_QUEUE}, "D: move to another queue")
    approve(site, d)
    D = f"nova~{d}"
    finished.update(wait_finished(site, [D]))
    assert finished[C]["state"] == "dequeued", finished[C]
    assert finished[D]["state"] == "dequeued", finished[D]
    assert finished[C]["reason"].startswith("job in-repo on x86_64: failure"), finished[C]

    stdio_c = step_logs(site, in_repo_builds(site, C)[-1]["buildid"])["stdio"]
    assert (
        ".gating.yaml:6:17: job 'sneak': 'uses: koji-export': built-in job kinds act with "
        "the site's rights" in stdio_c
    ), stdio_c
    assert ".gating.yaml was refused: nothing ran" in stdio_c
    assert [b["results"] for b in in_repo_builds(site, D)] == [FAILURE]
    stdio_d = step_logs(site, in_repo_builds(site, D)[-1]["buildid"])["stdio"]
    assert ".gating.yaml:1:1: 'queue' in the pipeline file: only the site configuration" in (
        stdio_d
    ), stdio_d
    # Nothing ran, nothing merged, nothing exported; the project is still in its queue.
    assert git(repo, "rev-parse", "main").strip() == main_before
    assert tagged(site) == before_tags
    export_builds = [
        build
        for build in site.builds_of("gate/export/master")
        if site.properties(build["buildid"]).get("gating_change") in (C, D)
    ]
    assert export_builds == []
    assert all(q["name"] == "rdo" for q in queue_json(site)["queues"])
    print(f"in-repo refusal test: {time.monotonic() - started:.1f}s")


def test_an_in_repo_job_gets_none_of_the_sites_secrets(site):
    started = time.monotonic()
    e = propose(site, "nova", {".gating.yaml": LEAKY}, "E: print the environment")
    approve(site, e)
    E = f"nova~{e}"
    finished = wait_finished(site, [E])
    assert finished[E]["state"] == "merged", finished[E]
    (build,) = [b for b in in_repo_builds(site, E) if b["results"] == SUCCESS]
    logs = step_logs(site, build["buildid"])
    leak = logs["job leak"]
    # Buildbot renderables in the file are text: nothing was interpolated.
    assert "asked: %(secret:site-token)s %(secret:worker-inrepo-x86-1)s" in leak
    assert "site config: unset" in leak
    env = leak.split("--- environment\n", 1)[1].split("\n--- end", 1)[0].splitlines()
    names = {line.split("=", 1)[0] for line in env if "=" in line}
    # Only the fixed base, the file's own variable and the run's GATING_* variables.
    assert names - {"PWD", "SHLVL", "_", "OLDPWD"} <= {
        "PATH",
        "HOME",
        "LANG",
        "ASKED",
        *(n for n in names if n.startswith("GATING_")),
    }, names
    assert "GATING_CONFIG" not in names and "PYTHONPATH" not in names
    assert f"GATING_CHANGE={E}" in env
    # No secret of the site (the master's secrets directory: worker passwords, the site
    # token) in any log of the job, in any encoding the leak search knows.
    registry = secretscan.SecretRegistry()
    registry.add_dir(site.master_dir / "secrets", "secrets")
    assert any(s.value == SITE_TOKEN for s in registry.secrets())
    scanner = secretscan.Scanner(registry)
    for name, text in logs.items():
        scanner.scan_bytes(text.encode(), f"in-repo build {build['buildid']} log {name}")
    assert scanner.report.clean, scanner.report.message("the in-repo job's logs")
    print(f"in-repo secrets test: {time.monotonic() - started:.1f}s")


def test_a_worker_without_the_gating_runner_fails_the_job_saying_how_to_deploy_it(site):
    """The runner is each worker's own (WORKER/gating-venv/bin/python3), never the python3
    of the worker's PATH: without the link, the job fails and says how to deploy it."""
    started = time.monotonic()
    workers = ["inrepo-x86-1", "inrepo-x86-2"]  # sites/inrepo/workers.yaml
    links = [site.worker_dir(name) / inrepo.VENV_LINK for name in workers]
    targets = [Path(os.readlink(link)) for link in links]
    for link in links:
        link.unlink()
    try:
        f = propose(site, "nova", {"b.txt": "from F\n"}, "F: on workers without a runner")
        approve(site, f)
        F = f"nova~{f}"
        finished = wait_finished(site, [F])
    finally:
        for link, target in zip(links, targets, strict=True):
            inrepo.link_venv(link.parent, target)
    assert finished[F]["state"] == "dequeued", finished[F]
    (build,) = in_repo_builds(site, F)
    assert build["results"] == FAILURE
    steps = site.api(f"builds/{build['buildid']}/steps")["steps"]
    (step,) = [s for s in steps if s["name"] == "in-repo-pipeline"]
    worker = next(
        w["name"] for w in site.api("workers")["workers"] if w["workerid"] == build["workerid"]
    )
    assert step["state_string"] == f"worker {worker} has no gating runner (failure)", step
    logs = step_logs(site, build["buildid"])
    python = f"{site.worker_dir(worker)}/{inrepo.VENV_LINK}/{inrepo.RUNNER_PYTHON}"
    assert logs["no gating runner"].startswith(
        f"worker {worker} has no gating runner: {python} -P -m gating.inrepo did not start"
    ), logs["no gating runner"]
    assert "deploy it with the gating_worker role" in logs["no gating runner"]
    assert "No such file or directory" in logs["stdio"], logs["stdio"]
    assert "gating_runner" not in build["props"]
    assert git(
        site.master_dir / "git" / "nova.git", "log", "-1", "--format=%s", "main"
    ).strip() != ("F: on workers without a runner")
    print(f"in-repo no-runner test: {time.monotonic() - started:.1f}s")
