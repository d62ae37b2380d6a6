"""Task repositories: a package's own checks, one directory per task (pure logic).

The convention is Taskotron's (seed 003). A package's task repository has one
top-level directory per task, each holding a static ``runtask.yaml``
(``runtask.yml`` is accepted; when a directory holds both, ``runtask.yaml`` is
read and ``runtask.yml`` is ignored without a message). Directories without
either file (``docs``, ``common``...) and hidden ones (``.git``) are not tasks.

The master shallow-clones the task repository at the branch matching the
build's dist tag (:func:`clone_commands`, :func:`branch_for_release`), finds
the tasks (:func:`discover`), skips those with ``scheduling: {run: false}`` and
schedules each task whose ``input.args`` names the event type
(:func:`for_event`). A worker later fetches the very commit the master read
(:func:`worker_checkout_commands`) and runs the task's actions
(:func:`action_script`) in the task's directory, with the environment of
:func:`task_environment`.

The ``runtask.yaml`` format (a Taskotron formula)::

    name: check_firefox_sanity      # optional; defaults to the directory name
    desc: Checks sanity of firefox  # optional
    maintainer: jdoe                # optional
    scheduling:
      run: true                     # the default; false keeps the task but never runs it
    input:
      args: [koji_build]            # the event types that run the task (at least one);
                                    # 'arch', 'item', 'item_type', 'package' and
                                    # 'task_name' may be listed too (the variables given)
    environment:                    # optional map of strings, passed to the actions
      LANG: C.UTF-8
    actions:                        # at least one, run in order; the first failure stops
      - name: run the check         # optional
        shell:                      # one shell command string or a list of them
          - ./check.sh "$koji_build"
    timeout: 3600                   # optional, in seconds

Values of the event (an NVR, a tag, a compose id, a commit) are never spliced
into shell text: the actions run with environment variables named after the
Taskotron args (``koji_build=<nvr>``, ``koji_tag=<tag>``, ``compose=<id>``,
``dist_git_commit=<commit>``), plus ``item``, ``item_type``, ``task_name`` and,
when known, ``package`` and ``arch``. So ``"$koji_build"`` in a formula's shell
text expands from the environment, and a hostile NVR stays one string.

The repository is untrusted: a ``runtask.yaml`` or a task directory that is a
symbolic link to outside the repository is refused, files are size-limited,
and a repository has at most :data:`MAX_TASKS` tasks of at most
:data:`MAX_ACTIONS` actions. A broken ``runtask.yaml`` gives a
:class:`TaskError` with every problem of that file as ``FILE:LINE:COLUMN:
message`` (file names relative to the repository root); it never hides the
other tasks.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gating.commands import script_command
from gating.diagnostics import Collector, Diagnostic, Mark, did_you_mean
from gating.forge import branch_error
from gating.pipeline import IDENTIFIER_RE, IDENTIFIER_RULE, MAX_TIMEOUT
from gating.yamltree import MAX_FILE_BYTES, Node, Reader, describe, load

TASK_FILES = ("runtask.yaml", "runtask.yml")  # in order of preference

# The events a task can run on (Taskotron's item types, plus dist-git commits).
EVENT_TYPES = ("koji_build", "koji_tag", "compose", "dist_git_commit")
# Variables the gate also gives every task; a formula may list them in 'input.args'.
TASK_VARIABLES = ("item", "item_type", "package", "task_name", "arch")
RESERVED_NAMES = frozenset(EVENT_TYPES) | frozenset(TASK_VARIABLES)

MAX_TASKS = 100
MAX_ACTIONS = 50

TOP_KEYS = frozenset(
    {"name", "desc", "maintainer", "scheduling", "input", "environment", "actions", "timeout"}
)
SCHEDULING_KEYS = frozenset({"run"})
INPUT_KEYS = frozenset({"args"})
ACTION_KEYS = frozenset({"name", "shell"})

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# A task directory's name: it becomes a worker's working directory and appears in messages.
DIRECTORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*\Z")
COMMIT_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")

# Fedora dist-git branches from a build's release (dist tag), first match wins:
#   1.fc39 -> f39;  1.el9.next -> epel9-next;  1.el10_0 -> epel10.0 (EPEL 10 has a branch
#   per minor version);  1.el9, 1.el8_6 -> epel9, epel8 (EPEL 7 to 9 have one branch per
#   major version; '_M' is a RHEL z-stream suffix);  1.el6 -> el6 (EPEL 5 and 6 branches).
# Rawhide builds carry the next release's number (fc42 while 'f42' does not exist yet):
# a site that knows it puts a rule such as (r"\.fc42(?![0-9])", "rawhide") first.
DEFAULT_BRANCH_RULES: tuple[tuple[str, str], ...] = (
    (r"\.fc([1-9][0-9]*)(?![0-9])", r"f\1"),
    (r"\.el([1-9][0-9]*)\.next(?![0-9A-Za-z])", r"epel\1-next"),
    (r"\.el([1-9][0-9]+)_([0-9]+)(?![0-9])", r"epel\1.\2"),
    (r"\.el([7-9])(?:_[0-9]+)?(?![0-9])", r"epel\1"),
    (r"\.el([56])(?![0-9])", r"el\1"),
)

# Every git command: no 'ext::' transport (it runs commands), no hooks, protocol v2.
GIT = (
    "git",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "protocol.version=2",
)


@dataclass(frozen=True)
class Action:
    name: str | None
    shell: tuple[str, ...]
    mark: Mark = field(default=Mark("<none>"), compare=False)


@dataclass(frozen=True)
class Task:
    name: str
    directory: str
    file: str  # relative to the repository root, e.g. 'check_foo/runtask.yaml'
    description: str | None = None
    maintainer: str | None = None
    run: bool = True
    args: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    actions: tuple[Action, ...] = ()
    timeout: int | None = None
    mark: Mark = field(default=Mark("<none>"), compare=False)

    @property
    def events(self) -> tuple[str, ...]:
        """The event types among ``args``."""
        return tuple(a for a in self.args if a in EVENT_TYPES)


@dataclass(frozen=True)
class TaskError:
    """A task directory whose ``runtask.yaml`` cannot be used, with every problem in it."""

    directory: str
    file: str
    messages: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join(self.messages)


# -- discovery ---------------------------------------------------------------------------


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _resolve(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, dangling or a loop
        return None


def discover(root: Path) -> tuple[list[Task], list[TaskError]]:
    """The tasks of a checked-out task repository, and the task directories that are broken.

    Top-level directories are read in sorted order; hidden ones are skipped. Raises
    ``OSError`` only when ``root`` itself cannot be listed.
    """
    real_root = root.resolve(strict=True)
    candidates: list[tuple[str, str]] = []  # (directory, file name)
    errors: list[TaskError] = []
    for name in sorted(os.listdir(root)):
        if name.startswith("."):
            continue
        path = root / name
        if path.is_symlink():
            target = _resolve(path)
            if target is None or not target.is_dir():
                continue
            if not _within(target, real_root):
                errors.append(
                    _error(
                        name, name, "task directory is a symbolic link to outside the repository"
                    )
                )
                continue
        elif not path.is_dir():
            continue
        for filename in TASK_FILES:
            if os.path.lexists(path / filename):
                candidates.append((name, filename))
                break
    tasks: list[Task] = []
    names: dict[str, str] = {}
    for number, (directory, filename) in enumerate(candidates):
        display = f"{directory}/{filename}"
        if number >= MAX_TASKS:
            errors.append(
                _error(
                    directory,
                    display,
                    f"too many tasks in the repository ({len(candidates)}; at most "
                    f"{MAX_TASKS}): this one is not loaded",
                )
            )
            continue
        collector = Collector()
        task = _load_task(root, real_root, directory, filename, collector)
        if task is not None and task.name in names:
            collector.error(
                task.mark,
                f"task name '{task.name}' is already used by {names[task.name]}",
            )
        if collector or task is None:
            messages = tuple(str(d) for d in sorted(set(collector.diagnostics)))
            errors.append(TaskError(directory, display, messages))
            continue
        names[task.name] = display
        tasks.append(task)
    errors.sort(key=lambda e: e.directory)
    return tasks, errors


def _error(directory: str, display: str, message: str) -> TaskError:
    return TaskError(directory, display, (str(Diagnostic(Mark(display), message)),))


def _load_task(
    root: Path, real_root: Path, directory: str, filename: str, errors: Collector
) -> Task | None:
    display = f"{directory}/{filename}"
    where = Mark(display)
    path = root / directory / filename
    if not DIRECTORY_RE.match(directory):
        errors.error(
            where,
            f"task directory name {directory!r} must be ASCII letters, digits, '+', '.', '_' "
            f"or '-', starting with a letter or digit",
        )
        return None
    target = _resolve(path)
    if target is None:
        errors.error(where, f"{filename} is a broken symbolic link")
        return None
    if not _within(target, real_root):
        errors.error(where, f"{filename} is a symbolic link to outside the repository")
        return None
    try:
        info = target.stat()
        if not stat.S_ISREG(info.st_mode):
            errors.error(where, f"{filename} is not a regular file")
            return None
        if info.st_size > MAX_FILE_BYTES:
            # the same words as yamltree's check, without reading the file
            errors.error(
                where,
                f"file is too large ({info.st_size} bytes; the limit is {MAX_FILE_BYTES})",
            )
            return None
        data = target.read_bytes()
    except OSError as exc:
        errors.error(where, f"cannot read {filename}: {exc.strerror}")
        return None
    return parse_task(data, directory, display, errors)


def parse_task(data: str | bytes, directory: str, display: str, errors: Collector) -> Task | None:
    """Read the text of a ``runtask.yaml``: the task of ``directory``, or None when the
    text has any problem; every problem goes to ``errors`` as ``display:LINE:COLUMN:
    message``."""
    before = len(errors.diagnostics)
    node = load(data, display, errors)
    if node is None:
        return None
    task = _TaskParser(Reader(errors)).parse(node, directory, display)
    return task if len(errors.diagnostics) == before else None


class _TaskParser:
    def __init__(self, reader: Reader) -> None:
        self.r = reader

    def text(self, node: Node, what: str) -> str | None:
        s = self.r.string(node, what)
        if s is not None and "\0" in s:
            self.r.fail(node, f"{what}: must not contain a NUL character")
            return None
        return s

    def parse(self, root: Node, directory: str, display: str) -> Task | None:
        r = self.r
        if root.value is None:
            r.fail(root, "empty task file: expected a mapping with 'input' and 'actions'")
            return None
        top = r.mapping(root, "the task file", TOP_KEYS, required=("input", "actions"))
        if top is None:
            return None
        name_mark = root.mark
        if "name" in top:
            name = r.string(top["name"], "'name'")
            name_mark = top["name"].mark
            if name is not None and not IDENTIFIER_RE.match(name):
                r.fail(top["name"], f"task name '{name}' must be {IDENTIFIER_RULE}")
        else:
            name = directory
            if not IDENTIFIER_RE.match(name):
                r.fail(
                    root,
                    f"task name '{name}' (from the directory name) must be {IDENTIFIER_RULE}; "
                    f"set 'name' to choose another",
                )
        description = r.string(top["desc"], "'desc'") if "desc" in top else None
        maintainer = r.string(top["maintainer"], "'maintainer'") if "maintainer" in top else None
        run: bool | None = True
        if "scheduling" in top:
            scheduling = r.mapping(top["scheduling"], "'scheduling'", SCHEDULING_KEYS)
            if scheduling and "run" in scheduling:
                run = r.boolean(scheduling["run"], "'scheduling' 'run'")
        args = self.args(top["input"]) if "input" in top else ()
        environment = self.environment(top["environment"]) if "environment" in top else ()
        actions = self.actions(top["actions"]) if "actions" in top else ()
        timeout = None
        if "timeout" in top:
            timeout = r.integer(top["timeout"], "'timeout' (seconds)", minimum=1)
            if timeout is not None and timeout > MAX_TIMEOUT:
                r.fail(top["timeout"], f"'timeout': at most {MAX_TIMEOUT} seconds, got {timeout}")
        if name is None or run is None:
            return None
        return Task(
            name=name,
            directory=directory,
            file=display,
            description=description,
            maintainer=maintainer,
            run=run,
            args=args,
            environment=environment,
            actions=actions,
            timeout=timeout,
            mark=name_mark,
        )

    def args(self, node: Node) -> tuple[str, ...]:
        fields = self.r.mapping(node, "'input'", INPUT_KEYS, required=("args",))
        if not fields or "args" not in fields:
            return ()
        entries = self.r.string_list(fields["args"], "'input' 'args'", allow_single=True)
        if entries is None:
            return ()
        known = (*EVENT_TYPES, *TASK_VARIABLES)
        out: list[str] = []
        for arg, entry in entries:
            if arg not in known:
                self.r.fail(
                    entry,
                    f"'input' 'args': unknown argument '{arg}'{did_you_mean(arg, known)} "
                    f"(event types: {', '.join(EVENT_TYPES)}; "
                    f"variables: {', '.join(TASK_VARIABLES)})",
                )
            elif arg in out:
                self.r.fail(entry, f"'input' 'args': '{arg}' is listed twice")
            else:
                out.append(arg)
        if not any(a in EVENT_TYPES for a in out) and len(out) == len(entries):
            self.r.fail(
                fields["args"],
                f"'input' 'args': expected at least one event type ({', '.join(EVENT_TYPES)})",
            )
        return tuple(out)

    def environment(self, node: Node) -> tuple[tuple[str, str], ...]:
        values = self.r.string_map(node, "'environment'")
        out: list[tuple[str, str]] = []
        for key, value in values.items():
            mark = node.key_mark(key)
            if not ENV_NAME_RE.match(key):
                self.r.errors.error(
                    mark,
                    f"'environment': '{key}' is not a valid variable name (ASCII letters, "
                    f"digits and '_', not starting with a digit)",
                )
            elif key in RESERVED_NAMES:
                self.r.errors.error(
                    mark, f"'environment': '{key}' is set by the gate for every task"
                )
            elif value is None or "\0" in value:
                self.r.errors.error(
                    node.value[key].mark,
                    f"'environment' '{key}': must not contain a NUL character",
                )
            else:
                out.append((key, value))
        return tuple(out)

    def actions(self, node: Node) -> tuple[Action, ...]:
        if not node.is_seq:
            self.r.fail(node, f"'actions': expected a list of actions, got {describe(node)}")
            return ()
        if not node.value:
            self.r.fail(node, "'actions': expected at least one action")
            return ()
        if len(node.value) > MAX_ACTIONS:
            self.r.fail(
                node, f"'actions': too many actions ({len(node.value)}; at most {MAX_ACTIONS})"
            )
            return ()
        out: list[Action] = []
        for number, entry in enumerate(node.value, start=1):
            what = f"action {number}"
            fields = self.r.mapping(entry, what, ACTION_KEYS, required=("shell",))
            if fields is None:
                continue
            name = self.text(fields["name"], f"{what} 'name'") if "name" in fields else None
            if "shell" not in fields:
                continue
            commands = self.r.string_list(fields["shell"], f"{what} 'shell'", allow_single=True)
            if commands is None:
                continue
            if not commands:
                self.r.fail(fields["shell"], f"{what} 'shell': expected at least one command")
                continue
            shell: list[str] = []
            for command, command_node in commands:
                if "\0" in command:
                    self.r.fail(command_node, f"{what} 'shell': must not contain a NUL character")
                elif not command.strip():
                    self.r.fail(command_node, f"{what} 'shell': empty command")
                else:
                    shell.append(command)
            out.append(Action(name, tuple(shell), entry.mark))
        return tuple(out)


# -- scheduling --------------------------------------------------------------------------


def for_event(tasks: Iterable[Task], event_type: str) -> list[Task]:
    """The tasks to run for an event: ``run`` true and ``event_type`` in their args."""
    if event_type not in EVENT_TYPES:
        raise ValueError(
            f"unknown event type {event_type!r}{did_you_mean(event_type, EVENT_TYPES)}"
        )
    return [t for t in tasks if t.run and event_type in t.args]


def valid_branch(name: str) -> bool:
    """Whether ``name`` is a branch name git accepts (``git check-ref-format --branch``);
    the rules are :func:`gating.forge.branch_error`'s."""
    return branch_error(name) is None


