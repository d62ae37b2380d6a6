"""gating.forge: the embedded forge, with real git repositories and real pushes.

A developer clones ``<root>/<project>.git`` and pushes ``HEAD:refs/for/<branch>``; the
repository's hooks (this module, run by the venv's python) record the change.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gating import forge as forgemod
from gating.forge import (
    BranchMoved,
    ChangeInfo,
    ForgeError,
    LocalForge,
    MergeResult,
    first_parent,
    parse_change_id,
    parse_depends_on,
    parse_trailers,
    publish,
    speculative_merge,
)
from tests.support.badinput import BAD_INPUT, HOSTILE

ZERO = "0" * 40
CHANGE_ID = "I" + "0123456789abcdef" * 2 + "01234567"
OTHER_CHANGE_ID = "I" + "fedcba9876543210" * 2 + "76543210"


@pytest.fixture(autouse=True)
def git_env(monkeypatch):
    """Developers with a known identity and no personal git configuration."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Dev Eloper")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "dev@example.org")


def git(cwd: Path, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, input=input, check=False
    )
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def bare(repo: Path, *args: str) -> str:
    return git(repo, f"--git-dir={repo}", *args)


def write(clone: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = clone / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def commit(clone: Path, files: dict[str, str], message: str) -> str:
    """Commit ``files`` with exactly ``message``; the new commit id."""
    write(clone, files)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "--allow-empty", "--cleanup=verbatim", "-F", "-", input=message)
    return git(clone, "rev-parse", "HEAD").strip()


def push(clone: Path, refspec: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "push", "origin", refspec], cwd=clone, capture_output=True, text=True, check=False
    )


