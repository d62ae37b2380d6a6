"""The embedded default forge ("local forge"): bare git repositories in the master's data
directory, where developers propose changes Gerrit-style.

A developer proposes a change by pushing a commit to the magic ref ``refs/for/<branch>``::

    git push <root>/nova.git HEAD:refs/for/main
    remote: change nova~3 created: Bump to 1.2.3
    remote:   approve it for the gate: gating approve nova 3

Pushing again a commit with the same ``Change-Id: I...`` footer as an open change of that
branch makes a new patchset of that change; any other commit makes a new change.

Layout under ``root``::

    <project>.git/                  a bare repository
        hooks/pre-receive           refuses refs/for/<branch> for a branch that does not exist,
                                    and pushes into the forge's own refs/changes/, refs/gating/
        hooks/proc-receive          records a push to refs/for/<branch> as a change (the ref
                                    itself is never created: see below)
        hooks/post-receive          the same for a push that did create refs/for/* refs
        gating/changes/<n>.json     the metadata of change n, replaced atomically
        gating/lock                 flock'ed around number allocation and every write
        refs/changes/<n>/<ps>       patchset ps of change n
        refs/gating/...             speculative merges published for the workers

The magic refs are handled by git's ``proc-receive`` hook (``receive.procReceiveRefs``,
git >= 2.29), so ``refs/for/<branch>`` never exists in the repository: with a real ref, two
developers pushing at once race on it (the second push is refused as "fetch first"), and a
hook that dies before deleting it blocks every later push that is not a fast-forward of it.
The ``post-receive`` hook still records (and deletes) refs/for/* refs if one gets created
anyway, e.g. by a git without proc-receive support.

Everything in a change (branch names, commit messages, file names) is untrusted: git runs
from argument lists, never through a shell, with the user's and the system's git
configuration ignored, and the hooks only ever see values on stdin.

Pure Python: no Twisted imports (the gate calls these functions in threads).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

STATUSES = ("new", "merged", "failed")
OPEN_STATUSES = ("new", "failed")
FOR_PREFIX = "refs/for/"
CHANGES_PREFIX = "refs/changes/"
GATING_PREFIX = "refs/gating/"
# Namespaces only the forge itself writes; pushes into them are refused.
MANAGED_PREFIXES = (CHANGES_PREFIX, GATING_PREFIX)
# publish() never force-updates these.
UNPUBLISHABLE_PREFIXES = ("refs/heads/", "refs/tags/", FOR_PREFIX, CHANGES_PREFIX)
HOOKS = ("pre-receive", "proc-receive", "post-receive")
INTERNAL_ENV = "GATING_FORGE_INTERNAL"
META_DIR = "gating"

# The identity of speculative merge commits (their dates come from the inputs).
MERGE_NAME = "buildbot-gating"
MERGE_EMAIL = "gating@localhost"

# Project names as the site configuration allows them (gating.pipeline.IDENTIFIER_RE, not
# imported so that the hooks start without loading the YAML machinery).
# \Z, not $: $ also matches before a final newline ("nova\n" would pass).
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9+._-]+\Z")
OID_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
CHANGE_REF_RE = re.compile(r"^refs/changes/([0-9]+)/([0-9]+)\Z")
TRAILER_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")

# Variables that would point git somewhere else than the repository we name.
_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
)
# Set by receive-pack for its hooks (the quarantine of a push not yet accepted); the bare
# repository's readers need them, a scratch clone must never see them.
_QUARANTINE_VARS = (
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
)


class ForgeError(Exception):
    """A forge operation failed; the message names the project and change."""


class BranchMoved(ForgeError):
    """merge(): the branch no longer points at the expected tip."""

    def __init__(self, project: str, branch: str, expected: str, actual: str | None) -> None:
        self.project = project
        self.branch = branch
        self.expected = expected
        self.actual = actual
        now = f"is now at {actual}" if actual else "was deleted"
        super().__init__(
            f"branch {branch!r} of project {project} moved: expected {expected}, {now}"
        )


@dataclass(frozen=True)
class ChangeInfo:
    project: str
    number: int  # per-project change number, 1, 2, 3...
    branch: str  # target branch, e.g. "main"
    revision: str  # commit id of the latest patchset
    parent: str  # its (first) parent, "" for a root commit
    subject: str
    message: str  # full commit message, exactly as in the commit
    owner: str  # author "Name <email>"
    depends_on: tuple[str, ...]  # Depends-On footer values, as written
    status: str  # "new", "merged", "failed"
    result_reason: str = ""  # why it failed / extra info
    patchset: int = 1
    change_id: str = ""  # the Change-Id footer ("I..."), "" if none

    @property
    def key(self) -> str:
        return f"{self.project}~{self.number}"

    @property
    def ref(self) -> str:
        """Where the latest patchset is kept in the repository."""
        return f"{CHANGES_PREFIX}{self.number}/{self.patchset}"


@dataclass(frozen=True)
class MergeResult:
    commit: str | None  # the speculative commit, or None on conflict
    conflict: str | None = None  # key of the change that did not merge, None if ok
    base: str = ""  # the branch tip it was built on
    detail: str = field(default="", compare=False)  # git's words on the conflict


# -- commit messages ---------------------------------------------------------------------


def parse_trailers(message: str) -> list[tuple[str, str]]:
    """The ``Key: value`` trailers of a commit message, in order, keys as written.

    Git's rules (``git interpret-trailers``): the trailers are the last paragraph, which is
    never the title paragraph; it counts if all its lines are trailers, or if at least a
    quarter are and one is git-generated (``Signed-off-by:``, ``(cherry picked from ...``).
    A line starting with whitespace continues the previous trailer.
    """
    lines = message.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    start = len(lines)
    while start > 0 and lines[start - 1].strip():
        start -= 1
    if start == 0 or start == len(lines):
        return []  # one paragraph: the title, which cannot hold trailers
    trailers: list[list[str]] = []
    trailer_lines = other_lines = 0
    generated = False
    last_was_trailer = False
    for line in lines[start:]:
        if line[:1] in (" ", "\t"):
            if last_was_trailer:
                trailers[-1][1] = f"{trailers[-1][1]} {line.strip()}".strip()
            else:
                other_lines += 1
            continue
        match = TRAILER_RE.match(line)
        if match:
            trailers.append([match.group(1), match.group(2).strip()])
            trailer_lines += 1
            generated |= match.group(1).lower() == "signed-off-by"
            last_was_trailer = True
        elif line.startswith("(cherry picked from commit "):
            trailer_lines += 1
            generated = True
            last_was_trailer = False
        else:
            other_lines += 1
            last_was_trailer = False
    if not trailers:
        return []
    if other_lines and not (generated and trailer_lines * 3 >= other_lines):
        return []
    return [(key, value) for key, value in trailers]


def parse_depends_on(message: str) -> tuple[str, ...]:
    """``Depends-On:`` trailer values (key case-insensitive), as written, duplicates dropped."""
    out: list[str] = []
    for key, value in parse_trailers(message):
        if key.lower() == "depends-on" and value and value not in out:
            out.append(value)
    return tuple(out)


def parse_change_id(message: str) -> str:
    """The last ``Change-Id:`` trailer value (Gerrit's footer), "" if none."""
    found = [v for k, v in parse_trailers(message) if k.lower() == "change-id" and v]
    return found[-1] if found else ""


def subject_of(message: str) -> str:
    """The subject as git's ``%s`` gives it: the first paragraph on one line."""
    lines: list[str] = []
    for line in message.replace("\r\n", "\n").lstrip("\n").split("\n"):
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


# -- names -------------------------------------------------------------------------------


def check_project(project: str) -> str:
    if not isinstance(project, str) or not PROJECT_RE.match(project):
        raise ForgeError(
            f"invalid project name {project!r}: expected lower-case letters, digits, "
            "'+', '.', '_' or '-', starting with a letter or digit"
        )
    return project


def branch_error(branch: str) -> str | None:
    """Why ``branch`` is not a usable branch name (git check-ref-format rules), or None."""
    if not isinstance(branch, str) or not branch:
        return "empty branch name"
    if branch.startswith("-"):
        return "a branch name cannot start with '-'"
    if branch in ("HEAD", "@"):
        return f"{branch!r} is not a branch name"
    if not branch.isascii():
        try:
            branch.encode("utf-8")
        except UnicodeEncodeError:  # non-UTF-8 bytes of a ref, as surrogateescape gives them
            return "a branch name must be UTF-8 text"
    if BAD_REF_CHARS.search(branch):
        return "a branch name cannot contain spaces, control characters or any of ~^:?*[\\"
    if ".." in branch or "@{" in branch:
        return "a branch name cannot contain '..' or '@{'"
    if branch.endswith((".", "/")):
        return "a branch name cannot end with '.' or '/'"
    for part in branch.split("/"):
        if not part:
            return "a branch name cannot contain empty components ('//')"
        if part.startswith(".") or part.endswith(".lock"):
            return "a branch name component cannot start with '.' or end with '.lock'"
    return None


def check_branch(branch: str, project: str = "") -> str:
    error = branch_error(branch)
    if error:
        where = f" of project {project}" if project else ""
        raise ForgeError(f"invalid branch {branch!r}{where}: {error}")
    return branch


def check_oid(oid: str, what: str = "commit") -> str:
    if not isinstance(oid, str) or not OID_RE.match(oid.lower()):
        raise ForgeError(f"invalid {what} {oid!r}: expected a full hexadecimal commit id")
    return oid.lower()


def _is_zero(oid: str) -> bool:
    return bool(oid) and set(oid) == {"0"}


def _printable(text: str, limit: int = 200) -> str:
    """Text safe to show on the pusher's terminal: control characters escaped."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


# -- running git -------------------------------------------------------------------------


def git_env(scratch: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every git command of the project runs in: no variable pointing git
    elsewhere, no system or user configuration (hooks, filters, URL rewriting...)."""
    drop = _LOCATION_VARS + (_QUARANTINE_VARS if scratch else ())
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }
    # The user's and the system's configuration may name hooks, filters, merge drivers,
    # rerere, signing...: nothing of that must apply to untrusted content or change results.
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    if extra:
        env.update(extra)
    return env


def _run(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    cwd: Path | None = None,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    what: str = "",
) -> subprocess.CompletedProcess[bytes]:
    argv = ["git"]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    argv.extend(args)
    proc = subprocess.run(
        argv,
        cwd=cwd,
        input=input,
        capture_output=True,
        env=env if env is not None else git_env(scratch=git_dir is None),
        check=False,
    )
    if check and proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise ForgeError(f"{what or 'git ' + args[0]}: {err}")
    return proc


def _out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode("utf-8", "surrogateescape").strip()


def _resolve(git_dir: Path, rev: str) -> str | None:
    """The commit a full ref name or commit id names in ``git_dir``, None if none."""
    proc = _run(
        ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], git_dir=git_dir, check=False
    )
    return _out(proc) if proc.returncode == 0 else None


