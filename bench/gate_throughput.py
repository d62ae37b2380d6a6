"""``gate-throughput`` and ``export-lock``: seed 000's "1-hour export => 24 changes a day",
measured with the koji backend in both export modes.

One campaign of runs serves both scenarios (whichever runs first makes it; the other reads
its figures from it). Two sites are started once, side by side: a real master with
:data:`WORKERS` x86_64 workers over PB, each with its own koji test hub
(:class:`tests.support.koji_hub.KojiTestHub`, real XML-RPC and ``rpmbuild``; its
``build_delay`` makes every build take B seconds more; :data:`HUB_SLOTS` builders so
builds never queue on the hub), one site in export mode ``rebuild`` (the seeds' design:
the non-scratch build inside the serial section) and one in ``promote`` (the candidate is
built while the item is tested; the section only moves the tag, waits for the repo and
merges). Both have the same queue ``rdo`` of three projects (nova, ceilometer, glance)
with a window of :data:`WINDOW` (``window-ceiling`` too, so W is fixed) and one gate
pipeline: ``build`` (``koji-scratch-build``), ``test`` (a job that sleeps T seconds on a
worker; a change whose commit message says ``BENCH-FAIL`` fails it) and ``export``
(``koji-export``).

A run proposes N changes (``git push HEAD:refs/for/main``), a series per project (each
change bumps its spec's Version on top of the previous one, as RDO changes do), approves
them in turn (nova, ceilometer, glance, nova...) and waits until every one merged or
left the gate. Each promote run follows a rebuild run (a pair, made one after the other,
so the ratio compares runs made under the same load of the host); then come
:data:`PROMOTE_EXTRA` more promote runs, then the pairs of the failing variant, which
has 10% of failing changes at evenly spread places (each an independent change of its
project that also gives its speculative builds their own NVR, so that builds of the
items tested on top of it do not collide with their rebuilds: see bench/README.md).

Figures: makespan (first approval to last merge) and merges per minute per mode, the
promote/rebuild ratio of merges per minute (one per pair of runs), the measured B (the
scratch-build job) and T (the test job), the ideal bound ceil(N/W) x (B+T) + the serial
sections of the run, and the promote makespan over that bound. ``export-lock``: the
export section's hold time per merged item in the promote runs (``export-holds.jsonl``),
split into the time spent in koji calls (recorded by the export job: the tag, the untag
from the candidate tag, the new repo) and the rest (master time: waking the holder, the
gate's events, the git merge), and the koji test hub's newRepo task time.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import Context, Figure, Goal, scenario
from bench._gatesite import approve, git, push_for_review, queue_status
from gating.localsite import LocalSite, free_port


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


# Sizes (overridable: BENCH_GT_N, BENCH_GT_BT, BENCH_GT_REPEATS, BENCH_GT_PROMOTE_EXTRA,
# BENCH_GT_FAIL_REPEATS; the figures' names say which were used). The defaults keep the
# campaign near 30 minutes on a 2-core host (a rebuild run is N serial builds) and give
# every figure of both variants two runs: medians over repeated runs, each ratio from a
# pair of runs made one after the other.
N = _env_int("BENCH_GT_N", 30)  # changes per run
BT = _env_int("BENCH_GT_BT", 5)  # B = T: seconds each build is delayed / each test sleeps
REPEATS = _env_int("BENCH_GT_REPEATS", 2)  # pairs of runs (rebuild, then promote)
PROMOTE_EXTRA = _env_int("BENCH_GT_PROMOTE_EXTRA", 0)  # promote runs more, after the pairs
FAIL_REPEATS = _env_int("BENCH_GT_FAIL_REPEATS", 2)  # pairs with 10% failing changes
FAIL_SHARE = 0.10
WINDOW = 20
WORKERS = 20  # one test per worker at a time: as many as the window
HUB_SLOTS = 64  # koji builders of the test hub (two builds per item of the window, and more)
POLL_INTERVAL = 1  # backend poll-interval (seconds), the smallest the site allows
RUN_TIMEOUT = 1800.0  # seconds one run may take
POLL_QUEUE = 2.0  # seconds between two looks at the gate's queues during a run
GOAL_RATIO = 5.0
GOAL_IDEAL = 1.5
GOAL_HOLD = 3.0  # seconds, plus the hub's repo time

PROJECTS = ("nova", "ceilometer", "glance")
USER, PASSWORD = "gating-bot", "koji-s3cret"
BUILD_TAG, DEST, CANDIDATE, TARGET = "rdo-build", "rdo-liberty", "rdo-candidate", "rdo-liberty"
MODES = ("rebuild", "promote")
FAIL_MARK = "BENCH-FAIL"

SPEC = """\
%global gate_extra {extra}
# the line above is changed only by changes that fail their tests