class Site:
    """A forge with project ``nova`` seeded from a repository with main and stable."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "forge"
        seed = tmp_path / "seed"
        seed.mkdir()
        git(seed, "init", "-q", "--initial-branch=main")
        commit(seed, {"nova.spec": "Name: nova\nVersion: 1\n", "shared.txt": "base\n"}, "Import\n")
        git(seed, "branch", "stable")
        self.seed = seed
        self.forge = LocalForge(self.root)
        self.repo = self.forge.ensure_project("nova", ["main", "stable"], seed)
        self.clones = 0

    def clone(self) -> Path:
        self.clones += 1
        path = self.tmp / "dev" / f"clone{self.clones}"
        git(self.tmp, "clone", "-q", str(self.repo), str(path))
        return path

    def propose(
        self,
        files: dict[str, str],
        message: str = "A change\n",
        branch: str = "main",
        clone: Path | None = None,
    ) -> ChangeInfo:
        clone = clone or self.clone()
        if branch != "main":
            git(clone, "checkout", "-q", "-B", branch, f"origin/{branch}")
        commit(clone, files, message)
        proc = push(clone, f"HEAD:refs/for/{branch}")
        assert proc.returncode == 0, proc.stderr
        return latest(self.forge)

    def workers_see(self, ref: str) -> str:
        return bare(self.repo, "rev-parse", "--verify", ref).strip()


def latest(forge: LocalForge) -> ChangeInfo:
    return max(forge.changes("nova"), key=lambda c: (c.number, c.patchset))


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


def tree(repo: Path, rev: str) -> dict[str, str]:
    """Path -> content of every file of ``rev``, names exactly as stored."""
    names = bare(repo, "ls-tree", "-r", "-z", "--name-only", rev).split("\0")
    return {n: bare(repo, "show", f"{rev}:{n}") for n in names if n}


def parents(repo: Path, rev: str) -> list[str]:
    return bare(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


# -- proposing changes -------------------------------------------------------------------


def test_push_to_refs_for_creates_a_change(site):
    clone = site.clone()
    tip = git(clone, "rev-parse", "HEAD").strip()
    message = f"Bump nova to 2\n\nBecause.\n\nChange-Id: {CHANGE_ID}\n"
    rev = commit(clone, {"nova.spec": "Name: nova\nVersion: 2\n"}, message)
    proc = push(clone, "HEAD:refs/for/main")
    assert proc.returncode == 0, proc.stderr
    assert "remote: change nova~1 created: Bump nova to 2" in proc.stderr
    assert "gating approve nova 1" in proc.stderr
    assert "refs/changes/1/1" in proc.stderr  # the client's own report of the ref
    assert site.forge.change("nova", 1) == ChangeInfo(
        project="nova",
        number=1,
        branch="main",
        revision=rev,
        parent=tip,
        subject="Bump nova to 2",
        message=message,
        owner="Dev Eloper <dev@example.org>",
        depends_on=(),
        status="new",
        result_reason="",
        patchset=1,
        change_id=CHANGE_ID,
    )
    info = site.forge.change("nova", 1)
    assert info.key == "nova~1"
    assert site.workers_see("refs/changes/1/1") == rev
    assert bare(site.repo, "for-each-ref", "refs/for/") == ""
    assert site.forge.branch_tip("nova", "main") == tip  # proposing merges nothing
    stored = json.loads((site.repo / "gating" / "changes" / "1.json").read_text())
    assert stored["revision"] == rev and stored["patchsets"][0]["ref"] == "refs/changes/1/1"


def test_same_change_id_is_a_new_patchset_another_commit_a_new_change(site):
    clone = site.clone()
    first = site.propose({"a.txt": "1\n"}, f"Add a\n\nChange-Id: {CHANGE_ID}\n", clone=clone)
    git(clone, "reset", "-q", "--hard", "origin/main")
    amended = commit(clone, {"a.txt": "2\n"}, f"Add a, better\n\nChange-Id: {CHANGE_ID}\n")
    proc = push(clone, "HEAD:refs/for/main")
    assert proc.returncode == 0, proc.stderr
    assert "change nova~1 patchset 2 uploaded: Add a, better" in proc.stderr
    second = site.forge.change("nova", 1)
    assert (second.number, second.patchset, second.revision) == (1, 2, amended)
    assert second.subject == "Add a, better"
    assert site.workers_see("refs/changes/1/1") == first.revision
    assert site.workers_see("refs/changes/1/2") == amended

    other = site.propose({"b.txt": "b\n"}, f"Add b\n\nChange-Id: {OTHER_CHANGE_ID}\n")
    assert (other.number, other.patchset) == (2, 1)
    no_id = site.propose({"c.txt": "c\n"}, "Add c\n")
    assert (no_id.number, no_id.change_id) == (3, "")
    # The same Change-Id on another branch is another change.
    stable = site.propose({"a.txt": "s\n"}, f"Add a\n\nChange-Id: {CHANGE_ID}\n", "stable")
    assert (stable.number, stable.branch, stable.patchset) == (4, "stable", 1)
    assert [c.number for c in site.forge.changes("nova")] == [1, 2, 3, 4]


def test_pushing_the_same_commit_again_changes_nothing(site):
    clone = site.clone()
    info = site.propose({"a.txt": "1\n"}, f"Add a\n\nChange-Id: {CHANGE_ID}\n", clone=clone)
    proc = push(clone, "HEAD:refs/for/main")
    assert proc.returncode == 0, proc.stderr
    assert "change nova~1 unchanged" in proc.stderr
    assert site.forge.changes("nova") == [info]


def test_new_patchset_reopens_a_failed_change_but_not_a_merged_one(site):
    clone = site.clone()
    site.propose({"a.txt": "1\n"}, f"Add a\n\nChange-Id: {CHANGE_ID}\n", clone=clone)
    site.forge.set_result("nova", 1, "failed", "rpmlint failed")
    commit(clone, {"a.txt": "2\n"}, f"Add a\n\nChange-Id: {CHANGE_ID}\n")
    assert push(clone, "HEAD:refs/for/main").returncode == 0
    info = site.forge.change("nova", 1)
    assert (info.patchset, info.status, info.result_reason) == (2, "new", "")
    site.forge.set_result("nova", 1, "merged")
    commit(clone, {"a.txt": "3\n"}, f"Add a again\n\nChange-Id: {CHANGE_ID}\n")
    assert push(clone, "HEAD:refs/for/main").returncode == 0
    assert latest(site.forge).number == 2
    assert site.forge.change("nova", 1).status == "merged"


def test_push_for_a_branch_that_does_not_exist_is_refused(site):
    clone = site.clone()
    commit(clone, {"a.txt": "1\n"}, "Add a\n")
    proc = push(clone, "HEAD:refs/for/nosuch")
    assert proc.returncode != 0
    assert "project nova has no branch 'nosuch' (branches: main, stable)" in proc.stderr
    assert "remote rejected" in proc.stderr
    assert site.forge.changes("nova") == []
    assert bare(site.repo, "for-each-ref", "refs/for/", "refs/changes/") == ""
    assert list((site.repo / "gating" / "changes").iterdir()) == []
    # A branch name git itself accepts but the forge does not.
    proc = push(clone, "HEAD:refs/for/-oops")
    assert proc.returncode != 0 and "cannot start with '-'" in proc.stderr
    assert site.forge.changes("nova") == []


def test_forge_namespaces_are_refused_branches_may_be_pushed(site):
    clone = site.clone()
    rev = commit(clone, {"a.txt": "1\n"}, "Add a\n")
    for ref in ("refs/changes/1/1", "refs/gating/rdo/1/1"):
        proc = push(clone, f"HEAD:{ref}")
        assert proc.returncode != 0
        assert "written by the forge only" in proc.stderr
    assert bare(site.repo, "for-each-ref", "refs/changes/", "refs/gating/") == ""
    # The branch moving outside the gate: allowed, the gate copes with it.
    assert push(clone, "HEAD:refs/heads/main").returncode == 0
    assert site.forge.branch_tip("nova", "main") == rev
    assert site.forge.changes("nova") == []


def test_post_receive_records_a_refs_for_ref_that_was_created(site):
    """Without proc-receive (e.g. an old git), the ref is created: post-receive records the
    change and deletes the ref so it does not block the next push."""
    bare(site.repo, "config", "--unset-all", "receive.procReceiveRefs")
    info = site.propose({"a.txt": "1\n"}, "Add a\n")
    assert (info.number, info.patchset) == (1, 1)
    assert bare(site.repo, "for-each-ref", "refs/for/") == ""
    assert site.workers_see("refs/changes/1/1") == info.revision
    second = site.propose({"b.txt": "1\n"}, "Add b\n")  # not a fast-forward of the first
    assert second.number == 2


def test_record_push_directly(site):
    clone = site.clone()
    rev = commit(clone, {"a.txt": "1\n"}, "Add a\n\nDepends-On: nova~9\n")
    assert push(clone, "HEAD:refs/heads/wip").returncode == 0
    assert site.forge.record_push("nova", "refs/heads/wip", ZERO, rev) is None
    assert site.forge.record_push("nova", "refs/for/main", rev, ZERO) is None
    info = site.forge.record_push("nova", "refs/for/main", ZERO, rev)
    assert info is not None and (info.number, info.depends_on) == (1, ("nova~9",))
    assert site.forge.record_push("nova", "refs/for/main", ZERO, rev) == info
    with pytest.raises(ForgeError, match="project nova has no branch 'nope'"):
        site.forge.record_push("nova", "refs/for/nope", ZERO, rev)
    blob = bare(site.repo, "rev-parse", f"{rev}:a.txt").strip()
    with pytest.raises(ForgeError, match="is not a commit"):
        site.forge.record_push("nova", "refs/for/main", ZERO, blob)


# -- commit messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Fix\n\nDepends-On: nova~3\n", ("nova~3",)),
        (
            "Fix\n\nBody.\n\ndepends-on: https://review.example.org/c/glance/+/12\n"
            "DEPENDS-ON:nova~3\nChange-Id: I123\n",
            ("https://review.example.org/c/glance/+/12", "nova~3"),
        ),
        ("Fix\n\nDepends-On: nova~3\nDepends-On: nova~3\n", ("nova~3",)),
        # Not in the trailer block: the title paragraph, or a paragraph that is prose.
        ("Fix\nDepends-On: nova~3\n", ()),
        ("Fix\n\nDepends-On: nova~3\n\nJust prose at the end.\n", ()),
        ("Fix\n\nSee below\nDepends-On: nova~3\n", ()),
        # Git-generated lines allow some prose in the block.
        ("Fix\n\nprose line\nDepends-On: nova~3\nSigned-off-by: A <a@b>\n", ("nova~3",)),
        # Continuation lines are folded, values kept as written otherwise.
        ("Fix\n\nDepends-On: https://example.org/a\n  /b?x=1\n", ("https://example.org/a /b?x=1",)),
        ("Fix\r\n\r\nDepends-On: nova~4\r\n", ("nova~4",)),
        ("", ()),
    ],
)
def test_depends_on(message, expected):
    assert parse_depends_on(message) == expected


def test_trailers_and_change_id():
    message = f"Title\n\nBody\n\nChange-Id: I1\nReviewed-by: X <x@y>\nChange-Id: {CHANGE_ID}\n"
    assert parse_trailers(message) == [
        ("Change-Id", "I1"),
        ("Reviewed-by", "X <x@y>"),
        ("Change-Id", CHANGE_ID),
    ]
    assert parse_change_id(message) == CHANGE_ID
    assert parse_change_id("Title\n\nBody\n") == ""


def test_depends_on_is_recorded_from_the_pushed_commit(site):
    info = site.propose(
        {"a.txt": "1\n"},
        "Add a\n\nNeeds glance.\n\nDepends-On: glance~2\ndepends-on: https://x.example/c/9\n",
    )
    assert info.depends_on == ("glance~2", "https://x.example/c/9")


# -- speculative merges ------------------------------------------------------------------


def test_speculative_merge_of_two_changes(site, tmp_path):
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    b = site.propose({"b.txt": "b\n"}, "Add b\n")
    base = site.forge.branch_tip("nova", "main")
    result = speculative_merge(
        tmp_path / "work", site.repo, "main", base, [(a.key, a.revision), (b.key, b.revision)]
    )
    assert result.conflict is None and result.base == base and result.commit
    publish(site.repo, tmp_path / "work", result.commit, "refs/gating/rdo/2/1")
    first, second = parents(site.repo, result.commit)
    assert second == b.revision
    assert parents(site.repo, first) == [base, a.revision]
    assert first_parent(site.repo, result.commit) == first
    files = tree(site.repo, result.commit)
    assert files["a.txt"] == "a\n" and files["b.txt"] == "b\n" and "nova.spec" in files
    assert bare(site.repo, "log", "-1", "--format=%s%n%an <%ae>%n%cn <%ce>", result.commit) == (
        "Merge change nova~2 into main\n"
        "buildbot-gating <gating@localhost>\nbuildbot-gating <gating@localhost>\n"
    )


def test_conflict_names_the_change_and_leaves_the_workdir_clean(site, tmp_path):
    a = site.propose({"shared.txt": "from a\n"}, "Change shared (a)\n")
    b = site.propose({"shared.txt": "from b\n", "new.txt": "n\n"}, "Change shared (b)\n")
    c = site.propose({"c.txt": "c\n"}, "Add c\n")
    base = site.forge.branch_tip("nova", "main")
    work = tmp_path / "work"
    items = [(a.key, a.revision), (b.key, b.revision), (c.key, c.revision)]
    result = speculative_merge(work, site.repo, "main", base, items)
    assert result == MergeResult(None, conflict="nova~2", base=base)
    assert "shared.txt" in result.detail
    (clone,) = [p for p in work.iterdir() if p.is_dir()]
    assert git(clone, "status", "--porcelain", "--ignored") == ""
    assert not (clone / ".git" / "MERGE_HEAD").exists()
    # The next call (without the failing change) works in the same scratch clone.
    ok = speculative_merge(work, site.repo, "main", base, [items[0], items[2]])
    assert ok.commit and ok.conflict is None
    publish(site.repo, work, ok.commit, "refs/gating/t")
    assert tree(site.repo, ok.commit) == {
        "nova.spec": "Name: nova\nVersion: 1\n",
        "shared.txt": "from a\n",
        "c.txt": "c\n",
    }
    # Order matters: b first, then a conflicts.
    assert speculative_merge(work, site.repo, "main", base, items[1::-1]).conflict == "nova~1"


def test_speculative_merges_are_deterministic(site, tmp_path):
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    b = site.propose({"b.txt": "b\n"}, "Add b\n")
    base = site.forge.branch_tip("nova", "main")
    items = [(a.key, a.revision), (b.key, b.revision)]
    one = speculative_merge(tmp_path / "w1", site.repo, "main", base, items)
    two = speculative_merge(tmp_path / "w2", site.repo, "main", base, items)
    again = speculative_merge(tmp_path / "w1", site.repo, "main", base, items)
    assert one.commit == two.commit == again.commit
    # An item's speculative commit is exactly the first parent of the one behind it, so
    # after the item ahead merges, the branch tip is what the next one was built on.
    ahead = speculative_merge(tmp_path / "w3", site.repo, "main", base, items[:1])
    assert ahead.commit is not None
    publish(site.repo, tmp_path / "w1", one.commit, "refs/gating/rdo/b/1")
    assert first_parent(site.repo, one.commit) == ahead.commit


def test_a_revision_already_in_the_base_is_skipped(site, tmp_path):
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    b = site.propose({"b.txt": "b\n"}, "Add b\n")
    base = site.forge.branch_tip("nova", "main")
    work = tmp_path / "work"
    merged = speculative_merge(work, site.repo, "main", base, [(a.key, a.revision)])
    assert merged.commit is not None
    publish(site.repo, work, merged.commit, "refs/gating/rdo/1/1")
    site.forge.merge("nova", "main", merged.commit, base)
    tip = site.forge.branch_tip("nova", "main")
    alone = speculative_merge(work, site.repo, "main", tip, [(a.key, a.revision)])
    assert alone.commit == tip  # no empty merge
    both = speculative_merge(
        work, site.repo, "main", tip, [(a.key, a.revision), (b.key, b.revision)]
    )
    assert both.commit is not None
    publish(site.repo, work, both.commit, "refs/gating/rdo/2/1")
    assert parents(site.repo, both.commit) == [tip, b.revision]


def test_unrelated_history_does_not_merge(site, tmp_path):
    clone = site.clone()
    git(clone, "checkout", "-q", "--orphan", "other")
    git(clone, "rm", "-q", "-rf", ".")
    commit(clone, {"x.txt": "x\n"}, "Unrelated\n")
    assert push(clone, "HEAD:refs/for/main").returncode == 0
    info = site.forge.change("nova", 1)
    assert info.parent == ""
    base = site.forge.branch_tip("nova", "main")
    result = speculative_merge(tmp_path / "w", site.repo, "main", base, [(info.key, info.revision)])
    assert (result.commit, result.conflict) == (None, "nova~1")


def test_scratch_clone_recovers_from_a_killed_git(site, tmp_path):
    a = site.propose({"shared.txt": "a\n"}, "A\n")
    b = site.propose({"shared.txt": "b\n"}, "B\n")
    base = site.forge.branch_tip("nova", "main")
    work = tmp_path / "work"
    speculative_merge(work, site.repo, "main", base, [(a.key, a.revision)])
    (clone,) = [p for p in work.iterdir() if p.is_dir()]
    # A master killed in the middle of a conflicting merge.
    subprocess.run(["git", "merge", "-q", b.revision], cwd=clone, capture_output=True)
    assert (clone / ".git" / "MERGE_HEAD").exists()
    (clone / ".git" / "index.lock").write_text("")
    (clone / "stray file").write_text("x")
    result = speculative_merge(work, site.repo, "main", base, [(b.key, b.revision)])
    assert result.commit and result.conflict is None


def test_merge_inputs_are_checked(site, tmp_path):
    base = site.forge.branch_tip("nova", "main")
    with pytest.raises(ForgeError, match="invalid revision of nova~1"):
        speculative_merge(tmp_path / "w", site.repo, "main", base, [("nova~1", "HEAD")])
    with pytest.raises(ForgeError, match="change nova~1: commit 1{40} is not in"):
        speculative_merge(tmp_path / "w", site.repo, "main", base, [("nova~1", "1" * 40)])
    with pytest.raises(ForgeError, match="cannot publish to 'refs/heads/main'"):
        publish(site.repo, tmp_path / "w", base, "refs/heads/main")
    with pytest.raises(ForgeError, match="not in the scratch clone"):
        publish(site.repo, tmp_path / "w", "2" * 40, "refs/gating/x")


def test_publish_makes_the_commit_fetchable_by_workers(site, tmp_path):
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    base = site.forge.branch_tip("nova", "main")
    work = tmp_path / "work"
    result = speculative_merge(work, site.repo, "main", base, [(a.key, a.revision)])
    assert result.commit
    publish(site.repo, work, result.commit, "refs/gating/rdo/1/1")
    publish(site.repo, work, result.commit, "refs/gating/rdo/1/1")  # idempotent
    worker = tmp_path / "worker"
    git(tmp_path, "init", "-q", str(worker))
    git(worker, "fetch", "-q", str(site.repo), "refs/gating/rdo/1/1")
    assert git(worker, "rev-parse", "FETCH_HEAD").strip() == result.commit
    # A new speculative state replaces the published one (force update).
    b = site.propose({"b.txt": "b\n"}, "Add b\n")
    other = speculative_merge(work, site.repo, "main", base, [(b.key, b.revision)])
    assert other.commit
    publish(site.repo, work, other.commit, "refs/gating/rdo/1/1")
    assert site.workers_see("refs/gating/rdo/1/1") == other.commit


# -- merging -----------------------------------------------------------------------------


def test_merge_is_a_compare_and_swap(site, tmp_path):
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    base = site.forge.branch_tip("nova", "main")
    work = tmp_path / "work"
    result = speculative_merge(work, site.repo, "main", base, [(a.key, a.revision)])
    assert result.commit
    publish(site.repo, work, result.commit, "refs/gating/rdo/1/1")

    # Someone pushes to main directly: the gate's expected tip is stale.
    clone = site.clone()
    moved = commit(clone, {"z.txt": "z\n"}, "Direct push\n")
    assert push(clone, "HEAD:refs/heads/main").returncode == 0
    with pytest.raises(BranchMoved) as exc:
        site.forge.merge("nova", "main", result.commit, base)
    assert (exc.value.expected, exc.value.actual) == (base, moved)
    assert "branch 'main' of project nova moved" in str(exc.value)
    assert site.forge.branch_tip("nova", "main") == moved

    # Rebuilt on the new tip, it merges.
    again = speculative_merge(work, site.repo, "main", moved, [(a.key, a.revision)])
    assert again.commit
    publish(site.repo, work, again.commit, "refs/gating/rdo/1/2")
    site.forge.merge("nova", "main", again.commit, first_parent(site.repo, again.commit))
    assert site.forge.branch_tip("nova", "main") == again.commit


def test_branch_contains_a_merged_commit_also_after_the_branch_moved_on(site, tmp_path):
    """What the export journal's recovery asks: is the change merged already?"""
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    b = site.propose({"b.txt": "b\n"}, "Add b\n")
    assert not forgemod.branch_contains(site.repo, "main", a.revision)
    site.forge.merge("nova", "main", a.revision, a.parent)
    assert forgemod.branch_contains(site.repo, "main", a.revision)
    work = tmp_path / "work"
    later = speculative_merge(work, site.repo, "main", a.revision, [(b.key, b.revision)])
    publish(site.repo, work, later.commit, "refs/gating/rdo/2/1")
    site.forge.merge("nova", "main", later.commit, a.revision)
    assert forgemod.branch_contains(site.repo, "main", a.revision)  # an ancestor now
    assert not forgemod.branch_contains(site.repo, "nosuch", a.revision)
    assert not forgemod.branch_contains(site.repo, "main", "3" * 40)  # not in the repo
    with pytest.raises(ForgeError, match="invalid commit"):
        forgemod.branch_contains(site.repo, "main", "HEAD")


