"""``config-scale``: a configuration of 1,000 generated pipelines over 4 arches.

:func:`write_config` generates (deterministically, from a seed) a configuration directory
as an admin would deploy it: ``gating.yaml`` with 20 dist-git projects (2 of them gated,
in one queue), a koji hub for the koji triggers (an address where nothing listens: the
events are never needed here) and the local build backend; ``workers.yaml`` with a pool of
3 workers per arch (x86_64, aarch64, ppc64le, s390x; series el8 and el9); and 1,000
pipeline files: 1 to 3 stages of 1 or 2 jobs, each job on a subset of the 4 arches, some
with a matrix (per-series entries on different arches), some taking an earlier stage's
``output`` as ``input`` (from another arch), a ``trigger`` of ``dist_git_commit``,
``nightly``, ``koji_build``, ``koji_tag`` or ``gate`` (these with the built-in
``koji-scratch-build`` first and ``koji-export`` last) or none.

Measured (``GATING_BENCH_PIPELINES=N`` runs it with N pipelines instead, for development):

* ``gating check`` and ``gating plan`` (the CLI, a fresh process each run, 5 runs);
  goal for ``plan``: median under 5 s;
* ``master start-up``: ``buildbot start`` until ``/api/v2/builders`` lists every builder
  of the plan (3 runs, each a fresh master and database); goal: median under 60 s;
* ``buildbot reconfig`` after a job was added to one pipeline file, until twistd.log says
  "configuration update complete" (3 runs on the last master; the new builder must then
  be in the API); goal: median under 30 s;
* the master's peak memory (``VmHWM`` of ``/proc/PID/status``) after each start-up, and
  after the reconfigs; the number of builders (by kind).

The master starts without workers: the pools' workers never connect (start-up is the
master's own work); its coordinator workers run in-process as always. Each master is
killed at the end (its site is thrown away).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench import Context, Figure, Goal, scenario
from gating.localsite import LocalSite, free_port

PIPELINES = int(os.environ.get("GATING_BENCH_PIPELINES", "1000"))
ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x")
WORKERS_PER_ARCH = 3
PROJECTS = 20
GATED = ("pkg-00", "pkg-01")
SEED = 20240801
CLI_RUNS = 5
START_RUNS = 3
RECONFIG_RUNS = 3
GOAL_PLAN = 5.0  # seconds
GOAL_START = 60.0
GOAL_RECONFIG = 30.0
START_TIMEOUT = 600.0
RECONFIG_TIMEOUT = 600.0
RECONFIG_DONE = "configuration update complete"
MASTER_RUNNING = "BuildMaster is running"
RECONFIG_FAILED = ("configuration update aborted", "configuration update partially applied")


# -- the configuration --------------------------------------------------------------------


def project_name(i: int) -> str:
    return f"pkg-{i:02d}"


def site_settings() -> dict[str, Any]:
    return {
        "title": "config-scale benchmark",
        "database": "sqlite:///state.sqlite",
        "secrets-dir": "secrets",
        "workers": "workers.yaml",
        "pipelines": "pipelines",
        "forge-dir": "git",
        # The pollers poll once at start-up, then not during the benchmark.
        "poll-interval": 3600,
        "queues": {"rdo": {"window": 20}},
        "projects": [
            {
                "name": project_name(i),
                "repository": f"../seeds/{project_name(i)}",
                "branches": ["main"],
                **({"queue": "rdo"} if project_name(i) in GATED else {}),
            }
            for i in range(PROJECTS)
        ],
        "backend": {"type": "local", "build-arch": "x86_64", "destination-tag": "dist"},
        # Nothing listens there: a poll fails at once, and the next is an hour away.
        "koji-events": {
            "source": "poll",
            "poll-interval": 3600,
            "server": "http://127.0.0.1:9/kojihub",
            "topurl": "http://127.0.0.1:9/kojifiles",
        },
    }


def inventory() -> dict[str, Any]:
    return {
        "workers": [
            {
                "name": f"{arch.replace('_', '')}-{n:02d}",
                "arch": arch,
                "series": ["el8", "el9"],
                "max-builds": 2,
                "package-install": ["sudo", "dnf", "install", "-y"],
            }
            for arch in ARCHES
            for n in range(1, WORKERS_PER_ARCH + 1)
        ]
    }


def _arches(rng: random.Random) -> list[str]:
    """1 to 4 arches, x86_64 most often among them (as real packages do)."""
    count = rng.choices((1, 2, 3, 4), weights=(35, 30, 10, 25))[0]
    if count == 4:
        return list(ARCHES)
    rest = rng.sample(ARCHES[1:], count - 1)
    first = ["x86_64"] if rng.random() < 0.85 else [rng.choice(ARCHES[1:])]
    chosen = list(dict.fromkeys(first + rest))
    return [a for a in ARCHES if a in chosen]


def _trigger(rng: random.Random) -> tuple[Any, bool]:
    """A pipeline's ``trigger`` (None: only forced) and whether it is a gate pipeline."""
    kind = rng.choices(
        ("dist_git_commit", "nightly", "koji_build", "koji_tag", "gate", None),
        weights=(40, 10, 15, 5, 5, 25),
    )[0]
    # Gated projects' branches move only through the gate: no commit or nightly triggers.
    project = project_name(rng.randrange(len(GATED), PROJECTS))
    if kind == "dist_git_commit":
        return {"dist_git_commit": {"projects": [project]}}, False
    if kind == "nightly":
        return {"nightly": {"hour": rng.randrange(24), "projects": [project]}}, False
    if kind == "koji_build":
        return {"koji_build": {"package": [f"python-{project}*"]}}, False
    if kind == "koji_tag":
        return {"koji_tag": {"tag": ["f40-updates-testing"], "package": [project]}}, False
    if kind == "gate":
        return {"gate": {"projects": [rng.choice(GATED)]}}, True
    return None, False


