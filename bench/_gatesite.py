"""A gate site for the benchmarks, made the way the integration tests make theirs
(tests/integration/test_gate.py): the configuration of tests/integration/sites/gate (one
queue ``rdo`` shared by the projects ``nova`` and ``ceilometer``, the ``packstack`` gate
job that sleeps ``$(cat DURATION)`` seconds, three x86_64 workers), a master and its
workers as processes on loopback (:class:`gating.localsite.LocalSite`), changes proposed
by ``git push HEAD:refs/for/main`` into the embedded forge and approved over the API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import REPO_ROOT
from gating.localsite import LocalSite, free_port

GATE_SITE = REPO_ROOT / "tests" / "integration" / "sites" / "gate"
PROJECTS = ("nova", "ceilometer")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def push_for_review(work: Path, project: str) -> int:
    """``git push origin HEAD:refs/for/main`` from a clone of the forge's ``project``: the
    number of the change the forge recorded (``project~N`` in the push's output)."""
    out = subprocess.run(
        ["git", "push", "origin", "HEAD:refs/for/main"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(rf"change {re.escape(project)}~(\d+)", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"push to {project} made no change: {out.stderr}")
    return int(found.group(1))


def make_seeds(base: Path) -> None:
    """The starting repositories of the projects (``../seeds/P`` in the site's config)."""
    for project in PROJECTS:
        repo = base / "seeds" / project
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "--initial-branch=main")
        (repo / f"{project}.spec").write_text(f"Name: openstack-{project}\n")
        (repo / "shared.txt").write_text("base\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"Import {project}")


def create_gate_site(
    base: Path,
    *,
    window: int | None = None,
    without_pipelines: tuple[str, ...] = ("check.yaml",),
    workers: int | None = None,
    window_floor: int | None = None,
) -> LocalSite:
    """A gate site in ``base`` (not started). ``window`` fixes the ``rdo`` queue's window
    (window and window-ceiling; ``window_floor`` also keeps it from shrinking on failures);
    the pipelines named in ``without_pipelines`` are left out (by default the ceilometer
    ``check`` pipeline, which would run on every push). ``workers``: that many x86_64
    workers (one build each) instead of the site's three."""
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(GATE_SITE, base / "config")
    for name in without_pipelines:
        (base / "config" / "pipelines" / name).unlink()
    make_seeds(base)
    if window is not None:
        conf = base / "config" / "gating.yaml"
        data = yaml.safe_load(conf.read_text())
        data["queues"]["rdo"] = {"window": window, "window-ceiling": window}
        if window_floor is not None:
            data["queues"]["rdo"]["window-floor"] = window_floor
        conf.write_text(yaml.safe_dump(data, sort_keys=False))
    if workers is not None:
        pool = [{"name": f"gate-x86-{n}", "arch": "x86_64"} for n in range(1, workers + 1)]
        (base / "config" / "workers.yaml").write_text(yaml.safe_dump({"workers": pool}))
    site = LocalSite(base, www_port=free_port(), pb_port=free_port())
    site.create()
    return site


def propose_many(
    site: LocalSite,
    project: str,
    count: int,
    files: Callable[[int], dict[str, str]],
    message: Callable[[int], str],
    first: int = 0,
) -> list[int]:
    """Propose ``count`` independent changes (each on top of main) to ``project``: one
    working clone, one commit and one ``git push origin HEAD:refs/for/main`` per change.
    ``files(i)`` and ``message(i)`` make change i, for i from ``first``. Returns the
    change numbers."""
    work = site.basedir / "dev" / f"{project}-{first}-{time.monotonic_ns()}"
    work.parent.mkdir(parents=True, exist_ok=True)
    git(site.basedir, "clone", "-q", str(site.master_dir / "git" / f"{project}.git"), str(work))
    numbers = []
    for i in range(first, first + count):
        git(work, "checkout", "-q", "--detach", "origin/main")
        for name, content in files(i).items():
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", message(i))
        numbers.append(push_for_review(work, project))
    return numbers


def propose_in_parallel(
    site: LocalSite,
    counts: dict[str, int],
    files: Callable[[str, int], dict[str, str]],
    message: Callable[[str, int], str],
    threads_per_project: int = 1,
) -> dict[str, list[int]]:
    """:func:`propose_many` for several projects at once (``threads_per_project`` threads
    per project, each with its own clone and a share of the changes). A project's numbers
    come back in the order of ``i``, not necessarily ascending."""
    parts: dict[tuple[str, int], list[int]] = {}
    errors: list[BaseException] = []

    def one(project: str, first: int, count: int) -> None:
        try:
            parts[(project, first)] = propose_many(
                site,
                project,
                count,
                lambda i: files(project, i),
                lambda i: message(project, i),
                first=first,
            )
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = []
    for project, total in counts.items():
        share = -(-total // max(1, threads_per_project))
        for first in range(0, total, share) if total else [0]:
            count = min(share, total - first)
            threads.append(threading.Thread(target=one, args=(project, first, count)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {p: [n for (q, _f), ns in sorted(parts.items()) if q == p for n in ns] for p in counts}


def approve(site: LocalSite, project: str, number: int) -> dict[str, Any]:
    """``POST plugins/gating/api/approve``; a refusal raises with the master's message."""
    try:
        return site.approve(project, number)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(
            f"approve {project}~{number}: HTTP {exc.code} {exc.read().decode(errors='replace')}"
        ) from exc


def get(url: str, timeout: float = 30) -> tuple[bytes, float]:
    """``GET url``: the body and the seconds it took (until the last byte)."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return body, time.perf_counter() - start


def queue_status(site: LocalSite) -> dict[str, Any]:
    body, _ = get(site.url + "plugins/gating/api/queue")
    return json.loads(body)


def wait_for_states(site: LocalSite, want: dict[str, int], timeout: float = 120) -> dict[str, int]:
    """Wait until the items of all queues are in the states ``want`` counts (e.g.
    ``{"testing": 3, "queued": 197}``); returns the last counts seen (which differ from
    ``want`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = {}
        for queue in queue_status(site)["queues"]:
            for item in queue["items"]:
                counts[item["state"]] = counts.get(item["state"], 0) + 1
        if counts == want or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)
