"""Buildbot glue for ``uses: in-repo-pipeline``: the steps of the job, on a pool worker.

The job's builder is an ordinary job builder (``PIPELINE/JOB/ARCH``, on the pool of its
architecture and series). Its steps: the checkout of the commit under test (the same
step and source stamp as every job of the run: for the gate, the item's speculative
merge under ``refs/gating/...``), the overlay's ``.repo`` file when an earlier stage made
one, then :class:`InRepoPipeline`, which runs the worker-side runner
(:mod:`gating.inrepo`) in the checkout and gives one log per job of the file. The master
never reads or parses the repository's file; the runner's command line holds no text from
it, and nothing from it is rendered.

The runner runs with the worker's own buildbot-gating, not whatever ``python3`` the
worker's ``PATH`` finds: ``WORKER_BASEDIR/gating-venv/bin/python3 -P -m gating.inrepo`` (the
base directory as the worker reported it when it connected; the link is made by the
gating_worker role, workers/make-worker and the embedded default). A worker without it
(no link, or an environment without the package) fails the job with a message that says
how to deploy it; a runner of another version than the master's runs, and the step says
so in a log of its own.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from buildbot.plugins import util
from buildbot.process import buildstep, logobserver, results
from buildbot.process.factory import BuildFactory
from buildbot.util import bytes2unicode
from twisted.internet import defer

from gating import __version__, inrepo
from gating.pipeline import IN_REPO_DEFAULT_FILE, Job, in_repo_file_error

DEFAULT_TIMEOUT = 3 * 3600  # the whole file's run, when the site's job sets no 'timeout'
# The gate item's properties each job of the file sees as GATING_<NAME>.
_ITEM_PROPERTIES = (
    "gating_pipeline",
    "gating_job",
    "gating_arch",
    "gating_run",
    "gating_queue",
    "gating_change",
    "gating_project",
    "gating_branch",
    "gating_revision",
    "gating_attempt",
    "gating_base",
    "gating_merge_commit",
)


def runner_python(worker_basedir: str, join: Callable[..., str] = posixpath.join) -> str:
    """The runner's interpreter on a worker whose base directory is ``worker_basedir``
    (``join``: the worker's ``os.path.join``)."""
    return join(worker_basedir, inrepo.VENV_LINK, *inrepo.RUNNER_PYTHON.split("/"))


def runner_command(python: str, file: str, arch: str, nonce: str) -> list[str]:
    """The worker's command (an argument list, never shell text); ``file`` was checked by
    the site's loader."""
    error = in_repo_file_error(file)
    if error:
        raise ValueError(f"bad in-repo pipeline file {file!r}: {error}")
    return [
        python,
        *inrepo.RUNNER_ARGS,
        "--file",
        file,
        "--arch",
        arch,
        "--nonce",
        nonce,
        "--root",
        ".",
    ]


def no_runner_message(worker: str, python: str, rc: int | None) -> str:
    """Why the job failed when the runner never started on ``worker``."""
    return (
        f"worker {worker} has no gating runner: {python} {' '.join(inrepo.RUNNER_ARGS)} did "
        f"not start (exit status {rc}; what it printed is in stdio).\n"
        f"A worker that runs in-repo pipeline jobs needs buildbot-gating (this master runs "
        f"{__version__}) next to buildbot-worker, its Python environment linked as "
        f"WORKER_BASEDIR/{inrepo.VENV_LINK}: deploy it with the gating_worker role "
        f'(ansible/site.yml) or workers/make-worker (README, "Deploying").\n'
    )


def other_version_message(runner: str) -> str:
    """The note of a runner whose version is not the master's."""
    return (
        f"the worker's runner is {runner}; this master is buildbot-gating {__version__}.\n"
        "The run went on (the runner's command line, variables, markers and exit statuses "
        "are compatible between versions), but the worker should be deployed again with "
        "the master's package.\n"
    )


def runner_environment(gating_env: dict[str, Any]) -> dict[str, Any]:
    """The runner's variables: the run's ``GATING_*`` values (the runner passes exactly
    :data:`gating.inrepo.RUN_VARIABLES` on to the jobs)."""
    env = {name.upper(): util.Interpolate(f"%(prop:{name}:-)s") for name in _ITEM_PROPERTIES}
    env.update({k: v for k, v in gating_env.items() if k in inrepo.RUN_VARIABLES})
    missing = set(inrepo.RUN_VARIABLES) - set(env)
    assert not missing, missing
    return env


class _Lines(logobserver.LogLineObserver):
    def __init__(self, splitter: inrepo.LogSplitter) -> None:
        super().__init__()
        self.splitter = splitter

    def outLineReceived(self, line: str) -> None:  # noqa: N802 (Buildbot's name)
        self.splitter.feed(line)

    errLineReceived = outLineReceived  # noqa: N815


class InRepoPipeline(buildstep.ShellMixin, buildstep.BuildStep):
    """Runs the repository's pipeline file on the worker; its result is the runner's exit
    status (a job failed or the file was refused: FAILURE); adds one log per job. A run
    without the runner's line before its first job (no runner on the worker) fails with
    a ``no gating runner`` log; a runner of another version adds a ``runner
    version`` log. The property ``gating_runner`` is the runner's version line."""

    name = "in-repo-pipeline"

    def __init__(self, file: str, arch: str, **kwargs: Any) -> None:
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        super().__init__(**kwargs)
        self.file = file
        self.arch = arch
        self.splitter: inrepo.LogSplitter | None = None
        self.description = [f"run {file}"]

    @defer.inlineCallbacks
    def run(self) -> Any:
        nonce = uuid.uuid4().hex
        worker = self.worker.workername
        basedir = bytes2unicode(self.worker.worker_basedir)
        if not basedir:
            yield self.addCompleteLog(
                "no gating runner", f"worker {worker} did not report its base directory\n"
            )
            self.descriptionDone = [f"worker {worker} has no gating runner"]
            return results.FAILURE
        python = runner_python(basedir, self.build.path_module.join)
        self.splitter = inrepo.LogSplitter(nonce)
        self.addLogObserver("stdio", _Lines(self.splitter))
        cmd = yield self.makeRemoteShellCommand(
            command=runner_command(python, self.file, self.arch, nonce)
        )
        yield self.runCommand(cmd)
        runner = self.splitter.runner
        if runner is None:
            yield self.addCompleteLog("no gating runner", no_runner_message(worker, python, cmd.rc))
            self.descriptionDone = [f"worker {worker} has no gating runner"]
            return results.FAILURE
        self.setProperty("gating_runner", runner, self.name)
        if inrepo.runner_version(runner) != __version__:
            yield self.addCompleteLog("runner version", other_version_message(runner))
        for name, text in self.splitter.texts():
            log = yield self.addLog(name)
            if text:
                yield log.addStdout(text)
            yield log.finish()
        rc = cmd.rc
        if rc == inrepo.PASSED and not cmd.didFail():
            self.descriptionDone = [f"{self.file}: every stage passed"]
            return results.SUCCESS
        if rc == inrepo.REFUSED:
            self.descriptionDone = [f"{self.file} refused (see stdio)"]
        elif rc == inrepo.FAILED:
            self.descriptionDone = [f"{self.file}: a job failed"]
        else:
            self.descriptionDone = [f"{self.file}: runner ended with {rc}"]
        return results.FAILURE


def inrepo_factory(
    job: Job, lane: str, first_steps: Sequence[Any], gating_env: dict[str, Any]
) -> BuildFactory:
    """The steps of an in-repo pipeline job on ``lane``: ``first_steps`` (the checkout and
    the overlay's ``.repo`` file, shared with every job), then :class:`InRepoPipeline`
    with the site job's ``timeout`` as the limit of the whole run."""
    f = BuildFactory()
    for step in first_steps:
        f.addStep(step)
    limit = job.timeout or DEFAULT_TIMEOUT
    f.addStep(
        InRepoPipeline(
            job.file or IN_REPO_DEFAULT_FILE,
            lane,
            env=runner_environment(gating_env),
            maxTime=limit,
            timeout=limit,
            haltOnFailure=True,
        )
    )
    return f