def make_pipeline(rng: random.Random, number: int) -> dict[str, Any]:
    """One pipeline file's content."""
    trigger, gate = _trigger(rng)
    stages: list[list[str]] = []
    jobs: dict[str, Any] = {}
    if gate:
        stages.append(["scratch-build"])
        jobs["scratch-build"] = {"uses": "koji-scratch-build"}
    producers: list[tuple[str, list[str]]] = []  # (job, arches) with an output
    for s in range(rng.choices((1, 2, 3), weights=(30, 45, 25))[0]):
        stage = []
        made: list[tuple[str, list[str]]] = []
        for j in range(rng.choices((1, 2), weights=(60, 40))[0]):
            name = ("build", "test", "check")[s] + ("" if j == 0 else f"-{j + 1}")
            arches = _arches(rng)
            job: dict[str, Any] = {
                "architectures": arches,
                "packages": ["rpm-build", "make"],
                "run": f"echo 'pipeline {number} job {name} on '$(uname -m)\nmake -j2 check\n",
                "timeout": 3600,
            }
            if rng.random() < 0.25 and len(arches) >= 2:
                # Per-series matrix entries: el8 on the first arches, el9 on all of them.
                del job["architectures"]
                job["matrix"] = [
                    {"series": "el8", "architectures": arches[: max(1, len(arches) // 2)]},
                    {"series": "el9", "architectures": arches},
                ]
            elif producers and rng.random() < 0.3:
                source, source_arches = rng.choice(producers)
                job["input"] = {"job-name": source, "target-directory": "from-" + source}
                if not set(arches) <= set(source_arches) and len(source_arches) > 1:
                    job["input"]["architecture"] = source_arches[0]
            if "matrix" not in job and rng.random() < 0.4:
                job["output"] = {"paths": ["dist/*.rpm"], "properties": {"number": number}}
                made.append((name, arches))
            jobs[name] = job
            stage.append(name)
        producers.extend(made)  # inputs come from earlier stages only
        stages.append(stage)
    if gate:
        stages.append(["export"])
        jobs["export"] = {"uses": "koji-export"}
    data: dict[str, Any] = {}
    if trigger is not None:
        data["trigger"] = trigger
    data["pipeline"] = [s[0] if len(s) == 1 else s for s in stages]
    data["jobs"] = jobs
    return data


def write_config(base: Path, pipelines: int = PIPELINES, seed: int = SEED) -> Path:
    """Write the configuration directory ``base/config`` (and the projects' starting
    repositories in ``base/seeds``); returns the configuration directory."""
    config = base / "config"
    (config / "pipelines").mkdir(parents=True)
    (config / "gating.yaml").write_text(yaml.safe_dump(site_settings(), sort_keys=False))
    (config / "workers.yaml").write_text(yaml.safe_dump(inventory(), sort_keys=False))
    rng = random.Random(seed)
    for number in range(pipelines):
        data = make_pipeline(rng, number)
        path = config / "pipelines" / f"p{number:04d}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    make_seeds(base / "seeds")
    return config


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.org", *args],
        cwd=cwd,
        capture_output=True,
        check=True,
    )


def make_seeds(root: Path) -> None:
    """A one-commit repository per project (what the pollers and the forge read)."""
    for i in range(PROJECTS):
        repo = root / project_name(i)
        repo.mkdir(parents=True)
        _git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project_name(i)}.spec").write_text(f"Name: {project_name(i)}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"Import {project_name(i)}")


