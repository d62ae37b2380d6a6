"""Pipeline files: a superset of lpci's ``.launchpad.yaml``, loaded into frozen models.

A pipeline is a list of stages, each a list of job names; a job expands into one
:class:`Job` per matrix entry (``index``), and each of those runs once per
architecture: a *job instance*. Jobs that use a built-in kind running on the
master (``uses: koji-export``) have no architecture; they run in the ``master``
lane and act as barriers across every architecture.

The stage semantics are lpci's (seed 001): stages run in order, all jobs of a
stage run, a stage fails if any of its jobs fails, and later stages run only if
the earlier ones passed. Per architecture, :meth:`Pipeline.stages_for` gives the
stages filtered to that architecture as ``(job_name, job_index)`` pairs.

Trusted and untrusted files. The site's pipeline files are trusted (the default). A
pipeline file from a project's repository (``uses: in-repo-pipeline``, run on a worker by
:mod:`gating.inrepo`) is loaded with ``trusted=False``: the same loader with every limit,
plus refusals (each a ``FILE:LINE:COLUMN`` error) of whatever only the site may decide or
only the master acts on: ``trigger``, ``uses:`` of any built-in job kind, keys that name a
queue, project, branch or pipeline membership (:data:`MEMBERSHIP_KEYS`), package
installation through the pools' commands (``packages``, ``snaps``,
``package-repositories``), artifacts kept by the master (``output``, ``input``),
environment values passed through from the worker (``null``) and ``GATING_*`` names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gating import arch as archmod
from gating.diagnostics import Collector, ConfigError, Mark, did_you_mean
from gating.yamltree import Node, Reader, describe, load

MASTER_LANE = "master"

# \Z, not $: '$' also matches before a trailing newline ("build\n").
IDENTIFIER_RE = re.compile(r"^[a-z0-9][a-z0-9+._-]+\Z")
IDENTIFIER_RULE = (
    "at least two characters: lower-case ASCII letters, digits, '+', '.', '_' or '-', "
    "starting with a letter or digit"
)

# Limits that keep a hostile or mistaken file from exhausting the master (with those of
# gating.yamltree: file size, nesting depth, number of values). Each is an error naming the
# file and the place.
MAX_JOBS = 200  # jobs in 'jobs'
MAX_MATRIX_ENTRIES = 64  # entries of one job's 'matrix'
MAX_ENTRIES = 1000  # job entries of a pipeline, each matrix entry counted (a job without one: 1)
MAX_INSTANCES = 2000  # job instances of a pipeline: its staged entries times their lanes
MAX_TIMEOUT = 7 * 24 * 3600

# Snap names as the snap store allows them; package names may be anything the worker's
# package-install command takes as one argument, except an option ('-...').
SNAP_NAME_RE = re.compile(r"^(?=.{1,40}\Z)[a-z0-9]+(?:-[a-z0-9]+)*\Z")
SNAP_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,99}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

TRIGGER_OPTIONS: dict[str, frozenset[str]] = {
    "gate": frozenset({"projects"}),
    "check": frozenset({"projects"}),
    "koji_build": frozenset({"package", "target"}),
    "koji_tag": frozenset({"tag", "package"}),
    "compose": frozenset({"location"}),
    "dist_git_commit": frozenset({"projects", "branches"}),
    "nightly": frozenset({"hour", "minute", "projects"}),
}

POOL = "pool"  # a built-in job kind that runs on the workers of its architectures

# Built-in job kinds (``uses:``) and where they run.
IN_REPO_KIND = "in-repo-pipeline"
BUILTIN_KINDS: dict[str, str] = {
    "koji-scratch-build": MASTER_LANE,
    "koji-export": MASTER_LANE,
    IN_REPO_KIND: POOL,
}
# ``uses: in-repo-pipeline``: the project repository's own pipeline file, read and run on
# a worker (never on the master) at the commit under test. The keys it takes, its default
# file and the triggers whose runs have a project commit to check out.
IN_REPO_DEFAULT_FILE = ".gating.yaml"
IN_REPO_KEYS = frozenset({"uses", "file", "architectures", "series", "timeout", "matrix"})
IN_REPO_TRIGGERS = frozenset({"gate", "check", "dist_git_commit"})
MAX_FILE_PATH = 255
_FILE_PART_RE = re.compile(r"^[A-Za-z0-9._+-]+\Z")

# Keys that would say which queue a project belongs to or which pipelines run for it: only
# the site configuration decides that. An untrusted file that writes one gets an error
# that says so (a trusted one: 'unknown key').
MEMBERSHIP_KEYS = frozenset(
    {"queue", "queues", "project", "projects", "branches", "pipelines", "gate", "check"}
)
# Job keys an untrusted file may not use, and why.
UNTRUSTED_JOB_KEYS: dict[str, str] = {
    "packages": "installs packages with the pool's package-install command, which only the "
    "site's pipelines may use",
    "snaps": "installs snaps on the worker, which only the site's pipelines may do",
    "package-repositories": "adds package sources to the worker, which only the site's "
    "pipelines may do",
    "output": "hands files to the master, which keeps no artifacts of an untrusted pipeline "
    "(later jobs see the files a job leaves in the checkout)",
    "input": "takes files the master kept, which it keeps for no untrusted pipeline "
    "(later jobs see the files a job leaves in the checkout)",
}

# lpci plugins and the job keys each one adds.
PLUGIN_KEYS: dict[str, frozenset[str]] = {
    "tox": frozenset(),
    "pyproject-build": frozenset(),
    "python-release": frozenset(),
    "miniconda": frozenset({"conda-packages", "conda-python", "conda-channels"}),
    "conda-build": frozenset(
        {"conda-packages", "conda-python", "conda-channels", "build-target", "recipe-folder"}
    ),
    "golang": frozenset({"golang-version"}),
}
_ALL_PLUGIN_KEYS = frozenset().union(*PLUGIN_KEYS.values())

TOP_KEYS = frozenset({"pipeline", "jobs", "license", "trigger"})
JOB_KEYS = frozenset(
    {
        # lpci
        "series",
        "architectures",
        "packages",
        "package-repositories",
        "snaps",
        "environment",
        "run-before",
        "run",
        "run-after",
        "output",
        "input",
        "matrix",
        "plugin",
        "root",
        # ours
        "uses",
        "timeout",
        "file",  # uses: in-repo-pipeline
    }
)
OUTPUT_KEYS = frozenset(
    {"paths", "distribute", "channels", "properties", "dynamic-properties", "expires"}
)
INPUT_KEYS = frozenset({"job-name", "target-directory", "architecture"})
SNAP_KEYS = frozenset({"name", "channel", "classic"})
REPOSITORY_KEYS = frozenset({"type", "ppa", "formats", "components", "suites", "url", "trusted"})
LICENSE_KEYS = frozenset({"spdx", "path"})


def in_repo_file_error(path: str) -> str | None:
    """Why ``path`` cannot name a pipeline file inside a project repository, or None: a
    relative path of ASCII letters, digits, '.', '_', '+' and '-' parts, no '.' or '..'
    part, nothing under '.git', not starting with '-'."""
    rule = (
        "must be a relative path inside the project repository: parts of ASCII letters, "
        "digits, '.', '_', '+' or '-', no '.' or '..' part, not in '.git', not starting "
        "with '-'"
    )
    if not path or len(path) > MAX_FILE_PATH or path.startswith(("-", "/")):
        return rule
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _FILE_PART_RE.match(part):
            return rule
    if ".git" in parts:
        return rule
    return None


def package_error(package: str) -> str | None:
    """Why ``package`` cannot be an argument of a package-install command, or None."""
    if not package or package.startswith("-") or _CONTROL_RE.search(package):
        return (
            "is not a package name (it must not be empty, start with '-' or hold control "
            "characters)"
        )
    return None


@dataclass(frozen=True)
class Trigger:
    kind: str
    options: tuple[tuple[str, Any], ...] = ()
    mark: Mark = field(default=Mark("<none>"), compare=False)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class Snap:
    name: str
    channel: str = "latest/stable"
    classic: bool = False


@dataclass(frozen=True)
class Output:
    paths: tuple[str, ...] = ()
    distribute: str | None = None
    channels: tuple[str, ...] = ()
    properties: tuple[tuple[str, Any], ...] = ()
    dynamic_properties: str | None = None
    expires: str | None = None


@dataclass(frozen=True)
class Input:
    job_name: str
    target_directory: str
    architecture: str | None = None
    mark: Mark = field(default=Mark("<none>"), compare=False)


@dataclass(frozen=True)
class Job:
    """One matrix entry of a job (``index`` 0 for a job without a matrix)."""

    name: str
    index: int
    mark: Mark = field(compare=False)
    series: str | None = None
    architectures: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    package_repositories: tuple[tuple[tuple[str, Any], ...], ...] = ()
    snaps: tuple[Snap, ...] = ()
    environment: tuple[tuple[str, str | None], ...] = ()
    run_before: str | None = None
    run: str | None = None
    run_after: str | None = None
    output: Output | None = None
    input: Input | None = None
    plugin: str | None = None
    plugin_config: tuple[tuple[str, Any], ...] = ()
    root: bool = True
    uses: str | None = None
    timeout: int | None = None
    file: str | None = None  # uses: in-repo-pipeline
    arch_marks: tuple[Mark, ...] = field(default=(), compare=False, repr=False)

    @property
    def lanes(self) -> tuple[str, ...]:
        """The architectures this entry runs on, or the master lane for built-in kinds."""
        if self.uses is not None and BUILTIN_KINDS.get(self.uses) == MASTER_LANE:
            return (MASTER_LANE,)
        return self.architectures


@dataclass(frozen=True, order=True)
class InstanceId:
    """One job instance: (job name, matrix index, lane). The lane is an arch or ``master``."""

    job: str
    index: int
    lane: str

    def __str__(self) -> str:
        return f"{self.job}[{self.index}]@{self.lane}"


@dataclass(frozen=True)
class Pipeline:
    name: str
    file: str
    stages: tuple[tuple[str, ...], ...]
    jobs: tuple[Job, ...]
    triggers: tuple[Trigger, ...] = ()
    trusted: bool = True
    mark: Mark = field(default=Mark("<none>"), compare=False)

    @cached_property
    def _entries_by_name(self) -> dict[str, tuple[Job, ...]]:
        by_name: dict[str, list[Job]] = {}
        for job in self.jobs:
            by_name.setdefault(job.name, []).append(job)
        return {name: tuple(entries) for name, entries in by_name.items()}

    def job(self, name: str, index: int = 0) -> Job:
        for job in self._entries_by_name.get(name, ()):
            if job.index == index:
                return job
        raise KeyError((name, index))

    def entries(self, name: str) -> tuple[Job, ...]:
        return self._entries_by_name.get(name, ())

    def lanes(self) -> list[str]:
        """Every lane that has a job instance, arches in canonical order, master last."""
        found = {lane for job in self.jobs if self._staged(job.name) for lane in job.lanes}
        arches = sorted(found - {MASTER_LANE}, key=archmod.sort_key)
        return arches + ([MASTER_LANE] if MASTER_LANE in found else [])

    def arches(self) -> list[str]:
        return [lane for lane in self.lanes() if lane != MASTER_LANE]

    def _staged(self, name: str) -> bool:
        return any(name in stage for stage in self.stages)

    def stages_for(self, lane: str) -> list[list[tuple[str, int]]]:
        """The stages of one lane as ``(job_name, job_index)`` pairs; empty stages dropped."""
        out: list[list[tuple[str, int]]] = []
        for stage in self.stages:
            pairs = [
                (job.name, job.index)
                for name in stage
                for job in self.entries(name)
                if lane in job.lanes
            ]
            if pairs:
                out.append(pairs)
        return out

    def instances(self) -> Iterator[tuple[int, InstanceId]]:
        """Every job instance with the number of its stage (0-based), in stage order."""
        for number, stage in enumerate(self.stages):
            for name in stage:
                for job in self.entries(name):
                    for lane in job.lanes:
                        yield number, InstanceId(job.name, job.index, lane)

    def stage_of(self, name: str) -> int:
        for number, stage in enumerate(self.stages):
            if name in stage:
                return number
        raise KeyError(name)

    def input_lane(self, consumer: InstanceId) -> str | None:
        """The lane whose instances of the input job feed ``consumer``, or None."""
        job = self.job(consumer.job, consumer.index)
        if job.input is None:
            return None
        if job.input.architecture is not None:
            return job.input.architecture
        producer_lanes = {lane for j in self.entries(job.input.job_name) for lane in j.lanes}
        if consumer.lane in producer_lanes:
            return consumer.lane
        if len(producer_lanes) == 1:
            return next(iter(producer_lanes))
        return None

    def producers(self, consumer: InstanceId) -> list[InstanceId]:
        """The instances whose ``output`` ``consumer`` takes as ``input``."""
        job = self.job(consumer.job, consumer.index)
        lane = self.input_lane(consumer)
        if job.input is None or lane is None:
            return []
        return [
            InstanceId(j.name, j.index, lane)
            for j in self.entries(job.input.job_name)
            if lane in j.lanes
        ]

    def dependencies(self) -> dict[InstanceId, tuple[InstanceId, ...]]:
        """What each instance waits for: earlier stages of its lane, the master lane's
        earlier stages (for the master lane: every earlier instance) and its input's producers.
        """
        placed = list(self.instances())
        deps: dict[InstanceId, tuple[InstanceId, ...]] = {}
        for number, inst in placed:
            before = [
                other
                for n, other in placed
                if n < number
                and (inst.lane == MASTER_LANE or other.lane in (inst.lane, MASTER_LANE))
            ]
            extra = [p for p in self.producers(inst) if p not in before]
            deps[inst] = tuple(before + extra)
        return deps


def pipeline_name_for(path: Path) -> str:
    """``pipelines/packstack.yaml`` -> ``packstack``; ``.launchpad.yaml`` -> ``launchpad``."""
    name = path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.lstrip(".")


def load_pipeline_file(path: Path, display: str | None = None, *, trusted: bool = True) -> Pipeline:
    """Load one pipeline file; raises :class:`ConfigError` with every problem in it."""
    display = display or str(path)
    errors = Collector()
    try:
        data = path.read_bytes()
    except OSError as exc:
        errors.error(Mark(display), f"cannot read pipeline file: {exc.strerror}")
        errors.check()
        raise AssertionError("unreachable") from exc
    pipeline = parse_pipeline(data, display, pipeline_name_for(path), errors, trusted=trusted)
    errors.check()
    assert pipeline is not None
    return pipeline


def parse_pipeline(
    text: str | bytes,
    filename: str,
    name: str,
    errors: Collector,
    *,
    trusted: bool = True,
) -> Pipeline | None:
    """Parse pipeline text; errors go to ``errors``; returns None if any were found."""
    before = len(errors.diagnostics)
    root = load(text, filename, errors)
    if root is None:
        return None
    if not IDENTIFIER_RE.match(name):
        errors.error(
            Mark(filename), f"pipeline name '{name}' (from the file name) must be {IDENTIFIER_RULE}"
        )
    parser = _PipelineParser(Reader(errors), filename, trusted)
    pipeline = parser.parse(root, name, trusted)
    if len(errors.diagnostics) > before:
        return None
    return pipeline


class _PipelineParser:
    def __init__(self, reader: Reader, filename: str, trusted: bool = True) -> None:
        self.r = reader
        self.filename = filename
        self.trusted = trusted

    def mapping(
        self, node: Node, what: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Node] | None:
        """``Reader.mapping``; in an untrusted file a key of :data:`MEMBERSHIP_KEYS` is an
        error that says only the site decides it (and is dropped)."""
        allowed = set(allowed)
        if self.trusted or not node.is_map:
            return self.r.mapping(node, what, allowed, required)
        for key in node.value:
            if key in MEMBERSHIP_KEYS and key not in allowed:
                self.r.errors.error(
                    node.key_mark(key),
                    f"'{key}' in {what}: only the site configuration says which queue a "
                    "project belongs to and which pipelines run for it; a pipeline file "
                    "from a repository cannot",
                )
        fields = self.r.mapping(node, what, allowed | MEMBERSHIP_KEYS, required)
        if fields is None:
            return None
        return {k: v for k, v in fields.items() if k in allowed}

    def parse(self, root: Node, name: str, trusted: bool) -> Pipeline | None:
        if root.value is None:
            self.r.fail(root, "empty pipeline file: expected a mapping with 'pipeline' and 'jobs'")
            return None
        top = self.mapping(root, "the pipeline file", TOP_KEYS, required=("pipeline", "jobs"))
        if top is None:
            return None
        triggers: tuple[Trigger, ...] = ()
        if "trigger" in top and not self.trusted:
            self.r.errors.error(
                root.key_mark("trigger"),
                "'trigger': a pipeline file from a repository cannot say when it runs "
                "(the site's pipeline that runs it with 'uses: in-repo-pipeline' decides)",
            )
        elif "trigger" in top:
            triggers = self.triggers(top["trigger"])
        if "license" in top:
            self.license(top["license"])
        jobs: list[Job] = []
        job_nodes: dict[str, Node] = {}
        if "jobs" in top:
            jobs_node = top["jobs"]
            if not jobs_node.is_map:
                self.r.fail(jobs_node, f"'jobs': expected a mapping, got {describe(jobs_node)}")
            else:
                if len(jobs_node.value) > MAX_JOBS:
                    self.r.fail(
                        jobs_node, f"too many jobs ({len(jobs_node.value)}; at most {MAX_JOBS})"
                    )
                for job_name, job_node in jobs_node.items():
                    job_nodes[job_name] = job_node
                    if not IDENTIFIER_RE.match(job_name):
                        self.r.errors.error(
                            jobs_node.key_mark(job_name),
                            f"job name '{job_name}' must be {IDENTIFIER_RULE}",
                        )
                    jobs.extend(self.job(job_name, job_node))
                if len(jobs) > MAX_ENTRIES:
                    self.r.fail(
                        jobs_node,
                        f"too many job entries ({len(jobs)}, each matrix entry counted; "
                        f"at most {MAX_ENTRIES})",
                    )
        stages = self.stages(top["pipeline"], job_nodes) if "pipeline" in top else ()
        pipeline = Pipeline(
            name=name,
            file=self.filename,
            stages=stages,
            jobs=tuple(jobs),
            triggers=triggers,
            trusted=trusted,
            mark=root.mark,
        )
        self.check_text(root)
        if len(jobs) <= MAX_ENTRIES:
            self.check_graph(pipeline, job_nodes)
        self.check_in_repo(pipeline)
        return pipeline

    def check_in_repo(self, pipeline: Pipeline) -> None:
        """A job that runs the repository's own pipeline needs a project commit: the
        pipeline's triggers (if any) must all be gate, check or dist_git_commit."""
        others = sorted({t.kind for t in pipeline.triggers} - IN_REPO_TRIGGERS)
        if not others:
            return
        for job in pipeline.jobs:
            if job.uses == IN_REPO_KIND and job.index == 0:
                self.r.errors.error(
                    job.mark,
                    f"job '{job.name}' uses '{IN_REPO_KIND}', which runs the pipeline file of "
                    "the project commit under test: the pipeline's triggers must be "
                    f"{', '.join(sorted(IN_REPO_TRIGGERS))}, not {', '.join(others)}",
                )

    def check_text(self, root: Node) -> None:
        """No key or string anywhere in the file may hold a NUL character: no command
        argument or environment variable can carry one."""
        todo = [root]
        while todo:
            node = todo.pop()
            if isinstance(node.value, str) and "\0" in node.value:
                self.r.fail(node, "a NUL character is not allowed")
            for key, value in node.items():
                if "\0" in key:
                    self.r.errors.error(node.key_mark(key), "a NUL character is not allowed")
                todo.append(value)
            if node.is_seq:
                todo.extend(node.value)

    # -- stanzas ---------------------------------------------------------------

    def stages(self, node: Node, job_nodes: dict[str, Node]) -> tuple[tuple[str, ...], ...]:
        if not node.is_seq:
            self.r.fail(
                node,
                f"'pipeline': expected a list of stages (a job name or a list of job names), "
                f"got {describe(node)}",
            )
            return ()
        if not node.value:
            self.r.fail(node, "'pipeline': expected at least one stage")
        stages: list[tuple[str, ...]] = []
        seen: dict[str, int] = {}
        for number, stage_node in enumerate(node.value, start=1):
            what = f"stage {number}"
            entries = self.r.string_list(stage_node, what, allow_single=True)
            if entries is None:
                continue
            if not entries:
                self.r.fail(stage_node, f"{what}: expected at least one job name")
            names: list[str] = []
            for job_name, job_node in entries:
                if job_name not in job_nodes:
                    self.r.fail(
                        job_node,
                        f"{what} names job '{job_name}', which is not defined in 'jobs'"
                        f"{did_you_mean(job_name, job_nodes)}",
                    )
                    continue
                if job_name in seen:
                    self.r.fail(
                        job_node,
                        f"{what} names job '{job_name}', "
                        f"which is already in stage {seen[job_name]}",
                    )
                    continue
                seen[job_name] = number
                names.append(job_name)
            stages.append(tuple(names))
        return tuple(stages)

    def triggers(self, node: Node) -> tuple[Trigger, ...]:
        items: list[tuple[str, Node | None, Node]] = []
        if isinstance(node.value, str):
            items.append((node.value, None, node))
        elif node.is_map:
            items.extend((kind, opts, node) for kind, opts in node.items())
        elif node.is_seq:
            for entry in node.value:
                if isinstance(entry.value, str):
                    items.append((entry.value, None, entry))
                elif entry.is_map and len(entry.value) == 1:
                    kind, opts = next(entry.items())
                    items.append((kind, opts, entry))
                else:
                    self.r.fail(
                        entry,
                        f"'trigger' entry: expected a trigger name or a mapping of one trigger "
                        f"name to its options, got {describe(entry)}",
                    )
        else:
            self.r.fail(
                node,
                f"'trigger': expected a trigger name, a list or a mapping, got {describe(node)}",
            )
        out: list[Trigger] = []
        for kind, opts, where in items:
            mark = where.key_mark(kind) if where.is_map else where.mark
            if kind not in TRIGGER_OPTIONS:
                self.r.errors.error(
                    mark,
                    f"unknown trigger '{kind}'{did_you_mean(kind, TRIGGER_OPTIONS)} "
                    f"(known: {', '.join(sorted(TRIGGER_OPTIONS))})",
                )
                continue
            options: tuple[tuple[str, Any], ...] = ()
            if opts is not None and opts.value is not None:
                checked = self.r.mapping(opts, f"trigger '{kind}'", TRIGGER_OPTIONS[kind])
                if checked is not None:
                    options = tuple(
                        (k, value)
                        for k, v in checked.items()
                        if (value := self.trigger_option(kind, k, v)) is not None
                    )
            out.append(Trigger(kind, options, mark))
        return tuple(out)

    def trigger_option(self, kind: str, key: str, node: Node) -> Any:
        """A trigger option's value: strings (or lists of them); hour/minute as cron ints."""
        what = f"trigger '{kind}' '{key}'"
        if key in ("hour", "minute"):
            top = 23 if key == "hour" else 59
            items = node.value if node.is_seq else [node]
            values = []
            for item in items:
                v = item.value
                if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top:
                    values.append(v)
                else:
                    self.r.fail(
                        item, f"{what}: expected an integer from 0 to {top}, got {describe(item)}"
                    )
                    return None
            return values if node.is_seq else values[0]
        entries = self.r.string_list(node, what, allow_single=True)
        if entries is None:
            return None
        values = [s for s, _ in entries]
        return values if node.is_seq else values[0]

    def license(self, node: Node) -> None:
        fields = self.r.mapping(node, "'license'", LICENSE_KEYS)
        if fields is None:
            return
        for key, value in fields.items():
            self.r.string(value, f"license '{key}'")
        if "spdx" in fields and "path" in fields:
            self.r.fail(node, "'license': set 'spdx' or 'path', not both")

    def job(self, name: str, node: Node) -> list[Job]:
        what = f"job '{name}'"
        allowed = JOB_KEYS | _ALL_PLUGIN_KEYS
        base = self.mapping(node, what, allowed)
        if base is None:
            return []
        if "matrix" not in base:
            job = self.job_entry(name, 0, base, node.mark, what, node)
            return [job] if job else []
        matrix = base.pop("matrix")
        if not matrix.is_seq or not matrix.value:
            self.r.fail(
                matrix,
                f"{what} 'matrix': expected a non-empty list of mappings, got {describe(matrix)}",
            )
            return []
        if len(matrix.value) > MAX_MATRIX_ENTRIES:
            self.r.fail(
                matrix,
                f"{what} 'matrix': too many entries "
                f"({len(matrix.value)}; at most {MAX_MATRIX_ENTRIES})",
            )
            return []
        out: list[Job] = []
        for index, entry in enumerate(matrix.value):
            ewhat = f"{what} matrix entry {index}"
            fields = self.mapping(entry, ewhat, allowed - {"matrix"})
            if fields is None:
                continue
            merged = {**base, **fields}
            job = self.job_entry(name, index, merged, entry.mark, what, node)
            if job:
                out.append(job)
        return out

    def job_entry(
        self, name: str, index: int, f: dict[str, Node], mark: Mark, what: str, job_node: Node
    ) -> Job | None:
        r = self.r
        kw: dict[str, Any] = {}
        uses = r.string(f["uses"], f"{what} 'uses'") if "uses" in f else None
        refused = uses is not None and not self.trusted
        if refused:
            r.fail(
                f["uses"],
                f"{what}: 'uses: {uses}': built-in job kinds act with the site's rights (the "
                "build backend, the export, the repository's pipeline); a pipeline file from "
                "a repository cannot use them",
            )
            uses = None
        elif uses is not None and uses not in BUILTIN_KINDS:
            r.fail(
                f["uses"],
                f"{what}: unknown built-in job kind '{uses}'{did_you_mean(uses, BUILTIN_KINDS)} "
                f"(known: {', '.join(sorted(BUILTIN_KINDS))})",
            )
            uses = None
        kw["uses"] = uses
        on_master = uses is not None and BUILTIN_KINDS[uses] == MASTER_LANE
        if not self.trusted:
            for key in sorted(set(f) & set(UNTRUSTED_JOB_KEYS)):
                r.errors.error(
                    job_node.key_mark(key) if key in job_node.value else f[key].mark,
                    f"{what} '{key}': {UNTRUSTED_JOB_KEYS[key]}",
                )
            f = {k: v for k, v in f.items() if k not in UNTRUSTED_JOB_KEYS}
        if uses == IN_REPO_KIND:
            for key in sorted(set(f) - IN_REPO_KEYS):
                r.errors.error(
                    job_node.key_mark(key) if key in job_node.value else f[key].mark,
                    f"{what}: key '{key}' does not apply to '{IN_REPO_KIND}' (the repository's "
                    f"pipeline file says what runs; allowed: {', '.join(sorted(IN_REPO_KEYS))})",
                )
            f = {k: v for k, v in f.items() if k in IN_REPO_KEYS}
            kw["file"] = IN_REPO_DEFAULT_FILE
            if "file" in f:
                path = r.string(f["file"], f"{what} 'file'")
                error = in_repo_file_error(path) if path is not None else None
                if error:
                    r.fail(f["file"], f"{what} 'file' {path!r}: {error}")
                elif path is not None:
                    kw["file"] = path
        elif "file" in f:
            r.fail(f["file"], f"{what}: 'file' applies only to 'uses: {IN_REPO_KIND}'")
        if "series" in f:
            series = r.string(f["series"], f"{what} 'series'")
            if series is not None and not IDENTIFIER_RE.match(series):
                r.fail(f["series"], f"{what} 'series': '{series}' must be {IDENTIFIER_RULE}")
            kw["series"] = series
        if "architectures" in f:
            if on_master:
                r.fail(
                    f["architectures"],
                    f"{what}: built-in job kind '{uses}' runs on the master; "
                    f"'architectures' does not apply",
                )
            kw["architectures"], kw["arch_marks"] = self.architectures(f["architectures"], what)
        elif not on_master and not refused:
            entry = f" matrix entry {index}" if mark != job_node.mark else ""
            r.errors.error(mark, f"{what}{entry}: missing required key 'architectures'")
        for key, attr in (("run-before", "run_before"), ("run", "run"), ("run-after", "run_after")):
            if key in f:
                kw[attr] = r.string(f[key], f"{what} '{key}'")
        if "packages" in f:
            kw["packages"] = self.packages(f["packages"], what)
        if "snaps" in f:
            kw["snaps"] = self.snaps(f["snaps"], what)
        if "package-repositories" in f:
            kw["package_repositories"] = self.repositories(f["package-repositories"], what)
        if "environment" in f:
            env = r.string_map(f["environment"], f"{what} 'environment'", nullable=True)
            for key in [k for k in env if not k or "=" in k]:
                r.errors.error(
                    f["environment"].key_mark(key),
                    f"{what} 'environment': {key!r} is not a variable name (empty, or has '=')",
                )
                del env[key]
            if not self.trusted:
                self.untrusted_environment(f["environment"], env, what)
            kw["environment"] = tuple(env.items())
        if "output" in f:
            kw["output"] = self.output(f["output"], what)
        if "input" in f:
            kw["input"] = self.input(f["input"], what)
        if "root" in f:
            root = r.boolean(f["root"], f"{what} 'root'")
            kw["root"] = True if root is None else root
        if "timeout" in f:
            timeout = r.integer(f["timeout"], f"{what} 'timeout' (seconds)", minimum=1)
            if timeout is not None and timeout > MAX_TIMEOUT:
                r.fail(f["timeout"], f"{what} 'timeout': at most {MAX_TIMEOUT} seconds")
            kw["timeout"] = timeout
        plugin_keys = sorted(k for k in f if k in _ALL_PLUGIN_KEYS)
        if "plugin" in f:
            plugin = r.string(f["plugin"], f"{what} 'plugin'")
            if plugin is not None and plugin not in PLUGIN_KEYS:
                r.fail(
                    f["plugin"],
                    f"{what}: unknown plugin '{plugin}'{did_you_mean(plugin, PLUGIN_KEYS)} "
                    f"(known: {', '.join(sorted(PLUGIN_KEYS))})",
                )
            elif plugin is not None:
                kw["plugin"] = plugin
                for key in plugin_keys:
                    if key not in PLUGIN_KEYS[plugin]:
                        r.fail(f[key], f"{what}: key '{key}' does not belong to plugin '{plugin}'")
                config: list[tuple[str, Any]] = []
                for key in plugin_keys:
                    node = f[key]
                    if key in ("conda-packages", "conda-channels"):
                        vals = r.string_list(node, f"{what} '{key}'") or []
                        config.append((key, tuple(s for s, _ in vals)))
                    else:
                        config.append(
                            (key, r.string(node, f"{what} '{key}'", numbers=key == "conda-python"))
                        )
                kw["plugin_config"] = tuple(config)
        else:
            for key in plugin_keys:
                r.errors.error(f[key].mark, f"{what}: key '{key}' needs a 'plugin'")
        return Job(name=name, index=index, mark=mark, **kw)

    def untrusted_environment(self, node: Node, env: dict[str, str | None], what: str) -> None:
        """An untrusted job's variables are its own values: none passed through from the
        worker (a null value), none named ``GATING_*`` (the run's variables)."""
        for key in list(env):
            if env[key] is None:
                self.r.errors.error(
                    node.key_mark(key),
                    f"{what} 'environment': {key!r} is null, which passes the worker's own "
                    "variable through; a pipeline file from a repository gets none of the "
                    "worker's environment (give a value)",
                )
                del env[key]
            elif key.upper().startswith("GATING_"):
                self.r.errors.error(
                    node.key_mark(key),
                    f"{what} 'environment': {key!r}: GATING_* variables are the run's own "
                    "and cannot be set by a pipeline file from a repository",
                )
                del env[key]

    def architectures(self, node: Node, what: str) -> tuple[tuple[str, ...], tuple[Mark, ...]]:
        entries = self.r.string_list(node, f"{what} 'architectures'", allow_single=True)
        if entries is None:
            return (), ()
        if not entries:
            self.r.fail(node, f"{what} 'architectures': expected at least one architecture")
        out: list[str] = []
        marks: list[Mark] = []
        for name, entry in entries:
            canon = archmod.canonical(name)
            if canon is None:
                self.r.fail(
                    entry,
                    f"{what}: unknown architecture '{name}'{did_you_mean(name, archmod.KNOWN)}",
                )
            elif canon in out:
                self.r.fail(entry, f"{what}: architecture '{name}' is listed twice")
            else:
                out.append(canon)
                marks.append(entry.mark)
        return tuple(out), tuple(marks)

    def packages(self, node: Node, what: str) -> tuple[str, ...]:
        """Package names: each is one argument of the pool's ``package-install`` command."""
        out: list[str] = []
        for package, entry in self.r.string_list(node, f"{what} 'packages'") or ():
            error = package_error(package)
            if error:
                self.r.fail(entry, f"{what} 'packages': {package!r} {error}")
            else:
                out.append(package)
        return tuple(out)

    def snap_name(self, node: Node, name: str | None, what: str) -> str | None:
        if name is not None and not SNAP_NAME_RE.match(name):
            self.r.fail(
                node,
                f"{what} snap {name!r}: a snap name is 1 to 40 lower-case ASCII letters, "
                "digits and single '-' between them",
            )
            return None
        return name

    def snaps(self, node: Node, what: str) -> tuple[Snap, ...]:
        if not node.is_seq:
            self.r.fail(node, f"{what} 'snaps': expected a list, got {describe(node)}")
            return ()
        out: list[Snap] = []
        for entry in node.value:
            if isinstance(entry.value, str):
                short = self.snap_name(entry, entry.value, what)
                if short is not None:
                    out.append(Snap(short, classic=True))  # lpci's old short form
                continue
            fields = self.r.mapping(entry, f"{what} snap", SNAP_KEYS, required=("name",))
            if fields is None or "name" not in fields:
                continue
            snap_name = self.snap_name(
                fields["name"], self.r.string(fields["name"], f"{what} snap 'name'"), what
            )
            channel = (
                self.r.string(fields["channel"], f"{what} snap 'channel'")
                if "channel" in fields
                else "latest/stable"
            )
            if channel is not None and not SNAP_CHANNEL_RE.match(channel):
                self.r.fail(
                    fields["channel"],
                    f"{what} snap channel {channel!r}: expected letters, digits, '.', '_', "
                    "'/', '+' or '-', starting with a letter or digit",
                )
                channel = None
            classic = (
                self.r.boolean(fields["classic"], f"{what} snap 'classic'")
                if "classic" in fields
                else False
            )
            if snap_name is not None and channel is not None and classic is not None:
                out.append(Snap(snap_name, channel, classic))
        return tuple(out)

    def repositories(self, node: Node, what: str) -> tuple[tuple[tuple[str, Any], ...], ...]:
        if not node.is_seq:
            self.r.fail(
                node, f"{what} 'package-repositories': expected a list, got {describe(node)}"
            )
            return ()
        out = []
        for entry in node.value:
            fields = self.r.mapping(
                entry, f"{what} package repository", REPOSITORY_KEYS, required=("type",)
            )
            if fields is None:
                continue
            for key in ("formats", "components", "suites"):
                if key in fields:
                    self.r.string_list(fields[key], f"{what} package repository '{key}'")
            for key in ("type", "ppa", "url"):
                if key in fields:
                    self.r.string(fields[key], f"{what} package repository '{key}'")
            if "trusted" in fields:
                self.r.boolean(fields["trusted"], f"{what} package repository 'trusted'")
            if "url" not in fields and "ppa" not in fields:
                self.r.fail(entry, f"{what} package repository: one of 'url' or 'ppa' is required")
            out.append(tuple((k, v.plain()) for k, v in fields.items()))
        return tuple(out)

    def output(self, node: Node, what: str) -> Output | None:
        fields = self.r.mapping(node, f"{what} 'output'", OUTPUT_KEYS)
        if fields is None:
            return None
        paths: list[str] = []
        if "paths" in fields:
            for pattern, pnode in (
                self.r.string_list(fields["paths"], f"{what} output 'paths'") or []
            ):
                if pattern.startswith("/") or ".." in Path(pattern).parts:
                    self.r.fail(
                        pnode,
                        f"{what} output path '{pattern}': must be relative to the build tree "
                        "and must not contain '..'",
                    )
                paths.append(pattern)
        channels = ()
        if "channels" in fields:
            channels = tuple(
                s
                for s, _ in self.r.string_list(fields["channels"], f"{what} output 'channels'")
                or ()
            )
        properties: tuple[tuple[str, Any], ...] = ()
        if "properties" in fields:
            if fields["properties"].is_map:
                properties = tuple((k, v.plain()) for k, v in fields["properties"].items())
            else:
                self.r.fail(
                    fields["properties"],
                    f"{what} output 'properties': expected a mapping, "
                    f"got {describe(fields['properties'])}",
                )
        distribute = None
        if "distribute" in fields:
            distribute = self.r.string(fields["distribute"], f"{what} output 'distribute'")
            if distribute is not None and distribute != "artifactory":
                self.r.fail(
                    fields["distribute"], f"{what} output 'distribute': expected 'artifactory'"
                )
        dynamic = (
            self.r.string(fields["dynamic-properties"], f"{what} output 'dynamic-properties'")
            if "dynamic-properties" in fields
            else None
        )
        expires = (
            self.r.string(fields["expires"], f"{what} output 'expires'", numbers=True)
            if "expires" in fields
            else None
        )
        return Output(tuple(paths), distribute, channels, properties, dynamic, expires)

    def input(self, node: Node, what: str) -> Input | None:
        fields = self.r.mapping(
            node, f"{what} 'input'", INPUT_KEYS, required=("job-name", "target-directory")
        )
        if fields is None or "job-name" not in fields or "target-directory" not in fields:
            return None
        job_name = self.r.string(fields["job-name"], f"{what} input 'job-name'")
        target = self.r.string(fields["target-directory"], f"{what} input 'target-directory'")
        if target is not None and (target.startswith("/") or ".." in Path(target).parts):
            self.r.fail(
                fields["target-directory"],
                f"{what} input 'target-directory': must be relative to the build tree "
                "and must not contain '..'",
            )
        architecture = None
        if "architecture" in fields:
            raw = self.r.string(fields["architecture"], f"{what} input 'architecture'")
            if raw is not None:
                architecture = archmod.canonical(raw)
                if architecture is None:
                    self.r.fail(
                        fields["architecture"],
                        f"{what} input: unknown architecture '{raw}'"
                        f"{did_you_mean(raw, archmod.KNOWN)}",
                    )
        if job_name is None or target is None:
            return None
        return Input(job_name, target, architecture, fields["job-name"].mark)

    # -- whole-pipeline checks ---------------------------------------------------

    def check_graph(self, pipeline: Pipeline, job_nodes: dict[str, Node]) -> None:
        r = self.r
        count = sum(1 for _ in pipeline.instances())
        if count > MAX_INSTANCES:
            r.errors.error(
                pipeline.mark, f"too many job instances ({count}; at most {MAX_INSTANCES})"
            )
            return
        staged = {name for stage in pipeline.stages for name in stage}
        for job in pipeline.jobs:
            if job.input is None or job.name not in staged:
                continue
            where = f"job '{job.name}'"
            source = job.input.job_name
            if source not in job_nodes:
                r.errors.error(
                    job.input.mark,
                    f"{where} input names job '{source}', which is not defined in 'jobs'"
                    f"{did_you_mean(source, job_nodes)}",
                )
                continue
            if source not in staged or pipeline.stage_of(source) >= pipeline.stage_of(job.name):
                r.errors.error(
                    job.input.mark,
                    f"{where} input names job '{source}', which must run in an earlier stage",
                )
                continue
            if not pipeline.entries(source) or pipeline.entries(source)[0].output is None:
                r.errors.error(
                    job.input.mark,
                    f"{where} input names job '{source}', which has no 'output'",
                )
                continue
            if not any(j.lanes for j in pipeline.entries(source)):
                continue  # the producer's own errors were reported already
            for lane in job.lanes:
                inst = InstanceId(job.name, job.index, lane)
                chosen = pipeline.input_lane(inst)
                if chosen is None:
                    lanes = sorted({ln for j in pipeline.entries(source) for ln in j.lanes})
                    r.errors.error(
                        job.input.mark,
                        f"{where} on {lane} takes the output of '{source}', which runs on "
                        f"{', '.join(lanes)}: say which with 'architecture' in 'input'",
                    )
                elif not pipeline.producers(inst):
                    r.errors.error(
                        job.input.mark,
                        f"{where} input 'architecture' is {chosen}, but job '{source}' "
                        f"does not run on {chosen}",
                    )


def load_pipelines(paths: Iterable[tuple[Path, str]], *, trusted: bool = True) -> list[Pipeline]:
    """Load several files; every error of every file is raised together."""
    errors = Collector()
    out: list[Pipeline] = []
    for path, display in paths:
        try:
            out.append(load_pipeline_file(path, display, trusted=trusted))
        except ConfigError as exc:
            errors.extend(exc)
    errors.check()
    return out
