"""Tests of gating.commands: the argv a job instance runs on a worker.

Values from a pipeline file (package names, globs, paths) must reach the worker as
separate argv elements, never as shell text. Some tests run the commands for real.
"""

import shutil
import subprocess
import tarfile
import textwrap

import pytest

from gating.commands import (
    INPUT_TARBALL,
    OUTPUT_STAGING,
    OUTPUT_TARBALL,
    PLUGIN_RUN,
    artifact_path,
    collect_output_command,
    environment,
    pack_output_command,
    package_command,
    run_script,
    script_command,
    snap_command,
    unpack_input_command,
)
from gating.diagnostics import Collector
from gating.pipeline import Job, Mark, Snap, parse_pipeline

HOSTILE = [
    "$(rm -rf /)",
    "`rm -rf /`",
    "pkg; rm -rf /",
    "a\nrm -rf /",
    "name with spaces",
    "--force",
    "'quoted'",
    '"double"',
    "*",
    "a && b || c | d > e < f",
]

needs_bash_tar = pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("tar") and shutil.which("cp")),
    reason="needs bash, cp and tar",
)


def job(**kw) -> Job:
    return Job(name="build", index=0, mark=Mark("p.yaml"), **kw)


# -- argv ---------------------------------------------------------------------


def test_script_runs_in_bash_without_profile_and_stops_at_the_first_error():
    assert script_command("make\nmake check") == [
        "bash",
        "--noprofile",
        "--norc",
        "-ec",
        "make\nmake check",
    ]


def test_run_script_is_the_jobs_run_or_its_plugins_command():
    assert run_script(job(run="make")) == "make"
    assert run_script(job()) is None
    assert run_script(job(plugin="tox", run="ignored")) == PLUGIN_RUN["tox"]
    assert run_script(job(plugin="pyproject-build")) == (
        "python3 -m pip install build==0.7.0; python3 -m build"
    )


def test_run_script_of_a_plugin_without_a_command_is_the_jobs_run():
    assert run_script(job(plugin="golang", run="go test ./...")) == "go test ./..."


def test_environment_leaves_out_null_values():
    env = job(environment=(("LANG", "C.UTF-8"), ("http_proxy", None), ("N", "1")))
    assert environment(env) == {"LANG": "C.UTF-8", "N": "1"}


@pytest.mark.parametrize("name", [h for h in HOSTILE if not h.startswith("-") and "\n" not in h])
def test_package_names_are_separate_arguments_after_the_install_command(name):
    install = ("sudo", "dnf", "install", "-y")
    assert package_command(install, ("git", name, "make")) == [
        "sudo",
        "dnf",
        "install",
        "-y",
        "git",
        name,
        "make",
    ]


@pytest.mark.parametrize(
    "name", ["--force", "-y", "--setopt=reposdir=/tmp/evil", "a\nrm -rf /", "", "a\0b"]
)
def test_a_package_name_the_install_command_would_read_as_an_option_is_refused(name):
    # dnf, apt-get... run as root with sudo: an option is not a package
    with pytest.raises(ValueError, match="is not a package name"):
        package_command(("sudo", "dnf", "install", "-y"), ("git", name))


def test_package_names_from_a_pipeline_file_reach_the_argv_unchanged():
    errors = Collector()
    p = parse_pipeline(
        textwrap.dedent(
            """\
            pipeline: [build]
            jobs:
              build:
                architectures: x86_64
                packages: ["$(rm -rf /)", "a; b", "x`y`", "python3-devel >= 3.9"]
            """
        ),
        "p.yaml",
        "pp",
        errors,
    )
    assert not errors
    assert package_command(("dnf", "install", "-y"), p.job("build").packages) == [
        "dnf",
        "install",
        "-y",
        "$(rm -rf /)",
        "a; b",
        "x`y`",
        "python3-devel >= 3.9",
    ]


@pytest.mark.parametrize("name", ["lxd", "core22", "charmcraft", "a1-b2"])
def test_snap_name_and_channel_are_single_arguments(name):
    assert snap_command(Snap(name, f"5.0/{name}", classic=False)) == [
        "snap",
        "install",
        name,
        f"--channel=5.0/{name}",
    ]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_snap_name_that_is_not_one_is_refused(name):
    # regression: '--force' (or '--dangerous') as a name was an option of snap install
    with pytest.raises(ValueError, match="bad snap"):
        snap_command(Snap(name))
    with pytest.raises(ValueError, match="bad snap"):
        snap_command(Snap("lxd", f"latest/{name}" if name[0] != "-" else name))


def test_classic_snap_gets_the_classic_flag():
    assert snap_command(Snap("snapcraft", classic=True)) == [
        "snap",
        "install",
        "snapcraft",
        "--channel=latest/stable",
        "--classic",
    ]


def test_output_patterns_are_positional_arguments_after_the_fixed_script():
    cmd = collect_output_command(tuple(HOSTILE))
    assert cmd[:4] == ["bash", "--noprofile", "--norc", "-c"]
    assert cmd[5:7] == ["collect-output", OUTPUT_STAGING]
    assert cmd[7:] == HOSTILE
    # the script is the same whatever the patterns are: nothing is spliced into it
    assert cmd[4] == collect_output_command(())[4]
    assert all(h not in cmd[4] for h in HOSTILE if len(h) > 1)


