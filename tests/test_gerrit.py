"""gating.gerrit against the Gerrit test server (Gerrit's REST wire protocol on loopback, real
bare repositories), and Buildbot's own GerritEventLogPoller reading the server's events-log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests
from buildbot.changes.gerritchangesource import GerritEventLogPoller
from buildbot.interfaces import IHttpResponse
from buildbot.process.properties import Properties
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.changesource import ChangeSourceMixin
from buildbot.util import httpclientservice
from twisted.internet import defer
from twisted.trial import unittest

from gating.forge import (
    BranchMoved,
    ForgeError,
    first_parent,
    publish,
    speculative_merge,
)
from gating.gerrit import (
    DEFAULT_RULE,
    GATE_TAG,
    GerritChangeInfo,
    GerritForge,
    approvals_from_change_properties,
    approved,
    change_ref,
    check_gerrit_project,
)
from tests.support.gerrit_server import MAGIC, GerritTestServer

USER = "gate"
PASSWORD = "s3cret-Pa55word"
APPROVE = {"Code-Review": 2, "Workflow": 1}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout.strip()


def bare(repo: Path, *args: str) -> str:
    return git(repo, f"--git-dir={repo}", *args)


def refs(repo: Path, prefix: str = "refs/") -> dict[str, str]:
    out = bare(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def make_forge(server: GerritTestServer, tmp_path: Path, **kwargs: Any) -> GerritForge:
    kwargs.setdefault("backoff", 0.01)
    return GerritForge(
        server.url,
        kwargs.pop("user", USER),
        kwargs.pop("password", PASSWORD),
        tmp_path / "mirror",
        git_url=str(server.root / "git") + "/{project}.git",
        **kwargs,
    )


@pytest.fixture
def gerrit(tmp_path: Path):
    server = GerritTestServer(tmp_path / "gerrit", USER, PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def forge(gerrit: GerritTestServer, tmp_path: Path) -> GerritForge:
    return make_forge(gerrit, tmp_path)


@pytest.fixture
def nova(gerrit: GerritTestServer) -> str:
    gerrit.create_project("nova", ["main", "stable"], {"nova.spec": "Version: 1\n"})
    return "nova"


def ready(gerrit: GerritTestServer, project: str, number: int) -> None:
    """A core reviewer approves the change for the gate."""
    gerrit.approve(project, number, APPROVE)


def rest(gerrit: GerritTestServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("auth", (USER, PASSWORD))
    return requests.request(method, gerrit.url + path, timeout=10, **kwargs)


def body(response: requests.Response) -> Any:
    assert response.content.startswith(MAGIC), response.content[:20]
    return json.loads(response.content[len(MAGIC) :])


# -- the test server speaks Gerrit --------------------------------------------------------


def test_server_rest_protocol(gerrit, nova):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    revision = bare(gerrit.root / "git/nova.git", "rev-parse", "refs/changes/01/1/1")

    # Authentication: /a/ needs basic auth, 401 with Gerrit's realm otherwise.
    for auth in (None, (USER, "wrong"), ("nobody", PASSWORD)):
        denied = rest(gerrit, "GET", f"/a/changes/nova~{number}", auth=auth)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"] == 'Basic realm="Gerrit Code Review"'
    assert rest(gerrit, "GET", f"/changes/nova~{number}", auth=None).status_code == 404

    # JSON: the magic prefix line, compact unless pp=1.
    response = rest(
        gerrit,
        "GET",
        f"/a/changes/nova~{number}",
        params=[("o", "CURRENT_REVISION"), ("o", "CURRENT_COMMIT")],
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.content.startswith(b")]}'\n{")
    assert len(response.content.splitlines()) == 2
    info = body(response)
    assert info["id"] == "nova~1"
    assert info["_number"] == number
    assert info["project"] == "nova" and info["branch"] == "main"
    assert info["status"] == "NEW" and info["subject"] == "Add a"
    assert info["change_id"].startswith("I") and len(info["change_id"]) == 41
    assert info["current_revision"] == revision
    current = info["revisions"][revision]
    assert current["_number"] == 1 and current["ref"] == "refs/changes/01/1/1"
    assert current["commit"]["parents"][0]["commit"] == gerrit.branch_tip(nova, "main")
    assert current["commit"]["message"].startswith("Add a\n\nChange-Id: I")
    assert current["commit"]["author"]["email"] == "developer@example.org"
    assert info["owner"] == {"_account_id": 1000002}
    pretty = rest(gerrit, "GET", f"/a/changes/{number}", params={"pp": "1"})
    assert pretty.content.startswith(b")]}'\n{\n  ")
    assert "revisions" not in body(pretty)  # no options, no revisions
    triplet = info["triplet_id"]
    assert body(rest(gerrit, "GET", f"/a/changes/{triplet}"))["_number"] == number

    branch = rest(gerrit, "GET", "/a/projects/nova/branches/refs%2Fheads%2Fmain")
    assert body(branch) == {"ref": "refs/heads/main", "revision": gerrit.branch_tip(nova, "main")}
    missing = rest(gerrit, "GET", "/a/projects/nova/branches/nope")
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("text/plain")
    assert rest(gerrit, "GET", "/a/changes/nova~99").status_code == 404

    files = rest(gerrit, "GET", f"/a/changes/{number}/revisions/1/files/")
    assert set(body(files)) == {"/COMMIT_MSG", "a.txt"}
    assert body(rest(gerrit, "GET", "/a/accounts/self"))["username"] == USER


def test_server_review_votes_and_events(gerrit, nova):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    response = rest(
        gerrit,
        "POST",
        f"/a/changes/nova~{number}/revisions/current/review",
        json={"message": "Build failed.", "labels": {"Verified": -1}},
    )
    assert response.status_code == 200 and body(response) == {"labels": {"Verified": -1}}
    assert gerrit.reviews(nova, number)[-1]["labels"] == {"Verified": -1}
    bad = rest(
        gerrit,
        "POST",
        f"/a/changes/nova~{number}/revisions/current/review",
        json={"labels": {"Verified": 2}},
    )
    assert bad.status_code == 403 and "restricted" in bad.text

    kinds = [event["type"] for event in gerrit.events()]
    assert kinds == ["patchset-created", "comment-added"]
    created, comment = gerrit.events()
    assert created["patchSet"]["ref"] == "refs/changes/01/1/1"
    assert created["change"]["url"] == f"{gerrit.url}/c/nova/+/1"
    assert comment["author"]["username"] == USER
    assert comment["comment"] == "Patch Set 1: Verified-1\n\nBuild failed."
    verified = next(a for a in comment["approvals"] if a["type"] == "Verified")
    assert verified == {
        "type": "Verified",
        "description": "Verified",
        "value": "-1",
        "oldValue": "0",
    }
    assert all(isinstance(e["eventCreatedOn"], int) for e in gerrit.events())


def test_server_events_log_t1_is_inclusive_utc(tmp_path):
    now = [86400.0 * 365]
    server = GerritTestServer(tmp_path / "g", USER, PASSWORD, clock=lambda: now[0]).start()
    try:
        server.create_project("nova")
        server.upload_change("nova", "main", {"a": "1"}, "A\n")  # at T
        now[0] += 10
        server.upload_change("nova", "main", {"b": "1"}, "B\n")  # at T+10

        def since(t1: str) -> list[dict]:
            response = rest(server, "GET", "/a/plugins/events-log/events/", params={"t1": t1})
            assert response.status_code == 200
            return [json.loads(line) for line in response.text.splitlines()]

        assert len(since("1970-01-01 00:00:00")) == 2
        assert [e["change"]["subject"] for e in since("1971-01-01 00:00:10")] == ["B"]
        assert since("1971-01-01 00:00:11") == []
        assert (
            rest(server, "GET", "/a/plugins/events-log/events/", params={"t1": "x"}).status_code
            == 400
        )
    finally:
        server.stop()


def test_server_submit_merges_like_gerrit(gerrit, nova):
    first = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    second = gerrit.upload_change(nova, "main", {"b.txt": "B\n"}, "Add b\n")
    clash = gerrit.upload_change(nova, "main", {"a.txt": "other\n"}, "Other a\n")
    old_tip = gerrit.branch_tip(nova, "main")

    # Submit requirements: Code-Review +2 and Verified +1, a -2 blocks.
    refused = rest(gerrit, "POST", f"/a/changes/nova~{first}/submit")
    assert refused.status_code == 409
    assert "submit requirement 'Code-Review' is unsatisfied" in refused.text
    for number in (first, second, clash):
        gerrit.approve(nova, number, {"Code-Review": 2, "Verified": 1})
    gerrit.add_account("grumpy", "Grumpy", "grumpy@example.org")
    gerrit.approve(nova, second, {"Code-Review": -2}, user="grumpy")
    assert rest(gerrit, "POST", f"/a/changes/nova~{second}/submit").status_code == 409
    gerrit.approve(nova, second, {"Code-Review": 0}, user="grumpy")

    # The first is a fast-forward...
    merged = rest(gerrit, "POST", f"/a/changes/nova~{first}/submit")
    assert merged.status_code == 200 and body(merged)["status"] == "MERGED"
    first_rev = bare(gerrit.root / "git/nova.git", "rev-parse", "refs/changes/01/1/1")
    assert gerrit.branch_tip(nova, "main") == first_rev
    # ...the second needs a merge commit, made by Gerrit...
    revision = bare(gerrit.root / "git/nova.git", "rev-parse", "refs/changes/02/2/1")
    submitted = rest(gerrit, "POST", f"/a/changes/nova~{second}/revisions/{revision}/submit")
    assert body(submitted) == {"status": "MERGED"}
    tip = gerrit.branch_tip(nova, "main")
    repo = gerrit.root / "git/nova.git"
    assert bare(repo, "log", "-1", "--format=%P", tip).split() == [first_rev, revision]
    assert bare(repo, "log", "-1", "--format=%s|%cn", tip) == 'Merge "Add b"|Gerrit Code Review'
    # ...and the third conflicts.
    conflict = rest(gerrit, "POST", f"/a/changes/nova~{clash}/submit")
    assert conflict.status_code == 409
    assert conflict.text.startswith("Failed to submit 1 change due to the following problems:")
    assert "could not be merged due to a path conflict" in conflict.text
    assert gerrit.branch_tip(nova, "main") == tip
    assert gerrit.status(nova, clash) == "NEW"
    assert rest(gerrit, "POST", f"/a/changes/nova~{first}/submit").status_code == 409

    kinds = [e["type"] for e in gerrit.events()]
    assert kinds.count("change-merged") == 2 and kinds.count("ref-updated") == 2
    updated = [e for e in gerrit.events() if e["type"] == "ref-updated"]
    assert updated[0]["refUpdate"] == {
        "oldRev": old_tip,
        "newRev": first_rev,
        "refName": "refs/heads/main",
        "project": "nova",
    }


# -- GerritForge: reading ---------------------------------------------------------------


def test_change_reads_rest(gerrit, nova, forge):
    number = gerrit.upload_change(
        nova, "main", {"nova.spec": "Version: 2\n"}, "Bump to 2\n\nDepends-On: glance~3\n"
    )
    info = forge.change(nova, number)
    assert isinstance(info, GerritChangeInfo)
    assert info.key == "nova~1" and info.branch == "main"
    assert info.revision == bare(gerrit.root / "git/nova.git", "rev-parse", "refs/changes/01/1/1")
    assert info.parent == gerrit.branch_tip(nova, "main")
    assert info.subject == "Bump to 2"
    assert info.depends_on == ("glance~3",)
    assert info.owner == "Dev Eloper <developer@example.org>"
    assert info.status == "new" and info.gerrit_status == "NEW"
    assert info.patchset == 1 and info.ref == "refs/changes/01/1/1" == change_ref(1, 1)
    assert info.change_id.startswith("I")
    assert info.message.endswith(f"Change-Id: {info.change_id}\n")

    new = gerrit.upload_patchset(nova, number, {"nova.spec": "Version: 3\n"})
    again = forge.change(nova, number)
    assert (again.revision, again.patchset, again.ref) == (new, 2, "refs/changes/01/1/2")
    assert again.change_id == info.change_id


def test_change_errors(gerrit, nova, forge):
    gerrit.create_project("glance")
    number = gerrit.upload_change("glance", "main", {"a": "1"}, "A\n")
    with pytest.raises(ForgeError, match=r"change nova~1 does not exist"):
        forge.change(nova, number)  # change 1 is glance's
    with pytest.raises(ForgeError, match="invalid change number"):
        forge.change(nova, 0)
    with pytest.raises(ForgeError, match="invalid Gerrit project"):
        forge.change("../etc", 1)


def test_branch_tip_syncs_mirror(gerrit, nova, forge):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    tip = forge.branch_tip(nova, "main")
    assert tip == gerrit.branch_tip(nova, "main")
    mirror = forge.repo_path(nova)
    assert mirror == forge.mirror_root / "nova.git"
    assert refs(mirror) == refs(gerrit.root / "git/nova.git")
    assert refs(mirror)["refs/changes/01/1/1"] == forge.change(nova, number).revision

    # Gerrit moves on; the mirror follows and keeps the gate's own refs.
    bare(mirror, "update-ref", "refs/gating/q/nova/1/1", tip)
    moved = gerrit.advance_branch(nova, "main", {"b.txt": "B\n"})
    assert forge.branch_tip(nova, "main") == moved
    assert refs(mirror)["refs/heads/main"] == moved
    assert refs(mirror)["refs/gating/q/nova/1/1"] == tip

    with pytest.raises(ForgeError, match="project nova has no branch 'nope' in Gerrit"):
        forge.branch_tip(nova, "nope")
    with pytest.raises(ForgeError, match="invalid branch"):
        forge.branch_tip(nova, "a..b")


def test_ensure_project_makes_and_syncs_the_mirror(gerrit, nova, forge, tmp_path, caplog):
    path = forge.ensure_project(nova, ["main", "stable"], seed=tmp_path / "ignored")
    assert path == forge.repo_path(nova)
    assert set(refs(path, "refs/heads/")) == {"refs/heads/main", "refs/heads/stable"}
    assert bare(path, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert forge.ensure_project(nova, ["main"]) == path  # idempotent

    # Gerrit's git unreachable: the master still starts, with a warning.
    down = GerritForge(
        gerrit.url,
        USER,
        PASSWORD,
        tmp_path / "other",
        git_url=str(tmp_path / "nowhere") + "/{project}.git",
    )
    with caplog.at_level(logging.WARNING, logger="gating.gerrit"):
        mirror = down.ensure_project(nova, ["main"])
    assert (mirror / "HEAD").is_file()
    assert "cannot sync the mirror of nova" in caplog.text


def test_approvals_read_every_vote(gerrit, nova, forge):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    assert not forge.is_approved(nova, number)
    gerrit.approve(nova, number, {"Code-Review": 2})
    assert not forge.is_approved(nova, number)
    gerrit.add_account("core2", "Core Two", "core2@example.org")
    gerrit.approve(nova, number, {"Workflow": 1}, user="core2")  # another core approves
    assert forge.is_approved(nova, number)
    votes = {(a["type"], a["value"], a["by"]["username"]) for a in forge.approvals(nova, number)}
    assert votes == {("Code-Review", "2", "reviewer"), ("Workflow", "1", "core2")}
    gerrit.add_account("grumpy", "Grumpy", "grumpy@example.org")
    gerrit.approve(nova, number, {"Code-Review": -2}, user="grumpy")
    assert not forge.is_approved(nova, number)


# -- GerritForge: the gate's speculative merges on the mirror, and landing --------------------


def test_speculative_merge_and_publish_on_the_mirror(gerrit, nova, forge, tmp_path):
    one = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    two = gerrit.upload_change(nova, "main", {"b.txt": "B\n"}, "Add b\n")
    infos = [forge.change(nova, n) for n in (one, two)]
    tip = forge.branch_tip(nova, "main")
    repo = forge.repo_path(nova)
    workdir = tmp_path / "work"
    result = speculative_merge(
        workdir, repo, "main", tip, [(info.key, info.revision) for info in infos]
    )
    assert result.commit is not None and result.conflict is None
    publish(repo, workdir, result.commit, "refs/gating/gate/nova/2/1")
    assert refs(repo)["refs/gating/gate/nova/2/1"] == result.commit
    first = first_parent(repo, result.commit)
    assert first_parent(repo, first) == tip

    # A worker fetches the speculative ref from the mirror, as from Zuul's mergers.
    worker = tmp_path / "worker"
    git(tmp_path, "init", "--quiet", str(worker))
    git(worker, "fetch", "--quiet", str(repo), "refs/gating/gate/nova/2/1")
    git(worker, "checkout", "--quiet", "FETCH_HEAD")
    assert (worker / "a.txt").read_text() == "A\n" and (worker / "b.txt").read_text() == "B\n"
    # Gerrit never saw it.
    assert "refs/gating/gate/nova/2/1" not in refs(gerrit.root / "git/nova.git")


def speculate(forge: GerritForge, tmp_path: Path, project: str, numbers: list[int]) -> list[str]:
    """The speculative commits of a queue of changes, as the gate makes them."""
    tip = forge.branch_tip(project, "main")
    items = [(f"{project}~{n}", forge.change(project, n).revision) for n in numbers]
    commits = []
    for i in range(len(items)):
        result = speculative_merge(
            tmp_path / "work", forge.repo_path(project), "main", tip, items[: i + 1]
        )
        assert result.commit is not None
        publish(forge.repo_path(project), tmp_path / "work", result.commit, f"refs/gating/{i}")
        commits.append(result.commit)
    return commits


def test_merge_submits_the_tested_change(gerrit, nova, forge, tmp_path):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    ready(gerrit, nova, number)
    revision = forge.change(nova, number).revision
    (commit,) = speculate(forge, tmp_path, nova, [number])
    tip = gerrit.branch_tip(nova, "main")

    forge.merge(nova, "main", commit, tip)

    assert gerrit.status(nova, number) == "MERGED"
    assert gerrit.branch_tip(nova, "main") == revision  # Gerrit fast-forwarded
    # Verified first (sites require it to submit), then the submit of the tested patchset.
    review = gerrit.reviews(nova, number)[-1]
    assert (review["user"], review["labels"], review["tag"]) == (USER, {"Verified": 1}, GATE_TAG)
    posts = [p for m, p in gerrit.request_log if m == "POST"]
    assert posts == [
        f"/a/changes/nova~1/revisions/{revision}/review",
        f"/a/changes/nova~1/revisions/{revision}/submit",
    ]
    assert forge.change(nova, number).status == "merged"
    assert refs(forge.repo_path(nova))["refs/heads/main"] == revision  # mirror synced
    # Asked again (the gate restarted after landing): nothing to do, no error.
    forge.merge(nova, "main", commit, tip)
    assert [p for m, p in gerrit.request_log if m == "POST"] == posts


def test_merge_queue_lands_in_gate_order(gerrit, nova, forge, tmp_path):
    """Gerrit's merge commits are not the gate's speculative ones: the items behind still
    land without a retest when Gerrit's landing has exactly the tested content."""
    numbers = [
        gerrit.upload_change(nova, "main", {f"{name}.txt": f"{name}\n"}, f"Add {name}\n")
        for name in ("a", "b", "c")
    ]
    for number in numbers:
        ready(gerrit, nova, number)
    commits = speculate(forge, tmp_path, nova, numbers)
    repo = forge.repo_path(nova)
    expected = gerrit.branch_tip(nova, "main")
    for commit in commits:
        assert first_parent(repo, commit) == expected
        forge.merge(nova, "main", commit, expected)
        expected = commit
    assert [gerrit.status(nova, n) for n in numbers] == ["MERGED"] * 3
    real = gerrit.branch_tip(nova, "main")
    assert real != commits[-1]  # Gerrit made its own merges...
    tree = "rev-parse", f"{real}^{{tree}}"
    assert bare(gerrit.root / "git/nova.git", *tree) == bare(
        repo, "rev-parse", f"{commits[-1]}^{{tree}}"
    )


