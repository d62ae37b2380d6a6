"""Buildbot glue for ``uses: in-repo-pipeline``: the steps of the job, on a pool worker.

The job's builder is an ordinary job builder (``PIPELINE/JOB/ARCH``, on the pool of its
architecture and series). Its steps: the checkout of the commit under test (the same
step and source stamp as every job of the run: for the gate, the item's speculative
merge under ``refs/gating/...``), the overlay's ``.repo`` file when an earlier stage made
one, then :class:`InRepoPipeline`, which runs the worker-side runner
(``python3 -m gating.inrepo``, :mod:`gating.inrepo`) in the checkout and gives one log
per job of the file. The master never reads or parses the repository's file; the
runner's command line holds no text from it, and nothing from it is rendered.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from buildbot.plugins import util
from buildbot.process import buildstep, logobserver, results
from buildbot.process.factory import BuildFactory
from twisted.internet import defer

from gating import inrepo
from gating.pipeline import IN_REPO_DEFAULT_FILE, Job, in_repo_file_error

RUNNER = ("python3", "-m", "gating.inrepo")
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


def runner_command(file: str, arch: str, nonce: str) -> list[str]:
    """The worker's command; ``file`` was checked by the site's loader."""
    error = in_repo_file_error(file)
    if error:
        raise ValueError(f"bad in-repo pipeline file {file!r}: {error}")
    return [*RUNNER, "--file", file, "--arch", arch, "--nonce", nonce, "--root", "."]


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
    status (a job failed or the file was refused: FAILURE); adds one log per job."""

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
        self.splitter = inrepo.LogSplitter(nonce)
        self.addLogObserver("stdio", _Lines(self.splitter))
        cmd = yield self.makeRemoteShellCommand(command=runner_command(self.file, self.arch, nonce))
        yield self.runCommand(cmd)
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
