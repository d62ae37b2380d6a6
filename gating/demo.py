"""``gating demo``: the embedded default, on this host.

Creates (once) under ``.gating-demo/``: the demo configuration, a git repository for
the sample project, a master on SQLite and one local worker per pool; starts them; then
commits to the sample project so a newcomer sees the sample pipeline run in the web UI.
"""

from __future__ import annotations

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


def commit_change(repo: Path) -> str:
    """A new commit on the sample project: the poller turns it into a pipeline run."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    notes = repo / "NOTES"
    notes.write_text(f"demo run requested at {stamp}\n")
    _git(repo, "add", "NOTES")
    _git(repo, "commit", "--quiet", "-m", f"Demo change at {stamp}")
    return _git(repo, "rev-parse", "HEAD").strip()


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
        # The poller records the branch tip at start-up; a commit after that is a change.
        time.sleep(2)
        revision = commit_change(base / "repos" / "sample-distgit")
        print(
            f"demo: master and workers are up; web UI on {site.url}\n"
            f"demo: committed {revision[:12]} to sample-distgit: the 'sample' pipeline runs "
            "within a few seconds (see Builds > Builders)\n"
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