def test_merge_is_compare_and_swap(gerrit, nova, forge, tmp_path):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    ready(gerrit, nova, number)
    (commit,) = speculate(forge, tmp_path, nova, [number])
    tip = gerrit.branch_tip(nova, "main")
    moved = gerrit.advance_branch(nova, "main", {"z.txt": "Z\n"}, "Someone pushed\n")

    with pytest.raises(BranchMoved) as caught:
        forge.merge(nova, "main", commit, tip)
    assert (caught.value.expected, caught.value.actual) == (tip, moved)
    assert gerrit.status(nova, number) == "NEW"
    assert not any(m == "POST" for m, _ in gerrit.request_log)

    # A landing with other content than tested is a move too.
    other = gerrit.upload_change(nova, "main", {"b.txt": "B\n"}, "Add b\n")
    ready(gerrit, nova, other)
    first, second = speculate(forge, tmp_path, nova, [other, number])
    gerrit.approve(nova, other, {"Verified": 1})
    gerrit.advance_branch(nova, "main", {"y.txt": "Y\n"})
    gerrit.submit(nova, other)
    with pytest.raises(BranchMoved):
        forge.merge(nova, "main", second, first)


def test_merge_refusals_are_forge_errors(gerrit, nova, forge, tmp_path):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    (commit,) = speculate(forge, tmp_path, nova, [number])
    tip = gerrit.branch_tip(nova, "main")

    # Not approved by a core reviewer: Gerrit's 409, in Gerrit's words.
    with pytest.raises(ForgeError) as caught:
        forge.merge(nova, "main", commit, tip)
    assert not isinstance(caught.value, BranchMoved)
    assert "HTTP 409" in str(caught.value)
    assert "submit requirement 'Code-Review' is unsatisfied" in str(caught.value)

    # A new patchset since the test: never submit what was not tested.
    ready(gerrit, nova, number)
    gerrit.upload_patchset(nova, number, {"a.txt": "A2\n"})
    ready(gerrit, nova, number)
    with pytest.raises(ForgeError, match="has a new patchset"):
        forge.merge(nova, "main", commit, tip)
    assert gerrit.status(nova, number) == "NEW"

    # Not a merge made by the gate.
    revision = forge.change(nova, number).revision
    forge.branch_tip(nova, "main")
    with pytest.raises(ForgeError, match="not a merge made by the gate"):
        forge.merge(nova, "main", revision, tip)
    with pytest.raises(ForgeError, match="not in the mirror"):
        forge.merge(nova, "main", "f" * 40, tip)
    gerrit.abandon(nova, number)
    assert forge.change(nova, number).status == "failed"


