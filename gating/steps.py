"""Buildbot glue for running a pipeline: a scheduler that starts one job builder at a
time, and the step of the pipeline builder that walks the run graph.

The logic (what may start, what is skipped, what is tried again) lives in
:mod:`gating.rungraph`; this module only turns it into build requests and waits for their
results.

A job build lost with its worker (RETRY) is put back in its builder's queue by Buildbot
itself and taken by another worker of the pool (the lost one is gone); a build that ended
in EXCEPTION (a step broke because of the worker or the master, not because the job's
script failed) is requested again here (Buildbot quarantines the worker that had it for a
while, so another one of the pool takes it; built-in jobs, which run on the master, are
not run again). Both count against the instance's
``job-attempts``: once they are used up, the instance fails with a reason that says it was
the infrastructure (and a gate item fails with it at once). FAILURE is never retried.
"""

from __future__ import annotations

from typing import Any

from buildbot.process import buildstep, results
from buildbot.process.properties import Properties
from buildbot.schedulers.triggerable import Triggerable
from twisted.internet import defer
from twisted.python import log

from gating.buildjobs import GATE, GateProxy
from gating.kojievents import EVENT_PROPERTIES
from gating.pipeline import MASTER_LANE, InstanceId, Pipeline
from gating.rungraph import (
    DEFAULT_JOB_ATTEMPTS,
    INFRASTRUCTURE,
    RESULT_NAMES,
    InfraFailure,
    PipelineRun,
    infrastructure_reason,
    runs_again,
)

# The gate item a pipeline run tests (set by the gate scheduler), passed on to every job.
GATE_PROPERTIES = (
    "gating_queue",
    "gating_change",
    "gating_project",
    "gating_branch",
    "gating_revision",
    "gating_attempt",
    "gating_ahead",
    "gating_base",
    "gating_merge_commit",
)
# What started a pipeline run from an event (koji, compose), passed on to every job, which
# also sees each as the environment variable GATING_<NAME> (see gating.master.job_factory).
TRIGGER_PROPERTIES = (
    *EVENT_PROPERTIES,
    "compose_id",
    "compose_name",
    "compose_location",
    "compose_status",
)
# Properties a job hands to the jobs of later stages (the overlay of koji-scratch-build).
SHARED_PROPERTIES = (
    "gating_repo_file",
    "gating_repo_file_url",
    "gating_overlay_url",
    "gating_scratch_builds",
)


def trigger_scheduler_name(pipeline: str) -> str:
    return f"{pipeline}:jobs"


class JobTrigger(Triggerable):
    """A Triggerable whose callers pick the one builder each buildset goes to."""

    def trigger_builder(
        self,
        builder_name: str,
        sourcestamps: list[dict[str, Any]],
        properties: dict[str, Any],
        parent_buildid: int,
        reason: str,
    ) -> tuple[defer.Deferred, defer.Deferred]:
        props = Properties()
        props.updateFromProperties(self.properties)
        for key, value in properties.items():
            props.setProperty(key, value, "pipeline")
        ids = self.addBuildsetForSourceStampsWithDefaults(
            reason,
            sourcestamps,
            True,
            priority=self.priority,
            properties=props,
            builderNames=[builder_name],
            parent_buildid=parent_buildid,
            parent_relationship="pipeline",
        )
        done: defer.Deferred = defer.Deferred()

        @ids.addCallback
        def wait(value: tuple[int, dict[int, int]]) -> tuple[int, dict[int, int]]:
            bsid, brids = value
            if not brids:
                # No such builder (e.g. removed by a reconfig): nothing would ever finish.
                done.errback(RuntimeError(f"no builder named {builder_name!r} to run on"))
                return value
            self._waiters[bsid] = (done, brids)
            self._updateWaiters()
            return value

        return ids, done