def branch_for_release(
    release: str,
    rules: Sequence[tuple[str, str]] = DEFAULT_BRANCH_RULES,
    default: str | None = "main",
) -> str | None:
    """The task repository branch for a build's release (``1.fc39`` -> ``f39``).

    Each rule is a ``(regex, template)`` pair: the first regex that ``re.search``
    finds in ``release`` gives the branch ``match.expand(template)``; ``default``
    when none matches. Raises ``ValueError`` when a rule gives a name git would refuse.
    """
    for pattern, template in rules:
        match = re.search(pattern, release)
        if match is None:
            continue
        branch = match.expand(template)
        if not valid_branch(branch):
            raise ValueError(
                f"branch rule {pattern!r} -> {template!r} gives {branch!r} for release "
                f"{release!r}, which is not a valid branch name"
            )
        return branch
    return default


def task_environment(task: Task, event_type: str, values: Mapping[str, str]) -> dict[str, str]:
    """The environment a task's actions run with for one event.

    ``values`` holds the event's item (as ``item`` or under the event type's name,
    e.g. ``koji_build``) and what else is known (``package``, ``arch``...). The task's
    own environment comes first; the event's variables override it. Raises
    ``ValueError`` for a name that is not a shell identifier, a value with a NUL
    character, an event the task does not take, or values that contradict each other.
    """
    if event_type not in task.events:
        raise ValueError(f"task '{task.name}' does not run on {event_type!r} events")
    item = values.get("item", values.get(event_type))
    if item is None:
        raise ValueError(f"no value for the event's item: give 'item' or {event_type!r}")
    fixed = {"item": item, event_type: item, "item_type": event_type, "task_name": task.name}
    for key, value in fixed.items():
        if key in values and values[key] != value:
            raise ValueError(f"{key!r} is {values[key]!r} but the event says {value!r}")
    other_events = [k for k in values if k in EVENT_TYPES and k != event_type]
    if other_events:
        raise ValueError(f"values for other event types: {', '.join(sorted(other_events))}")
    env = {**dict(task.environment), **values, **fixed}
    for key, value in env.items():
        if not ENV_NAME_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment variable {key!r}: expected a string without NUL")
    return env