def test_merge_submit_5xx_is_not_retried_blindly(gerrit, nova, forge, tmp_path):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    ready(gerrit, nova, number)
    (commit,) = speculate(forge, tmp_path, nova, [number])
    tip = gerrit.branch_tip(nova, "main")
    gerrit.fail_next(1, 502, match="/submit")
    with pytest.raises(ForgeError, match="HTTP 502"):
        forge.merge(nova, "main", commit, tip)
    submits = [p for m, p in gerrit.request_log if m == "POST" and p.endswith("/submit")]
    assert len(submits) == 1
    assert gerrit.status(nova, number) == "NEW"
    forge.merge(nova, "main", commit, tip)  # the gate tries again later: it lands
    assert gerrit.status(nova, number) == "MERGED"


# -- GerritForge: verdicts --------------------------------------------------------------


def test_set_result_votes_verified_with_the_reason(gerrit, nova, forge):
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    info = forge.set_result(nova, number, "failed", "packstack failed on aarch64")
    review = gerrit.reviews(nova, number)[-1]
    assert review["user"] == USER
    assert review["labels"] == {"Verified": -1}
    assert review["message"] == "packstack failed on aarch64"
    assert (info.status, info.result_reason) == ("failed", "packstack failed on aarch64")
    comment = gerrit.events()[-1]
    assert comment["type"] == "comment-added" and comment["author"]["username"] == USER

    info = forge.set_result(nova, number, "new")
    assert gerrit.votes(nova, number).get("Verified", {}) == {}
    assert info.status == "new"
    forge.set_result(nova, number, "merged", "landed")
    assert gerrit.votes(nova, number)["Verified"] == {USER: 1}
    with pytest.raises(ForgeError, match="invalid status"):
        forge.set_result(nova, number, "great")
    with pytest.raises(ForgeError, match="does not exist"):
        forge.set_result(nova, 42, "failed", "x")


