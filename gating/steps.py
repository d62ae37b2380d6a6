"""Buildbot glue for running a pipeline: a scheduler that starts one job builder at a
time, and the step of the pipeline builder that walks the run graph.

The logic (what may start, what is skipped) lives in :mod:`gating.rungraph`; this
module only turns it into build requests and waits for their results.
"""

from __future__ import annotations

from typing import Any

from buildbot.process import buildstep, results
from buildbot.process.properties import Properties
from buildbot.schedulers.triggerable import Triggerable
from twisted.internet import defer

from gating.kojievents import EVENT_PROPERTIES
from gating.pipeline import InstanceId, Pipeline
from gating.rungraph import RESULT_NAMES, PipelineRun

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

    def __init__(self, pipeline: Pipeline, builders: dict[InstanceId, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.builders = builders
        self.run_state: PipelineRun | None = None
        # (bsid, {builderid: brid}) of each triggered instance, once known
        self._pending: dict[InstanceId, Any] = {}
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
                return value

            ids.addCallbacks(requested, failed)
            done.addCallbacks(lambda r: finished.put((inst, r[0], "")), failed)

        for lane in self.pipeline.lanes():
            stages = " -> ".join(
                "[" + ", ".join(f"{job}[{index}]" for job, index in stage) + "]"
                for stage in self.pipeline.stages_for(lane)
            )
            yield self._log("pipeline", f"{lane}: {stages}")
        for inst in run.ready():
            launch(inst)
        while run.running:
            inst, result, why = yield finished.get()
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
