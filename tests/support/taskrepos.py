"""A package's task repository for tests: a bare git repository with branches ``main``
(no tasks) and ``f40`` holding four task directories:

* ``check_nvr`` runs on ``koji_build``: prints the build's NVR (from ``$koji_build``) and
  the directory it runs in (through its own ``check.sh``);
* ``on_tag`` runs on ``koji_tag`` only;
* ``disabled`` (a ``runtask.yml``) would run on ``koji_build`` but has ``run: false``;
* ``broken`` has a ``runtask.yaml`` with two errors (:data:`BROKEN_MESSAGES`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from gating.forge import git_env

CHECK_NVR = """\
name: check_nvr
desc: Shows the build it ran on
input:
  args: [koji_build, package]
environment:
  GREETING: checked
actions:
  - name: show the build
    shell:
      - printf '%s %s (%s, package %s)\\n' "$GREETING" "$koji_build" "$item_type" "$package"
      - ./check.sh "$koji_build"
timeout: 600
"""

CHECK_SH = """\
#!/bin/sh
echo "check.sh ran in $(basename "$PWD") for $1"
"""

ON_TAG = """\
input:
  args: [koji_tag]
actions:
  - shell: echo "tagged into $koji_tag"
"""

DISABLED = """\
scheduling:
  run: false
input:
  args: [koji_build]
actions:
  - shell: "false"
"""

BROKEN = """\
input:
  args: [koji_build]
actions:
  - shel: ./run.sh
"""

BROKEN_MESSAGES = (
    "broken/runtask.yaml:4:5: action 1: missing required key 'shell'",
    "broken/runtask.yaml:4:5: unknown key 'shel' in action 1; did you mean 'shell'?",
)

FILES = {
    "README.md": "tasks of nova\n",
    "docs/notes.txt": "not a task\n",
    "check_nvr/runtask.yaml": CHECK_NVR,
    "check_nvr/check.sh": CHECK_SH,
    "on_tag/runtask.yaml": ON_TAG,
    "disabled/runtask.yml": DISABLED,
    "broken/runtask.yaml": BROKEN,
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = git_env(
        extra={
            "GIT_AUTHOR_NAME": "Task Author",
            "GIT_AUTHOR_EMAIL": "author@example.org",
            "GIT_COMMITTER_NAME": "Task Author",
            "GIT_COMMITTER_EMAIL": "author@example.org",
        }
    )
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def make_task_repo(root: Path, package: str = "nova") -> Path:
    """``root/<package>.git`` (bare), made from a work tree in ``root/<package>-work``."""
    work = root / f"{package}-work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("main: no tasks\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "main", cwd=work)
    git("checkout", "-q", "-b", "f40", cwd=work)
    for name, text in FILES.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (work / "check_nvr" / "check.sh").chmod(0o755)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "tasks", cwd=work)
    bare = root / f"{package}.git"
    git("clone", "-q", "--bare", "--", str(work), str(bare))
    return bare


def head(bare: Path, branch: str = "f40") -> str:
    return git("rev-parse", branch, cwd=bare)