class RunPipeline(buildstep.BuildStep):
    """Runs every job instance of one pipeline run, as lpci's stages and inputs allow."""

    name = "run-pipeline"
    renderables = ()

    def __init__(
        self,
        pipeline: Pipeline,
        builders: dict[InstanceId, str],
        job_attempts: int = DEFAULT_JOB_ATTEMPTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.builders = builders
        self.job_attempts = job_attempts
        self.run_state: PipelineRun | None = None
        # (bsid, {builderid: brid}) of each triggered instance, once known (the latest
        # request when it was requested again)
        self._pending: dict[InstanceId, Any] = {}
        # every build request made for an instance, and the instance of each request
        self._requests: dict[InstanceId, list[int]] = {}
        self._request_of: dict[int, InstanceId] = {}
        # instances given up on (their job-attempts used up): why
        self._given_up: dict[InstanceId, str] = {}
        self._stopping: str | None = None
        self._logs: dict[str, Any] = {}
        self._shared: dict[str, Any] = {}

    def _sourcestamps(self) -> list[dict[str, Any]]:
        out = []
        for ss in self.build.getAllSourceStamps():
            out.append(
                {
                    "codebase": ss.codebase,
                    "repository": ss.repository,
                    "branch": ss.branch,
                    "revision": ss.revision,
                    "project": ss.project,
                }
            )
        return out

    def _properties(self, inst: InstanceId) -> dict[str, Any]:
        gate = {
            name: self.getProperty(name)
            for name in (*GATE_PROPERTIES, *TRIGGER_PROPERTIES)
            if self.getProperty(name) is not None
        }
        return {
            **gate,
            **self._shared,
            "gating_pipeline": self.pipeline.name,
            "gating_run": self.build.buildid,
            "gating_job": inst.job,
            "gating_job_index": inst.index,
            "gating_arch": inst.lane,
        }

    @defer.inlineCallbacks
    def run(self) -> Any:
        scheduler = self.master.scheduler_manager.namedServices[
            trigger_scheduler_name(self.pipeline.name)
        ]
        run = self.run_state = PipelineRun(self.pipeline.dependencies())
        yield self.addURL(
            "pipeline view", f"{self.master.config.buildbotURL}#/gate/runs/{self.build.buildid}"
        )
        sourcestamps = self._sourcestamps()
        finished: defer.DeferredQueue = defer.DeferredQueue()

        def launch(inst: InstanceId) -> None:
            run.start(inst)
            request(inst)

        def request(inst: InstanceId) -> None:
            reason = f"{self.pipeline.name} run {self.build.buildid}: {inst}"
            ids, done = scheduler.trigger_builder(
                self.builders[inst],
                sourcestamps,
                self._properties(inst),
                self.build.buildid,
                reason,
            )

            def failed(f: Any) -> None:
                finished.put((inst, results.EXCEPTION, f.getErrorMessage()))

            def requested(value: Any) -> Any:
                # Keep the value: yielding ``ids`` itself would consume its result.
                self._pending[inst] = value
                for brid in value[1].values():
                    self._requests.setdefault(inst, []).append(brid)
                    self._request_of[brid] = inst
                return value

            ids.addCallbacks(requested, failed)
            done.addCallbacks(lambda r: finished.put((inst, r[0], "")), failed)

        for lane in self.pipeline.lanes():
            stages = " -> ".join(
                "[" + ", ".join(f"{job}[{index}]" for job, index in stage) + "]"
                for stage in self.pipeline.stages_for(lane)
            )
            yield self._log("pipeline", f"{lane}: {stages}")
        # A build lost with its worker puts its request back in the queue (Buildbot):
        # each time, the instance's attempts are counted (_request_unclaimed).
        consumer = yield self.master.mq.startConsuming(
            self._request_unclaimed, ("buildrequests", None, "unclaimed")
        )
        try:
            result = yield self._run_all(run, launch, request, finished)
        finally:
            consumer.stopConsuming()
        return result

    @defer.inlineCallbacks
    def _run_all(self, run: PipelineRun, launch: Any, request: Any, finished: Any) -> Any:
        for inst in run.ready():
            launch(inst)
        while run.running:
            inst, result, why = yield finished.get()
            if inst in self._given_up and result in (results.CANCELLED, *INFRASTRUCTURE):
                result, why = results.EXCEPTION, self._given_up[inst]
            elif (
                result == results.EXCEPTION
                and self._stopping is None
                and not why
                and inst.lane != MASTER_LANE  # built-in jobs: the master's, not a pool's
            ):
                failures = yield self._infra_failures(inst)
                if runs_again([f.result for f in failures], self.job_attempts):
                    yield self._log(
                        "pipeline",
                        f"{inst}: {failures[-1].describe()}: infrastructure failure, "
                        f"trying again (attempt {len(failures) + 1} of {self.job_attempts})",
                    )
                    request(inst)
                    continue
                if failures and all(f.result in INFRASTRUCTURE for f in failures):
                    why = infrastructure_reason(inst, failures)
                    yield self._give_up(inst, why)
            yield self._link(inst)
            if result in (results.SUCCESS, results.WARNINGS):
                yield self._collect_shared(inst)
            skipped = run.finish(inst, result, why)
            line = f"{inst} on {self.builders[inst]}: {RESULT_NAMES[result]}"
            yield self._log("pipeline", line + (f" ({why})" if why else ""))
            for other in skipped:
                yield self._log("pipeline", f"{other}: {run.reasons[other]}")
            if self._stopping is None:
                for nxt in run.ready():
                    launch(nxt)
        if self._stopping is not None:
            for inst in run.cancel_pending(self._stopping):
                yield self._log("pipeline", f"{inst}: not started ({self._stopping})")
        counts: dict[str, int] = {}
        for result in run.results.values():
            counts[RESULT_NAMES[result]] = counts.get(RESULT_NAMES[result], 0) + 1
        summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
        self.descriptionDone = [f"{len(run.results)} job instances: {summary}"]
        self.setProperty(
            "gating_results",
            {str(i): RESULT_NAMES[r] for i, r in sorted(run.results.items())},
            "pipeline",
        )
        return run.result

    # -- infrastructure failures: attempts -------------------------------------------------

    @defer.inlineCallbacks
    def _request_unclaimed(self, key: Any, msg: dict[str, Any]) -> Any:
        """A request of this run is back in its builder's queue: its build was lost with
        its worker (RETRY), and Buildbot runs it again on a worker of the pool. That counts
        against the instance's attempts; once they are used up the request is cancelled
        and the instance fails as an infrastructure failure."""
        brid = msg.get("buildrequestid")
        inst = self._request_of.get(brid)
        if inst is None or inst in self._given_up or self._stopping is not None:
            return
        if inst.lane == MASTER_LANE:
            return  # a built-in job's coordinator is on the master: no pool to go to
        try:
            failures = yield self._infra_failures(inst)
            if not failures:
                return
            if runs_again([f.result for f in failures], self.job_attempts):
                yield self._log(
                    "pipeline",
                    f"{inst}: {failures[-1].describe()}: infrastructure failure, runs again "
                    f"on a worker of its pool (attempt {len(failures) + 1} of "
                    f"{self.job_attempts})",
                )
                return
            why = infrastructure_reason(inst, failures)
            yield self._give_up(inst, why)
            yield self.master.data.control("cancel", {"reason": why}, ("buildrequests", brid))
        except Exception as exc:  # never let a consumer's error pass silently
            log.err(exc, f"{self.pipeline.name}: counting the attempts of {inst}")

    @defer.inlineCallbacks
    def _infra_failures(self, inst: InstanceId) -> Any:
        """The builds of every request made for ``inst`` that ended with an infrastructure
        failure (RETRY, EXCEPTION), oldest first."""
        builds = []
        for brid in self._requests.get(inst, []):
            builds.extend((yield self.master.data.get(("buildrequests", brid, "builds"))) or [])
        out = []
        for build in sorted(builds, key=lambda b: b["buildid"]):
            if not build.get("complete") or build.get("results") not in INFRASTRUCTURE:
                continue
            worker = yield self.master.data.get(("workers", build["workerid"]))
            out.append(
                InfraFailure(
                    number=build["number"],
                    worker=(worker or {}).get("name", ""),
                    result=build["results"],
                    text=build.get("state_string") or "",
                )
            )
        return out

    @defer.inlineCallbacks
    def _give_up(self, inst: InstanceId, why: str) -> Any:
        """No attempt left for ``inst``: a gate item fails now, with ``why``."""
        self._given_up[inst] = why
        yield self._log("pipeline", f"{inst}: giving up: {why}")
        change, attempt = self.getProperty("gating_change"), self.getProperty("gating_attempt")
        if not change or attempt is None:
            return
        if self.master.scheduler_manager.namedServices.get(GATE) is None:
            return
        try:
            yield GateProxy(self.master).job_failed(change, attempt, why)
        except Exception as exc:  # the run's result fails the item anyway
            log.err(exc, f"{self.pipeline.name}: reporting {inst} to the gate")

    @defer.inlineCallbacks
    def _log(self, name: str, line: str) -> Any:
        if name not in self._logs:
            self._logs[name] = yield self.addLog(name)
        yield self._logs[name].addStdout(line + "\n")

    @defer.inlineCallbacks
    def _child_builds(self, inst: InstanceId) -> Any:
        """(brid, [build dicts]) of the request made for ``inst``, once it exists."""
        value = self._pending.get(inst)
        if not value:
            return []
        out = []
        for brid in value[1].values():
            out.append((brid, (yield self.master.data.get(("buildrequests", brid, "builds")))))
        return out

    @defer.inlineCallbacks
    def _collect_shared(self, inst: InstanceId) -> Any:
        """Keep what a passed job hands to later stages (e.g. the overlay's .repo file)."""
        for _brid, builds in (yield self._child_builds(inst)):
            for build in builds:
                props = yield self.master.data.get(("builds", build["buildid"], "properties"))
                for name in SHARED_PROPERTIES:
                    if props and name in props:
                        self._shared[name] = props[name][0]
                        self.setProperty(name, props[name][0], "pipeline")

    @defer.inlineCallbacks
    def _link(self, inst: InstanceId) -> Any:
        for _brid, builds in (yield self._child_builds(inst)):
            for build in builds:
                yield self.addURL(
                    f"{inst} #{build['number']}",
                    f"{self.master.config.buildbotURL}#/builders/"
                    f"{build['builderid']}/builds/{build['number']}",
                )

    @defer.inlineCallbacks
    def interrupt(self, reason: Any) -> Any:
        """Stopping the pipeline build stops its running jobs and starts no new ones."""
        self._stopping = f"pipeline run stopped: {reason}"
        run = self.run_state
        if run is not None:
            for inst in list(run.running):
                for brid, builds in (yield self._child_builds(inst)):
                    unfinished = [b for b in builds if not b["complete"]]
                    for build in unfinished:
                        yield self.master.data.control(
                            "stop", {"reason": self._stopping}, ("builds", build["buildid"])
                        )
                    # No build yet, or only finished ones: a build of a master that died
                    # is RETRY and its request waits for another master (multi-master).
                    if not unfinished:
                        yield self.master.data.control(
                            "cancel", {"reason": self._stopping}, ("buildrequests", brid)
                        )
        yield super().interrupt(reason)
