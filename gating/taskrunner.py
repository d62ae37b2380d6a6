"""Running the task repositories' tasks on koji events: one Buildbot build per task.

When a koji build of package P completes (or is tagged), :class:`TaskRepoRunner` shallow-
clones P's task repository (``task-repos`` 'url' with ``{package}``) at the branch matching
the build's dist tag, reads its tasks (:func:`gating.taskrepo.discover`) and adds one
buildset on the ``task-repo`` builder (:data:`TASK_BUILDER`) per task that runs on the
event, and one per broken task directory, so a broken ``runtask.yaml`` fails only its own
build, with every ``FILE:LINE:COLUMN`` message in the log. A package without a task
repository (or without the branch) is logged once and is no error.

Each task buildset carries the event's key and the task directory (``external_idstring``,
:func:`task_idstring`), so that the event a killed master was firing (see
:mod:`gating.kojipoller`) starts, on restart, only the tasks that have no buildset yet.

The decisions are plain functions (:func:`read_repo` runs git in a thread,
:func:`task_buildsets` is pure); :meth:`TaskRepoRunner.handle` only adds the buildsets.
:func:`task_factory` gives the builder's steps: :class:`TaskStep` on the master (which task,
on what; fails with the errors of a broken task), then on a worker the checkout of the very
commit the master read and the task's actions, with its environment and time limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildbot.plugins import steps, util
from buildbot.process import buildstep, results
from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Properties
from twisted.internet import defer, threads
from twisted.python import log

from gating import taskrepo
from gating.commands import script_command
from gating.firing import buildset_idstring
from gating.forge import git_env
from gating.kojievents import KOJI_BUILD, KOJI_TAG, KojiBuildEvent
from gating.siteevents import TaskRepoConfig

TASK_BUILDER = "task-repo"
TASK_WORKDIR = "task-repos"  # the master's clones, under its basedir (removed after use)
CHECKOUT = "taskrepo"  # the worker's checkout, in the builder's 'build' directory
CLONE_TIMEOUT = 300.0  # seconds for the master's clone of a task repository
MISSING_MEMORY = 2000  # how many missing (repository, branch) pairs are remembered
# What git says when a repository or a branch does not exist (or cannot be read without
# credentials: a forge answers so for a missing repository).
_MISSING_SIGNS = (
    "not found",
    "does not exist",
    "does not appear to be a git repository",
    "could not find remote branch",
    "terminal prompts disabled",
)
# The properties a task build shows first in its 'task' step log.
SHOWN_PROPERTIES = (
    "package",
    "task_repo",
    "task_branch",
    "task_commit",
    "task_directory",
    "task_event",
    "task_item",
)


class RepoMissing(Exception):
    """The task repository, or its branch, does not exist: the package has no tasks."""


class CloneFailed(Exception):
    """git could not clone a task repository that may exist (network, timeout...)."""


@dataclass(frozen=True)
class Checkout:
    """What the master read from a task repository at one commit."""

    url: str
    branch: str
    commit: str
    tasks: tuple[taskrepo.Task, ...]
    errors: tuple[taskrepo.TaskError, ...]


@dataclass
class TaskBuildset:
    """One build request on the task builder: its reason, properties and idstring."""

    reason: str
    properties: dict[str, Any]
    ident: str = ""


def task_idstring(event_key: str, directory: str) -> str:
    """The ``external_idstring`` of the buildset an event adds for a task directory."""
    return buildset_idstring("koji-task", event_key, directory)


@dataclass
class Outcome:
    """What an event gives: the buildsets to add, and what to log (``missing`` once)."""

    buildsets: list[TaskBuildset] = field(default_factory=list)
    note: str | None = None
    missing: tuple[str, str] | None = None  # (url, branch)


# -- decisions (no Twisted) ----------------------------------------------------------------


def repo_url(config: TaskRepoConfig, package: str) -> str:
    """The package's task repository (``{package}`` in the template replaced). Raises
    ``ValueError`` for a name that is not a koji package name (a path, an option...)."""
    if not taskrepo.DIRECTORY_RE.match(package):
        raise ValueError(f"bad package name {package!r}")
    return config.url.replace("{package}", package)


def branch_for(config: TaskRepoConfig, release: str) -> str | None:
    """The task repository branch for a build's release (``None``: no branch applies)."""
    rules = config.branches if config.branches is not None else taskrepo.DEFAULT_BRANCH_RULES
    return taskrepo.branch_for_release(release, rules, config.default_branch)