# -- git ---------------------------------------------------------------------------------


def _check_url(url: str) -> None:
    if not url or url.startswith("-") or any(ord(c) < 0x20 for c in url):
        raise ValueError(f"bad repository URL {url!r}")


def _check_dest(dest: str) -> None:
    if not dest or "\0" in dest:
        raise ValueError(f"bad destination {dest!r}")


def clone_commands(url: str, branch: str, dest: str) -> list[list[str]]:
    """The master's shallow clone of a task repository at ``branch``, as argv lists.

    Run :func:`head_command` afterwards to learn the commit the workers must fetch.
    """
    _check_url(url)
    _check_dest(dest)
    if not valid_branch(branch):
        raise ValueError(f"bad branch name {branch!r}")
    return [
        [
            *GIT,
            "clone",
            "-q",
            "--depth",
            "1",
            "--single-branch",
            "--no-tags",
            "--branch",
            branch,
            "--",
            url,
            dest,
        ]
    ]


def head_command(dest: str) -> list[str]:
    """Prints the full id of the commit checked out in ``dest``."""
    _check_dest(dest)
    return [*GIT, "-C", dest, "rev-parse", "--verify", "HEAD^{commit}"]


def worker_checkout_commands(url: str, commit: str, dest: str) -> list[list[str]]:
    """A worker's checkout of exactly ``commit`` (a full id) at depth 1, as argv lists.

    The commit is fetched by its id. With protocol v2 (pinned in :data:`GIT`, git >= 2.18
    on both sides) upload-pack serves any commit it has, so the server needs no
    ``uploadpack.allowReachableSHA1InWant``, and a branch that moved on since the master
    cloned it does not matter. Protocol v0 refuses an id no ref points at. ``dest``
    should not exist yet (or be empty).
    """
    _check_url(url)
    _check_dest(dest)
    if not COMMIT_RE.match(commit):
        raise ValueError(f"expected a full commit id, got {commit!r}")
    return [
        [*GIT, "init", "-q", "--template=", "--", dest],
        [*GIT, "-C", dest, "fetch", "-q", "--no-tags", "--depth", "1", "--", url, commit],
        [
            *GIT,
            "-C",
            dest,
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            "FETCH_HEAD",
            "--",
        ],
    ]


# -- running -----------------------------------------------------------------------------


def action_script(task: Task) -> str:
    """The shell text a worker runs, in the task's directory, for the task's actions.

    It stops at the first failing command (``set -eu``: an unset variable fails too).
    Each action starts with a line printing its number and name; the name is quoted
    with ``shlex.quote``. No event value is ever part of the text: those come from
    :func:`task_environment`.
    """
    lines = ["set -eu"]
    total = len(task.actions)
    for number, action in enumerate(task.actions, start=1):
        title = f"==> action {number}/{total}"
        if action.name:
            title += f": {action.name}"
        lines.append(f"printf '%s\\n' {shlex.quote(title)}")
        lines.extend(action.shell)
    return "\n".join(lines) + "\n"


def task_command(task: Task) -> list[str]:
    """The argv that runs :func:`action_script` (bash, no profile, exit on error)."""
    return script_command(action_script(task))
