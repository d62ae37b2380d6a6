"""Tests of gating.inrepo: the worker-side runner of a repository's own (untrusted)
pipeline file. Real files, real ``bash`` processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gating
from gating import inrepo
from gating.diagnostics import ConfigError
from gating.yamltree import MAX_FILE_BYTES

NONCE = "0123456789abcdef0123456789abcdef"


def checkout(tmp_path: Path, text: str, name: str = ".gating.yaml") -> Path:
    root = tmp_path / "build"
    root.mkdir(exist_ok=True)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return root


def run(
    root: Path, *args: str, env: dict[str, str] | None = None, monkeypatch=None
) -> tuple[int, str]:
    """``main`` in ``root`` with ``env`` as the runner's environment: (status, output)."""
    out = io.BytesIO()

    class Stdout:
        buffer = out

    assert monkeypatch is not None
    monkeypatch.setattr(inrepo.sys, "stdout", Stdout)
    for key in [k for k in os.environ if k.startswith("GATING_")]:
        monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    status = inrepo.main(["--arch", "x86_64", "--nonce", NONCE, "--root", str(root), *args])
    return status, out.getvalue().decode()


def job_logs(output: str) -> dict[str, str]:
    splitter = inrepo.LogSplitter(NONCE)
    for line in output.splitlines():
        splitter.feed(line)
    return dict(splitter.texts())


# -- loading ---------------------------------------------------------------------------------


def test_uses_koji_export_is_refused_with_its_place_and_nothing_runs(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        pipeline: [build, export]
        jobs:
          build: {architectures: x86_64, run: touch ran}
          export: {uses: koji-export}
        """,
    )
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.REFUSED
    assert (
        ".gating.yaml:4:18: job 'export': 'uses: koji-export': built-in job kinds act with the "
        "site's rights" in output
    )
    assert ".gating.yaml was refused: nothing ran" in output
    assert not (root / "ran").exists()


def test_trigger_gate_is_refused_with_its_place(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        trigger: gate
        pipeline: [unit]
        jobs:
          unit: {architectures: x86_64, run: touch ran}
        """,
    )
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.REFUSED
    assert ".gating.yaml:1:1: 'trigger': a pipeline file from a repository cannot say" in output
    assert not (root / "ran").exists()


def test_a_queue_of_its_own_is_refused(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        pipeline: [unit]
        jobs:
          unit: {architectures: x86_64, run: "true", queue: fast-lane}
        """,
    )
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.REFUSED
    assert ".gating.yaml:3:46: 'queue' in job 'unit': only the site configuration" in output


def test_a_missing_file_fails(tmp_path):
    root = tmp_path / "build"
    root.mkdir()
    with pytest.raises(ConfigError) as info:
        inrepo.load(root)
    assert info.value.messages == [
        ".gating.yaml:1:1: no such file in the repository at the commit under test"
    ]


def test_a_symbolic_link_to_outside_the_checkout_is_refused(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text(
        "pipeline: [a1]\njobs: {a1: {architectures: x86_64}}\n"
    )
    root = tmp_path / "build"
    root.mkdir()
    (root / ".gating.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(ConfigError) as info:
        inrepo.load(root)
    assert info.value.messages == [".gating.yaml:1:1: is a symbolic link to outside the repository"]


def test_a_directory_and_a_huge_file_are_refused_before_reading(tmp_path):
    root = tmp_path / "build"
    (root / "ci.yaml").mkdir(parents=True)
    with pytest.raises(ConfigError, match="ci.yaml:1:1: is not a regular file"):
        inrepo.load(root, "ci.yaml")
    (root / ".gating.yaml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="file is too large"):
        inrepo.load(root)


def test_a_file_name_outside_the_repository_is_refused(tmp_path):
    root = tmp_path / "build"
    root.mkdir()
    with pytest.raises(ConfigError, match="must be a relative path inside the project"):
        inrepo.load(root, "../other/.gating.yaml")


def test_a_plugin_the_gate_does_not_run_is_refused(tmp_path):
    root = checkout(
        tmp_path,
        """\
        pipeline: [unit]
        jobs:
          unit: {architectures: x86_64, plugin: golang, golang-version: "1.21"}
        """,
    )
    with pytest.raises(ConfigError, match="plugin 'golang' is not supported by this gate"):
        inrepo.load(root)


def test_a_file_in_a_subdirectory_loads(tmp_path):
    root = checkout(
        tmp_path, "pipeline: [unit]\njobs: {unit: {architectures: x86_64}}\n", "ci/gate.yaml"
    )
    pipeline = inrepo.load(root, "ci/gate.yaml")
    assert pipeline.trusted is False and pipeline.file == "ci/gate.yaml"


# -- the environment -----------------------------------------------------------------------


def test_secret_renderables_are_passed_literally(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        pipeline: [unit]
        jobs:
          unit:
            architectures: x86_64
            environment: {TOKEN: "%(secret:worker-password)s"}
            run: |
              echo "token=$TOKEN"
              echo 'said=%(secret:worker-password)s %(prop:gating_change)s'
        """,
    )
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.PASSED
    log = job_logs(output)["job unit"]
    assert "token=%(secret:worker-password)s\n" in log
    assert "said=%(secret:worker-password)s %(prop:gating_change)s\n" in log