def _run(argv: list[str], deadline: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never a shell) in git's clean environment; kill its whole process
    group when the deadline passes."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=git_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def read_repo(url: str, branch: str, workdir: Path, timeout: float = CLONE_TIMEOUT) -> Checkout:
    """Shallow-clone ``url`` at ``branch`` into a temporary directory under ``workdir``,
    read its tasks and remove the clone. Blocking.

    Raises :class:`RepoMissing` when the repository or the branch does not exist and
    :class:`CloneFailed` for any other failure (with git's message).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="clone-", dir=workdir))
    dest = str(scratch / "repo")
    deadline = time.monotonic() + timeout
    try:
        try:
            for argv in taskrepo.clone_commands(url, branch, dest):
                proc = _run(argv, deadline)
                if proc.returncode != 0:
                    message = proc.stderr.strip() or f"git exited with {proc.returncode}"
                    if any(sign in message.lower() for sign in _MISSING_SIGNS):
                        raise RepoMissing(message)
                    raise CloneFailed(message)
            proc = _run(taskrepo.head_command(dest), deadline)
        except subprocess.TimeoutExpired:
            raise CloneFailed(f"git did not finish within {timeout:g} seconds") from None
        except OSError as exc:
            raise CloneFailed(f"cannot run git: {exc}") from None
        commit = proc.stdout.strip()
        if proc.returncode != 0 or not taskrepo.COMMIT_RE.match(commit):
            raise CloneFailed(f"cannot read the cloned commit: {proc.stderr.strip()}")
        tasks, errors = taskrepo.discover(Path(dest))
        return Checkout(url, branch, commit, tuple(tasks), tuple(errors))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _first_fatal(message: str) -> str:
    """git's first ``fatal:`` line (the one that says what is missing)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("fatal:")), lines[-1] if lines else "")


def event_item(event: KojiBuildEvent) -> str:
    """The item a task gets for an event: the NVR of a build, the tag of a tagging."""
    if event.kind == KOJI_TAG:
        return event.tag or ""
    return event.nvr


def title(task_name: str, event: KojiBuildEvent) -> str:
    """What a task build is, for people: ``task check_sanity on nova-1.0-1.fc40 (koji_build)``."""
    subject = event.nvr
    if event.kind == KOJI_TAG:
        subject = f"{event.nvr} in {event.tag}"
    return f"task {task_name} on {subject} ({event.kind})"


def task_buildsets(
    checkout: Checkout, event: KojiBuildEvent, config: TaskRepoConfig
) -> list[TaskBuildset]:
    """The buildsets an event gives: one per task that runs on the event type and one per
    broken task directory (its ``task_error`` is every message of the file), by directory."""
    item = event_item(event)
    base: dict[str, Any] = {
        **event.properties(),
        "package": event.name,
        "task_repo": checkout.url,
        "task_branch": checkout.branch,
        "task_commit": checkout.commit,
        "task_event": event.kind,
        "task_item": item,
    }
    out: list[tuple[str, TaskBuildset]] = []
    for task in taskrepo.for_event(checkout.tasks, event.kind):
        name = title(task.name, event)
        ident = task_idstring(event.key, task.directory)
        props = {
            **base,
            "task_name": task.name,
            "task_directory": task.directory,
            "task_file": task.file,
            "task_title": name,
        }
        try:
            env = taskrepo.task_environment(
                task, event.kind, {"item": item, "package": event.name, "arch": config.arch}
            )
        except ValueError as exc:
            props["task_error"] = f"{task.file}: cannot run on this event: {exc}"
        else:
            props.update(
                task_script=taskrepo.action_script(task),
                task_env=env,
                task_timeout=task.timeout or config.timeout,
            )
        out.append((task.directory, TaskBuildset(name, props, ident)))
    for error in checkout.errors:
        name = title(error.directory, event)
        props = {
            **base,
            "task_name": error.directory,
            "task_directory": error.directory,
            "task_file": error.file,
            "task_title": name,
            "task_error": str(error),
        }
        ident = task_idstring(event.key, error.directory)
        out.append((error.directory, TaskBuildset(name, props, ident)))
    out.sort(key=lambda pair: pair[0])
    return [b for _, b in out]