def test_merge_refuses_what_is_not_a_fast_forward_or_not_there(site, tmp_path):
    a = site.propose({"a.txt": "a\n"}, "Add a\n")
    b = site.propose({"b.txt": "b\n"}, "Add b\n")
    with pytest.raises(ForgeError, match="does not descend from"):
        site.forge.merge("nova", "main", a.revision, b.revision)
    with pytest.raises(ForgeError, match="not in the repository"):
        site.forge.merge("nova", "main", "3" * 40, a.parent)
    with pytest.raises(ForgeError, match="project nova has no branch 'nosuch'"):
        site.forge.branch_tip("nova", "nosuch")
    # A plain change commit is a descendant: merging it is a fast-forward.
    site.forge.merge("nova", "main", a.revision, a.parent)
    assert site.forge.branch_tip("nova", "main") == a.revision


def test_set_result_persists(site):
    site.propose({"a.txt": "a\n"}, "Add a\n")
    info = site.forge.set_result("nova", 1, "failed", "rpmlint: 3 errors\nsee the log")
    assert (info.status, info.result_reason) == ("failed", "rpmlint: 3 errors\nsee the log")
    reread = LocalForge(site.root).change("nova", 1)
    assert reread == info
    with pytest.raises(ForgeError, match="change nova~1: invalid status 'bogus'"):
        site.forge.set_result("nova", 1, "bogus")
    with pytest.raises(ForgeError, match="change nova~7 does not exist"):
        site.forge.set_result("nova", 7, "merged")
    with pytest.raises(ForgeError, match="change nova~7 does not exist"):
        site.forge.change("nova", 7)
    with pytest.raises(ForgeError, match="project glance has no repository"):
        site.forge.change("glance", 1)