def _has_commit(git_dir: Path | None, oid: str, cwd: Path | None = None) -> bool:
    proc = _run(["cat-file", "-e", f"{oid}^{{commit}}"], git_dir=git_dir, cwd=cwd, check=False)
    return proc.returncode == 0


def _object_type(git_dir: Path, oid: str) -> str:
    proc = _run(["cat-file", "-t", oid], git_dir=git_dir, check=False)
    return _out(proc) if proc.returncode == 0 else ""


@dataclass(frozen=True)
class _Commit:
    oid: str
    parents: tuple[str, ...]
    author: str
    message: str


def _read_commit(git_dir: Path, oid: str) -> _Commit:
    proc = _run(["cat-file", "commit", oid], git_dir=git_dir, check=False)
    if proc.returncode != 0:
        raise ForgeError(f"{oid} is not a commit")
    head, _, body = proc.stdout.partition(b"\n\n")
    headers: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line.startswith(b" ") and headers:
            headers[-1][1] += b"\n" + line[1:]
        else:
            key, _, value = line.partition(b" ")
            headers.append([key, value])
    parents = tuple(v.decode("ascii") for k, v in headers if k == b"parent")
    encoding = next((v.decode("ascii", "replace") for k, v in headers if k == b"encoding"), "")
    author_raw = next((v for k, v in headers if k == b"author"), b"")
    try:
        message = body.decode(encoding or "utf-8", "replace")
        author_text = author_raw.decode(encoding or "utf-8", "replace")
    except LookupError:
        message = body.decode("utf-8", "replace")
        author_text = author_raw.decode("utf-8", "replace")
    # "Name <email> 1700000000 +0100" -> "Name <email>"
    author = author_text.rsplit(" ", 2)[0] if author_text.count(" ") >= 2 else author_text
    return _Commit(oid, parents, author, message)


