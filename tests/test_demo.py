"""gating.demo: the sample project repository and the change the demo gates.
(The whole demo runs in tests/integration/test_demo.py.)"""

from __future__ import annotations

import subprocess

from gating import demo
from gating.forge import LocalForge
from gating.localsite import LocalSite


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def test_sample_repo_is_created_once_with_the_spec(tmp_path):
    repo = demo.ensure_sample_repo(tmp_path)
    assert (repo / "hello-gating.spec").is_file()
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(repo, "branch", "--show-current").strip() == "main"
    again = demo.ensure_sample_repo(tmp_path)
    assert again == repo
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"


def test_propose_change_pushes_a_change_for_review_to_the_forge(tmp_path):
    seed = demo.ensure_sample_repo(tmp_path)
    site = LocalSite(tmp_path)
    forge = LocalForge(site.master_dir / "git")
    forge.ensure_project("sample-distgit", ["main"], seed)
    number = demo.propose_change(site)
    info = forge.change("sample-distgit", number)
    assert info.branch == "main" and info.status == "new"
    assert "Demo change" in info.subject
    # Proposed, not merged: main is still the imported commit.
    assert forge.branch_tip("sample-distgit", "main") == git(seed, "rev-parse", "HEAD").strip()
