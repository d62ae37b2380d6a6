"""What the built-in jobs build and name (pure logic, no Twisted).

An item is tested on its speculative state: the branch tips plus the changes ahead of it
plus itself. Its overlay repository holds a scratch build of every package (dist-git
project) that this state changes, each at the newest commit of that project in the state:
the merge commit of the last item of that project (which contains the earlier ones of the
same project, as :func:`gating.forge.speculative_merge` builds them in order).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OID_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class RunError(ValueError):
    """A build property the built-in jobs need is missing or malformed."""


def _commit(value: Any, what: str) -> str:
    if not isinstance(value, str) or not OID_RE.match(value):
        raise RunError(f"{what}: expected a full commit id, got {value!r}")
    return value


def _project(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise RunError(f"{what}: expected a project name, got {value!r}")
    return value


def packages_to_build(
    project: str, commit: str, ahead: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[str, str]]:
    """(project, commit) pairs of the speculative state, in gate order, one per project.

    ``ahead``: the items ahead (the gate's ``gating_ahead`` property), each with its
    ``project`` and ``merge_commit``; ``project``/``commit``: the item's own.
    """
    newest: dict[str, str] = {}
    for position, entry in enumerate(ahead):
        what = f"item ahead #{position + 1} ({entry.get('change', '?')})"
        other = _project(entry.get("project"), f"{what} project")
        newest.pop(other, None)  # keep gate order: the newest commit's position
        newest[other] = _commit(entry.get("merge_commit"), f"{what} merge commit")
    own = _project(project, "project")
    newest.pop(own, None)
    newest[own] = _commit(commit, f"{own} commit")
    return list(newest.items())


def overlay_name(
    queue: str | None, change: str | None, attempt: int | None, run: int | None = None
) -> str:
    """The overlay repository of a gate item's attempt (``gate-rdo-nova-3-2``), or of a
    run outside the gate (``run-<build id>``)."""
    if queue and change and attempt is not None:
        project, _sep, number = change.rpartition("~")
        name = f"gate-{queue}-{project}-{number}-{attempt}"
    elif run is not None:
        name = f"run-{int(run)}"
    else:
        raise RunError("an overlay needs a gate item (queue, change, attempt) or a run id")
    return _UNSAFE.sub("_", name)[:200]


def overlay_prefix(queue: str, change: str) -> str:
    """What every attempt's overlay name of a gate item starts with."""
    project, _sep, number = change.rpartition("~")
    return _UNSAFE.sub("_", f"gate-{queue}-{project}-{number}-")


def stale_overlays(names: Iterable[str], prefix: str, keep: str) -> list[str]:
    """The overlays of ``keep``'s gate item (names starting with ``prefix``) of EARLIER
    attempts than ``keep``'s: what it replaces. A later attempt's overlay is never stale
    for an earlier one (a killed attempt's late build must not remove its successor's)."""

    def attempt(name: str) -> int | None:
        rest = name[len(prefix) :] if name.startswith(prefix) else ""
        return int(rest) if rest.isdigit() else None

    mine = attempt(keep)
    if mine is None:
        return []
    return sorted(n for n in names if n != keep and (a := attempt(n)) is not None and a < mine)


def repo_file(sections: Sequence[tuple[str, str, int]]) -> str:
    """A ``.repo`` file: (repository id, baseurl, priority) per section, lower priority
    wins (the overlay over the destination repository)."""
    out = []
    for repo_id, url, priority in sections:
        if not NAME_RE.match(repo_id):
            raise RunError(f"invalid repository id {repo_id!r}")
        if not re.fullmatch(r"(?:https?|file)://[^\s]+", url):
            raise RunError(f"invalid repository URL {url!r}")
        out.append(
            f"[{repo_id}]\n"
            f"name=buildbot-gating {repo_id}\n"
            f"baseurl={url}\n"
            "enabled=1\n"
            "gpgcheck=0\n"
            "repo_gpgcheck=0\n"
            f"priority={int(priority)}\n"
            "metadata_expire=0\n"
            "skip_if_unavailable=0\n"
            "module_hotfixes=1\n"
        )
    return "\n".join(out)


def scm_branch(commit: str) -> str:
    """The branch of the SCM mirror that makes ``commit`` reachable for a plain clone."""
    return f"refs/heads/gating/{_commit(commit, 'commit')}"


RPMBUILD_SCRIPT = r"""set -eu
top="$PWD/out"
rm -rf -- "$top"
mkdir -p -- "$top/RPMS" "$top/SRPMS"
cd src
n=0
spec=
for f in ./*.spec; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then n=$((n + 1)); spec=$f; fi
done
if [ "$n" -ne 1 ]; then
  echo "need exactly one *.spec file at the top level of the dist-git repository, found $n" >&2
  exit 2
fi
exec rpmbuild -ba --define "_topdir $top" --define "_rpmdir $top/RPMS" \
  --define "_srcrpmdir $top/SRPMS" --define "_sourcedir $PWD" "$@" "$spec"
"""


def rpmbuild_command(
    defines: Sequence[tuple[str, str]] = (), check_build_deps: bool = True
) -> list[str]:
    """The worker's ``rpmbuild`` of the one spec file in ``src/`` into ``out/``: a fixed
    script; the site's macro definitions travel as separate arguments."""
    args: list[str] = []
    for name, value in defines:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or "\n" in value:
            raise RunError(f"invalid rpm macro definition {name!r}")
        args += ["--define", f"{name} {value}"]
    if not check_build_deps:
        args.append("--nodeps")
    return ["sh", "-c", RPMBUILD_SCRIPT, "gating-rpmbuild", *args]
