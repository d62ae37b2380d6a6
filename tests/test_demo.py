"""gating.demo: the sample project repository and the commit that starts a run.
(The whole demo runs in tests/integration/test_demo.py.)"""

from __future__ import annotations

import subprocess

from gating import demo


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


def test_commit_change_adds_a_commit_on_main(tmp_path):
    repo = demo.ensure_sample_repo(tmp_path)
    revision = demo.commit_change(repo)
    assert git(repo, "rev-parse", "HEAD").strip() == revision
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "2"
    assert "Demo change" in git(repo, "log", "-1", "--format=%s")
