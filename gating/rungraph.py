"""One run of a pipeline as a graph of job instances (pure logic, no Twisted).

An instance may start when every instance it depends on has passed (see
:meth:`gating.pipeline.Pipeline.dependencies`): that gives lpci's stage semantics per
architecture, and lets a job wait for the output of a job on another architecture.
An instance whose dependency did not pass is skipped, and so is everything behind it.

Result codes are Buildbot's (``buildbot.process.results``), repeated here so this
module stays free of Buildbot and Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gating.pipeline import InstanceId

SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)
RESULT_NAMES = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")
PASSING = frozenset({SUCCESS, WARNINGS})
# Results that say nothing about the job: its worker was lost (RETRY: Buildbot puts the
# request back in the queue itself) or a step broke for a reason other than the job's
# commands' exit status (EXCEPTION). A job instance is tried again after these, on another
# worker of its pool, up to a bounded number of builds (the site's ``job-attempts``); a job
# whose script failed (FAILURE) or that was stopped (CANCELLED) never is.
INFRASTRUCTURE = frozenset({EXCEPTION, RETRY})
DEFAULT_JOB_ATTEMPTS = 3
MAX_JOB_ATTEMPTS = 10
# Buildbot's worst_status order, worst first.
_SEVERITY = (RETRY, CANCELLED, EXCEPTION, FAILURE, WARNINGS, SUCCESS, SKIPPED)


def worst(results: Iterable[int]) -> int:
    """The worst of ``results`` in Buildbot's order; SUCCESS for none."""
    found = set(results)
    for result in _SEVERITY:
        if result in found:
            return result
    return SUCCESS


def runs_again(build_results: Sequence[int], attempts: int) -> bool:
    """Whether a job instance whose builds so far ended with ``build_results`` (oldest
    first) gets another build: only when every one of them was an infrastructure failure
    and fewer than ``attempts`` builds ran."""
    return (
        bool(build_results)
        and all(r in INFRASTRUCTURE for r in build_results)
        and len(build_results) < attempts
    )


@dataclass(frozen=True)
class InfraFailure:
    """One build of a job instance that ended for a reason of the infrastructure."""

    number: int
    worker: str
    result: int
    text: str = ""

    def describe(self) -> str:
        what = RESULT_NAMES[self.result] if 0 <= self.result < len(RESULT_NAMES) else "?"
        detail = f": {self.text}" if self.text else ""
        return f"build {self.number} on {self.worker or 'an unknown worker'} ({what}{detail})"


def infrastructure_reason(inst: InstanceId, failures: Sequence[InfraFailure]) -> str:
    """Why a job instance was given up on after infrastructure failures, for people (the
    gate item's reason): says it was the infrastructure, not the job, and where."""
    where = "; ".join(f.describe() for f in failures) or "no build finished"
    return (
        f"infrastructure failure: {inst} did not finish in {len(failures)} "
        f"attempt{'s' if len(failures) != 1 else ''} (not a failure of the job): {where}"
    )


@dataclass
class PipelineRun:
    """The state of one pipeline run: what ran, what may start, what was skipped and why."""

    deps: Mapping[InstanceId, Sequence[InstanceId]]
    started: set[InstanceId] = field(default_factory=set)
    results: dict[InstanceId, int] = field(default_factory=dict)
    reasons: dict[InstanceId, str] = field(default_factory=dict)

    def ready(self) -> list[InstanceId]:
        """Instances that may start now, in stage order."""
        return [
            inst
            for inst, deps in self.deps.items()
            if inst not in self.started
            and inst not in self.results
            and all(self.results.get(d) in PASSING for d in deps)
        ]

    def start(self, inst: InstanceId) -> None:
        if inst in self.started or inst in self.results:
            raise ValueError(f"{inst} was already started")
        if inst not in self.deps:
            raise KeyError(inst)
        self.started.add(inst)

    def finish(self, inst: InstanceId, result: int, reason: str = "") -> list[InstanceId]:
        """Record a result; returns the instances skipped because of it."""
        if inst not in self.started:
            raise ValueError(f"{inst} was not started")
        self.started.discard(inst)
        self.results[inst] = result
        if reason:
            self.reasons[inst] = reason
        return self._skip_blocked()

    def _skip_blocked(self) -> list[InstanceId]:
        skipped: list[InstanceId] = []
        changed = True
        while changed:
            changed = False
            for inst, deps in self.deps.items():
                if inst in self.results or inst in self.started:
                    continue
                failed = [d for d in deps if d in self.results and self.results[d] not in PASSING]
                if failed:
                    self.results[inst] = SKIPPED
                    self.reasons[inst] = f"skipped: {failed[0]} did not pass"
                    skipped.append(inst)
                    changed = True
        return skipped

    def cancel_pending(self, reason: str) -> list[InstanceId]:
        """Mark every instance that has not started as cancelled (the run was stopped)."""
        out = [i for i in self.deps if i not in self.results and i not in self.started]
        for inst in out:
            self.results[inst] = CANCELLED
            self.reasons[inst] = reason
        return out

    @property
    def running(self) -> set[InstanceId]:
        return set(self.started)

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.deps)

    @property
    def result(self) -> int:
        return worst(self.results.values())