Name: {name}
Version: {version}
Release: 1%{{?gate_extra}}
Summary: {name} for the gate benchmark
License: MIT
BuildArch: noarch
AutoReqProv: no

%description
{name} for the gate benchmark.

%prep

%build

%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo %{{version}}-%{{release}} > %{{buildroot}}/usr/share/{name}/VERSION

%files
/usr/share/{name}/VERSION
"""

PIPELINE = """\
trigger: gate
pipeline:
  - build
  - test
  - export
jobs:
  build: {{uses: koji-scratch-build}}
  test:
    architectures: [x86_64]
    run: |
      sleep {t}
      if git log -1 --format=%B HEAD^2 | grep -q {mark}; then
        echo "this change fails its tests"; exit 1
      fi
  export: {{uses: koji-export}}
"""


def spec(name: str, version: str, extra: str = "%{nil}") -> str:
    return SPEC.format(name=name, version=version, extra=extra)


# -- the koji test hub --------------------------------------------------------------------


def start_hub(root: Path, seeds: Path) -> Any:
    """A koji test hub with the build target, the destination and candidate tags, and
    the seeds built and tagged into the destination (with a repo)."""
    from gating.kojiclient import KojiSession, KojiSettings
    from tests.support.koji_hub import KojiTestHub

    hub = KojiTestHub(root, build_slots=HUB_SLOTS)
    hub.start()
    hub.add_user(USER, PASSWORD, perms=["repo"])
    hub.create_tag(BUILD_TAG, arches="noarch x86_64")
    hub.create_tag(DEST)
    hub.create_tag(CANDIDATE)
    hub.create_target(TARGET, BUILD_TAG, DEST)
    settings = KojiSettings(
        server=hub.url, topurl=hub.topurl, auth="password", user=USER, password=PASSWORD
    )
    with KojiSession(settings) as session:
        tasks = []
        for project in PROJECTS:
            head = git(seeds / project, "rev-parse", "HEAD").strip()
            tasks.append(
                session.build_from_scm(f"git+file://{seeds / project}#{head}", TARGET, False)
            )
        for task in tasks:
            session.wait_task(task, poll_interval=0.2)
        event = session.latest_event()
        session.new_repo(DEST)
        session.wait_repo(DEST, event.id, poll_interval=0.2)
    return hub


# -- the sites ----------------------------------------------------------------------------


def write_config(base: Path, mode: str, hub: Any) -> None:
    config = base / "config"
    (config / "pipelines").mkdir(parents=True)
    site = {
        "title": f"gate-throughput bench ({mode})",
        "database": "sqlite:///state.sqlite",
        "secrets-dir": "secrets",
        "workers": "workers.yaml",
        "pipelines": "pipelines",
        "forge-dir": "git",
        "poll-interval": 60,
        "queues": {"rdo": {"window": WINDOW, "window-ceiling": WINDOW}},
        "projects": [
            {"name": p, "repository": f"../seeds/{p}", "branches": ["main"], "queue": "rdo"}
            for p in PROJECTS
        ],
        "backend": {
            "type": "koji",
            "server": hub.url,
            "topurl": hub.topurl,
            "auth": "password",
            "user": USER,
            "password-secret": "koji-password",
            "target": TARGET,
            "destination-tag": DEST,
            "candidate-tag": CANDIDATE,
            "export-mode": mode,
            "poll-interval": POLL_INTERVAL,
        },
    }
    (config / "gating.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    workers = [{"name": name, "arch": "x86_64"} for name in worker_names()]
    (config / "workers.yaml").write_text(yaml.safe_dump({"workers": workers}))
    (config / "pipelines" / "gate.yaml").write_text(PIPELINE.format(t=BT, mark=FAIL_MARK))


def worker_names() -> list[str]:
    return [f"bench-x86-{n:02d}" for n in range(1, WORKERS + 1)]


def make_seeds(base: Path) -> None:
    for n, project in enumerate(PROJECTS):
        repo = base / "seeds" / project
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project}.spec").write_text(spec(project, f"{10 + n}.0.0"))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"Import {project}")


def start_site(site: LocalSite, timeout: float = 180) -> None:
    """LocalSite.start(), with the workers started in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from gating.localsite import _bin

    proc = subprocess.run(
        [_bin("buildbot"), "start", str(site.master_dir)],
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the master did not start: {proc.stdout}{proc.stderr}")
    site.wait_for_ui(timeout)
    names = worker_names()

    def start_worker(name: str) -> None:
        # `buildbot-worker start` gives up watching after 10 s on a busy host; the worker
        # may still be connecting: what counts is that it connects (below).
        try:
            site.start_worker(name)
        except RuntimeError:
            if site.worker_pid(name) is None:
                site.start_worker(name)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(start_worker, names))
    site.wait_for_workers(names, timeout)