def test_a_job_reading_secrets_from_its_environment_gets_nothing(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        pipeline: [unit]
        jobs:
          unit:
            architectures: x86_64
            run: |
              echo "secret=${GATING_SECRET_TOKEN:-none}"
              echo "config=${GATING_CONFIG:-none}"
              echo "password=${WORKER_PASSWORD:-none}"
              echo "change=${GATING_CHANGE:-none}"
              env | cut -d= -f1 | sort | tr '\\n' ' '
        """,
    )
    status, output = run(
        root,
        env={
            "GATING_SECRET_TOKEN": "s3cr3t-value-1",
            "GATING_CONFIG": "/srv/gating/config",
            "WORKER_PASSWORD": "s3cr3t-value-2",
            "GATING_CHANGE": "nova~3",
        },
        monkeypatch=monkeypatch,
    )
    assert status == inrepo.PASSED
    log = job_logs(output)["job unit"]
    assert "secret=none\nconfig=none\npassword=none\nchange=nova~3\n" in log
    assert "s3cr3t" not in output
    names = set(log.splitlines()[-1].split())
    assert names <= {"GATING_CHANGE", "HOME", "LANG", "PATH", "PWD", "SHLVL", "_"}, names


def test_job_environment_is_the_base_then_the_file_then_the_run():
    from gating.diagnostics import Mark
    from gating.pipeline import Job

    job = Job("unit", 0, Mark("x"), environment=(("LANG", "de_DE.UTF-8"), ("CI", "1")))
    env = inrepo.job_environment(
        job,
        {"GATING_MERGE_COMMIT": "abc", "GATING_OTHER": "x", "SSH_AUTH_SOCK": "/tmp/a"},
        "/home/x",
    )
    assert env == {
        "PATH": inrepo.BASE_PATH,
        "HOME": "/home/x",
        "LANG": "de_DE.UTF-8",
        "CI": "1",
        "GATING_MERGE_COMMIT": "abc",
    }


# -- running -------------------------------------------------------------------------------

STAGES = """\
pipeline:
  - build
  - [unit, lint]
  - publish
jobs:
  build:
    architectures: [x86_64, aarch64]
    run-before: echo before > order
    run: echo run >> order
    run-after: echo after >> order
  unit:
    matrix:
      - {architectures: x86_64, run: "echo unit0 >> seen"}
      - {architectures: x86_64, run: "echo unit1 >> seen; exit {fail}"}
  lint: {architectures: aarch64, run: echo lint >> seen}
  publish: {architectures: x86_64, run: echo publish >> seen}
"""


def test_stages_run_in_order_and_a_failed_stage_stops_the_later_ones(tmp_path, monkeypatch):
    root = checkout(tmp_path, STAGES.replace("{fail}", "4"))
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.FAILED
    assert (root / "order").read_text() == "before\nrun\nafter\n"
    # Every job of the failed stage ran; the aarch64 job and the later stage did not.
    assert (root / "seen").read_text() == "unit0\nunit1\n"
    assert "stage 2 failed (job unit#1): later stages do not run" in output
    assert list(job_logs(output)) == ["job build", "job unit#0", "job unit#1"]
    assert "job unit#1: failed (exit 4)" in output


def test_every_stage_of_the_architecture_passes(tmp_path, monkeypatch):
    root = checkout(tmp_path, STAGES.replace("{fail}", "0"))
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.PASSED
    assert (root / "seen").read_text() == "unit0\nunit1\npublish\n"
    assert "every stage passed on x86_64" in output


def test_a_failing_run_before_skips_run_and_run_after(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        pipeline: [unit]
        jobs:
          unit:
            architectures: x86_64
            run-before: "false"
            run: touch run
            run-after: touch after
        """,
    )
    status, _ = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.FAILED
    assert not (root / "run").exists() and not (root / "after").exists()


