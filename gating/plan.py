"""The plan: which Buildbot builders a set of pipelines and a worker inventory produce.

Every builder is derived from declared inputs, never written by hand:

* one *pipeline builder* per pipeline (named like the pipeline), whose build is one
  run of the pipeline; it runs on the master and starts the job instances;
* one *job builder* per job instance (pipeline, job, matrix entry, architecture),
  named ``PIPELINE/JOB/ARCH`` (``PIPELINE/JOB#INDEX/ARCH`` for matrix jobs), pinned to
  the workers of that architecture (and series, when the job names one);
* one *built-in job builder* per built-in job (``uses: koji-scratch-build``,
  ``uses: koji-export``), named ``PIPELINE/JOB/master``: it runs on the master-side
  coordinators and talks to the build backend;
* ``uses: in-repo-pipeline`` is a job like the others (one builder per architecture,
  on the pool's workers): the worker runs the repository's own pipeline file;
* with the local build backend and a built-in job, the *rpmbuild builder*
  (``gating-rpmbuild``) on the workers of the backend's build architecture: the local
  backend's builds run there, never on the master.

With an inventory, a job instance whose architecture has no pool is an error
naming the job and the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gating import arch as archmod
from gating.commands import PLUGIN_RUN
from gating.diagnostics import Collector
from gating.inventory import Inventory
from gating.pipeline import MASTER_LANE, InstanceId, Job, Pipeline

if TYPE_CHECKING:
    from gating.backend import BackendConfig

COORDINATOR_PREFIX = "gating-coordinator"
DEFAULT_COORDINATORS = 20


def coordinator_names(count: int = DEFAULT_COORDINATORS) -> tuple[str, ...]:
    """The master-side workers that run pipeline builds. Buildbot runs one build per
    (builder, worker) at a time, so a pipeline runs at most ``count`` times at once."""
    return tuple(f"{COORDINATOR_PREFIX}-{i}" for i in range(1, count + 1))


COORDINATOR_WORKERS = coordinator_names()

SUPPORTED_PLUGINS = frozenset(PLUGIN_RUN)
RPMBUILD_BUILDER = "gating-rpmbuild"


@dataclass(frozen=True)
class BuilderSpec:
    name: str
    pipeline: str
    kind: str  # "pipeline", "job", "builtin" or "rpmbuild"
    arch: str | None = None
    job: str | None = None
    index: int | None = None
    series: str | None = None
    workernames: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pipeline": self.pipeline,
            "arch": self.arch,
            "job": self.job,
            "index": self.index,
            "series": self.series,
            "workernames": list(self.workernames),
        }


def builder_name(pipeline: Pipeline, job: Job, lane: str) -> str:
    matrix = len(pipeline.entries(job.name)) > 1
    part = f"{job.name}#{job.index}" if matrix else job.name
    return f"{pipeline.name}/{part}/{lane}"


@dataclass(frozen=True)
class Plan:
    pipelines: tuple[Pipeline, ...]
    builders: tuple[BuilderSpec, ...]

    def builder(self, name: str) -> BuilderSpec:
        for b in self.builders:
            if b.name == name:
                return b
        raise KeyError(name)

    def instance_builder(self, pipeline: Pipeline, inst: InstanceId) -> str:
        return builder_name(pipeline, pipeline.job(inst.job, inst.index), inst.lane)

    def to_json(self) -> dict[str, Any]:
        return {
            "pipelines": [
                {
                    "name": p.name,
                    "file": p.file,
                    "triggers": [t.kind for t in p.triggers],
                    "stages": {lane: p.stages_for(lane) for lane in p.lanes()},
                }
                for p in self.pipelines
            ],
            "builders": [b.to_json() for b in self.builders],
        }


def make_plan(
    pipelines: list[Pipeline],
    inventory: Inventory | None,
    errors: Collector,
    coordinators: int = DEFAULT_COORDINATORS,
    backend: BackendConfig | None = None,
) -> Plan:
    """Derive builders; with an inventory, check every instance has a pool and can run."""
    builders: list[BuilderSpec] = []
    builtin_marks = []
    for p in pipelines:
        _check_export_placement(p, errors)
        builders.append(
            BuilderSpec(p.name, p.name, "pipeline", workernames=coordinator_names(coordinators))
        )
        done: set[tuple[str, int]] = set()
        for _stage, inst in p.instances():
            job = p.job(inst.job, inst.index)
            if inventory is not None and (job.name, job.index) not in done:
                done.add((job.name, job.index))
                _check_runnable(p, job, inventory, errors)
            if inst.lane == MASTER_LANE:
                builtin_marks.append(job.mark)
                builders.append(
                    BuilderSpec(
                        builder_name(p, job, inst.lane),
                        p.name,
                        "builtin",
                        MASTER_LANE,
                        job.name,
                        job.index,
                        None,
                        coordinator_names(coordinators),
                    )
                )
                continue
            workers: tuple[str, ...] = ()
            if inventory is not None:
                workers = tuple(w.name for w in inventory.pool(inst.lane, job.series))
            builders.append(
                BuilderSpec(
                    builder_name(p, job, inst.lane),
                    p.name,
                    "job",
                    inst.lane,
                    job.name,
                    job.index,
                    job.series,
                    workers,
                )
            )
    if builtin_marks and (backend is None or backend.kind == "local"):
        arch = backend.build_arch if backend is not None else "x86_64"
        workers: tuple[str, ...] = ()
        if inventory is not None:
            workers = tuple(w.name for w in inventory.pool(arch))
            if not workers:
                errors.error(
                    builtin_marks[0],
                    f"built-in jobs build with the local backend on the '{arch}' workers "
                    f"(backend 'build-arch'), but no worker has that architecture "
                    f"(pools: {', '.join(inventory.arches()) or 'none'})",
                )
        builders.append(BuilderSpec(RPMBUILD_BUILDER, "", "rpmbuild", arch, workernames=workers))
    return Plan(tuple(pipelines), tuple(builders))


def _check_export_placement(p: Pipeline, errors: Collector) -> None:
    """``koji-export`` lands RPMs: it must be the only job of the last stage, so that
    nothing can fail after an RPM landed (git and the RPM repository never disagree)."""
    for position, stage in enumerate(p.stages):
        for name in stage:
            jobs = p.entries(name)
            if not any(j.uses == "koji-export" for j in jobs):
                continue
            if position != len(p.stages) - 1 or len(stage) != 1 or len(jobs) != 1:
                errors.error(
                    jobs[0].mark,
                    f"job '{name}' uses 'koji-export', which must be the only job of the "
                    "pipeline's last stage (nothing may fail after an RPM landed)",
                )


def _check_runnable(p: Pipeline, job: Job, inventory: Inventory, errors: Collector) -> None:
    what = f"job '{job.name}'" + (
        f" (matrix entry {job.index})" if len(p.entries(job.name)) > 1 else ""
    )
    if MASTER_LANE in job.lanes:
        return  # built-in on the master; its backend is checked in make_plan
    if job.plugin is not None and job.plugin not in SUPPORTED_PLUGINS:
        errors.error(
            job.mark,
            f"{what}: plugin '{job.plugin}' is not supported by this gate "
            f"(supported: {', '.join(sorted(SUPPORTED_PLUGINS))})",
        )
    if job.package_repositories:
        errors.error(
            job.mark,
            f"{what}: 'package-repositories' (apt sources) cannot be used on RPM worker pools",
        )
    pools = inventory.arches()
    for position, arch in enumerate(job.architectures):
        mark = job.arch_marks[position] if position < len(job.arch_marks) else job.mark
        if not inventory.pool(arch):
            errors.error(
                mark,
                f"{what} runs on architecture '{arch}', but no worker pool has that "
                f"architecture (pools: {', '.join(pools) or 'none'})",
            )
            continue
        pool = inventory.pool(arch, job.series)
        if not pool:
            errors.error(
                mark,
                f"{what} needs series '{job.series}' on {arch}, but no {arch} worker runs it",
            )
            continue
        if job.packages:
            lacking = [w.name for w in pool if not w.package_install]
            if lacking:
                errors.error(
                    job.mark,
                    f"{what} installs packages, but {arch} worker(s) "
                    f"{', '.join(lacking)} have no 'package-install' command in the inventory",
                )


def sorted_builders(builders: tuple[BuilderSpec, ...]) -> list[BuilderSpec]:
    """Pipeline builders first, then job builders by pipeline and arch (for the UI)."""
    return sorted(
        builders,
        key=lambda b: (
            b.kind == "rpmbuild",
            b.pipeline,
            b.kind != "pipeline",
            archmod.sort_key(b.arch or ""),
            b.name,
        ),
    )