@dataclass
class BenchSite:
    mode: str
    base: Path
    hub: Any
    site: LocalSite
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROJECTS, 0))
    runs: int = 0

    @classmethod
    def create(cls, ctx: Context, mode: str) -> BenchSite:
        base = ctx.workdir / mode
        base.mkdir(parents=True)
        make_seeds(base)
        hub = start_hub(base / "hub", base / "seeds")
        try:
            write_config(base, mode, hub)
            site = LocalSite(base, www_port=free_port(), pb_port=free_port())
            site.create()
            secret = site.master_dir / "secrets" / "koji-password"
            secret.write_text(PASSWORD)
            secret.chmod(0o600)
            start_site(site)
        except BaseException:
            hub.stop()
            raise
        return cls(mode, base, hub, site)

    def stop(self) -> None:
        """Stop the workers (in parallel), the master, then the hub."""
        from concurrent.futures import ThreadPoolExecutor

        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(self.site.stop_worker, worker_names()))
            self.site.stop()
        finally:
            self.hub.stop()

    def propose(self, plan: list[tuple[str, bool]]) -> list[str]:
        """Propose the changes of ``plan`` ((project, fails) in gate order): per project,
        the passing ones as a series (each bumps Version on top of the previous), a failing
        one on its own on top of main; returns their keys in ``plan``'s order."""
        self.runs += 1
        keys: list[str | None] = [None] * len(plan)
        errors: list[BaseException] = []

        def one(project: str) -> None:
            try:
                work = self.base / "dev" / f"{project}-{self.runs}"
                repo = self.site.master_dir / "git" / f"{project}.git"
                git(self.base, "clone", "-q", str(repo), str(work))
                head = "origin/main"
                for slot, (p, fails) in enumerate(plan):
                    if p != project:
                        continue
                    git(work, "checkout", "-q", "--detach", "origin/main" if fails else head)
                    text = (work / f"{project}.spec").read_text()
                    if fails:
                        extra = f".fail{self.runs}x{slot}"
                        text = text.replace(
                            "%global gate_extra %{nil}", f"%global gate_extra {extra}"
                        )
                        message = f"{project}: a change that fails its tests\n\n{FAIL_MARK}\n"
                    else:
                        self.versions[project] += 1
                        old = next(
                            line for line in text.splitlines() if line.startswith("Version:")
                        )
                        major = 10 + PROJECTS.index(project)
                        version = f"{major}.{self.versions[project]}.0"
                        text = text.replace(old, f"Version: {version}")
                        message = f"{project} {version}"
                    (work / f"{project}.spec").write_text(text)
                    git(work, "commit", "-q", "-a", "-m", message)
                    keys[slot] = f"{project}~{push_for_review(work, project)}"
                    if not fails:
                        head = git(work, "rev-parse", "HEAD").strip()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(p,)) for p in PROJECTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [k for k in keys if k is not None]


# -- one run ------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    failing: bool
    keys: list[str]
    start: float
    end: float
    states: dict[str, str]
    holds: list[dict[str, Any]]
    b: list[float]  # scratch-build job durations (successful)
    t: list[float]  # test job durations (successful)
    repo_tasks: list[float]  # the hub's newRepo task durations
    window: int

    @property
    def makespan(self) -> float:
        return self.end - self.start

    @property
    def merged(self) -> int:
        return sum(1 for s in self.states.values() if s == "merged")

    @property
    def rate(self) -> float:
        return self.merged / self.makespan * 60

    def merged_holds(self) -> list[dict[str, Any]]:
        return [h for h in self.holds if h["outcome"] == "merged"]

    def ideal(self) -> float:
        """ceil(N/W) x (B + T) + the serial sections of the merged items."""
        b, t = statistics.median(self.b), statistics.median(self.t)
        serial = sum(h["end"] - h["start"] for h in self.merged_holds())
        return math.ceil(len(self.keys) / WINDOW) * (b + t) + serial


def fail_plan(n: int, failing: bool) -> list[tuple[str, bool]]:
    """(project, fails) of the n changes in gate order: projects in turn; with
    ``failing``, 10% of them (at least one) fail, at evenly spread places."""
    plan = [(PROJECTS[i % len(PROJECTS)], False) for i in range(n)]
    if failing:
        count = max(1, round(n * FAIL_SHARE))
        for j in range(count):
            slot = int((j + 0.4) * n / count)
            plan[slot] = (plan[slot][0], True)
    return plan