# -- files and locks ---------------------------------------------------------------------


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- the forge ---------------------------------------------------------------------------


def create_bare_repo(path: Path, prepare: Callable[[Path], None]) -> Path:
    """Create a bare repository at ``path`` atomically: initialise and ``prepare`` it in a
    temporary directory beside it, then rename it into place (another process that got
    there first wins, and its repository is used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp's 0700 would lock out the other users (workers) of it
    try:
        _run(["init", "--quiet", "--bare", "--template=", str(tmp)], what="git init")
        prepare(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "HEAD").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


class LocalForge:
    """Bare repositories ``<root>/<project>.git`` and the changes proposed to them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # repositories

    def repo_path(self, project: str) -> Path:
        return self.root / f"{check_project(project)}.git"

    def _repo(self, project: str) -> Path:
        path = self.repo_path(project)
        if not (path / "HEAD").is_file():
            raise ForgeError(f"project {project} has no repository in the forge ({path})")
        return path

    def _meta(self, project: str) -> Path:
        return self.repo_path(project) / META_DIR / "changes"

    def _lock(self, project: str) -> Path:
        return self.repo_path(project) / META_DIR / "lock"

    def ensure_project(self, project: str, branches: list[str], seed: Path | None = None) -> Path:
        """Create the bare repository of ``project`` if missing (with every branch of the
        local repository ``seed``, if given) and (re)install its hooks. Idempotent: an
        existing repository keeps its refs and changes."""
        path = self.repo_path(project)
        for branch in branches:
            check_branch(branch, project)
        self.root.mkdir(parents=True, exist_ok=True)
        if not (path / "HEAD").is_file():

            def prepare(tmp: Path) -> None:
                if seed is not None:
                    seed_path = Path(seed).resolve()
                    _run(
                        [
                            "fetch",
                            "--quiet",
                            "--no-tags",
                            str(seed_path),
                            "+refs/heads/*:refs/heads/*",
                            "+refs/tags/*:refs/tags/*",
                        ],
                        git_dir=tmp,
                        what=f"seeding project {project} from {seed_path}",
                    )
                existing = [b for b in branches if _resolve(tmp, f"refs/heads/{b}")]
                head = (existing or branches or [None])[0]
                if head:
                    _run(["symbolic-ref", "HEAD", f"refs/heads/{head}"], git_dir=tmp)
                self._configure(tmp, project)

            create_bare_repo(path, prepare)
        self._configure(path, project)
        return path

    def _configure(self, git_dir: Path, project: str) -> None:
        settings = [
            ("receive.procReceiveRefs", FOR_PREFIX.rstrip("/")),
            ("core.logAllRefUpdates", "true"),
            ("uploadpack.allowReachableSHA1InWant", "true"),
        ]
        for key, value in settings:
            _run(["config", "--replace-all", key, value], git_dir=git_dir)
        (git_dir / META_DIR / "changes").mkdir(parents=True, exist_ok=True)
        hooks = git_dir / "hooks"
        hooks.mkdir(exist_ok=True)
        for hook in HOOKS:
            _write_atomic(hooks / hook, hook_script(hook, self.root, project).encode(), 0o755)

    def branches(self, project: str) -> list[str]:
        git_dir = self._repo(project)
        proc = _run(["for-each-ref", "--format=%(refname)", "refs/heads/"], git_dir=git_dir)
        return [r[len("refs/heads/") :] for r in _out(proc).splitlines() if r]

    def branch_tip(self, project: str, branch: str) -> str:
        git_dir = self._repo(project)
        check_branch(branch, project)
        tip = _resolve(git_dir, f"refs/heads/{branch}")
        if tip is None:
            raise ForgeError(f"project {project} has no branch {branch!r}")
        return tip

    # changes

    def change(self, project: str, number: int) -> ChangeInfo:
        self._repo(project)
        data = self._load(project, number)
        if data is None:
            raise ForgeError(f"change {project}~{number} does not exist")
        return _info(data)

    def changes(self, project: str | None = None) -> list[ChangeInfo]:
        if project is None:
            if not self.root.is_dir():
                return []
            names = sorted(
                p.name[: -len(".git")]
                for p in self.root.glob("*.git")
                if PROJECT_RE.match(p.name[: -len(".git")]) and (p / "HEAD").is_file()
            )
            return [c for name in names for c in self.changes(name)]
        self._repo(project)
        return [_info(d) for d in self._load_all(project)]

    def _load(self, project: str, number: int) -> dict[str, Any] | None:
        if isinstance(number, str) and number.isascii() and number.isdigit():
            number = int(number)
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ForgeError(f"invalid change number {number!r} for project {project}")
        path = self._meta(project) / f"{number}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        return data

    def _load_all(self, project: str) -> list[dict[str, Any]]:
        out = []
        meta = self._meta(project)
        if meta.is_dir():
            for path in meta.iterdir():
                if path.suffix == ".json" and path.stem.isdigit():
                    out.append(json.loads(path.read_text("utf-8")))
        return sorted(out, key=lambda d: int(d["number"]))

    def _save(self, project: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        _write_atomic(self._meta(project) / f"{data['number']}.json", text.encode("utf-8"))

    def record_push(self, project: str, ref: str, old: str, new: str) -> ChangeInfo | None:
        """Record a push of ``new`` to ``ref``: a push to refs/for/<branch> makes a new change,
        or a new patchset of the open change of that branch with the same Change-Id. Pushing
        the latest patchset of an open change again changes nothing. Other refs: None."""
        return self._record(project, ref, old, new)[0]

    def _record(self, project: str, ref: str, old: str, new: str) -> tuple[ChangeInfo | None, str]:
        if not ref.startswith(FOR_PREFIX) or _is_zero(new):
            return None, ""
        git_dir = self._repo(project)
        branch = check_branch(ref[len(FOR_PREFIX) :], project)
        new = check_oid(new, f"pushed commit for {ref}")
        if _resolve(git_dir, f"refs/heads/{branch}") is None:
            raise ForgeError(f"project {project} has no branch {branch!r}")
        try:
            commit = _read_commit(git_dir, new)
        except ForgeError as exc:
            raise ForgeError(f"{ref} of project {project}: {exc}") from None
        fields = {
            "revision": new,
            "parent": commit.parents[0] if commit.parents else "",
            "subject": subject_of(commit.message),
            "message": commit.message,
            "owner": commit.author,
            "depends_on": list(parse_depends_on(commit.message)),
            "change_id": parse_change_id(commit.message),
        }
        now = int(time.time())
        with _locked(self._lock(project)):
            existing = self._load_all(project)
            open_here = [
                d for d in existing if d["branch"] == branch and d["status"] in OPEN_STATUSES
            ]
            same = [d for d in open_here if d["revision"] == new]
            if same:
                self._drop_magic_ref(git_dir, ref, new)
                return _info(same[-1]), "unchanged"
            target = None
            if fields["change_id"]:
                matches = [d for d in open_here if d.get("change_id") == fields["change_id"]]
                target = matches[-1] if matches else None
            used = self._change_refs(git_dir)
            if target is None:
                number = max([int(d["number"]) for d in existing] + [n for n, _ in used] + [0])
                number += 1
                patchset = 1
                data: dict[str, Any] = {
                    "project": project,
                    "number": number,
                    "branch": branch,
                    "status": "new",
                    "result_reason": "",
                    "created": now,
                    "patchsets": [],
                }
                action = "created"
            else:
                data = dict(target)
                number = int(data["number"])
                patchset = max([int(data["patchset"])] + [p for n, p in used if n == number]) + 1
                data["status"] = "new"
                data["result_reason"] = ""
                action = "updated"
            change_ref = f"{CHANGES_PREFIX}{number}/{patchset}"
            _run(
                [
                    "update-ref",
                    "-m",
                    f"gating: change {number} patchset {patchset}",
                    change_ref,
                    new,
                    "",
                ],
                git_dir=git_dir,
                what=f"recording change {project}~{number}",
            )
            data.update(fields)
            data["patchset"] = patchset
            data["updated"] = now
            data["patchsets"] = [
                *data.get("patchsets", []),
                {
                    "patchset": patchset,
                    "revision": new,
                    "parent": fields["parent"],
                    "ref": change_ref,
                    "pushed": now,
                },
            ]
            self._save(project, data)
        self._drop_magic_ref(git_dir, ref, new)
        return _info(data), action

    def _change_refs(self, git_dir: Path) -> set[tuple[int, int]]:
        proc = _run(["for-each-ref", "--format=%(refname)", CHANGES_PREFIX], git_dir=git_dir)
        out = set()
        for line in _out(proc).splitlines():
            match = CHANGE_REF_RE.match(line)
            if match:
                out.add((int(match.group(1)), int(match.group(2))))
        return out

    def _drop_magic_ref(self, git_dir: Path, ref: str, new: str) -> None:
        """Delete refs/for/<branch> if a push created it, unless it moved on since."""
        if _resolve(git_dir, ref) == new:
            _run(["update-ref", "-d", ref, new], git_dir=git_dir, check=False)

    def set_result(self, project: str, number: int, status: str, reason: str = "") -> ChangeInfo:
        """Record the gate's verdict on a change."""
        if status not in STATUSES:
            raise ForgeError(
                f"change {project}~{number}: invalid status {status!r} "
                f"(one of {', '.join(STATUSES)})"
            )
        self._repo(project)
        with _locked(self._lock(project)):
            data = self._load(project, number)
            if data is None:
                raise ForgeError(f"change {project}~{number} does not exist")
            data["status"] = status
            data["result_reason"] = str(reason)
            data["updated"] = int(time.time())
            self._save(project, data)
        return _info(data)

    def merge(self, project: str, branch: str, commit: str, expected_tip: str) -> None:
        """Move refs/heads/<branch> to ``commit`` only if it still points at
        ``expected_tip`` (compare-and-swap); BranchMoved otherwise. ``commit`` must be in
        the repository (see publish()) and descend from ``expected_tip``."""
        git_dir = self._repo(project)
        check_branch(branch, project)
        commit = check_oid(commit, f"commit to merge into {project} {branch}")
        expected_tip = check_oid(expected_tip, f"expected tip of {project} {branch}")
        ref = f"refs/heads/{branch}"
        if not _has_commit(git_dir, commit):
            raise ForgeError(
                f"cannot merge {commit} into branch {branch!r} of project {project}: "
                "the commit is not in the repository (publish it first)"
            )
        ancestor = _run(
            ["merge-base", "--is-ancestor", expected_tip, commit], git_dir=git_dir, check=False
        )
        if ancestor.returncode != 0:
            raise ForgeError(
                f"cannot merge {commit} into branch {branch!r} of project {project}: "
                f"it does not descend from {expected_tip}"
            )
        proc = _run(
            ["update-ref", "-m", f"gating: merge {commit}", ref, commit, expected_tip],
            git_dir=git_dir,
            check=False,
        )
        if proc.returncode == 0:
            return
        actual = _resolve(git_dir, ref)
        if actual != expected_tip:
            raise BranchMoved(project, branch, expected_tip, actual)
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise ForgeError(f"cannot move branch {branch!r} of project {project}: {err}")


def _info(data: dict[str, Any]) -> ChangeInfo:
    return ChangeInfo(
        project=data["project"],
        number=int(data["number"]),
        branch=data["branch"],
        revision=data["revision"],
        parent=data["parent"],
        subject=data["subject"],
        message=data["message"],
        owner=data["owner"],
        depends_on=tuple(data.get("depends_on", ())),
        status=data["status"],
        result_reason=data.get("result_reason", ""),
        patchset=int(data.get("patchset", 1)),
        change_id=data.get("change_id", ""),
    )


# -- speculative merges ------------------------------------------------------------------


def _repo_arg(repo: str | Path) -> str:
    """``repo`` as git should be given it: local paths made absolute (git runs elsewhere)."""
    text = str(repo)
    if isinstance(repo, str) and ("://" in text or re.match(r"^[^/]+:", text)):
        source = text  # a URL, or scp-like host:path
    else:
        source = str(Path(text).resolve())
    if source.startswith("-"):
        raise ForgeError(f"invalid repository {text!r}")
    return source


def _scratch_path(workdir: Path, source: str) -> Path:
    name = re.sub(r"\.git$", "", source.rstrip("/").rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40] or "repo"
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return Path(workdir) / f"{name}-{digest}"


def _scratch_git(
    clone: Path,
    args: Sequence[str],
    check: bool = True,
    env: dict[str, str] | None = None,
    what: str = "",
) -> subprocess.CompletedProcess[bytes]:
    return _run(args, cwd=clone, check=check, env=env or git_env(scratch=True), what=what)


def _prepare_scratch(clone: Path) -> None:
    if not (clone / ".git" / "HEAD").is_file():
        if clone.exists():
            shutil.rmtree(clone)
        clone.parent.mkdir(parents=True, exist_ok=True)
        _run(["init", "--quiet", "--template=", str(clone)], what="git init (scratch clone)")
        for key, value in [
            ("user.name", MERGE_NAME),
            ("user.email", MERGE_EMAIL),
            ("gc.autoDetach", "false"),
            ("advice.detachedHead", "false"),
            ("core.autocrlf", "false"),
            ("rerere.enabled", "false"),
            ("commit.gpgSign", "false"),
            ("protocol.ext.allow", "never"),
        ]:
            _scratch_git(clone, ["config", key, value])
    # A git killed half-way (master restart) leaves its lock behind; we hold the clone's lock.
    (clone / ".git" / "index.lock").unlink(missing_ok=True)


def _reset(clone: Path, commit: str) -> None:
    """Clean worktree, no merge in progress, HEAD detached at ``commit``."""
    _scratch_git(clone, ["merge", "--abort"], check=False)
    _scratch_git(clone, ["checkout", "--quiet", "--force", "--detach", commit], what="git checkout")
    _scratch_git(clone, ["reset", "--quiet", "--hard", commit], what="git reset")
    _scratch_git(clone, ["clean", "--quiet", "-ffdx"], what="git clean")


def _fetch_missing(clone: Path, source: str, needed: list[tuple[str, str]]) -> None:
    missing = [(what, oid) for what, oid in needed if not _has_commit(None, oid, clone)]
    if not missing:
        return
    _scratch_git(
        clone,
        [
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            source,
            "+refs/heads/*:refs/forge/heads/*",
            "+refs/changes/*:refs/forge/changes/*",
        ],
        what=f"fetching from {source}",
    )
    for what, oid in missing:
        if not _has_commit(None, oid, clone):
            # Not under refs/heads or refs/changes: ask for the commit itself.
            _scratch_git(clone, ["fetch", "--quiet", "--no-tags", source, oid], check=False)
        if not _has_commit(None, oid, clone):
            raise ForgeError(f"{what}: commit {oid} is not in {source}")


def _commit_time(clone: Path, oid: str) -> int:
    return int(_out(_scratch_git(clone, ["show", "--no-patch", "--format=%ct", oid])))


def speculative_merge(
    workdir: Path,
    repo: str | Path,
    branch: str,
    base: str,
    revisions: list[tuple[str, str]],
) -> MergeResult:
    """Merge each ``(change_key, revision)`` in order onto ``base`` (the tip of ``branch``)
    in a scratch clone of ``repo`` under ``workdir``, with ``git merge --no-ff``.

    Deterministic: the committer/author identity is fixed and each merge's date is the
    later of the two commits' committer dates, so the same inputs give the same commit id
    (and the speculative commit of an item ahead is exactly the first parent of the next
    one's). A revision already contained in the state so far is skipped. On a conflict the
    merge is aborted, the scratch clone left clean, and ``conflict`` names the change.
    """
    check_branch(branch)
    base = check_oid(base, f"base of {branch!r}")
    items = [(key, check_oid(rev, f"revision of {key}")) for key, rev in revisions]
    source = _repo_arg(repo)
    clone = _scratch_path(workdir, source)
    with _locked(clone.with_name(clone.name + ".lock")):
        _prepare_scratch(clone)
        _fetch_missing(
            clone,
            source,
            [(f"tip of branch {branch!r}", base)] + [(f"change {k}", r) for k, r in items],
        )
        _reset(clone, base)
        head = base
        for key, rev in items:
            contained = _scratch_git(clone, ["merge-base", "--is-ancestor", rev, head], check=False)
            if contained.returncode == 0:
                continue
            related = _scratch_git(clone, ["merge-base", head, rev], check=False)
            if related.returncode != 0:
                _reset(clone, base)
                return MergeResult(
                    None, conflict=key, base=base, detail=f"{rev} shares no history with {head}"
                )
            when = f"@{max(_commit_time(clone, head), _commit_time(clone, rev))} +0000"
            env = git_env(
                scratch=True,
                extra={
                    "GIT_AUTHOR_NAME": MERGE_NAME,
                    "GIT_AUTHOR_EMAIL": MERGE_EMAIL,
                    "GIT_AUTHOR_DATE": when,
                    "GIT_COMMITTER_NAME": MERGE_NAME,
                    "GIT_COMMITTER_EMAIL": MERGE_EMAIL,
                    "GIT_COMMITTER_DATE": when,
                },
            )
            message = f"Merge change {key} into {branch}\n"
            proc = _scratch_git(
                clone,
                [
                    "merge",
                    "--no-ff",
                    "--no-edit",
                    "--no-verify",
                    "--no-signoff",
                    "-m",
                    message,
                    rev,
                ],
                check=False,
                env=env,
            )
            if proc.returncode != 0:
                unmerged = _out(_scratch_git(clone, ["ls-files", "--unmerged"], check=False))
                merging = (clone / ".git" / "MERGE_HEAD").exists()
                detail = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
                _reset(clone, base)
                if unmerged or merging:
                    return MergeResult(None, conflict=key, base=base, detail=detail)
                raise ForgeError(f"merging change {key} onto {head}: {detail}")
            head = _out(_scratch_git(clone, ["rev-parse", "--verify", "HEAD"]))
        return MergeResult(head, None, base)


def publish(repo: str | Path, workdir: Path, commit: str, ref: str) -> None:
    """Push ``commit`` from the scratch clone of ``repo`` under ``workdir`` (made by
    speculative_merge()) into ``repo`` as ``ref`` (force-updated), e.g. refs/gating/rdo/12/1."""
    commit = check_oid(commit, "commit to publish")
    if not ref.startswith("refs/") or ref.startswith(UNPUBLISHABLE_PREFIXES):
        raise ForgeError(
            f"cannot publish to {ref!r}: use a ref under refs/ outside "
            f"{', '.join(UNPUBLISHABLE_PREFIXES)} (e.g. refs/gating/...)"
        )
    check_branch(ref[len("refs/") :])  # same syntax rules
    source = _repo_arg(repo)
    clone = _scratch_path(workdir, source)
    with _locked(clone.with_name(clone.name + ".lock")):
        if not (clone / ".git" / "HEAD").is_file() or not _has_commit(None, commit, clone):
            raise ForgeError(
                f"cannot publish {commit}: not in the scratch clone of {source} under "
                f"{workdir} (make it with speculative_merge first)"
            )
        if Path(source).is_dir():
            # A local repository fetches the commit itself: no receive hooks run (for
            # refs/gating/* they would do nothing but start Python, ~0.5 s an item).
            _run(
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--upload-pack=git -c uploadpack.allowAnySHA1InWant=true upload-pack",
                    str(clone),
                    f"+{commit}:{ref}",
                ],
                git_dir=Path(source),
                env=git_env(scratch=True),
                what=f"publishing {commit} as {ref} in {source}",
            )
            return
        _scratch_git(
            clone,
            ["push", "--quiet", "--no-verify", source, f"+{commit}:{ref}"],
            env=git_env(scratch=True, extra={INTERNAL_ENV: "1"}),
            what=f"publishing {commit} as {ref} in {source}",
        )


