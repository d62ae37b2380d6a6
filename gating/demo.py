"""``gating demo``: the embedded default, on this host.

Creates (once) under ``.gating-demo/``: the demo configuration, a git repository for
the sample project, a master on SQLite and one local worker per pool; starts them; then
proposes a change to the sample project (``git push HEAD:refs/for/main`` to the embedded
forge) and approves it, so a newcomer sees the gate run in the web UI: a scratch build on
a worker, an install test from its overlay repository, the export of the RPM into the
local ``demo`` repository, and the merge; the merge then runs the ``sample`` pipeline.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gating.localsite import REPO_ROOT, LocalSite, run_checked

EXAMPLE = REPO_ROOT / "examples" / "demo"


def _git(repo: Path, *args: str) -> str:
    return run_checked(
        [
            "git",
            "-c",
            "user.name=buildbot-gating demo",
            "-c",
            "user.email=demo@gating.invalid",
            "-C",
            str(repo),
            *args,
        ]
    ).stdout


def ensure_sample_repo(basedir: Path) -> Path:
    repo = basedir / "repos" / "sample-distgit"
    if not (repo / ".git").exists():
        repo.mkdir(parents=True)
        _git(repo, "init", "--quiet", "--initial-branch=main")
        for path in (EXAMPLE / "sample-distgit").iterdir():
            shutil.copy(path, repo / path.name)
        _git(repo, "add", "-A")
        _git(repo, "commit", "--quiet", "-m", "Import hello-gating")
    return repo


def propose_change(site: LocalSite) -> int:
    """A developer's change to the sample project, pushed for review to the embedded
    forge; its change number."""
    work = site.basedir / "work" / f"sample-distgit-{time.monotonic_ns()}"
    run_checked(
        ["git", "clone", "--quiet", str(site.master_dir / "git" / "sample-distgit.git"), str(work)]
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    (work / "NOTES").write_text(f"demo change proposed at {stamp}\n")
    _git(work, "add", "NOTES")
    _git(work, "commit", "--quiet", "-m", f"Demo change at {stamp}")
    proc = run_checked(["git", "-C", str(work), "push", "origin", "HEAD:refs/for/main"])
    text = proc.stdout + proc.stderr
    found = re.search(r"change sample-distgit~(\d+)", text)
    if not found:
        raise RuntimeError(f"the forge did not name the change: {text.strip()}")
    return int(found.group(1))


def run(basedir: str, port: int = 8010, pb_port: int = 9989) -> int:
    base = Path(basedir).resolve()
    site = LocalSite(base, www_port=port, pb_port=pb_port)
    ensure_sample_repo(base)
    print(f"demo: preparing {base}", flush=True)
    site.create(EXAMPLE)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        site.start()
        number = propose_change(site)
        site.approve("sample-distgit", number)
        print(
            f"demo: master and workers are up; web UI on {site.url}\n"
            f"demo: proposed and approved sample-distgit~{number}: the gate builds it, tests "
            "it, exports its RPM to the 'demo' repository "
            f"({site.url}/plugins/gating/repos/tags/demo/) and merges it; "
            "see Builds > Builders and `gating queue`\n"
            f"demo: plan: gating plan {site.config_dir}\n"
            "demo: press Ctrl-C to stop",
            flush=True,
        )
        while not stopping:
            if site.master_pid() is None:
                print("demo: the master exited; see master/twistd.log", file=sys.stderr)
                return 1
            time.sleep(1)
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        site.stop()
    return 0
