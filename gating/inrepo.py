"""In-repo pipelines: a project repository's own pipeline file, run on a worker (worker side).

A site pipeline job ``uses: in-repo-pipeline`` (optional ``file:``, default
``.gating.yaml``) runs on a worker of each of its architectures. The worker checks out
the commit under test (for the gate: the item's speculative merge, the ref every job of
the run uses), and runs ``BASEDIR/gating-venv/bin/python3 -P -m gating.inrepo --file FILE
--arch ARCH --nonce N`` in the checkout (:data:`VENV_LINK`: the worker's base directory
links to the Python environment holding buildbot-gating; the deployment makes it). The
master never reads or parses the file.

This runner:

* reads ``FILE`` inside the checkout (a symbolic link to outside it, or something else
  than a regular file, is refused; the loader's size limit applies before reading);
* loads it with the site's own pipeline loader (:mod:`gating.pipeline`, every limit) in
  its **untrusted** mode, which refuses with ``FILE:LINE:COLUMN`` errors ``trigger``,
  ``uses:`` of any built-in job kind, queue/project/pipeline membership keys, package
  installation, master-kept artifacts, pass-through and ``GATING_*`` variables; and here
  lpci plugins the gate does not run;
* runs the stages of the worker's architecture with lpci's semantics: stages in order,
  every job of a stage runs, a stage fails if any of its jobs failed, and the later
  stages run only if the earlier ones passed. A job's ``run-before``, ``run`` (or its
  plugin's command) and ``run-after`` run with ``bash -e`` in the checkout, with
  :func:`job_environment`: a fixed ``PATH``, a fresh ``HOME``, ``LANG``, the file's own
  ``environment`` and the run's ``GATING_*`` variables (:data:`RUN_VARIABLES`), nothing
  else of the worker's environment. Nothing in the file is ever rendered or interpolated
  (``%(secret:...)s`` is just text); the job's ``timeout`` kills its process group.

Its output is the job's ``stdio``: its first line names the runner (:func:`runner_line`:
``buildbot-gating VERSION``, Python's version and the interpreter), so that the master
tells "no runner on this worker" from a failed run and shows a version that is not its
own; then each job's lines sit between two marker lines that carry the build's nonce,
which the master's step (:class:`LogSplitter`) turns into one log per job. Exit status: 0
every stage passed, 1 a job failed, 2 the file was refused. The command line (``--file``,
``--arch``, ``--nonce``, ``--root``), the ``GATING_*`` variables, the marker lines and
the exit statuses are the interface between a master and a runner of another version:
they only grow compatibly.

The markers are for reading only: the verdict is the exit status. A job runs as the
worker's user and could forge a marker if it learnt the nonce (from its parent process):
the per-job logs are then mislabelled, nothing else. Isolation between a job and its
runner is the worker host's; in the embedded default (local workers) that host is the
master's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from gating import __version__
from gating import arch as archmod
from gating.commands import PLUGIN_RUN, run_script, script_command
from gating.diagnostics import Collector, ConfigError, Mark
from gating.pipeline import IN_REPO_DEFAULT_FILE, Job, Pipeline, in_repo_file_error, parse_pipeline
from gating.yamltree import MAX_FILE_BYTES

# The variables of the run a job gets (and nothing else of the runner's environment): the
# master sets them on the runner's command (gating.inrepojob).
RUN_VARIABLES = (
    "GATING_PIPELINE",
    "GATING_JOB",
    "GATING_ARCH",
    "GATING_RUN",
    "GATING_QUEUE",
    "GATING_CHANGE",
    "GATING_PROJECT",
    "GATING_BRANCH",
    "GATING_REVISION",
    "GATING_ATTEMPT",
    "GATING_BASE",
    "GATING_MERGE_COMMIT",
    "GATING_REPO_FILE",
    "GATING_REPO_FILE_URL",
    "GATING_OVERLAY_URL",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "##gating-in-repo"
NONCE_RE = re.compile(r"^[0-9a-f]{16,64}\Z")
LOG_NAME_RE = re.compile(r"^job [a-z0-9][a-z0-9+._-]+(?:#[0-9]{1,4})?\Z")

PASSED, FAILED, REFUSED = 0, 1, 2

# In a worker's base directory: a symbolic link to the Python environment (a virtualenv,
# or a prefix such as /usr) whose bin/python3 imports this package. The master runs the
# runner as VENV_LINK/RUNNER_PYTHON; the gating_worker role, workers/make-worker and the
# embedded default (gating.localsite) make the link. (A link to the interpreter itself
# would not do: Python finds its virtualenv from the path it was started as.)
VENV_LINK = "gating-venv"
RUNNER_PYTHON = "bin/python3"
# -P: the runner starts in the checkout, and ``-m`` would put it first on sys.path, so a
# repository with a ``gating/`` folder would replace the runner (and its verdict).
RUNNER_ARGS = ("-P", "-m", "gating.inrepo")


def log_name(job: Job, matrix: bool) -> str:
    """The name of a job's log: ``job unit``, ``job unit#1`` for matrix entries."""
    return f"job {job.name}#{job.index}" if matrix else f"job {job.name}"


