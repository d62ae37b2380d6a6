"""A Gerrit test server: Gerrit's REST wire protocol on loopback, over real bare git repositories.

What it speaks, as Gerrit 3.x does:

* JSON answers start with the magic line ``)]}'`` and are compact (``pp=1``: pretty);
  errors are ``text/plain``;
* ``/a/...`` endpoints need HTTP basic auth (the user and password given to the
  constructor), ``401`` with ``WWW-Authenticate: Basic realm="Gerrit Code Review"``
  otherwise; anonymous requests (no ``/a/``) see nothing (404) and may not write (401);
* ``GET /a/accounts/self``;
* ``GET /a/changes/{id}`` (``id``: ``project~number``, ``number``, ``project~branch~I...``
  or ``I...``; options ``o=CURRENT_REVISION``, ``ALL_REVISIONS``, ``CURRENT_COMMIT``,
  ``ALL_COMMITS``, ``LABELS``, ``DETAILED_LABELS``, ``DETAILED_ACCOUNTS``, ``MESSAGES``),
  and ``/detail``;
* ``GET /a/changes/{id}/revisions/{rev}/files/``;
* ``GET /a/projects/{project}/branches/{branch}``;
* ``POST /a/changes/{id}/revisions/{rev}/review`` (message, labels, tag): votes are checked
  against the labels' ranges; on a closed change a vote cannot go down (409);
* ``POST /a/changes/{id}/submit`` (ChangeInfo) and ``/revisions/{rev}/submit``
  (SubmitInfo): "merge if necessary" (fast-forward when possible, else a real ``git
  merge`` in a scratch clone, pushed into the bare repository) once the submit
  requirements hold (default Code-Review +2 and Verified +1, MaxWithBlock); ``409`` with
  Gerrit's text otherwise;
* ``POST /a/changes/{id}/abandon``;
* the events-log plugin: ``GET /a/plugins/events-log/events/?t1=YYYY-MM-DD HH:MM:SS[&t2=]``:
  one JSON event a line (stream-events format, ``eventCreatedOn`` in epoch seconds), those
  created at or after t1 (UTC), t2 inclusive too, as the plugin's SQL ``BETWEEN`` does.

Events (``patchset-created``, ``comment-added``, ``change-merged``, ``ref-updated``,
``change-abandoned``) have the fields of Gerrit's stream-events. Like Gerrit's, the
approvals of a ``comment-added`` event are ``{"type", "description", "value"}`` with
string values, ``oldValue`` for the votes this comment changed, one for each label, the
voter being the event's ``author`` (``by``/``grantedOn`` only appear in ``gerrit query``
output, not in events).

Git is served by local path (``git_url(project)``): ``<root>/git/<project>.git``, changes at
``refs/changes/<NN>/<number>/<patchset>`` as Gerrit stores them.

Test-side helpers (Python, not HTTP): create_project, upload_change, upload_patchset,
approve, abandon, advance_branch, reviews, status, branch_tip, events, request_log,
fail_next.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

MAGIC = b")]}'\n"
ZERO = "0" * 40
LABELS: dict[str, dict[int, str]] = {
    "Code-Review": {
        -2: "This shall not be submitted",
        -1: "I would prefer this is not submitted as is",
        0: "No score",
        1: "Looks good to me, but someone else must approve",
        2: "Looks good to me, approved",
    },
    "Verified": {-1: "Fails", 0: "No score", 1: "Verified"},
    "Workflow": {-1: "Work in progress", 0: "Ready for reviews", 1: "Approved"},
}
DEFAULT_SUBMIT_REQUIREMENTS = {"Code-Review": 2, "Verified": 1}
SERVER_NAME = "Gerrit Code Review"
SERVER_EMAIL = "gerrit@example.org"
_TRAILER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*:\s")


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    name: str
    email: str

    def event(self) -> dict[str, Any]:
        """AccountAttribute of stream-events."""
        return {"name": self.name, "email": self.email, "username": self.username}

    def rest(self, detailed: bool = True) -> dict[str, Any]:
        """AccountInfo of REST."""
        if not detailed:
            return {"_account_id": self.id}
        return {
            "_account_id": self.id,
            "name": self.name,
            "email": self.email,
            "username": self.username,
        }


class HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _timestamp(when: float) -> str:
    """Gerrit's REST timestamps: UTC, nanoseconds."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f") + "000"


def _vote_text(label: str, value: int) -> str:
    return f"{label}{value:+d}" if value else f"-{label}"


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in ("GIT_EXEC_PATH",)
    }
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
    )
    env.update(extra or {})
    return env