def plan(
    config: TaskRepoConfig,
    event: KojiBuildEvent,
    workdir: Path,
    timeout: float = CLONE_TIMEOUT,
) -> Outcome:
    """Everything the runner decides for one event (blocking: clones the task repository).
    Never raises for a bad event or repository: the reason is in the outcome's note."""
    if event.kind not in (KOJI_BUILD, KOJI_TAG):
        return Outcome(note=f"no task repositories for {event.kind} events")
    try:
        url = repo_url(config, event.name)
    except ValueError as exc:
        return Outcome(note=f"no task repository: {exc}")
    try:
        branch = branch_for(config, event.release)
    except ValueError as exc:
        return Outcome(note=f"no task repository branch for {event.nvr}: {exc}")
    if branch is None:
        return Outcome(note=f"no task repository branch for release {event.release!r}")
    try:
        checkout = read_repo(url, branch, workdir, timeout)
    except RepoMissing as exc:
        reason = _first_fatal(str(exc))
        return Outcome(
            note=f"no task repository for {event.name} at {url} (branch {branch}): {reason}",
            missing=(url, branch),
        )
    except CloneFailed as exc:
        return Outcome(note=f"cannot clone the task repository {url} (branch {branch}): {exc}")
    buildsets = task_buildsets(checkout, event, config)
    where = f"{url} ({branch} at {checkout.commit[:12]})"
    if not buildsets:
        return Outcome(note=f"task repository {where}: no task runs on {event.kind}")
    names = ", ".join(b.properties["task_name"] for b in buildsets)
    return Outcome(buildsets, note=f"task repository {where}: {names}")


# -- Buildbot glue -------------------------------------------------------------------------