def first_parent(repo: str | Path, commit: str) -> str:
    """The first parent of ``commit`` in ``repo`` (a bare repository or a worktree)."""
    commit = check_oid(commit)
    path = Path(repo)
    git_dir = path / ".git" if (path / ".git").exists() else path
    parent = _resolve(git_dir, f"{commit}^1")
    if parent is None:
        raise ForgeError(f"commit {commit} has no parent in {repo} (or is not there)")
    return parent


def branch_contains(repo: str | Path, branch: str, commit: str) -> bool:
    """Is ``commit`` the tip of ``branch`` in ``repo``, or an ancestor of it (False if the
    branch or the commit is not there)?"""
    commit = check_oid(commit)
    check_branch(branch)
    path = Path(repo)
    git_dir = path / ".git" if (path / ".git").exists() else path
    tip = _resolve(git_dir, f"refs/heads/{branch}")
    if tip is None or not _has_commit(git_dir, commit):
        return False
    if tip == commit:
        return True
    proc = _run(["merge-base", "--is-ancestor", commit, tip], git_dir=git_dir, check=False)
    return proc.returncode == 0


# -- hooks -------------------------------------------------------------------------------


def hook_script(hook: str, root: Path, project: str) -> str:
    """The hook ``hook`` of a project: runs this module with the interpreter and the
    ``gating`` package that installed it."""
    package_parent = Path(__file__).resolve().parent.parent
    argv = [
        sys.executable,
        "-P",
        "-m",
        "gating.forge",
        hook,
        str(Path(root).resolve()),
        check_project(project),
    ]
    return (
        "#!/bin/sh\n"
        "# Installed by gating.forge (buildbot-gating); rewritten on every master start.\n"
        f"PYTHONPATH={shlex.quote(str(package_parent))}\n"
        "export PYTHONPATH\n"
        f"exec {' '.join(shlex.quote(a) for a in argv)}\n"
    )