def git(
    *args: str,
    git_dir: Path | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    argv = ["git"] + ([f"--git-dir={git_dir}"] if git_dir else []) + list(args)
    proc = subprocess.run(
        argv, cwd=cwd, input=input, capture_output=True, env=_git_env(env), check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode('utf-8', 'replace')}")
    return proc


def _out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode("utf-8", "replace").strip()


class GerritTestServer:
    """See the module documentation. ``user``/``password``: the REST account (the gate)."""

    def __init__(
        self,
        root: Path,
        user: str = "gate",
        password: str = "secret",
        *,
        submit_requirements: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.user = user
        self.password = password
        self.submit_requirements = dict(
            DEFAULT_SUBMIT_REQUIREMENTS if submit_requirements is None else submit_requirements
        )
        self.clock = clock
        self._lock = threading.RLock()
        self._accounts: dict[str, Account] = {}
        self.add_account(user, "Gate Bot", f"{user}@example.org")
        self.add_account("reviewer", "Rev Iewer", "reviewer@example.org")
        self.add_account("developer", "Dev Eloper", "developer@example.org")
        self._changes: dict[int, dict[str, Any]] = {}
        self._next_number = 1
        self._events: list[dict[str, Any]] = []
        self._reviews: dict[int, list[dict[str, Any]]] = {}
        self._faults: list[list[Any]] = []  # [remaining, code, path substring or None]
        self.requests: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._message_ids = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> GerritTestServer:
        (self.root / "git").mkdir(parents=True, exist_ok=True)
        gerrit = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                gerrit._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                gerrit._handle(self, "POST")

            def do_PUT(self) -> None:  # noqa: N802
                gerrit._handle(self, "PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                gerrit._handle(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="gerrit-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> GerritTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _web_url(self) -> str:
        return self.url if self._httpd is not None else "http://127.0.0.1"

    def git_url(self, project: str) -> str:
        return str(self._repo_path(project))

    # -- test-side inspection and control -------------------------------------------------

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in order (path without the query string)."""
        with self._lock:
            return [(r["method"], r["path"]) for r in self.requests]

    def fail_next(self, n: int, code: int = 500, match: str | None = None) -> None:
        """Answer the next ``n`` requests (whose path contains ``match``, if given) with
        ``code`` before looking at them."""
        with self._lock:
            self._faults.append([n, code, match])

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(self._events))

    def reviews(self, project: str, number: int) -> list[dict[str, Any]]:
        """Every review posted on the change: {user, patchset, revision, message, labels, tag}."""
        with self._lock:
            change = self._change(project, number)
            return json.loads(json.dumps(self._reviews.get(change["number"], [])))

    def status(self, project: str, number: int) -> str:
        with self._lock:
            return self._change(project, number)["status"]

    def votes(self, project: str, number: int) -> dict[str, dict[str, int]]:
        """The current patchset's votes: {label: {username: value}}."""
        with self._lock:
            return json.loads(json.dumps(self._change(project, number)["votes"]))

    def branch_tip(self, project: str, branch: str) -> str:
        git_dir = self._repo(project)
        return _out(git("rev-parse", "--verify", f"refs/heads/{branch}", git_dir=git_dir))

    def add_account(self, username: str, name: str, email: str) -> Account:
        with self._lock:
            account = Account(1000000 + len(self._accounts), username, name, email)
            self._accounts[username] = account
            return account

    # -- test-side actions (what people do in Gerrit) ------------------------------------

    def create_project(
        self,
        name: str,
        branches: tuple[str, ...] | list[str] = ("main",),
        files: Mapping[str, str | bytes | None] | None = None,
    ) -> str:
        """A project whose branches all point at one first commit holding ``files``."""
        git_dir = self._repo_path(name)
        with self._lock:
            if (git_dir / "HEAD").exists():
                raise ValueError(f"project {name} exists")
            git_dir.parent.mkdir(parents=True, exist_ok=True)
            git("init", "--quiet", "--bare", "--template=", str(git_dir))
            git("config", "uploadpack.allowReachableSHA1InWant", "true", git_dir=git_dir)
            author = self._accounts["developer"]
            commit = self._commit(
                git_dir,
                None,
                dict(files or {"README": f"{name}\n"}),
                f"Initial commit of {name}\n",
                author,
            )
            for branch in branches:
                git("update-ref", f"refs/heads/{branch}", commit, ZERO, git_dir=git_dir)
            if branches:
                git("symbolic-ref", "HEAD", f"refs/heads/{branches[0]}", git_dir=git_dir)
            return commit

    def upload_change(
        self,
        project: str,
        branch: str,
        files: Mapping[str, str | bytes | None],
        message: str,
        *,
        parent: str | None = None,
        owner: str = "developer",
    ) -> int:
        """Commit ``files`` on the branch tip (or ``parent``) and upload it as a new change,
        at refs/changes/NN/N/1; a Change-Id footer is added if the message has none (as
        Gerrit's commit-msg hook does). Emits patchset-created."""
        git_dir = self._repo(project)
        with self._lock:
            tip = self._tip(git_dir, branch)
            if tip is None:
                raise ValueError(f"project {project} has no branch {branch}")
            base = parent or tip
            message = _with_change_id(message)
            account = self._accounts[owner]
            commit = self._commit(git_dir, base, files, message, account)
            number = self._next_number
            self._next_number += 1
            now = self.clock()
            change = {
                "number": number,
                "project": project,
                "branch": branch,
                "change_id": _change_id_of(message),
                "status": "NEW",
                "owner": owner,
                "created": now,
                "updated": now,
                "patchsets": [],
                "votes": {},
                "messages": [],
                "submitted": None,
                "submitter": None,
            }
            self._changes[number] = change
            self._add_patchset(change, commit, owner)
            return number

    def upload_patchset(
        self,
        project: str,
        number: int,
        files: Mapping[str, str | bytes | None],
        message: str | None = None,
        *,
        parent: str | None = None,
        uploader: str = "developer",
    ) -> str:
        """A new patchset: the current one amended with ``files`` (same Change-Id). Votes
        are reset. Emits patchset-created. Returns the new revision."""
        git_dir = self._repo(project)
        with self._lock:
            change = self._change(project, number)
            current = change["patchsets"][-1]
            old = self._commit_data(git_dir, current["revision"])
            text = message if message is not None else old["message"]
            if _change_id_of(text) != change["change_id"]:
                text = _with_change_id(text, change["change_id"])
            base = parent or (old["parents"][0] if old["parents"] else None)
            commit = self._commit(
                git_dir, base, files, text, self._accounts[uploader], tree_from=current["revision"]
            )
            change["votes"] = {}
            self._add_patchset(change, commit, uploader)
            return commit

    def approve(
        self,
        project: str,
        number: int,
        labels: Mapping[str, int],
        *,
        user: str = "reviewer",
        message: str = "",
    ) -> None:
        """A reviewer votes (e.g. {"Code-Review": 2, "Workflow": 1}): emits comment-added."""
        with self._lock:
            change = self._change(project, number)
            self._post_review(change, change["patchsets"][-1], user, message, dict(labels), None)

    def abandon(self, project: str, number: int, *, user: str = "developer") -> None:
        with self._lock:
            self._abandon(self._change(project, number), user)

    def submit(self, project: str, number: int, *, user: str | None = None) -> str:
        """Submit as ``user`` (default: the REST user), ignoring nothing: HttpError(409) if
        Gerrit would refuse. Returns the branch's new tip."""
        with self._lock:
            change = self._change(project, number)
            self._submit(change, None, user or self.user)
            return self.branch_tip(project, change["branch"])

    def advance_branch(
        self,
        project: str,
        branch: str,
        files: Mapping[str, str | bytes | None],
        message: str = "Direct push\n",
        *,
        user: str = "developer",
    ) -> str:
        """A commit pushed straight to the branch (bypassing review). Emits ref-updated."""
        git_dir = self._repo(project)
        with self._lock:
            tip = self._tip(git_dir, branch)
            if tip is None:
                raise ValueError(f"project {project} has no branch {branch}")
            account = self._accounts[user]
            commit = self._commit(git_dir, tip, files, message, account)
            git("update-ref", f"refs/heads/{branch}", commit, tip, git_dir=git_dir)
            self._emit_ref_updated(project, f"refs/heads/{branch}", tip, commit, account)
            return commit

    # -- git ------------------------------------------------------------------------------

    def _repo_path(self, project: str) -> Path:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9+._/-]*$", project) or ".." in project:
            raise ValueError(f"bad project name {project!r}")
        return self.root / "git" / f"{project}.git"

    def _repo(self, project: str) -> Path:
        path = self._repo_path(project)
        if not (path / "HEAD").is_file():
            raise HttpError(404, f"Not found: {project}")
        return path

    @staticmethod
    def _tip(git_dir: Path, branch: str) -> str | None:
        proc = git(
            "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", git_dir=git_dir, check=False
        )
        return _out(proc) if proc.returncode == 0 else None

    @staticmethod
    def _is_ancestor(git_dir: Path, ancestor: str, descendant: str) -> bool:
        proc = git(
            "merge-base", "--is-ancestor", ancestor, descendant, git_dir=git_dir, check=False
        )
        return proc.returncode == 0

    def _commit(
        self,
        git_dir: Path,
        parent: str | None,
        files: Mapping[str, str | bytes | None],
        message: str,
        author: Account,
        *,
        tree_from: str | None = None,
    ) -> str:
        when = f"@{int(self.clock())} +0000"
        ident = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_AUTHOR_DATE": when,
            "GIT_COMMITTER_NAME": author.name,
            "GIT_COMMITTER_EMAIL": author.email,
            "GIT_COMMITTER_DATE": when,
        }
        with tempfile.TemporaryDirectory(prefix="gerrit-index-") as tmp:
            env = {**ident, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            start = tree_from or parent
            if start:
                git("read-tree", start, git_dir=git_dir, env=env)
            else:
                git("read-tree", "--empty", git_dir=git_dir, env=env)
            lines = []
            for path, content in files.items():
                if content is None:
                    lines.append(f"0 {ZERO}\t{path}")
                    continue
                data = content.encode() if isinstance(content, str) else content
                blob = _out(git("hash-object", "-w", "--stdin", git_dir=git_dir, input=data))
                lines.append(f"100644 {blob}\t{path}")
            if lines:
                git(
                    "update-index",
                    "--index-info",
                    git_dir=git_dir,
                    env=env,
                    input=("\n".join(lines) + "\n").encode(),
                )
            tree = _out(git("write-tree", git_dir=git_dir, env=env))
        parents = ["-p", parent] if parent else []
        proc = git(
            "commit-tree",
            tree,
            *parents,
            "-F",
            "-",
            git_dir=git_dir,
            env=ident,
            input=message.encode(),
        )
        return _out(proc)

    @staticmethod
    def _commit_data(git_dir: Path, sha: str) -> dict[str, Any]:
        raw = git("cat-file", "commit", sha, git_dir=git_dir).stdout.decode("utf-8", "replace")
        head, _, message = raw.partition("\n\n")
        parents, people = [], {}
        for line in head.split("\n"):
            key, _, value = line.partition(" ")
            if key == "parent":
                parents.append(value)
            elif key in ("author", "committer"):
                match = re.match(r"^(.*) <(.*)> (\d+) ([+-]\d{4})$", value)
                if match:
                    tz = int(match.group(4)[1:3]) * 60 + int(match.group(4)[3:])
                    people[key] = {
                        "name": match.group(1),
                        "email": match.group(2),
                        "date": _timestamp(int(match.group(3))),
                        "tz": -tz if match.group(4)[0] == "-" else tz,
                        "epoch": int(match.group(3)),
                    }
        subject = message.split("\n\n", 1)[0].replace("\n", " ").strip()
        return {"parents": parents, "message": message, "subject": subject, **people}

    # -- the model ----------------------------------------------------------------------------

    def _change(self, project: str, number: int) -> dict[str, Any]:
        change = self._changes.get(int(number))
        if change is None or change["project"] != project:
            raise HttpError(404, f"Not found: {project}~{number}")
        return change

    def _find_change(self, cid: str) -> dict[str, Any]:
        parts = cid.split("~")
        found: list[dict[str, Any]] = []
        if len(parts) == 1 and cid.isdigit():
            found = [c for c in self._changes.values() if c["number"] == int(cid)]
        elif len(parts) == 2 and parts[1].isdigit():
            found = [
                c
                for c in self._changes.values()
                if c["project"] == parts[0] and c["number"] == int(parts[1])
            ]
        elif len(parts) == 3:
            found = [
                c
                for c in self._changes.values()
                if (c["project"], c["branch"], c["change_id"]) == tuple(parts)
            ]
        elif len(parts) == 1 and re.match(r"^I[0-9a-f]{40}$", cid):
            found = [c for c in self._changes.values() if c["change_id"] == cid]
        if len(found) != 1:
            raise HttpError(404, f"Not found: {cid}")
        return found[0]

    @staticmethod
    def _find_patchset(change: dict[str, Any], rev: str) -> dict[str, Any]:
        patchsets = change["patchsets"]
        if rev == "current":
            return patchsets[-1]
        if rev.isdigit() and len(rev) < 5:
            for ps in patchsets:
                if ps["number"] == int(rev):
                    return ps
        elif re.match(r"^[0-9a-f]{4,40}$", rev):
            matches = [ps for ps in patchsets if ps["revision"].startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HttpError(404, f"Not found: {rev}")

    def _add_patchset(self, change: dict[str, Any], commit: str, uploader: str) -> None:
        git_dir = self._repo(change["project"])
        number = change["number"]
        ps_number = len(change["patchsets"]) + 1
        ref = f"refs/changes/{number % 100:02d}/{number}/{ps_number}"
        git("update-ref", ref, commit, ZERO, git_dir=git_dir)
        now = self.clock()
        patchset = {
            "number": ps_number,
            "revision": commit,
            "ref": ref,
            "uploader": uploader,
            "created": now,
        }
        change["patchsets"].append(patchset)
        change["updated"] = now
        self._add_message(change, uploader, f"Uploaded patch set {ps_number}.", ps_number, None)
        account = self._accounts[uploader]
        self._emit(
            change,
            "patchset-created",
            {"uploader": account.event(), "patchSet": self._patchset_event(change, patchset)},
        )

    def _add_message(
        self, change: dict[str, Any], user: str, text: str, ps: int, tag: str | None
    ) -> None:
        self._message_ids += 1
        message = {
            "id": hashlib.sha1(str(self._message_ids).encode()).hexdigest(),
            "author": user,
            "date": self.clock(),
            "message": text,
            "_revision_number": ps,
        }
        if tag:
            message["tag"] = tag
        change["messages"].append(message)

    def _post_review(
        self,
        change: dict[str, Any],
        patchset: dict[str, Any],
        user: str,
        message: str,
        labels: dict[str, Any],
        tag: str | None,
    ) -> dict[str, int]:
        votes: dict[str, int] = {}
        for label, raw in labels.items():
            if label not in LABELS:
                raise HttpError(400, f'label "{label}" is not a configured label')
            try:
                value = int(raw)
            except (TypeError, ValueError):
                raise HttpError(400, f'label "{label}": invalid value {raw!r}') from None
            if value not in LABELS[label]:
                raise HttpError(403, f'Applying label "{label}": {value:+d} is restricted')
            votes[label] = value
        if votes and patchset is not change["patchsets"][-1]:
            raise HttpError(409, "not current patch set: votes are not allowed on it")
        if votes and change["status"] == "ABANDONED":
            raise HttpError(409, "change is abandoned")
        if change["status"] == "MERGED":
            for label, value in votes.items():
                if value < change["votes"].get(label, {}).get(user, 0):
                    raise HttpError(409, f"Cannot reduce vote on labels for closed change: {label}")
        old = {label: change["votes"].get(label, {}).get(user, 0) for label in LABELS}
        for label, value in votes.items():
            change["votes"].setdefault(label, {})[user] = value
            if value == 0:
                change["votes"][label].pop(user, None)
        header = f"Patch Set {patchset['number']}:"
        shown = " ".join(_vote_text(label, v) for label, v in votes.items())
        text = f"{header} {shown}" if shown else header
        if message:
            text += f"\n\n{message}"
        self._add_message(change, user, text, patchset["number"], tag)
        self._reviews.setdefault(change["number"], []).append(
            {
                "user": user,
                "patchset": patchset["number"],
                "revision": patchset["revision"],
                "message": message,
                "labels": dict(votes),
                "tag": tag,
            }
        )
        change["updated"] = self.clock()
        approvals = []
        for label in LABELS:
            now = change["votes"].get(label, {}).get(user, 0)
            approval = {"type": label, "description": label, "value": str(now)}
            if label in votes and old[label] != now:
                approval["oldValue"] = str(old[label])
            approvals.append(approval)
        self._emit(
            change,
            "comment-added",
            {
                "author": self._accounts[user].event(),
                "approvals": approvals,
                "comment": text,
                "patchSet": self._patchset_event(change, patchset),
            },
        )
        return votes

    def _unsatisfied(self, change: dict[str, Any]) -> list[str]:
        out = []
        for label, required in self.submit_requirements.items():
            votes = list(change["votes"].get(label, {}).values())
            lowest = min(LABELS[label])
            if not votes or max(votes) < required or min(votes) <= lowest:
                out.append(label)
        return out

    def _submit(self, change: dict[str, Any], rev: str | None, user: str) -> None:
        number = change["number"]
        problem = f"Failed to submit 1 change due to the following problems:\nChange {number}: "
        if change["status"] != "NEW":
            raise HttpError(409, f"change is {change['status'].lower()}")
        current = change["patchsets"][-1]
        if rev is not None and rev != current["revision"]:
            raise HttpError(409, f"revision {rev} is not current revision")
        missing = self._unsatisfied(change)
        if missing:
            raise HttpError(
                409,
                problem
                + " ".join(f"submit requirement '{label}' is unsatisfied." for label in missing),
            )
        project, branch = change["project"], change["branch"]
        git_dir = self._repo(project)
        tip = self._tip(git_dir, branch)
        if tip is None:
            raise HttpError(409, problem + f'destination branch "refs/heads/{branch}" not found.')
        revision = current["revision"]
        data = self._commit_data(git_dir, revision)
        for parent in data["parents"]:
            if not self._is_ancestor(git_dir, parent, tip):
                raise HttpError(
                    409,
                    problem + f"depends on change that was not submitted. Commit {revision} "
                    f"depends on commit {parent} which cannot be merged.",
                )
        submitter = self._accounts[user]
        if self._is_ancestor(git_dir, revision, tip):
            new_tip = tip  # already in the branch
        else:
            new_tip = self._merge_in_scratch(change, git_dir, tip, revision, data, submitter)
        now = self.clock()
        change["status"] = "MERGED"
        change["submitted"] = now
        change["submitter"] = user
        change["updated"] = now
        self._add_message(
            change,
            user,
            f"Change has been successfully merged by {submitter.name}",
            current["number"],
            "autogenerated:gerrit:merged",
        )
        if new_tip != tip:
            self._emit_ref_updated(project, f"refs/heads/{branch}", tip, new_tip, submitter)
        self._emit(
            change,
            "change-merged",
            {
                "submitter": submitter.event(),
                "newRev": new_tip,
                "patchSet": self._patchset_event(change, current),
            },
        )

    def _merge_in_scratch(
        self,
        change: dict[str, Any],
        git_dir: Path,
        tip: str,
        revision: str,
        data: dict[str, Any],
        submitter: Account,
    ) -> str:
        """Gerrit's "merge if necessary" with git: fast-forward, else a merge commit."""
        clone = self.root / "scratch" / change["project"]
        if not (clone / ".git").is_dir():
            if clone.exists():
                shutil.rmtree(clone)
            clone.parent.mkdir(parents=True, exist_ok=True)
            git("init", "--quiet", "--template=", str(clone))
        git(
            "fetch",
            "--quiet",
            "--no-tags",
            str(git_dir),
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/changes/*:refs/remotes/changes/*",
            cwd=clone,
        )
        git("merge", "--abort", cwd=clone, check=False)
        git("checkout", "--quiet", "--force", "--detach", tip, cwd=clone)
        git("clean", "--quiet", "-ffdx", cwd=clone)
        if self._is_ancestor(git_dir, tip, revision):
            new_tip = revision
        else:
            when = f"@{int(self.clock())} +0000"
            env = {
                "GIT_AUTHOR_NAME": submitter.name,
                "GIT_AUTHOR_EMAIL": submitter.email,
                "GIT_AUTHOR_DATE": when,
                "GIT_COMMITTER_NAME": SERVER_NAME,
                "GIT_COMMITTER_EMAIL": SERVER_EMAIL,
                "GIT_COMMITTER_DATE": when,
            }
            proc = git(
                "merge",
                "--no-ff",
                "--no-edit",
                "--no-verify",
                "-m",
                f'Merge "{data["subject"]}"',
                revision,
                cwd=clone,
                env=env,
                check=False,
            )
            if proc.returncode != 0:
                git("merge", "--abort", cwd=clone, check=False)
                git("checkout", "--quiet", "--force", "--detach", tip, cwd=clone)
                raise HttpError(
                    409,
                    "Failed to submit 1 change due to the following problems:\n"
                    f"Change {change['number']}: Change could not be merged due to a path "
                    "conflict. Please rebase the change locally and upload the rebased commit "
                    "for review.",
                )
            new_tip = _out(git("rev-parse", "HEAD", cwd=clone))
        git(
            "push",
            "--quiet",
            str(git_dir),
            f"{new_tip}:refs/heads/{change['branch']}",
            cwd=clone,
        )
        return new_tip

    def _abandon(self, change: dict[str, Any], user: str) -> None:
        if change["status"] != "NEW":
            raise HttpError(409, f"change is {change['status'].lower()}")
        change["status"] = "ABANDONED"
        change["updated"] = self.clock()
        current = change["patchsets"][-1]
        self._add_message(change, user, "Abandoned", current["number"], None)
        self._emit(
            change,
            "change-abandoned",
            {
                "abandoner": self._accounts[user].event(),
                "reason": "",
                "patchSet": self._patchset_event(change, current),
            },
        )

    # -- events ---------------------------------------------------------------------------

    def _change_event(self, change: dict[str, Any]) -> dict[str, Any]:
        git_dir = self._repo(change["project"])
        data = self._commit_data(git_dir, change["patchsets"][-1]["revision"])
        return {
            "project": change["project"],
            "branch": change["branch"],
            "id": change["change_id"],
            "number": change["number"],
            "subject": data["subject"],
            "owner": self._accounts[change["owner"]].event(),
            "url": f"{self._web_url()}/c/{change['project']}/+/{change['number']}",
            "commitMessage": data["message"],
            "createdOn": int(change["created"]),
            "status": change["status"],
        }

    def _patchset_event(self, change: dict[str, Any], patchset: dict[str, Any]) -> dict[str, Any]:
        git_dir = self._repo(change["project"])
        data = self._commit_data(git_dir, patchset["revision"])
        insertions, deletions = self._size(git_dir, patchset["revision"], data["parents"])
        author = data.get("author", {})
        return {
            "number": patchset["number"],
            "revision": patchset["revision"],
            "parents": data["parents"],
            "ref": patchset["ref"],
            "uploader": self._accounts[patchset["uploader"]].event(),
            "createdOn": int(patchset["created"]),
            "author": {"name": author.get("name", ""), "email": author.get("email", "")},
            "kind": "REWORK",
            "sizeInsertions": insertions,
            "sizeDeletions": -deletions,
        }

    def _emit(self, change: dict[str, Any], kind: str, fields: dict[str, Any]) -> None:
        event = {
            **fields,
            "change": self._change_event(change),
            "project": change["project"],
            "refName": f"refs/heads/{change['branch']}",
            "changeKey": {"id": change["change_id"]},
            "type": kind,
            "eventCreatedOn": int(self.clock()),
        }
        self._events.append(event)

    def _emit_ref_updated(
        self, project: str, ref: str, old: str, new: str, submitter: Account
    ) -> None:
        self._events.append(
            {
                "submitter": submitter.event(),
                "refUpdate": {"oldRev": old, "newRev": new, "refName": ref, "project": project},
                "type": "ref-updated",
                "eventCreatedOn": int(self.clock()),
            }
        )

    def _size(self, git_dir: Path, revision: str, parents: list[str]) -> tuple[int, int]:
        if not parents:
            return 0, 0
        out = _out(git("diff", "--numstat", parents[0], revision, git_dir=git_dir))
        added = deleted = 0
        for line in out.splitlines():
            a, d, _ = line.split("\t", 2)
            added += int(a) if a.isdigit() else 0
            deleted += int(d) if d.isdigit() else 0
        return added, deleted

    # -- REST -----------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "body": body})
            fault = self._take_fault(path)
        if fault is not None:
            self._respond(handler, fault, b"Internal server error\n", "text/plain")
            return
        user = None
        if path.startswith("/a/"):
            user = self._authenticate(handler.headers.get("Authorization"))
            if user is None:
                self._respond(
                    handler,
                    401,
                    b"Unauthorized\n",
                    "text/plain",
                    {"WWW-Authenticate": f'Basic realm="{SERVER_NAME}"'},
                )
                return
            path = path[2:]
        try:
            with self._lock:
                status, payload = self._route(method, path, query, body, user)
        except HttpError as exc:
            text = (exc.text + "\n").encode()
            self._respond(handler, exc.status, text, "text/plain")
            return
        except Exception as exc:  # a bug in the server: show it to the test
            self._respond(handler, 500, f"test server error: {exc!r}\n".encode(), "text/plain")
            raise
        if isinstance(payload, bytes):
            self._respond(handler, status, payload, "text/plain")
            return
        pretty = query.get("pp", ["0"])[-1] == "1"
        text = json.dumps(
            payload, indent=2 if pretty else None, separators=None if pretty else (",", ":")
        )
        self._respond(handler, status, MAGIC + text.encode(), "application/json")

    def _take_fault(self, path: str) -> int | None:
        for fault in self._faults:
            remaining, code, match = fault
            if remaining > 0 and (match is None or match in path):
                fault[0] -= 1
                return code
        return None

    def _authenticate(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(header[len("Basic ") :], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        if user == self.user and password == self.password:
            return user
        return None

    @staticmethod
    def _respond(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", f"{content_type}; charset=UTF-8")
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, user: str | None
    ) -> tuple[int, Any]:
        segments = [unquote(s) for s in path.split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()  # trailing slash
        if user is None:
            if method != "GET":
                raise HttpError(401, "Unauthorized")
            if segments[:3] == ["plugins", "events-log", "events"]:
                return 200, b""  # anonymous users see no events
            raise HttpError(404, "Not found")
        match method, segments:
            case "GET", ["accounts", "self"]:
                return 200, self._accounts[user].rest()
            case "GET", ["changes", cid] | ["changes", cid, "detail"]:
                options = set(query.get("o", []))
                if segments[-1] == "detail":
                    options |= {"LABELS", "DETAILED_LABELS", "DETAILED_ACCOUNTS", "MESSAGES"}
                return 200, self._change_info(self._find_change(cid), options)
            case "GET", ["changes", cid, "revisions", rev, "files"]:
                change = self._find_change(cid)
                return 200, self._files(change, self._find_patchset(change, rev))
            case "POST", ["changes", cid, "revisions", rev, "review"]:
                change = self._find_change(cid)
                patchset = self._find_patchset(change, rev)
                data = _json_body(body)
                votes = self._post_review(
                    change,
                    patchset,
                    user,
                    str(data.get("message") or ""),
                    dict(data.get("labels") or {}),
                    data.get("tag"),
                )
                return 200, {"labels": votes}
            case "POST", ["changes", cid, "submit"]:
                change = self._find_change(cid)
                self._submit(change, None, user)
                return 200, self._change_info(change, set())
            case "POST", ["changes", cid, "revisions", rev, "submit"]:
                change = self._find_change(cid)
                patchset = self._find_patchset(change, rev)
                self._submit(change, patchset["revision"], user)
                return 200, {"status": "MERGED"}
            case "POST", ["changes", cid, "abandon"]:
                change = self._find_change(cid)
                self._abandon(change, user)
                return 200, self._change_info(change, set())
            case "GET", ["projects", project, "branches", branch]:
                git_dir = self._repo(project)
                name = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
                tip = self._tip(git_dir, name[len("refs/heads/") :])
                if tip is None:
                    raise HttpError(404, f"Not found: {branch}")
                return 200, {"ref": name, "revision": tip}
            case "GET", ["plugins", "events-log", "events"]:
                return 200, self._events_log(query)
        raise HttpError(404, "Not found")

    def _events_log(self, query: dict[str, list[str]]) -> bytes:
        def parse(name: str, default: float) -> float:
            values = query.get(name)
            if not values:
                return default
            try:
                moment = datetime.datetime.strptime(values[-1], "%Y-%m-%d %H:%M:%S")
            except ValueError:
                raise HttpError(400, f"Bad request: {name}={values[-1]!r}") from None
            return moment.replace(tzinfo=datetime.UTC).timestamp()

        low, high = parse("t1", float("-inf")), parse("t2", float("inf"))
        lines = [
            json.dumps(event, separators=(",", ":"))
            for event in self._events
            if low <= event["eventCreatedOn"] <= high
        ]
        return "".join(line + "\n" for line in lines).encode()

    def _change_info(self, change: dict[str, Any], options: set[str]) -> dict[str, Any]:
        detailed = "DETAILED_ACCOUNTS" in options
        project = change["project"]
        git_dir = self._repo(project)
        current = change["patchsets"][-1]
        data = self._commit_data(git_dir, current["revision"])
        insertions, deletions = self._size(git_dir, current["revision"], data["parents"])
        info: dict[str, Any] = {
            "id": f"{quote(project, safe='')}~{change['number']}",
            "triplet_id": (
                f"{quote(project, safe='')}~{quote(change['branch'], safe='')}"
                f"~{change['change_id']}"
            ),
            "project": project,
            "branch": change["branch"],
            "hashtags": [],
            "change_id": change["change_id"],
            "subject": data["subject"],
            "status": change["status"],
            "created": _timestamp(change["created"]),
            "updated": _timestamp(change["updated"]),
            "submit_type": "MERGE_IF_NECESSARY",
            "insertions": insertions,
            "deletions": deletions,
            "total_comment_count": 0,
            "unresolved_comment_count": 0,
            "has_review_started": True,
            "_number": change["number"],
            "owner": self._accounts[change["owner"]].rest(detailed),
            "current_revision_number": current["number"],
        }
        if change["status"] == "MERGED":
            info["submitted"] = _timestamp(change["submitted"])
            info["submitter"] = self._accounts[change["submitter"]].rest(detailed)
        if options & {"LABELS", "DETAILED_LABELS"}:
            info["labels"] = self._labels(change, "DETAILED_LABELS" in options, detailed)
        if "MESSAGES" in options:
            info["messages"] = [
                {
                    **{k: v for k, v in m.items() if k not in ("author", "date")},
                    "author": self._accounts[m["author"]].rest(detailed),
                    "date": _timestamp(m["date"]),
                }
                for m in change["messages"]
            ]
        if options & {"CURRENT_REVISION", "ALL_REVISIONS"}:
            info["current_revision"] = current["revision"]
            wanted = change["patchsets"] if "ALL_REVISIONS" in options else [current]
            with_commit = bool(options & {"CURRENT_COMMIT", "ALL_COMMITS"})
            info["revisions"] = {
                ps["revision"]: self._revision_info(git_dir, ps, with_commit, detailed)
                for ps in wanted
            }
        return info

    def _revision_info(
        self, git_dir: Path, patchset: dict[str, Any], with_commit: bool, detailed: bool
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": "REWORK",
            "_number": patchset["number"],
            "created": _timestamp(patchset["created"]),
            "uploader": self._accounts[patchset["uploader"]].rest(detailed),
            "ref": patchset["ref"],
            "fetch": {},
        }
        if with_commit:
            data = self._commit_data(git_dir, patchset["revision"])

            def person(key: str) -> dict[str, Any]:
                who = data.get(key, {})
                return {k: who[k] for k in ("name", "email", "date", "tz") if k in who}

            info["commit"] = {
                "parents": [
                    {"commit": p, "subject": self._commit_data(git_dir, p)["subject"]}
                    for p in data["parents"]
                ],
                "author": person("author"),
                "committer": person("committer"),
                "subject": data["subject"],
                "message": data["message"],
            }
        return info

    def _labels(self, change: dict[str, Any], detailed: bool, accounts: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, values in LABELS.items():
            votes = change["votes"].get(label, {})
            info: dict[str, Any] = {"default_value": 0}
            if detailed:
                info["all"] = [
                    {
                        "value": value,
                        "permitted_voting_range": {"min": min(values), "max": max(values)},
                        **self._accounts[user].rest(accounts),
                    }
                    for user, value in votes.items()
                ]
                info["values"] = {
                    (f"{v:+d}" if v else " 0"): text for v, text in sorted(values.items())
                }
            if votes:
                low, high = min(votes.values()), max(votes.values())
                pick = {v: u for u, v in votes.items()}
                if low == min(values):
                    info["rejected"] = self._accounts[pick[low]].rest(accounts)
                elif high == max(values):
                    info["approved"] = self._accounts[pick[high]].rest(accounts)
                elif low < 0:
                    info["disliked"] = self._accounts[pick[low]].rest(accounts)
                elif high > 0:
                    info["recommended"] = self._accounts[pick[high]].rest(accounts)
                info["value"] = low if low < 0 else high
            out[label] = info
        return out

    def _files(self, change: dict[str, Any], patchset: dict[str, Any]) -> dict[str, Any]:
        git_dir = self._repo(change["project"])
        data = self._commit_data(git_dir, patchset["revision"])
        lines = data["message"].count("\n")
        files: dict[str, Any] = {
            "/COMMIT_MSG": {"status": "A", "lines_inserted": lines, "size_delta": 0, "size": 0}
        }
        base = data["parents"][0] if data["parents"] else None
        if base is None:
            return files
        status = _out(git("diff", "--name-status", base, patchset["revision"], git_dir=git_dir))
        numstat = _out(git("diff", "--numstat", base, patchset["revision"], git_dir=git_dir))
        counts = {}
        for line in numstat.splitlines():
            added, deleted, name = line.split("\t", 2)
            counts[name] = (int(added or 0), int(deleted or 0))
        for line in status.splitlines():
            kind, name = line.split("\t", 1)
            added, deleted = counts.get(name, (0, 0))
            entry: dict[str, Any] = {"size_delta": 0, "size": 0}
            if kind in ("A", "D"):
                entry["status"] = kind
            if added:
                entry["lines_inserted"] = added
            if deleted:
                entry["lines_deleted"] = deleted
            files[name] = entry
        return files


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "Invalid JSON in request") from None
    if not isinstance(data, dict):
        raise HttpError(400, "Expected a JSON object")
    return data


def _change_id_of(message: str) -> str:
    found = re.findall(r"^Change-Id:\s*(I[0-9a-f]{40})\s*$", message, re.MULTILINE)
    return found[-1] if found else ""


def _with_change_id(message: str, change_id: str | None = None) -> str:
    """Add a Change-Id footer as Gerrit's commit-msg hook does: into the last paragraph if
    that is a footer paragraph (so Depends-On: and the like stay footers), else as one."""
    if _change_id_of(message) and change_id is None:
        return message if message.endswith("\n") else message + "\n"
    change_id = change_id or "I" + hashlib.sha1(os.urandom(20)).hexdigest()
    text = re.sub(r"^Change-Id:.*\n?", "", message, flags=re.MULTILINE).rstrip("\n")
    paragraphs = text.split("\n\n")
    last = paragraphs[-1].split("\n")
    if len(paragraphs) > 1 and all(_TRAILER.match(line) for line in last):
        return f"{text}\nChange-Id: {change_id}\n"
    return f"{text}\n\nChange-Id: {change_id}\n"