def version_text() -> str:
    """``buildbot-gating VERSION (Python X.Y.Z, INTERPRETER)``: what ``--version`` prints."""
    python = ".".join(str(n) for n in sys.version_info[:3])
    return f"buildbot-gating {__version__} (Python {python}, {sys.executable})"


def runner_line(nonce: str) -> str:
    """The first line of a run: the runner and its version, marked with the nonce."""
    return f"{MARKER} {nonce} runner {version_text()}"


def runner_version(text: str) -> str | None:
    """The package version in a :func:`version_text`, or ``None``."""
    match = re.match(r"buildbot-gating (\S+)", text)
    return match.group(1) if match else None


def link_venv(worker_basedir: Path, venv: Path) -> bool:
    """Make (or repoint) ``worker_basedir/VENV_LINK`` to ``venv``; ``True`` if it changed."""
    link = worker_basedir / VENV_LINK
    target = str(venv)
    if link.is_symlink() and os.readlink(link) == target:
        return False
    tmp = worker_basedir / f".{VENV_LINK}.new"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)
    return True


# -- loading -------------------------------------------------------------------------------


def _fail(errors: Collector, mark: Mark, message: str) -> NoReturn:
    errors.error(mark, message)
    errors.check()
    raise AssertionError("unreachable")


def load(root: Path, file: str = IN_REPO_DEFAULT_FILE) -> Pipeline:
    """The untrusted pipeline ``file`` of the checkout ``root``; raises :class:`ConfigError`
    with every problem (``FILE:LINE:COLUMN: message``, ``FILE`` relative to ``root``)."""
    errors = Collector()
    where = Mark(file)
    problem = in_repo_file_error(file)
    if problem:
        _fail(errors, where, f"pipeline file name {problem}")
    real_root = root.resolve(strict=True)
    try:
        target = (root / file).resolve(strict=True)
    except (OSError, RuntimeError):
        _fail(errors, where, "no such file in the repository at the commit under test")
    if target != real_root and real_root not in target.parents:
        _fail(errors, where, "is a symbolic link to outside the repository")
    try:
        info = target.stat()
        if not stat.S_ISREG(info.st_mode):
            _fail(errors, where, "is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            _fail(
                errors,
                where,
                f"file is too large ({info.st_size} bytes; the limit is {MAX_FILE_BYTES})",
            )
        data = target.read_bytes()
    except OSError as exc:
        _fail(errors, where, f"cannot read the file: {exc.strerror}")
    pipeline = parse_pipeline(data, file, "in-repo", errors, trusted=False)
    if pipeline is not None:
        for job in pipeline.jobs:
            if job.plugin is not None and job.plugin not in PLUGIN_RUN:
                errors.error(
                    job.mark,
                    f"job '{job.name}': plugin '{job.plugin}' is not supported by this gate "
                    f"(supported: {', '.join(sorted(PLUGIN_RUN))})",
                )
    errors.check()
    assert pipeline is not None
    return pipeline


# -- environment ---------------------------------------------------------------------------


def job_environment(job: Job, run_env: Mapping[str, str], home: str) -> dict[str, str]:
    """A job's whole environment: ``PATH``, ``HOME``, ``LANG``, then the file's own
    variables (which may replace those three), then the run's :data:`RUN_VARIABLES` found
    in ``run_env``. Nothing else of ``run_env`` (the runner's environment) is passed on."""
    env = {"PATH": BASE_PATH, "HOME": home, "LANG": "C.UTF-8"}
    env.update({k: v for k, v in job.environment if v is not None})
    env.update({k: run_env[k] for k in RUN_VARIABLES if k in run_env})
    return env


# -- running -------------------------------------------------------------------------------