def builds_of(site: LocalSite, builder: str, since: float) -> list[float]:
    """Durations of the successful builds of ``builder`` started since ``since``."""
    ids = {b["name"]: b["builderid"] for b in site.api("builders")["builders"]}
    if builder not in ids:
        return []
    builds = site.api(f"builders/{ids[builder]}/builds?complete=true&results=0", timeout=60)
    return [
        b["complete_at"] - b["started_at"]
        for b in builds["builds"]
        if b["started_at"] >= since and b["complete_at"]
    ]


def run_once(ctx: Context, bs: BenchSite, failing: bool) -> Run:
    site = bs.site
    plan = fail_plan(N, failing)
    ctx.log(f"{bs.mode}: proposing {N} changes" + (" (10% failing)" if failing else ""))
    keys = bs.propose(plan)
    status = queue_status(site)
    window = next((q["window"] for q in status["queues"] if q["name"] == "rdo"), WINDOW)
    bs.hub.build_delay = float(BT)
    tasks_before = len(bs.hub.task_log)
    start = time.time()
    for key in keys:
        project, number = key.rsplit("~", 1)
        approve(site, project, int(number))
    ctx.log(f"{bs.mode}: approved {len(keys)} changes (window {window})")
    deadline = time.monotonic() + RUN_TIMEOUT
    wanted = set(keys)
    last_report = 0.0
    while True:
        status = queue_status(site)
        finished = {i["change"]: i for i in status["finished"] if i["change"] in wanted}
        live = {i["change"] for q in status["queues"] for i in q["items"]} | {
            i["change"] for i in status["waiting"]
        }
        if len(finished) == len(wanted) and not (live & wanted):
            polled_end = time.time()
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{bs.mode}: {len(wanted) - len(finished)} of {len(wanted)} changes not "
                f"finished after {RUN_TIMEOUT:.0f} s"
            )
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            ctx.log(f"{bs.mode}: {len(finished)}/{len(wanted)} finished")
        # Not too often: the queue's JSON costs the master time the run needs (the end of
        # the run is read from the master's own records, not from this poll, when it can).
        time.sleep(POLL_QUEUE)
    states = {k: finished[k]["state"] for k in keys}
    holds = [
        json.loads(line)
        for line in (site.master_dir / "export-holds.jsonl").read_text().splitlines()
        if line.strip()
    ]
    holds = [h for h in holds if h["change"] in wanted and h["start"] >= start]
    # The end: the last merge (the end of its section, the master's clock) when the last
    # change to finish merged; else when the poll saw the gate empty of them.
    last = next(i for i in status["finished"] if i["change"] in wanted)
    merged_ends = [h["end"] for h in holds if h["outcome"] == "merged"]
    end = max(merged_ends) if last["state"] == "merged" and merged_ends else polled_end
    repo_tasks = [
        e - s
        for _id, method, s, e in bs.hub.task_log[tasks_before:]
        if method == "newRepo" and e is not None
    ]
    bs.hub.build_delay = 0.0
    run = Run(
        mode=bs.mode,
        failing=failing,
        keys=keys,
        start=start,
        end=end,
        states=states,
        holds=holds,
        b=builds_of(site, "gate/build/master", start),
        t=builds_of(site, "gate/test/x86_64", start),
        repo_tasks=repo_tasks,
        window=window,
    )
    ctx.log(
        f"{bs.mode}: {run.merged}/{len(keys)} merged in {run.makespan:.1f} s "
        f"({run.rate:.2f} merges/min); B {statistics.median(run.b or [0]):.1f} s, "
        f"T {statistics.median(run.t or [0]):.1f} s"
    )
    return run


# -- the campaign -------------------------------------------------------------------------


@dataclass
class Campaign:
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def of(self, mode: str, failing: bool) -> list[Run]:
        return [r for r in self.runs if r.mode == mode and r.failing == failing]

    def pairs(self, failing: bool) -> list[tuple[Run, Run]]:
        """(rebuild, promote) runs: each promote run with the rebuild run before it."""
        out, last = [], None
        for run in self.runs:
            if run.failing != failing:
                continue
            if run.mode == "rebuild":
                last = run
            elif last is not None:
                out.append((last, run))
        return out


_CAMPAIGN: Campaign | None = None