# -- repositories ------------------------------------------------------------------------


def test_ensure_project_is_idempotent(site):
    info = site.propose({"a.txt": "a\n"}, "Add a\n")
    refs = bare(site.repo, "for-each-ref")
    again = site.forge.ensure_project("nova", ["main", "stable"], site.seed)
    assert again == site.repo == site.forge.repo_path("nova") == site.root / "nova.git"
    assert bare(site.repo, "for-each-ref") == refs
    assert site.forge.changes("nova") == [info]
    assert bare(site.repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert set(site.forge.branches("nova")) == {"main", "stable"}
    for hook in ("pre-receive", "proc-receive", "post-receive"):
        path = site.repo / "hooks" / hook
        assert path.stat().st_mode & stat.S_IXUSR
        text = path.read_text()
        assert sys.executable in text and f"gating.forge {hook}" in text
    assert [p.name for p in site.root.iterdir()] == ["nova.git"]  # no temporary leftovers


def test_ensure_project_without_seed_and_names_checked(tmp_path):
    forge = LocalForge(tmp_path / "forge")
    repo = forge.ensure_project("glance", ["main"])
    assert forge.changes() == [] and forge.branches("glance") == []
    with pytest.raises(ForgeError, match="project glance has no branch 'main'"):
        forge.branch_tip("glance", "main")
    assert repo.is_dir()
    for name in ("../evil", "a/b", "-x", "Nova", ""):
        with pytest.raises(ForgeError, match="invalid project name"):
            forge.ensure_project(name, ["main"])
    with pytest.raises(ForgeError, match="invalid branch 'a b' of project glance"):
        forge.ensure_project("glance", ["a b"])


def test_changes_of_every_project(site, tmp_path):
    site.propose({"a.txt": "a\n"}, "Add a\n")
    seed = tmp_path / "seed2"
    git(tmp_path, "init", "-q", "--initial-branch=main", str(seed))
    commit(seed, {"g.spec": "g\n"}, "Import glance\n")
    repo = site.forge.ensure_project("glance", ["main"], seed)
    clone = tmp_path / "glance-dev"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    commit(clone, {"g.txt": "g\n"}, "Glance change\n")
    assert push(clone, "HEAD:refs/for/main").returncode == 0
    assert [c.key for c in site.forge.changes()] == ["glance~1", "nova~1"]


# -- untrusted input ---------------------------------------------------------------------

HOSTILE_BRANCHES = ["$(touch${IFS}pwned)", "a;b", "`touch${IFS}pwned`|x&&y", "x'\"<>"]


@pytest.mark.parametrize("branch", HOSTILE_BRANCHES)
def test_hostile_names_are_data(site, tmp_path, monkeypatch, branch):
    monkeypatch.chdir(tmp_path)  # a shell would run in some cwd under tmp_path
    clone = site.clone()
    assert push(clone, f"HEAD:refs/heads/{branch}").returncode == 0
    git(clone, "fetch", "-q", "origin")
    git(clone, "checkout", "-q", "-b", "work", f"origin/{branch}")
    message = (
        "Hostile $(touch pwned) `touch pwned`; touch pwned \x1b[31mred\x1b[0m\n"
        "second title line | touch pwned && touch pwned\n\n"
        "Body with 'quotes' \"double\" \\ backslash $HOME\n\tand a tab\n\n"
        f"Depends-On: $(touch pwned)\nChange-Id: {CHANGE_ID}\n"
    )
    files = {
        "my file; $(touch pwned).txt": "spaces\n",
        "dir with space/`touch pwned`.txt": "ticks\n",
        "-n.txt": "dash\n",
        "new\nline.txt": "newline in a name\n",
    }
    rev = commit(clone, files, message)
    proc = push(clone, f"HEAD:refs/for/{branch}")
    assert proc.returncode == 0, proc.stderr
    # Control characters are not replayed on the pusher's terminal.
    assert "\x1b" not in proc.stderr and "\\x1b[31mred" in proc.stderr
    assert "change nova~1 created: Hostile $(touch pwned)" in proc.stderr

    info = site.forge.change("nova", 1)
    assert info.branch == branch
    assert info.message == message
    assert info.subject == (
        "Hostile $(touch pwned) `touch pwned`; touch pwned \x1b[31mred\x1b[0m "
        "second title line | touch pwned && touch pwned"
    )
    assert info.depends_on == ("$(touch pwned)",)
    assert info.revision == rev

    base = site.forge.branch_tip("nova", branch)
    work = tmp_path / "work"
    result = speculative_merge(work, site.repo, branch, base, [(info.key, info.revision)])
    assert result.commit
    publish(site.repo, work, result.commit, f"refs/gating/{branch}/1/1")
    assert site.workers_see(f"refs/gating/{branch}/1/1") == result.commit
    content = tree(site.repo, result.commit)
    for name, text in files.items():
        assert content[name] == text
    site.forge.merge("nova", branch, result.commit, base)
    assert site.forge.branch_tip("nova", branch) == result.commit
    site.forge.set_result("nova", 1, "merged", f"merged into {branch}")
    assert site.forge.change("nova", 1).result_reason == f"merged into {branch}"
    assert not list(tmp_path.rglob("pwned"))
    assert not (Path.cwd() / "pwned").exists()


def test_invalid_ref_names_are_refused_before_anything_runs(site, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clone = site.clone()
    commit(clone, {"a.txt": "a\n"}, "Add a\n")
    for branch in ("$(touch pwned)", "a b", "x\ny"):
        proc = push(clone, f"HEAD:refs/for/{branch}")
        assert proc.returncode != 0
    assert site.forge.changes("nova") == []
    for bad in ("$(touch pwned)", "x\ny", "-f", "a..b", "a.lock", "@{x}"):
        with pytest.raises(ForgeError, match="invalid branch"):
            site.forge.branch_tip("nova", bad)
    assert not list(tmp_path.rglob("pwned"))


class Recorder:
    """subprocess.run of gating.forge, recorded: (argv, keyword arguments) of each call."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[list[str], dict]] = []
        real = subprocess.run

        def run(argv, **kwargs):
            self.calls.append((argv, kwargs))
            return real(argv, **kwargs)

        monkeypatch.setattr(forgemod.subprocess, "run", run)

    def argv(self, *words: str) -> list[list[str]]:
        """The argv of every call that has all ``words`` as arguments."""
        return [argv for argv, _ in self.calls if all(w in argv for w in words)]


# A name git takes as a branch, full of shell syntax.
SHELL_BRANCH = "x$(touch${IFS}pwned)`id`;y|z&&w>v'\"<u"


def test_hostile_branch_and_message_are_single_arguments_of_git(site, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clone = site.clone()
    assert push(clone, f"HEAD:refs/heads/{SHELL_BRANCH}").returncode == 0
    git(clone, "fetch", "-q", "origin")
    git(clone, "checkout", "-q", "-b", "work", f"origin/{SHELL_BRANCH}")
    rev = commit(clone, {"-f; $(touch pwned)": "x\n"}, "$(touch pwned)\n\n--upload-pack=x\n")
    assert push(clone, f"HEAD:refs/for/{SHELL_BRANCH}").returncode == 0
    key = site.forge.change("nova", 1).key
    calls = Recorder(monkeypatch)

    base = site.forge.branch_tip("nova", SHELL_BRANCH)
    work = tmp_path / "work"
    merged = speculative_merge(work, site.repo, SHELL_BRANCH, base, [(key, rev)]).commit
    publish(site.repo, work, merged, f"refs/gating/{SHELL_BRANCH}/1/1")
    site.forge.merge("nova", SHELL_BRANCH, merged, base)

    git_dir = f"--git-dir={site.repo}"
    assert calls.argv(f"refs/heads/{SHELL_BRANCH}^{{commit}}")[0] == [
        "git",
        git_dir,
        "rev-parse",
        "--verify",
        "--quiet",
        f"refs/heads/{SHELL_BRANCH}^{{commit}}",
    ]
    assert calls.argv("merge", "--no-ff") == [
        [
            "git",
            "merge",
            "--no-ff",
            "--no-edit",
            "--no-verify",
            "--no-signoff",
            "-m",
            f"Merge change nova~1 into {SHELL_BRANCH}\n",
            rev,
        ]
    ]
    assert calls.argv("update-ref") == [
        [
            "git",
            git_dir,
            "update-ref",
            "-m",
            f"gating: merge {merged}",
            f"refs/heads/{SHELL_BRANCH}",
            merged,
            base,
        ]
    ]
    for argv, kwargs in calls.calls:
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        assert not kwargs.get("shell")
        # the branch is only ever inside one argument: a ref name or a message
        for arg in argv:
            assert SHELL_BRANCH not in arg or arg.startswith(
                ("refs/heads/", "Merge change ", f"+{merged}:refs/gating/")
            )
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.parametrize("branch", [b for b in HOSTILE if forgemod.branch_error(b)])
def test_hostile_branches_git_would_misread_are_refused_before_git_runs(
    site, tmp_path, monkeypatch, branch
):
    base = site.forge.branch_tip("nova", "main")
    calls = Recorder(monkeypatch)
    with pytest.raises(ForgeError, match="invalid branch"):
        site.forge.branch_tip("nova", branch)
    with pytest.raises(ForgeError, match="invalid branch"):
        speculative_merge(tmp_path / "w", site.repo, branch, base, [])
    with pytest.raises(ForgeError, match="invalid branch"):
        site.forge.merge("nova", branch, base, base)
    with pytest.raises(ForgeError, match="invalid branch"):
        site.forge.record_push("nova", f"refs/for/{branch}", ZERO, base)
    if forgemod.branch_error(f"gating/{branch}"):  # '-x' is fine inside refs/gating/
        with pytest.raises(ForgeError, match="invalid branch"):
            publish(site.repo, tmp_path / "w", base, f"refs/gating/{branch}")
    assert calls.calls == [] or all(
        branch not in " ".join(argv) for argv, _ in calls.calls
    )  # only the repository checks of _repo() ran, never with the branch


def test_options_and_lines_are_refused_where_git_wants_a_repository_or_a_commit(
    site, tmp_path, monkeypatch
):
    base = site.forge.branch_tip("nova", "main")
    calls = Recorder(monkeypatch)
    # a URL or host:path that is an option is refused; anything else is a local path
    for repo in ("--upload-pack=touch pwned:x", "-oProxyCommand=touch pwned:x"):
        with pytest.raises(ForgeError, match="invalid repository"):
            speculative_merge(tmp_path / "w", repo, "main", base, [])
    assert forgemod._repo_arg("--upload-pack=touch pwned") == str(
        Path.cwd() / "--upload-pack=touch pwned"
    )
    # regression: the id checks ended in '$', which also matches before a final newline
    for oid in (base + "\n", "--all", "HEAD", base.upper() + "x"):
        with pytest.raises(ForgeError, match="expected a full hexadecimal commit id"):
            speculative_merge(tmp_path / "w", site.repo, "main", oid, [])
        with pytest.raises(ForgeError, match="expected a full hexadecimal commit id"):
            site.forge.merge("nova", "main", oid, base)
    assert calls.calls == [] or all("--upload-pack" not in " ".join(a) for a, _ in calls.calls)
    for name in ("nova\n", "-nova", "--upload-pack=x", "../nova"):
        with pytest.raises(ForgeError, match="invalid project name"):
            site.forge.branch_tip(name, "main")


def test_a_100_kb_branch_name_is_one_argument_and_no_branch(site, monkeypatch):
    long = "x" * 100_000
    calls = Recorder(monkeypatch)
    with pytest.raises(ForgeError, match="has no branch"):
        site.forge.branch_tip("nova", long)
    assert [argv[2:] for argv, _ in calls.calls] == [
        ["rev-parse", "--verify", "--quiet", f"refs/heads/{long}^{{commit}}"]
    ]


def test_a_branch_name_must_be_utf8():
    assert forgemod.branch_error("caf\udce9") == "a branch name must be UTF-8 text"
    assert forgemod.branch_error("café") is None


def _git_accepts_branch(name: str) -> bool:
    proc = subprocess.run(
        ["git", "check-ref-format", "--branch", name],
        capture_output=True,
        env=forgemod.git_env(),
        cwd=os.devnull.rsplit("/", 1)[0] or "/",
        check=False,
    )
    return proc.returncode == 0


_REF_PIECES = st.sampled_from(
    [*"ab.-/@{}~^:?*[\\ \t\n\x7f\x01", "lock", "HEAD", "é", "\udce9", "refs/", "$(x)"]
)


@settings(BAD_INPUT)  # 1,000 examples like every suite; each runs git (~5 s)
@given(st.lists(_REF_PIECES, max_size=8).map("".join))
def test_branch_names_the_forge_accepts_are_branch_names_git_accepts(name):
    """branch_error() is git check-ref-format --branch, a little stricter: it also refuses
    '@' (which git expands to the current branch) and names that are not UTF-8."""
    if "\0" in name:
        assert forgemod.branch_error(name)
        return
    ours = forgemod.branch_error(name) is None
    git_ok = _git_accepts_branch(name)
    if ours:
        assert git_ok, name
    elif git_ok:
        assert name == "@" or forgemod.branch_error(name) == "a branch name must be UTF-8 text"


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_pushes_get_distinct_numbers(site):
    clones = []
    for i in range(6):
        clone = site.clone()
        commit(clone, {f"f{i}.txt": f"{i}\n"}, f"Change {i}\n")
        clones.append(clone)
    start = threading.Barrier(len(clones))

    def go(clone: Path) -> subprocess.CompletedProcess[str]:
        start.wait()
        return push(clone, "HEAD:refs/for/main")

    with ThreadPoolExecutor(len(clones)) as pool:
        results = list(pool.map(go, clones))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    changes = site.forge.changes("nova")
    assert sorted(c.number for c in changes) == [1, 2, 3, 4, 5, 6]
    assert sorted(c.subject for c in changes) == [f"Change {i}" for i in range(6)]
    refs = bare(site.repo, "for-each-ref", "--format=%(refname)", "refs/changes/").split()
    assert sorted(refs) == sorted(f"refs/changes/{n}/1" for n in range(1, 7))


def test_concurrent_record_push_calls(site):
    clone = site.clone()
    revs = []
    for i in range(8):
        git(clone, "checkout", "-q", "-B", f"w{i}", "origin/main")
        revs.append(commit(clone, {f"f{i}.txt": "x\n"}, f"W{i}\n\nChange-Id: {CHANGE_ID}\n"))
        assert push(clone, f"HEAD:refs/heads/wip{i}").returncode == 0
    forge = LocalForge(site.root)
    start = threading.Barrier(len(revs))

    def go(rev: str) -> ChangeInfo | None:
        start.wait()
        return forge.record_push("nova", "refs/for/main", ZERO, rev)

    with ThreadPoolExecutor(len(revs)) as pool:
        infos = list(pool.map(go, revs))
    # One change: every push after the first one is a new patchset of it.
    assert {i.number for i in infos if i} == {1}
    assert sorted(i.patchset for i in infos if i) == list(range(1, 9))
    assert forge.change("nova", 1).patchset == 8


def test_hook_entry_point_usage():
    assert forgemod.main(["bogus"]) == 2
