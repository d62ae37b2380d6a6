"""gating.overlay: what the built-in jobs build, and how overlays and repo files look."""

from __future__ import annotations

import subprocess

import pytest

from gating.overlay import (
    RunError,
    overlay_name,
    overlay_prefix,
    packages_to_build,
    repo_file,
    rpmbuild_command,
    scm_branch,
    stale_overlays,
)

C1, C2, C3, C4 = ("1" * 40, "2" * 40, "3" * 40, "4" * 40)


def ahead(change: str, project: str, commit: str | None) -> dict:
    return {"change": change, "project": project, "merge_commit": commit}


def test_an_item_alone_builds_its_own_package():
    assert packages_to_build("ceilometer", C1) == [("ceilometer", C1)]


def test_seed_000_ceilometer_behind_nova_builds_both():
    assert packages_to_build("ceilometer", C2, [ahead("nova~1", "nova", C1)]) == [
        ("nova", C1),
        ("ceilometer", C2),
    ]


def test_one_build_per_package_at_its_newest_commit_in_gate_order():
    # nova~1 then nova~3 ahead: nova~3's merge commit contains nova~1's change.
    got = packages_to_build(
        "glance",
        C4,
        [
            ahead("nova~1", "nova", C1),
            ahead("ceilometer~2", "ceilometer", C2),
            ahead("nova~3", "nova", C3),
        ],
    )
    assert got == [("ceilometer", C2), ("nova", C3), ("glance", C4)]


def test_the_items_own_commit_wins_over_an_item_ahead_of_the_same_project():
    assert packages_to_build("nova", C2, [ahead("nova~1", "nova", C1)]) == [("nova", C2)]


@pytest.mark.parametrize(
    "entry, message",
    [
        (ahead("nova~1", "nova", None), "item ahead #1 \\(nova~1\\) merge commit"),
        (ahead("nova~1", "nova", "HEAD"), "expected a full commit id"),
        (ahead("x~1", "../etc", C1), "expected a project name"),
        # regression: the checks ended in '$', which also matches before a final newline
        (ahead("nova~1", "nova", C1 + "\n"), "expected a full commit id"),
        (ahead("x~1", "nova\n", C1), "expected a project name"),
    ],
)
def test_bad_ahead_entries_are_named(entry, message):
    with pytest.raises(RunError, match=message):
        packages_to_build("ceilometer", C2, [entry])


def test_overlay_names():
    assert overlay_name("rdo", "nova~3", 2) == "gate-rdo-nova-3-2"
    assert overlay_name(None, None, None, 41) == "run-41"
    assert overlay_name("rdo", "nova~3", 2).startswith(overlay_prefix("rdo", "nova~3"))
    assert not overlay_name("rdo", "nova~3", 12).startswith(overlay_prefix("rdo", "nova~31"))
    with pytest.raises(RunError):
        overlay_name(None, None, None)


def test_repo_file_layers_the_overlay_over_the_destination():
    text = repo_file(
        [("gating-overlay", "http://127.0.0.1:8010/o/", 1), ("gating-dist", "file:///d/", 50)]
    )
    assert "[gating-overlay]\n" in text and "baseurl=http://127.0.0.1:8010/o/\n" in text
    assert "priority=1\n" in text and "priority=50\n" in text
    assert text.count("\ngpgcheck=0\n") == 2
    with pytest.raises(RunError):
        repo_file([("bad id", "http://x/", 1)])
    with pytest.raises(RunError):
        repo_file([("ok", "http://x/\n[evil]", 1)])


def test_scm_branch():
    assert scm_branch(C1) == f"refs/heads/gating/{C1}"
    with pytest.raises(RunError):
        scm_branch("main")


def test_rpmbuild_command_passes_defines_as_arguments(tmp_path):
    argv = rpmbuild_command([("dist", ".el9")], check_build_deps=False)
    assert argv[:2] == ["sh", "-c"]
    assert argv[3:] == ["gating-rpmbuild", "--define", "dist .el9", "--nodeps"]
    with pytest.raises(RunError):
        rpmbuild_command([("bad name", "x")])


def test_rpmbuild_script_refuses_zero_or_two_spec_files(tmp_path):
    (tmp_path / "src").mkdir()
    proc = subprocess.run(rpmbuild_command(), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "need exactly one *.spec file" in proc.stderr and "found 0" in proc.stderr
    (tmp_path / "src" / "a.spec").write_text("")
    (tmp_path / "src" / "b.spec").write_text("")
    proc = subprocess.run(rpmbuild_command(), cwd=tmp_path, capture_output=True, text=True)
    assert "found 2" in proc.stderr


def test_only_earlier_attempts_of_the_same_item_are_stale():
    prefix = overlay_prefix("rdo", "nova~1")
    names = [
        "gate-rdo-nova-1-1",
        "gate-rdo-nova-1-2",
        "gate-rdo-nova-1-3",
        "gate-rdo-nova-12-1",  # another change whose number starts the same
        "gate-rdo-nova-1-x",
        "run-7",
    ]
    assert stale_overlays(names, prefix, "gate-rdo-nova-1-2") == ["gate-rdo-nova-1-1"]
    assert stale_overlays(names, prefix, "gate-rdo-nova-1-3") == [
        "gate-rdo-nova-1-1",
        "gate-rdo-nova-1-2",
    ]
    # A killed attempt's late build never removes its successor's overlay.
    assert stale_overlays(names, prefix, "gate-rdo-nova-1-1") == []
    assert stale_overlays(names, prefix, "run-7") == []