# -- GerritForge: failures ------------------------------------------------------------------


def test_auth_failure_is_clear_and_keeps_the_password(gerrit, nova, tmp_path, caplog):
    bad_password = "Not-The-Pa55word"
    wrong = make_forge(gerrit, tmp_path, password=bad_password)
    number = gerrit.upload_change(nova, "main", {"a.txt": "A\n"}, "Add a\n")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ForgeError) as caught:
            wrong.change(nova, number)
        with pytest.raises(ForgeError):
            wrong.set_result(nova, number, "failed", "x")
    message = str(caught.value)
    assert "401" in message and "'gate'" in message and "HTTP password" in message
    assert gerrit.url in message
    for text in (message, repr(wrong), caplog.text):
        assert bad_password not in text and PASSWORD not in text
    assert len([p for _, p in gerrit.request_log if p.startswith("/a/changes/")]) == 2  # no retry


def test_gets_are_retried_on_5xx(gerrit, nova, forge):
    gerrit.fail_next(2, 503)
    assert forge.branch_tip(nova, "main") == gerrit.branch_tip(nova, "main")
    branch_gets = [p for m, p in gerrit.request_log if p == "/a/projects/nova/branches/main"]
    assert len(branch_gets) == 3

    gerrit.fail_next(10, 500)
    few = GerritForge(
        gerrit.url,
        USER,
        PASSWORD,
        forge.mirror_root,
        retries=2,
        backoff=0.01,
        git_url=forge.git_url_template,
    )
    with pytest.raises(ForgeError, match=r"HTTP 500 \(after 3 attempts\)"):
        few.change(nova, 1)