def test_bash_e_stops_a_script_at_its_first_failing_command(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        "pipeline: [unit]\njobs:\n  unit: {architectures: x86_64, run: 'false; touch after'}\n",
    )
    status, _ = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.FAILED and not (root / "after").exists()


def test_a_job_past_its_timeout_is_killed_with_what_it_started(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        """\
        pipeline: [slow]
        jobs:
          slow:
            architectures: x86_64
            timeout: 1
            run: |
              (sleep 60; touch late) &
              sleep 60
        """,
    )
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.FAILED
    assert "job slow: timed out" in output
    assert not (root / "late").exists()


def test_no_job_for_the_architecture_passes(tmp_path, monkeypatch):
    root = checkout(tmp_path, "pipeline: [a1]\njobs:\n  a1: {architectures: s390x, run: 'false'}\n")
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.PASSED
    assert ".gating.yaml: no job runs on x86_64: nothing to do" in output


def test_the_fresh_home_is_removed_after_the_run(tmp_path, monkeypatch):
    root = checkout(
        tmp_path,
        "pipeline: [a1]\njobs:\n  a1: {architectures: x86_64, run: 'echo \"$HOME\" > home'}\n",
    )
    status, _ = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.PASSED
    home = Path((root / "home").read_text().strip())
    assert home.parent == root.resolve().parent and not home.exists()


def test_bad_arguments_are_refused(tmp_path, monkeypatch):
    root = checkout(tmp_path, "pipeline: [a1]\njobs:\n  a1: {architectures: x86_64}\n")
    out = io.BytesIO()

    class Stdout:
        buffer = out

    monkeypatch.setattr(inrepo.sys, "stdout", Stdout)
    assert inrepo.main(["--arch", "vax", "--nonce", NONCE, "--root", str(root)]) == 2
    assert inrepo.main(["--arch", "x86_64", "--nonce", "x; rm", "--root", str(root)]) == 2


# -- the runner's version and interpreter ------------------------------------------------------


def test_the_first_line_of_a_run_names_the_runner_and_its_version(tmp_path, monkeypatch):
    root = checkout(tmp_path, "pipeline: [a1]\njobs:\n  a1: {architectures: x86_64, run: 'true'}\n")
    status, output = run(root, monkeypatch=monkeypatch)
    assert status == inrepo.PASSED
    first = output.splitlines()[0]
    assert first == inrepo.runner_line(NONCE)
    assert first.startswith(f"{inrepo.MARKER} {NONCE} runner buildbot-gating {gating.__version__} ")
    assert sys.executable in first
    splitter = inrepo.LogSplitter(NONCE)
    for line in output.splitlines():
        splitter.feed(line)
    assert splitter.runner == inrepo.version_text()
    assert inrepo.runner_version(splitter.runner) == gating.__version__
    # A refused file names the runner too (the master tells it from a missing runner).
    (tmp_path / "bad").mkdir()
    bad = checkout(tmp_path / "bad", "trigger: gate\npipeline: [a1]\njobs:\n  a1: {run: 'true'}\n")
    status, output = run(bad, monkeypatch=monkeypatch)
    assert status == inrepo.REFUSED
    assert output.splitlines()[0] == inrepo.runner_line(NONCE)


def test_a_runner_line_printed_by_a_job_is_not_the_runners():
    splitter = inrepo.LogSplitter(NONCE)
    splitter.feed(f"{inrepo.MARKER} {NONCE} begin job a1")
    splitter.feed(f"{inrepo.MARKER} {NONCE} runner buildbot-gating 9.9.9 (forged)")
    assert splitter.runner is None
    splitter = inrepo.LogSplitter(NONCE)
    splitter.feed(f"{inrepo.MARKER} {NONCE} runner buildbot-gating 0.0.1 (Python 3.11.0, /x)")
    splitter.feed(f"{inrepo.MARKER} {NONCE} runner buildbot-gating 9.9.9 (second)")
    assert splitter.runner == "buildbot-gating 0.0.1 (Python 3.11.0, /x)"
    assert inrepo.runner_version(splitter.runner) == "0.0.1"
    assert inrepo.runner_version("something else") is None