# -- measuring ---------------------------------------------------------------------------


def time_cli(args: list[str], runs: int) -> tuple[list[float], str]:
    """Wall time of ``gating ARGS`` in a fresh process, ``runs`` times; its last stdout."""
    samples = []
    out = ""
    for _ in range(runs):
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "gating.cli", *args], capture_output=True, text=True
        )
        samples.append(time.monotonic() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"gating {' '.join(args)} failed: {proc.stderr[-2000:]}")
        out = proc.stdout
    return samples, out


def builder_names(site: LocalSite) -> set[str]:
    data = site.api("builders?field=name", timeout=60)
    return {b["name"] for b in data["builders"]}


def wait_for_builders(site: LocalSite, expected: set[str], timeout: float) -> None:
    """Until ``/api/v2/builders`` answers with every builder of ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        if site.master_pid() is None:
            raise RuntimeError(f"the master stopped; see {site.master_dir / 'twistd.log'}")
        try:
            if expected <= builder_names(site):
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the master did not show {len(expected)} builders in {timeout} s")
        time.sleep(0.2)


def start_master(site: LocalSite, expected: set[str]) -> float:
    """``buildbot start`` (it returns once the master logged that it runs, or after 10 s)
    until ``/api/v2/builders`` has every builder: seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "buildbot"), "start", str(site.master_dir)],
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    if proc.returncode != 0 and site.master_pid() is None:
        raise RuntimeError(f"buildbot start failed: {proc.stdout}{proc.stderr}")
    wait_for_builders(site, expected, START_TIMEOUT - (time.monotonic() - start))
    return time.monotonic() - start


def wait_until_running(site: LocalSite, timeout: float) -> None:
    """Until twistd.log says "BuildMaster is running": the API may list every builder
    before the master finished starting (its workers, the UI), and a reconfig (SIGHUP)
    sent before that is lost."""
    deadline = time.monotonic() + timeout
    log = site.master_dir / "twistd.log"
    while not any(
        MASTER_RUNNING in _read_from(path, 0)
        for path in (log, log.with_name(log.name + ".1"))
        if path.exists()
    ):
        if site.master_pid() is None:
            raise RuntimeError(f"the master stopped; see {log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no '{MASTER_RUNNING}' in {log} within {timeout} s")
        time.sleep(0.5)


def peak_rss(pid: int) -> float:
    """``VmHWM`` (peak resident set size) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


class LogFollower:
    """What a twistd.log gains from now on, across a rotation (twistd.log -> .1)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.inode = log.stat().st_ino
        self.offset = log.stat().st_size

    def new_text(self) -> str:
        parts = []
        if self.log.stat().st_ino != self.inode:  # rotated: the rest of the old file first
            rotated = self.log.with_name(self.log.name + ".1")
            if rotated.exists() and rotated.stat().st_ino == self.inode:
                parts.append(_read_from(rotated, self.offset))
            parts.append(_read_from(self.log, 0))
        else:
            parts.append(_read_from(self.log, self.offset))
        return "".join(parts)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def reconfig(site: LocalSite) -> float:
    """``buildbot reconfig`` until the master logged that the update is complete: seconds."""
    follower = LogFollower(site.master_dir / "twistd.log")
    start = time.monotonic()
    proc = site.reconfig()  # SIGHUP; it follows the log for 10 s at most
    while True:
        text = follower.new_text()
        if RECONFIG_DONE in text:
            return time.monotonic() - start
        if any(failed in text for failed in RECONFIG_FAILED):
            raise RuntimeError(f"reconfig failed: {text[-3000:]}")
        if time.monotonic() - start > RECONFIG_TIMEOUT:
            raise TimeoutError(f"no '{RECONFIG_DONE}' within {RECONFIG_TIMEOUT} s: {proc.stdout}")
        time.sleep(0.1)