@pytest.mark.parametrize("target", HOSTILE)
def test_input_target_directory_is_a_single_argument(target):
    assert unpack_input_command(target) == ["tar", "-xf", INPUT_TARBALL, "-C", target]


def test_pack_output_packs_the_staging_folder():
    assert pack_output_command() == ["tar", "-cf", OUTPUT_TARBALL, "-C", OUTPUT_STAGING, "."]


def test_artifact_path_is_per_run_pipeline_job_index_and_lane():
    assert artifact_path(12, "rdo", "build", 0, "x86_64") == (
        "artifacts/12/rdo/build/0/x86_64/output.tar"
    )


@pytest.mark.parametrize("run", [-1, True, "12", "../../etc", 1.5, None])
def test_artifact_path_refuses_a_bad_run_id(run):
    with pytest.raises(ValueError, match="bad pipeline run id"):
        artifact_path(run, "rdo", "build", 0, "x86_64")


# -- running the commands for real -----------------------------------------------


TRICKY_FILES = [
    "dist/plain.rpm",
    "dist/with space.rpm",
    "dist/semi;colon.rpm",
    "dist/$(touch pwned-by-name).rpm",
    "dist/`touch pwned-by-backtick`.rpm",
    "dist/new\nline.rpm",
    "dist/-rf.rpm",
    "dist/quote'single.rpm",
    "dist/*star.rpm",
    "dir with space/sub/deep.rpm",
    "dist/notes.txt",
]


@pytest.fixture
def tree(tmp_path):
    for name in TRICKY_FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}")
    return tmp_path


def collected(tree) -> set[str]:
    files = tree / OUTPUT_STAGING / "files"
    return {str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()}


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=60)


def no_pwned(tree):
    """No file a command substitution would have made (they would run in ``tree``)."""
    return list(tree.rglob("pwned*")) == []


@needs_bash_tar
def test_collect_output_copies_matching_files_with_any_name_and_evaluates_nothing(tree):
    patterns = (
        "dist/*.rpm",
        "dir with space/**/*.rpm",
        "$(touch pwned).rpm",
        "`touch pwned-backtick`",
        "dist/$(touch pwned-in-glob)*",
        "nothing/matches/*",
        "a; touch pwned-semicolon",
    )
    result = run(collect_output_command(patterns), tree)
    assert result.returncode == 0, result.stderr
    assert collected(tree) == {
        "dist/plain.rpm",
        "dist/with space.rpm",
        "dist/semi;colon.rpm",
        "dist/$(touch pwned-by-name).rpm",
        "dist/`touch pwned-by-backtick`.rpm",
        "dist/new\nline.rpm",
        "dist/-rf.rpm",
        "dist/quote'single.rpm",
        "dist/*star.rpm",
        "dir with space/sub/deep.rpm",
    }
    files = tree / OUTPUT_STAGING / "files"
    assert (files / "dist/new\nline.rpm").read_text() == "content of dist/new\nline.rpm"
    assert no_pwned(tree)


@needs_bash_tar
def test_collect_output_takes_a_literal_file_name_with_metacharacters(tree):
    result = run(collect_output_command(("dist/$(touch pwned-by-name).rpm",)), tree)
    assert result.returncode == 0, result.stderr
    assert collected(tree) == {"dist/$(touch pwned-by-name).rpm"}
    assert no_pwned(tree)


@needs_bash_tar
def test_collect_output_never_collects_dot_dotdot_or_its_own_staging_folder(tree):
    (tree.parent / "outside.rpm").write_text("not ours")
    cmd = collect_output_command((".", "dist/..", "*/..", ".*", OUTPUT_STAGING, "dist/*.txt"))
    # older bash (before 5.2's globskipdots) lets '.*' match '.' and '..': act like it
    cmd[4] = "shopt -u globskipdots 2>/dev/null || true\n" + cmd[4]
    result = run(cmd, tree)
    assert result.returncode == 0, result.stderr
    assert collected(tree) == {"dist/notes.txt"}


@needs_bash_tar
def test_collect_output_starts_from_an_empty_staging_folder(tree):
    stale = tree / OUTPUT_STAGING / "files" / "stale.rpm"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier build")
    result = run(collect_output_command(("dist/plain.rpm",)), tree)
    assert result.returncode == 0, result.stderr
    assert collected(tree) == {"dist/plain.rpm"}


@needs_bash_tar
def test_collected_output_packs_and_unpacks_into_a_target_with_metacharacters(tree, tmp_path):
    assert run(collect_output_command(("dist/*.rpm",)), tree).returncode == 0
    result = run(pack_output_command(), tree)
    assert result.returncode == 0, result.stderr
    with tarfile.open(tree / OUTPUT_TARBALL) as tar:
        assert "./files/dist/with space.rpm" in tar.getnames()
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    shutil.copy(tree / OUTPUT_TARBALL, consumer / INPUT_TARBALL)
    target = "in $(touch pwned-target); x"
    (consumer / target).mkdir()
    result = run(unpack_input_command(target), consumer)
    assert result.returncode == 0, result.stderr
    assert (consumer / target / "files" / "dist" / "semi;colon.rpm").read_text() == (
        "content of dist/semi;colon.rpm"
    )
    assert no_pwned(tree)


@needs_bash_tar
def test_script_command_stops_at_the_first_failing_command(tmp_path):
    result = run(script_command("echo one\nfalse\necho two"), tmp_path)
    assert result.returncode == 1
    assert result.stdout == "one\n"