class Output:
    """The runner's output, line-buffered bytes (the step's stdio)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.stream.write(data)
            self.stream.flush()

    def line(self, text: str) -> None:
        self.write(text.encode("utf-8", "replace") + b"\n")


def _copy(pipe: BinaryIO, out: Output) -> None:
    for chunk in iter(lambda: pipe.readline(65536), b""):
        out.write(chunk if chunk.endswith(b"\n") else chunk + b"\n")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_script_text(
    script: str, root: Path, env: Mapping[str, str], out: Output, deadline: float | None
) -> str:
    """Run one script with ``bash -e`` in ``root``; ``"passed"``, ``"failed (exit N)"`` or
    ``"timed out"``. The script's process group is killed when it ends (no process it
    started outlives it) or when the deadline passes."""
    proc = subprocess.Popen(
        script_command(script),
        cwd=root,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    reader = threading.Thread(target=_copy, args=(proc.stdout, out), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(proc.pid)
    proc.wait()
    reader.join(timeout=10)
    proc.stdout.close()
    if timed_out:
        return "timed out"
    return "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"


def run_job(job: Job, root: Path, env: Mapping[str, str], out: Output) -> str:
    """``run-before``, ``run`` and ``run-after`` in order; the first failure ends the job."""
    deadline = time.monotonic() + job.timeout if job.timeout else None
    for script in (job.run_before, run_script(job), job.run_after):
        if not script:
            continue
        outcome = run_script_text(script, root, env, out, deadline)
        if outcome != "passed":
            return outcome
    return "passed"


def run_pipeline(
    pipeline: Pipeline,
    arch: str,
    root: Path,
    run_env: Mapping[str, str],
    out: Output,
    nonce: str,
    home: Path,
) -> int:
    """Run the stages of ``arch`` (lpci semantics); :data:`PASSED` or :data:`FAILED`."""
    stages = pipeline.stages_for(arch)
    if not stages:
        out.line(f"{pipeline.file}: no job runs on {arch}: nothing to do")
        return PASSED
    for number, stage in enumerate(stages, start=1):
        names = ", ".join(f"{name}[{index}]" for name, index in stage)
        out.line(f"stage {number} of {len(stages)} on {arch}: {names}")
    for number, stage in enumerate(stages, start=1):
        failed = []
        for name, index in stage:
            job = pipeline.job(name, index)
            title = log_name(job, len(pipeline.entries(name)) > 1)
            out.line(f"{MARKER} {nonce} begin {title}")
            env = job_environment(job, run_env, str(home))
            outcome = run_job(job, root, env, out)
            out.line(f"{MARKER} {nonce} end {title}: {outcome}")
            out.line(f"{title}: {outcome}")
            if outcome != "passed":
                failed.append(title)
        if failed:
            out.line(f"stage {number} failed ({', '.join(failed)}): later stages do not run")
            return FAILED
    out.line(f"every stage passed on {arch}")
    return PASSED


class _Version(argparse.Action):
    """``--version``: :func:`version_text` on one line (argparse's own would wrap it)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text(), flush=True)
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -P -m gating.inrepo",
        description="Run a repository's own (untrusted) pipeline file on this worker.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the runner's version and exit"
    )
    parser.add_argument("--file", default=IN_REPO_DEFAULT_FILE)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--nonce", required=True)
    parser.add_argument("--root", default=".")
    args = parser.parse_args(argv)
    out = Output(sys.stdout.buffer)
    arch = archmod.canonical(args.arch)
    if not NONCE_RE.match(args.nonce):
        out.line("error: bad --nonce")
        return REFUSED
    out.line(runner_line(args.nonce))
    if arch is None:
        out.line(f"error: bad --arch {args.arch!r}")
        return REFUSED
    root = Path(args.root)
    out.line(f"loading {args.file} (untrusted) from the commit under test, for {arch}")
    try:
        pipeline = load(root, args.file)
    except ConfigError as exc:
        for message in exc.messages:
            out.line(message)
        out.line(f"{args.file} was refused: nothing ran")
        return REFUSED
    home = Path(tempfile.mkdtemp(prefix="in-repo-home-", dir=root.resolve().parent))
    try:
        return run_pipeline(pipeline, arch, root, os.environ, out, args.nonce, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- the master's side: one log per job ----------------------------------------------------


class LogSplitter:
    """Turns the runner's output (line by line) into one log per job, using the markers
    that carry ``nonce``. Each log keeps at most ``max_bytes`` (then says it was cut);
    at most ``max_logs`` logs are kept."""

    def __init__(self, nonce: str, max_bytes: int = 4 << 20, max_logs: int = 200) -> None:
        self.begin = f"{MARKER} {nonce} begin "
        self.end = f"{MARKER} {nonce} end "
        self.runner_prefix = f"{MARKER} {nonce} runner "
        # The runner's :func:`version_text`, from its first line (before any job ran).
        self.runner: str | None = None
        self.started = False
        self.max_bytes = max_bytes
        self.max_logs = max_logs
        self.current: str | None = None
        self.logs: dict[str, list[str]] = {}
        self.sizes: dict[str, int] = {}
        self.cut: set[str] = set()

    def feed(self, line: str) -> None:
        if line.startswith(self.runner_prefix):
            if self.runner is None and not self.started:
                self.runner = line[len(self.runner_prefix) :].strip()[:300]
            return
        if line.startswith(self.begin):
            self.started = True
            name = line[len(self.begin) :].rstrip("\r\n")
            if LOG_NAME_RE.match(name) and (name in self.logs or len(self.logs) < self.max_logs):
                self.current = name
                self.logs.setdefault(name, [])
                self.sizes.setdefault(name, 0)
            else:
                self.current = None
            return
        if line.startswith(self.end):
            self.current = None
            return
        name = self.current
        if name is None or name in self.cut:
            return
        size = len(line) + 1
        if self.sizes[name] + size > self.max_bytes:
            self.cut.add(name)
            self.logs[name].append(f"[log cut at {self.max_bytes} bytes; see stdio]")
            return
        self.sizes[name] += size
        self.logs[name].append(line.rstrip("\n"))

    def texts(self) -> list[tuple[str, str]]:
        """(log name, text) in the order the jobs started."""
        return [(name, "".join(line + "\n" for line in lines)) for name, lines in self.logs.items()]


if __name__ == "__main__":
    sys.exit(main())