def touch_pipeline(config: Path, run: int) -> str:
    """Add a job to one pipeline (a new builder): what a reconfig then has to pick up.
    Returns the new builder's name."""
    path = config / "pipelines" / "p0000.yaml"
    data = yaml.safe_load(path.read_text())
    name = f"extra-{run}"
    data["jobs"][name] = {"architectures": ["x86_64"], "run": f"echo {run}"}
    data["pipeline"].append(name)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return f"p0000/{name}/x86_64"


def new_site(base: Path, config: Path) -> LocalSite:
    """A fresh master (new database) on a copy of the configuration, without workers."""
    site = LocalSite(base, www_port=free_port(), pb_port=free_port(), workers=())
    site.basedir.mkdir(parents=True)
    shutil.copytree(config, site.config_dir)
    (base / "seeds").symlink_to(config.parent / "seeds")  # the projects' ../seeds
    site.create()
    return site


def discard(site: LocalSite) -> None:
    """Kill the master (its site is thrown away: a clean shutdown of thousands of builders
    is not what is measured, and takes minutes)."""
    pid = site.master_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while site.master_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.2)
    site.stop()


@scenario("config-scale", "check, plan, start-up and reconfig with 1,000 generated pipelines")
def config_scale(ctx: Context) -> None:
    ctx.log(f"generating {PIPELINES} pipelines")
    config = write_config(ctx.workdir / "gen", PIPELINES)

    samples, out = time_cli(["check", str(config)], CLI_RUNS)
    ctx.log(f"gating check: {out.strip()}")
    ctx.add(Figure(f"gating check ({PIPELINES} pipelines)", "s", samples))

    samples, _ = time_cli(["plan", str(config)], CLI_RUNS)
    ctx.add(
        Figure(f"gating plan ({PIPELINES} pipelines)", "s", samples, goal=Goal("median", GOAL_PLAN))
    )
    _, plan_json = time_cli(["plan", "--json", str(config)], 1)
    plan = json.loads(plan_json)
    expected = {b["name"] for b in plan["builders"]}
    kinds: dict[str, int] = {}
    for b in plan["builders"]:
        kinds[b["kind"]] = kinds.get(b["kind"], 0) + 1
    note = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    ctx.add(Figure("builders", "builders", [float(len(expected))], note=note))
    ctx.log(f"{len(expected)} builders ({note})")

    starts: list[float] = []
    start_rss: list[float] = []
    for run in range(1, START_RUNS + 1):
        site = new_site(ctx.workdir / f"site-{run}", config)
        try:
            ctx.log(f"start {run}/{START_RUNS}: buildbot start")
            starts.append(start_master(site, expected))
            start_rss.append(peak_rss(_pid(site)))
            ctx.log(f"start {run}: {starts[-1]:.1f} s, VmHWM {start_rss[-1]:.0f} MiB")
            if run < START_RUNS:
                continue
            ctx.add(
                Figure(
                    "master start-up (buildbot start until /api/v2/builders lists all)",
                    "s",
                    starts,
                    goal=Goal("median", GOAL_START),
                    note="a fresh master and database each run; no worker connects",
                )
            )
            ctx.add(Figure("master peak memory after start-up (VmHWM)", "MiB", start_rss))
            wait_until_running(site, START_TIMEOUT)
            reconfigs = []
            for r in range(1, RECONFIG_RUNS + 1):
                added = touch_pipeline(site.config_dir, r)
                reconfigs.append(reconfig(site))
                wait_for_builders(site, {added}, RECONFIG_TIMEOUT)
                ctx.log(f"reconfig {r}/{RECONFIG_RUNS}: {reconfigs[-1]:.1f} s")
            ctx.add(
                Figure(
                    "buildbot reconfig (a job added to one pipeline)",
                    "s",
                    reconfigs,
                    goal=Goal("median", GOAL_RECONFIG),
                    note="until twistd.log says 'configuration update complete'",
                )
            )
            ctx.add(
                Figure(
                    f"master peak memory after {RECONFIG_RUNS} reconfigs (VmHWM)",
                    "MiB",
                    [peak_rss(_pid(site))],
                )
            )
        finally:
            discard(site)


def _pid(site: LocalSite) -> int:
    pid = site.master_pid()
    if pid is None:
        raise RuntimeError(f"the master is not running; see {site.master_dir / 'twistd.log'}")
    return pid