def _read_ref_lines(stream: BinaryIO) -> list[tuple[str, str, str]]:
    out = []
    for raw in stream.read().decode("utf-8", "surrogateescape").splitlines():
        parts = raw.split(" ", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _announce(info: ChangeInfo, action: str) -> None:
    subject = _printable(info.subject)
    if action == "created":
        _say(f"change {info.key} created: {subject}")
    elif action == "updated":
        _say(f"change {info.key} patchset {info.patchset} uploaded: {subject}")
    else:
        _say(f"change {info.key} unchanged: patchset {info.patchset} is this commit already")
        return
    _say(f"  {info.ref}; approve it for the gate: gating approve {info.project} {info.number}")


def pre_receive(
    forge: LocalForge, project: str, updates: list[tuple[str, str, str]], internal: bool = False
) -> list[str]:
    """Why the push ``updates`` (old, new, ref) must be refused; empty if it may go on."""
    git_dir = forge.repo_path(project)
    errors = []
    for _old, new, ref in updates:
        shown = _printable(ref)
        if ref.startswith(FOR_PREFIX):
            branch = ref[len(FOR_PREFIX) :]
            error = branch_error(branch)
            if error:
                errors.append(f"{shown}: {error}")
            elif _is_zero(new):
                errors.append(f"{shown}: there is nothing to delete; changes are never removed")
            elif _resolve(git_dir, f"refs/heads/{branch}") is None:
                known = forge.branches(project)
                errors.append(
                    f"{shown}: project {project} has no branch {_printable(branch)!r} "
                    f"(branches: {_printable(', '.join(known[:20])) or 'none'})"
                )
            elif _object_type(git_dir, new) != "commit":
                errors.append(f"{shown}: only a commit can be proposed as a change")
        elif ref.startswith(MANAGED_PREFIXES) and not internal:
            errors.append(
                f"{shown}: {', '.join(MANAGED_PREFIXES)} are written by the forge only; "
                "propose a change by pushing to refs/for/<branch>"
            )
    return errors


class _PktLine:
    """git's pkt-line framing, for the proc-receive protocol."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self.inp = inp
        self.out = out

    def read(self) -> bytes | None:
        """A packet's payload without its newline; None at a flush packet or the end."""
        size = self.inp.read(4)
        if len(size) < 4:
            return None
        length = int(size, 16)
        if length < 4:
            return None  # flush (0000), delim (0001), response-end (0002)
        return self.inp.read(length - 4).rstrip(b"\n")

    def read_section(self) -> list[bytes]:
        out = []
        while (pkt := self.read()) is not None:
            out.append(pkt)
        return out

    def write(self, payload: bytes) -> None:
        self.out.write(b"%04x" % (len(payload) + 4) + payload)

    def flush(self) -> None:
        self.out.write(b"0000")
        self.out.flush()


def proc_receive(forge: LocalForge, project: str, inp: BinaryIO, out: BinaryIO) -> int:
    pkt = _PktLine(inp, out)
    versions = pkt.read_section()
    if not versions or not versions[0].split(b"\0")[0].startswith(b"version=1"):
        _say(f"error: gating.forge: unsupported proc-receive protocol {versions[:1]!r}")
        return 1
    features = versions[0].split(b"\0", 1)[1].split() if b"\0" in versions[0] else []
    wants_options = b"push-options" in features
    pkt.write(b"version=1\0" + (b"push-options" if wants_options else b""))
    pkt.flush()
    commands = [c.decode("utf-8", "surrogateescape") for c in pkt.read_section()]
    if wants_options:
        pkt.read_section()  # push options: none used
    for line in commands:
        old, new, ref = line.split(" ", 2)
        if not ref.startswith(FOR_PREFIX):
            pkt.write(f"ok {ref}".encode("utf-8", "surrogateescape"))
            pkt.write(b"option fall-through")
            continue
        try:
            info, action = forge._record(project, ref, old, new)
        except ForgeError as exc:
            _say(f"error: {_printable(str(exc), 1000)}")
            reason = _printable(str(exc), 500)
            pkt.write(f"ng {ref} {reason}".encode("utf-8", "surrogateescape"))
            continue
        except Exception as exc:  # report it to the pusher, refuse the ref
            _say(f"error: gating.forge: internal error: {_printable(repr(exc), 1000)}")
            pkt.write(f"ng {ref} internal error in the forge".encode("utf-8", "surrogateescape"))
            continue
        assert info is not None
        _announce(info, action)
        pkt.write(f"ok {ref}".encode("utf-8", "surrogateescape"))
        pkt.write(f"option refname {info.ref}".encode())
        if action == "unchanged":
            pkt.write(f"option old-oid {info.revision}".encode())
    pkt.flush()
    return 0


def post_receive(forge: LocalForge, project: str, updates: list[tuple[str, str, str]]) -> int:
    """Record pushes that created refs/for/* refs (proc-receive normally handles them)."""
    status = 0
    for old, new, ref in updates:
        if not ref.startswith(FOR_PREFIX):
            continue
        try:
            info, action = forge._record(project, ref, old, new)
        except ForgeError as exc:
            _say(f"error: {_printable(str(exc), 1000)}")
            status = 1
            continue
        if info is not None:
            _announce(info, action)
    return status


USAGE = "usage: python -m gating.forge {pre-receive|proc-receive|post-receive} ROOT PROJECT"


def main(argv: list[str] | None = None) -> int:
    """The hooks' entry point: ``python -m gating.forge HOOK ROOT PROJECT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in HOOKS:
        print(USAGE, file=sys.stderr)
        return 2
    hook, root, project = args
    forge = LocalForge(Path(root))
    try:
        check_project(project)
        if hook == "proc-receive":
            return proc_receive(forge, project, sys.stdin.buffer, sys.stdout.buffer)
        updates = _read_ref_lines(sys.stdin.buffer)
        if hook == "pre-receive":
            errors = pre_receive(
                forge, project, updates, internal=os.environ.get(INTERNAL_ENV) == "1"
            )
            for error in errors:
                _say(f"error: {error}")
            return 1 if errors else 0
        return post_receive(forge, project, updates)
    except ForgeError as exc:
        _say(f"error: {_printable(str(exc), 1000)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