def test_the_venv_link_runs_the_runner_with_that_environment(tmp_path):
    """``WORKER/gating-venv`` links to a Python environment; its bin/python3 is that
    environment's interpreter (a link to the interpreter itself would lose the virtualenv)."""
    worker = tmp_path / "worker"
    worker.mkdir()
    assert inrepo.link_venv(worker, Path(sys.prefix))
    assert not inrepo.link_venv(worker, Path(sys.prefix))
    link = worker / inrepo.VENV_LINK
    assert os.readlink(link) == sys.prefix
    python = link / inrepo.RUNNER_PYTHON
    env = {**os.environ, "PYTHONPATH": str(Path(gating.__file__).parent.parent)}
    proc = subprocess.run(
        [str(python), *inrepo.RUNNER_ARGS, "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"buildbot-gating {gating.__version__} (Python ")
    assert f", {python})" in proc.stdout
    probe = subprocess.run(
        [str(python), "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert probe.stdout.strip() == str(link)  # that environment, seen through the link
    # Repointed when the environment moves.
    other = tmp_path / "other-venv"
    other.mkdir()
    assert inrepo.link_venv(worker, other)
    assert os.readlink(link) == str(other)
    assert [p.name for p in worker.iterdir()] == [inrepo.VENV_LINK]


def test_a_gating_folder_in_the_checkout_does_not_replace_the_runner(tmp_path):
    """The runner starts in the checkout: ``-P`` keeps the repository's own ``gating/``
    (which could print the runner's line and exit 0 whatever its jobs do) off sys.path."""
    root = checkout(
        tmp_path,
        "pipeline: [a1]\njobs:\n  a1: {architectures: x86_64, run: 'exit 3'}\n",
    )
    (root / "gating").mkdir()
    (root / "gating" / "__init__.py").write_text("")
    (root / "gating" / "inrepo.py").write_text(
        f"print('{inrepo.MARKER} {NONCE} runner buildbot-gating 9 (forged)')\nprint('forged')\n"
    )
    worker = tmp_path / "worker"
    worker.mkdir()
    inrepo.link_venv(worker, Path(sys.prefix))
    python = worker / inrepo.VENV_LINK / inrepo.RUNNER_PYTHON
    proc = subprocess.run(
        [str(python), *inrepo.RUNNER_ARGS, "--arch", "x86_64", "--nonce", NONCE, "--root", "."],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(gating.__file__).parent.parent)},
        cwd=root,
        timeout=120,
        check=False,
    )
    assert "forged" not in proc.stdout, proc.stdout
    assert proc.returncode == inrepo.FAILED, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith(f"{inrepo.MARKER} {NONCE} runner buildbot-gating")
    assert "job a1: failed (exit 3)" in proc.stdout


# -- the master's side: one log per job -------------------------------------------------------


def test_the_splitter_gives_one_log_per_job_and_ignores_other_nonces():
    splitter = inrepo.LogSplitter(NONCE)
    for line in (
        "stage 1 of 1 on x86_64: a1[0]",
        f"{inrepo.MARKER} {NONCE} begin job a1",
        "one",
        f"{inrepo.MARKER} ffffffffffffffff begin job forged",
        "two",
        f"{inrepo.MARKER} {NONCE} end job a1: passed",
        "job a1: passed",
        f"{inrepo.MARKER} {NONCE} begin job bad name!",
        "lost",
        f"{inrepo.MARKER} {NONCE} begin job b1#2",
        "three",
    ):
        splitter.feed(line)
    assert splitter.texts() == [
        ("job a1", f"one\n{inrepo.MARKER} ffffffffffffffff begin job forged\ntwo\n"),
        ("job b1#2", "three\n"),
    ]


def test_the_splitter_cuts_a_huge_log_and_caps_the_number_of_logs():
    splitter = inrepo.LogSplitter(NONCE, max_bytes=10, max_logs=1)
    splitter.feed(f"{inrepo.MARKER} {NONCE} begin job a1")
    for _ in range(5):
        splitter.feed("12345")
    splitter.feed(f"{inrepo.MARKER} {NONCE} begin job b1")
    splitter.feed("not kept")
    assert splitter.texts() == [("job a1", "12345\n[log cut at 10 bytes; see stdio]\n")]