def campaign(ctx: Context) -> Campaign:
    """Every run of both scenarios, made once per process."""
    global _CAMPAIGN
    if _CAMPAIGN is not None:
        ctx.log("using the runs made by the other scenario of this campaign")
        return _CAMPAIGN
    result = _CAMPAIGN = Campaign()
    sites: dict[str, BenchSite] = {}
    try:
        from concurrent.futures import ThreadPoolExecutor

        ctx.log(f"starting both sites (each: a master, {WORKERS} workers, a koji test hub)")
        with ThreadPoolExecutor(len(MODES)) as pool:
            futures = {mode: pool.submit(BenchSite.create, ctx, mode) for mode in MODES}
            errors = []
            for mode, future in futures.items():
                try:
                    sites[mode] = future.result()
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        # Each pair one after the other: a rebuild run, then a promote run.
        order = [(m, False) for _ in range(REPEATS) for m in MODES]
        order += [("promote", False)] * PROMOTE_EXTRA
        order += [(m, True) for _ in range(FAIL_REPEATS) for m in MODES]
        for mode, failing in order:
            result.runs.append(run_once(ctx, sites[mode], failing))
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for bs in sites.values():
            ctx.log(f"stopping the {bs.mode} site")
            bs.stop()
    return result


def _sizes() -> str:
    return f"N={N}, W={WINDOW}, B=T={BT} s"


@scenario(
    "gate-throughput",
    "30 changes through a window of 20: makespan and merges/min, export rebuild vs promote",
)
def gate_throughput(ctx: Context) -> None:
    camp = campaign(ctx)
    for failing in (False, True):
        label = _sizes() + (", 10% failing" if failing else "")
        pairs = camp.pairs(failing)
        if not pairs:
            continue
        for mode in MODES:
            runs = camp.of(mode, failing)
            ctx.add(Figure(f"makespan {mode} ({label})", "s", [r.makespan for r in runs]))
            ctx.add(
                Figure(
                    f"merges/min {mode} ({label})",
                    "merges/min",
                    [r.rate for r in runs],
                    note=", ".join(f"{r.merged}/{len(r.keys)} merged" for r in runs),
                )
            )
        ctx.add(
            Figure(
                f"promote/rebuild merges per minute ({label})",
                "x",
                [p.rate / r.rate for r, p in pairs],
                goal=None if failing else Goal("median", GOAL_RATIO, ">="),
                note="each promote run over the rebuild run made just before it",
            )
        )
        promote = camp.of("promote", failing)
        ctx.add(
            Figure(
                f"B: scratch-build job, promote ({label})", "s", [x for r in promote for x in r.b]
            )
        )
        ctx.add(Figure(f"T: test job, promote ({label})", "s", [x for r in promote for x in r.t]))
        ctx.add(
            Figure(
                f"ideal bound ceil(N/W)(B+T)+serial ({label})",
                "s",
                [r.ideal() for r in promote],
                note="B, T: medians of the run; serial: its merged items' export sections",
            )
        )
        ctx.add(
            Figure(
                f"promote makespan / ideal bound ({label})",
                "x",
                [r.makespan / r.ideal() for r in promote],
                goal=None if failing else Goal("median", GOAL_IDEAL, "<="),
            )
        )


@scenario("export-lock", "how long promote mode holds the export lock per item, koji vs master")
def export_lock(ctx: Context) -> None:
    camp = campaign(ctx)
    promote = [r for r in camp.runs if r.mode == "promote" and not r.failing]
    if not promote:
        ctx.add(Figure("export lock hold per merged item", "s", error="no promote run was made"))
        return
    holds = [h for r in promote for h in r.merged_holds()]
    repo = [x for r in promote for x in r.repo_tasks]
    repo_median = statistics.median(repo) if repo else 0.0
    label = f"promote, {_sizes()}, {len(promote)} runs"
    ctx.add(Figure(f"koji test hub newRepo task ({label})", "s", repo))
    ctx.add(
        Figure(
            f"export lock hold per merged item ({label})",
            "s",
            [h["end"] - h["start"] for h in holds],
            goal=Goal("p95", round(GOAL_HOLD + repo_median, 2)),
            note=f"goal: {GOAL_HOLD:g} s + the hub's median newRepo task ({repo_median:.2f} s)",
        )
    )
    timed = [h for h in holds if h.get("backend") is not None]
    if len(timed) < len(holds):
        ctx.add(
            Figure(
                f"koji calls in the section ({label})",
                "s",
                error="the export sections do not record their koji time",
            )
        )
        return
    ctx.add(Figure(f"koji calls in the section ({label})", "s", [h["backend"] for h in timed]))
    ctx.add(
        Figure(
            f"master time in the section ({label})",
            "s",
            [h["end"] - h["start"] - h["backend"] for h in timed],
        )
    )