class TaskRepoRunner:
    """Adds the task builds of koji events (the koji event scheduler's ``on_event``)."""

    def __init__(
        self, config: TaskRepoConfig, workdir: Path, clone_timeout: float = CLONE_TIMEOUT
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.clone_timeout = clone_timeout
        self._missing: dict[tuple[str, str], None] = {}  # an ordered set

    @defer.inlineCallbacks
    def handle(
        self,
        scheduler: Any,
        event: KojiBuildEvent,
        started_before: Callable[[Iterable[str]], defer.Deferred] | None = None,
    ) -> Any:
        """Clone the event's task repository in a thread, then add one buildset per task on
        :data:`TASK_BUILDER` through ``scheduler``. Returns the buildset ids.

        ``started_before`` (for the event a killed master was firing) gives the idstrings,
        of those asked, that already have a buildset: those tasks are not added again."""
        outcome = yield threads.deferToThread(
            plan, self.config, event, self.workdir, self.clone_timeout
        )
        name = getattr(scheduler, "name", "task-repos")
        if outcome.missing is not None:
            if outcome.missing not in self._missing:
                self._missing[outcome.missing] = None
                while len(self._missing) > MISSING_MEMORY:
                    del self._missing[next(iter(self._missing))]
                log.msg(f"{name}: {event.describe()}: {outcome.note} (not reported again)")
        elif outcome.note:
            log.msg(f"{name}: {event.describe()}: {outcome.note}")
        done: Any = ()
        if started_before is not None and outcome.buildsets:
            done = yield started_before([b.ident for b in outcome.buildsets])
        started = []
        for buildset in outcome.buildsets:
            if buildset.ident in done:
                log.msg(f"{name}: {buildset.reason}: started before a restart")
                continue
            props = Properties()
            for key, value in buildset.properties.items():
                props.setProperty(key, value, "task-repos")
            bsid, _ = yield scheduler.addBuildsetForSourceStampsWithDefaults(
                reason=buildset.reason,
                sourcestamps=[],
                properties=props,
                builderNames=[TASK_BUILDER],
                external_idstring=buildset.ident,
            )
            started.append(bsid)
        return started


class TaskStep(buildstep.BuildStep):
    """The task builder's first step, on the master: says which task runs on what, and
    fails with every ``FILE:LINE:COLUMN`` message when the task's file is broken."""

    name = "task"
    renderables = ()

    @defer.inlineCallbacks
    def run(self) -> Any:
        props = self.build.getProperties()
        heading = str(props.getProperty("task_title") or "task")
        self.description = [heading]
        stdio = yield self.addLog("stdio")
        shown = [f"{heading}\n"]
        for key in SHOWN_PROPERTIES:
            value = props.getProperty(key)
            if value is not None:
                shown.append(f"{key}: {value}\n")
        yield stdio.addHeader("".join(shown))
        error = props.getProperty("task_error")
        if error:
            yield stdio.addStderr(f"{error}\n")
            self.descriptionDone = [f"{heading}: broken {props.getProperty('task_file')}"]
            return results.FAILURE
        self.descriptionDone = [heading]
        return results.SUCCESS


def _prop(props: Any, name: str) -> Any:
    value = props.getProperty(name)
    if value is None:
        raise ValueError(f"this build has no '{name}' property (not a task build)")
    return value


def _checkout_command(index: int) -> Any:
    @util.renderer
    def render(props: Any) -> list[str]:
        url, commit = _prop(props, "task_repo"), _prop(props, "task_commit")
        return taskrepo.worker_checkout_commands(url, commit, CHECKOUT)[index]

    return render


@util.renderer
def _task_command(props: Any) -> list[str]:
    return script_command(str(_prop(props, "task_script")))


@util.renderer
def _task_workdir(props: Any) -> str:
    directory = str(_prop(props, "task_directory"))
    if not taskrepo.DIRECTORY_RE.match(directory):
        raise ValueError(f"bad task directory {directory!r}")
    return f"build/{CHECKOUT}/{directory}"


@util.renderer
def _task_env(props: Any) -> dict[str, str]:
    env = _prop(props, "task_env")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("task_env must map names to strings")
    return dict(env)


@util.renderer
def _task_timeout(props: Any) -> int:
    value = _prop(props, "task_timeout")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"bad task_timeout {value!r}")
    return value


def task_factory() -> BuildFactory:
    """The steps of a task build: :class:`TaskStep`, then on the worker a clean checkout
    of ``task_commit`` of ``task_repo`` and the task's actions (``bash -ec``) in its
    directory, with ``task_env`` as environment and ``task_timeout`` as time limit."""
    f = BuildFactory()
    f.addStep(TaskStep(haltOnFailure=True))
    f.addStep(
        steps.ShellCommand(
            name="clean",
            command=["rm", "-rf", "--", CHECKOUT],
            haltOnFailure=True,
        )
    )
    for index, step_name in enumerate(("init", "fetch", "checkout")):
        f.addStep(
            steps.ShellCommand(
                name=step_name,
                description=f"{step_name} the task repository",
                command=_checkout_command(index),
                env={"GIT_TERMINAL_PROMPT": "0"},
                haltOnFailure=True,
            )
        )
    f.addStep(
        steps.ShellCommand(
            name="run",
            description=util.Property("task_title"),
            descriptionDone=util.Property("task_title"),
            command=_task_command,
            workdir=_task_workdir,
            env=_task_env,
            maxTime=_task_timeout,
            timeout=_task_timeout,
            haltOnFailure=True,
        )
    )
    return f


def task_builder(config: TaskRepoConfig, workernames: Sequence[str]) -> Any:
    """The ``task-repo`` builder, on the workers of the ``task-repos`` architecture."""
    return util.BuilderConfig(
        name=TASK_BUILDER,
        workernames=list(workernames),
        factory=task_factory(),
        tags=["task-repo", config.arch],
        description=f"tasks of the task repositories ({config.url}) on koji events, {config.arch}",
        builddir=TASK_BUILDER,
        workerbuilddir=TASK_BUILDER,
        # Each task is its own build. Buildbot's default would merge the requests of one
        # event: they have no source stamps and it compares only properties whose source
        # is 'Scheduler'.
        collapseRequests=False,
    )