def test_unreachable_gerrit(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    forge = GerritForge(
        f"http://127.0.0.1:{port}", USER, PASSWORD, tmp_path / "m", retries=2, backoff=0.01
    )
    with pytest.raises(ForgeError, match=r"did not answer .*\(after 3 attempts\)"):
        forge.branch_tip("nova", "main")


def test_git_gets_credentials_in_its_environment_only(tmp_path):
    forge = GerritForge("https://review.example.org/", USER, PASSWORD, tmp_path)
    assert forge.git_url("rpms/nova") == "https://review.example.org/a/rpms/nova"
    assert forge.repo_path("rpms/nova") == tmp_path / "rpms/nova.git"
    env = forge._git_env(forge.git_url("nova"))
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert PASSWORD not in repr(forge)
    other = forge._git_env("https://elsewhere.example.org/nova")
    assert "GIT_CONFIG_COUNT" not in other
    ssh = GerritForge(
        "https://review.example.org",
        USER,
        PASSWORD,
        tmp_path,
        git_url="ssh://gate@review.example.org:29418/{project}",
    )
    assert "GIT_CONFIG_COUNT" not in ssh._git_env(ssh.git_url("nova"))


@pytest.mark.parametrize(
    "name, ok",
    [
        ("nova", True),
        ("rpms/nova", True),
        ("a/b/c-d_e.f+g", True),
        ("../x", False),
        ("/x", False),
        ("x/", False),
        ("x.git", False),
        ("a//b", False),
        ("a/../b", False),
        ("", False),
        ("x y", False),
        # regression: the name check ended in '$', which also matches before a final newline
        ("nova\n", False),
        ("rpms/nova\n", False),
    ],
)
def test_project_names(name, ok):
    if ok:
        assert check_gerrit_project(name) == name
    else:
        with pytest.raises(ForgeError):
            check_gerrit_project(name)


# -- approvals (pure) -------------------------------------------------------------------


def votes(**labels: Any) -> list[dict]:
    out = []
    for label, values in labels.items():
        label = label.replace("_", "-")
        for value in values if isinstance(values, list) else [values]:
            out.append({"type": label, "value": value})
    return out


@pytest.mark.parametrize(
    "approvals, expected",
    [
        (votes(Code_Review="2", Workflow="1"), True),
        (votes(Code_Review=2, Workflow=1), True),
        (votes(Code_Review="+2", Workflow="+1"), True),
        (votes(Code_Review="2"), False),  # no Workflow
        (votes(Workflow="1"), False),
        (votes(Code_Review="1", Workflow="1"), False),  # +1 is not an approval
        (votes(Code_Review=["2", "-1"], Workflow="1"), True),  # a -1 does not block
        (votes(Code_Review=["2", "-2"], Workflow="1"), False),  # a -2 vetoes
        (votes(Code_Review="2", Workflow=["1", "-1"]), False),  # work in progress
        (votes(Code_Review="2", Workflow="0"), False),
        (votes(Code_Review="2", Workflow="1", Verified="-1"), True),  # not in the rule
        ([{"type": "CRVW", "value": "2"}, {"type": "Workflow", "value": "1"}], True),
        ([{"type": "Code-Review", "value": "x"}, {"type": "Workflow", "value": "1"}], False),
        ([{"type": "Code-Review"}, {"type": "Workflow", "value": "1"}], False),
        ([], False),
    ],
)
def test_approved_truth_table(approvals, expected):
    assert approved(approvals, DEFAULT_RULE) is expected


def test_approved_rules():
    assert approved([], {}) is True
    assert approved(votes(Verified="1"), {"Verified": 1}) is True
    assert approved(votes(Code_Review="2"), {"Code-Review": 2}) is True
    with pytest.raises(ValueError):
        approved([], {"Code-Review": 0})
    with pytest.raises(ForgeError):
        GerritForge("http://x", USER, PASSWORD, Path("/tmp"), approval_rule={"Workflow": -1})


COMMENT_ADDED_PROPERTIES = {
    "event.type": "comment-added",
    "event.approvals": [
        {"type": "Code-Review", "description": "Code-Review", "value": "2", "oldValue": "0"},
        {"type": "Workflow", "description": "Workflow", "value": "1", "oldValue": "0"},
    ],
    "event.author.name": "Rev Iewer",
    "event.author.email": "reviewer@example.org",
    "event.author.username": "reviewer",
    "event.change.project": "nova",
    "event.change.number": 1,
}


def test_approvals_from_change_properties_shapes():
    voter = {"name": "Rev Iewer", "email": "reviewer@example.org", "username": "reviewer"}
    plain = approvals_from_change_properties(COMMENT_ADDED_PROPERTIES)
    assert [(a["type"], a["value"], a["by"]) for a in plain] == [
        ("Code-Review", "2", voter),
        ("Workflow", "1", voter),
    ]
    assert approved(plain, DEFAULT_RULE)
    # As stored in the database / shown by the data API: {name: (value, source)}.
    pairs = {k: (v, "Change") for k, v in COMMENT_ADDED_PROPERTIES.items()}
    assert approvals_from_change_properties(pairs) == plain
    props = Properties()
    props.update(COMMENT_ADDED_PROPERTIES, "Change")
    assert approvals_from_change_properties(props) == plain
    assert approvals_from_change_properties({"event.type": "patchset-created"}) == []
    assert "by" not in COMMENT_ADDED_PROPERTIES["event.approvals"][0]  # copies


# -- Buildbot's GerritEventLogPoller on the test server ----------------------------------------


class LoopbackHTTPClientService(httpclientservice.HTTPClientService):
    """Buildbot's HTTPClientService (its URL, params and auth handling), making each request
    at once with ``requests`` to the loopback test server: the fake reactor needs no threads."""

    def _do_request(self, session, method, ep, **kwargs):
        url, kwargs = self._prepare_request(session, ep, kwargs)
        response = requests.request(method, url, timeout=30, **kwargs)
        return defer.succeed(IHttpResponse(httpclientservice.TxRequestsResponseWrapper(response)))


class GerritEventLogPollerTests(ChangeSourceMixin, TestReactorMixin, unittest.TestCase):
    """The real GerritEventLogPoller, driven as Buildbot's own tests drive it, polling the
    test server over HTTP."""

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.now = [1_700_000_000.0]
        root = Path(tempfile.mkdtemp(prefix="gerrit-poller-"))  # not trial's mktemp (in cwd)
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        self.gerrit = GerritTestServer(root, USER, PASSWORD, clock=lambda: self.now[0]).start()
        self.addCleanup(self.gerrit.stop)
        yield self.setUpChangeSource()
        self.master.httpservice = LoopbackHTTPClientService("")

    @defer.inlineCallbacks
    def make_poller(self, **kwargs):
        poller = GerritEventLogPoller(
            baseURL=self.gerrit.url + "/a",
            auth=kwargs.pop("auth", (USER, PASSWORD)),
            handled_events=["patchset-created", "comment-added", "change-merged"],
            gitBaseURL=self.gerrit.url,
            pollAtLaunch=False,
            **kwargs,
        )
        yield self.attachChangeSource(poller)
        yield self.startChangeSource()  # claims the service, activates the poller
        return poller

    def upload_and_approve(self):
        self.gerrit.create_project("nova")
        number = self.gerrit.upload_change("nova", "main", {"a.txt": "A\n"}, "Add a\n")
        self.now[0] += 1
        self.gerrit.approve("nova", number, APPROVE)
        return number

    @defer.inlineCallbacks
    def test_comment_added_carries_the_approvals(self):
        number = self.upload_and_approve()
        poller = yield self.make_poller()
        yield poller._connector.poll()

        request = self.gerrit.requests[-1]
        assert request["path"] == "/a/plugins/events-log/events/"
        assert request["query"] == {"t1": ["1969-12-02 00:00:00"]}  # 30 days before 0
        changes = self.master.data.updates.changesAdded
        assert [c["category"] for c in changes] == ["patchset-created", "comment-added"]
        comment = changes[1]
        revision = self.gerrit.events()[0]["patchSet"]["revision"]
        assert comment["project"] == "nova"
        assert comment["branch"] == "refs/changes/01/1/1"
        assert comment["revision"] == revision
        assert comment["repository"] == f"{self.gerrit.url}/nova"
        assert comment["author"] == "Dev Eloper <developer@example.org>"  # the owner
        props = comment["properties"]
        assert props["event.type"] == "comment-added"
        assert props["event.change.number"] == number
        assert props["event.change.project"] == "nova"
        assert props["event.patchSet.revision"] == revision
        assert props["event.author.username"] == "reviewer"
        assert props["target_branch"] == "main"
        assert props["event.source"] == "GerritEventLogPoller"
        assert {a["type"]: a["value"] for a in props["event.approvals"]} == {
            "Code-Review": "2",
            "Verified": "0",
            "Workflow": "1",
        }
        approvals = approvals_from_change_properties(props)
        assert approved(approvals, DEFAULT_RULE)
        assert {a["by"]["username"] for a in approvals} == {"reviewer"}
        assert not approvals_from_change_properties(changes[0]["properties"])
        state = yield self.master.db.state.getState(poller._oid, "last_event_ts")
        assert state == int(self.now[0])

    @defer.inlineCallbacks
    def test_next_poll_starts_at_the_last_event_second(self):
        self.upload_and_approve()
        poller = yield self.make_poller()
        yield poller._connector.poll()
        self.now[0] += 5
        self.gerrit.approve("nova", 1, {"Verified": 1}, user=USER)
        yield poller._connector.poll()

        request = self.gerrit.requests[-1]
        assert request["query"] == {"t1": ["2023-11-14 22:13:21"]}  # the last event, UTC
        categories = [c["category"] for c in self.master.data.updates.changesAdded]
        # t1 is inclusive: the poller sees the events of that second again (it does not
        # de-duplicate, unlike GerritChangeSource), so consumers must be idempotent.
        assert categories == ["patchset-created", "comment-added"] + ["comment-added"] * 2
        last = self.master.data.updates.changesAdded[-1]["properties"]
        assert not approved(approvals_from_change_properties(last), DEFAULT_RULE)

    @defer.inlineCallbacks
    def test_get_files_reads_the_rest_api(self):
        self.upload_and_approve()
        yield self.make_poller(get_files=True)
        yield self.changesource._connector.poll()
        files = [set(c["files"]) for c in self.master.data.updates.changesAdded]
        assert files == [{"/COMMIT_MSG", "a.txt"}] * 2

    @defer.inlineCallbacks
    def test_wrong_password_gives_no_changes(self):
        self.upload_and_approve()
        poller = yield self.make_poller(auth=(USER, "wrong"))
        yield poller._connector.poll()
        assert self.master.data.updates.changesAdded == []
        assert self.gerrit.request_log[-1] == ("GET", "/a/plugins/events-log/events/")
