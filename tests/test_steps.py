"""gating.steps on Buildbot's fake master, in Buildbot's own test style.

RunPipeline runs against a fake JobTrigger whose results the tests fire by hand, so
the order in which job builders are triggered is checked step by step; JobTrigger
itself runs against a fake master with a real (in-memory) database and a fake mq.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from buildbot.process.results import (
    CANCELLED,
    EXCEPTION,
    FAILURE,
    RETRY,
    SKIPPED,
    SUCCESS,
    WARNINGS,
)
from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from buildbot.test.util.scheduler import SchedulerMixin
from twisted.internet import defer
from twisted.trial import unittest

from gating.diagnostics import Collector
from gating.pipeline import InstanceId, Pipeline, parse_pipeline
from gating.steps import JobTrigger, RunPipeline, trigger_scheduler_name

BUILDID = 92  # the id of TestBuildStepMixin's fake build
# A pipeline name must have two characters at least (gating.pipeline.IDENTIFIER_RE).
NAME = "pipe"

# Like tests/integration/sites/multiarch/pipelines/failing.yaml: compile (x86_64) fails.
FAILING = """\
pipeline:
  - [compile, lint, build-arm]
  - [unit, arm-test, consume]
  - [final-x86, final-arm]
jobs:
  compile:
    architectures: x86_64
    run: make
    output: {paths: [dist/*.txt]}
  lint: {architectures: amd64, run: lint}
  build-arm: {architectures: arm64, run: make}
  unit: {architectures: x86_64, run: make check}
  arm-test: {architectures: [aarch64], run: make check}
  consume:
    architectures: [aarch64]
    input: {job-name: compile, target-directory: in}
    run: cat in/files/dist/out.txt
  final-x86: {architectures: [x86_64], run: echo final}
  final-arm: {architectures: [aarch64], run: echo final}
"""

# Build on x86_64, test its output on aarch64, a matrix job, then report on both arches.
PASSING = """\
pipeline:
  - build
  - [test-arm, test-x86]
  - report
jobs:
  build:
    architectures: [x86_64]
    run: make
    output: {paths: [dist/*.txt]}
  test-arm:
    architectures: [aarch64]
    input: {job-name: build, target-directory: from-x86}
    run: ls from-x86
  test-x86:
    architectures: [x86_64]
    run: make check
    matrix:
      - {environment: {PY: "3.11"}}
      - {environment: {PY: "3.12"}}
  report:
    architectures: [x86_64, aarch64]
    run: echo report
"""

# Two independent arches, each with a later stage.
TWO_ARCHES = """\
pipeline:
  - [build, build-arm]
  - [test, test-arm]
jobs:
  build: {architectures: [x86_64], run: make}
  build-arm: {architectures: [aarch64], run: make}
  test: {architectures: [x86_64], run: make check}
  test-arm: {architectures: [aarch64], run: make check}
"""


def parse(text: str) -> Pipeline:
    errors = Collector()
    pipeline = parse_pipeline(text, "test.yaml", NAME, errors)
    assert pipeline is not None, [str(d) for d in errors.diagnostics]
    return pipeline


def builder_table(pipeline: Pipeline) -> dict[InstanceId, str]:
    """Builder names deliberately unlike gating.plan's, so the test sees the table is used."""
    return {inst: f"bb-{inst.job}-{inst.index}-{inst.lane}" for _n, inst in pipeline.instances()}


def silence_deprecations(testcase: unittest.TestCase) -> None:
    """Importing buildbot.test turns every warning into an error; recent alembic and
    Twisted emit DeprecationWarnings that are not ours to fix. Undone after the test."""
    saved = warnings.catch_warnings()
    saved.__enter__()
    testcase.addCleanup(saved.__exit__, None, None, None)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)


@dataclass
class Triggered:
    """One trigger_builder call received by FakeJobTrigger."""

    builder_name: str
    sourcestamps: list[dict[str, Any]]
    properties: dict[str, Any]
    parent_buildid: int
    reason: str
    ids: defer.Deferred = field(repr=False)
    done: defer.Deferred = field(repr=False)


class FakeJobTrigger:
    """Stands in for the pipeline's JobTrigger. The buildset ids are reported at once
    (``brids`` per builder, none by default) unless ``refuse`` names the builder; the
    results arrive only when the test calls :meth:`finish` or :meth:`fail`."""

    def __init__(self) -> None:
        self.calls: list[Triggered] = []
        self.brids: dict[str, dict[int, int]] = {}
        self.refuse: dict[str, Exception] = {}
        self._bsid = 500

    def trigger_builder(
        self,
        builder_name: str,
        sourcestamps: list[dict[str, Any]],
        properties: dict[str, Any],
        parent_buildid: int,
        reason: str,
    ) -> tuple[defer.Deferred, defer.Deferred]:
        call = Triggered(
            builder_name,
            sourcestamps,
            dict(properties),
            parent_buildid,
            reason,
            defer.Deferred(),
            defer.Deferred(),
        )
        self.calls.append(call)
        if builder_name in self.refuse:
            call.ids.errback(self.refuse[builder_name])
        else:
            self._bsid += 1
            call.ids.callback((self._bsid, dict(self.brids.get(builder_name, {}))))
        return call.ids, call.done

    @property
    def triggered(self) -> list[str]:
        return [c.builder_name for c in self.calls]

    def call(self, builder_name: str) -> Triggered:
        calls = [c for c in self.calls if c.builder_name == builder_name]
        assert len(calls) == 1, f"{builder_name} was triggered {len(calls)} times"
        return calls[0]

    def finish(self, builder_name: str, result: int) -> None:
        call = self.call(builder_name)
        call.done.callback((result, dict(self.brids.get(builder_name, {}))))

    def fail(self, builder_name: str, exc: Exception) -> None:
        self.call(builder_name).done.errback(exc)


class RunPipelineTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setup_test_build_step()
        self.trigger = FakeJobTrigger()
        self.master.scheduler_manager = SimpleNamespace(
            namedServices={trigger_scheduler_name(NAME): self.trigger}
        )

    def setup_pipeline(self, text: str) -> tuple[Pipeline, RunPipeline]:
        pipeline = parse(text)
        step = self.setup_step(RunPipeline(pipeline, builder_table(pipeline)))
        self.build.sources[""] = SimpleNamespace(
            codebase="",
            repository="https://git.example.org/rpms/foo.git",
            branch="main",
            revision="abc123",
            project="foo",
            changes=[],
        )
        return pipeline, step

    def log_lines(self, step: RunPipeline) -> list[str]:
        return step.logs["pipeline"].stdout.splitlines()

    @defer.inlineCallbacks
    def step_urls(self, step: RunPipeline) -> Any:
        data = yield self.master.data.get(("steps", step.stepid))
        return [(u["name"], u["url"]) for u in data["urls"]]

    # -- the failing pipeline, step by step -------------------------------------------

    @defer.inlineCallbacks
    def test_failure_on_one_arch_skips_its_later_stages_and_its_consumers_only(self):
        _, step = self.setup_pipeline(FAILING)
        self.expect_outcome(result=FAILURE)
        self.expect_result_summary(
            {"step": "8 job instances: 1 failure, 4 skipped, 3 success (failure)"}
        )
        self.expect_property(
            "gating_results",
            {
                "arm-test[0]@aarch64": "success",
                "build-arm[0]@aarch64": "success",
                "compile[0]@x86_64": "failure",
                "consume[0]@aarch64": "skipped",
                "final-arm[0]@aarch64": "skipped",
                "final-x86[0]@x86_64": "skipped",
                "lint[0]@x86_64": "success",
                "unit[0]@x86_64": "skipped",
            },
            "pipeline",
        )
        d = self.run_step()

        # Stage 1 of every arch starts at once; nothing of stage 2 yet.
        self.assertEqual(
            self.trigger.triggered,
            ["bb-compile-0-x86_64", "bb-lint-0-x86_64", "bb-build-arm-0-aarch64"],
        )

        # aarch64's stage 1 passed: its own stage-2 job starts, but consume also waits
        # for compile on x86_64.
        self.trigger.finish("bb-build-arm-0-aarch64", SUCCESS)
        self.assertEqual(self.trigger.triggered[3:], ["bb-arm-test-0-aarch64"])

        # compile fails: x86_64's later stages and consume (its input) are skipped at
        # once, though lint (same stage) is still running.
        self.trigger.finish("bb-compile-0-x86_64", FAILURE)
        self.assertEqual(self.trigger.triggered[4:], [])
        self.assertEqual(step.run_state.results[InstanceId("unit", 0, "x86_64")], SKIPPED)

        self.trigger.finish("bb-lint-0-x86_64", SUCCESS)
        self.assertEqual(self.trigger.triggered[4:], [])
        self.assertFalse(d.called, "the step ended while arm-test was still running")

        self.trigger.finish("bb-arm-test-0-aarch64", SUCCESS)
        yield d

        self.assertEqual(
            self.trigger.triggered,
            [
                "bb-compile-0-x86_64",
                "bb-lint-0-x86_64",
                "bb-build-arm-0-aarch64",
                "bb-arm-test-0-aarch64",
            ],
        )
        lines = self.log_lines(step)
        self.assertEqual(
            lines[:2],
            [
                "x86_64: [compile[0], lint[0]] -> [unit[0]] -> [final-x86[0]]",
                "aarch64: [build-arm[0]] -> [arm-test[0], consume[0]] -> [final-arm[0]]",
            ],
        )
        self.assertIn("compile[0]@x86_64 on bb-compile-0-x86_64: failure", lines)
        self.assertIn("unit[0]@x86_64: skipped: compile[0]@x86_64 did not pass", lines)
        self.assertIn("consume[0]@aarch64: skipped: compile[0]@x86_64 did not pass", lines)
        self.assertIn("final-arm[0]@aarch64: skipped: consume[0]@aarch64 did not pass", lines)

    @defer.inlineCallbacks
    def test_each_trigger_gets_the_instance_properties_sourcestamps_and_parent(self):
        self.setup_pipeline(FAILING)
        self.expect_outcome(result=SUCCESS)
        d = self.run_step()
        for _ in range(3):  # three stages, each to success
            for call in list(self.trigger.calls):
                if not call.done.called:
                    self.trigger.finish(call.builder_name, SUCCESS)
        yield d

        self.assertEqual(len(self.trigger.calls), 8)
        for call in self.trigger.calls:
            self.assertEqual(call.parent_buildid, BUILDID)
            self.assertEqual(
                call.sourcestamps,
                [
                    {
                        "codebase": "",
                        "repository": "https://git.example.org/rpms/foo.git",
                        "branch": "main",
                        "revision": "abc123",
                        "project": "foo",
                    }
                ],
            )
        consume = self.trigger.call("bb-consume-0-aarch64")
        self.assertEqual(
            consume.properties,
            {
                "gating_pipeline": NAME,
                "gating_run": BUILDID,
                "gating_job": "consume",
                "gating_job_index": 0,
                "gating_arch": "aarch64",
            },
        )
        self.assertEqual(consume.reason, f"{NAME} run {BUILDID}: consume[0]@aarch64")

    # -- a passing pipeline ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_passing_run_triggers_each_instance_once_in_stage_order(self):
        pipeline, step = self.setup_pipeline(PASSING)
        table = builder_table(pipeline)
        self.expect_outcome(result=SUCCESS)
        self.expect_result_summary({"step": "6 job instances: 6 success"})
        self.expect_property(
            "gating_results",
            {
                "build[0]@x86_64": "success",
                "report[0]@aarch64": "success",
                "report[0]@x86_64": "success",
                "test-arm[0]@aarch64": "success",
                "test-x86[0]@x86_64": "success",
                "test-x86[1]@x86_64": "success",
            },
            "pipeline",
        )
        d = self.run_step()

        # aarch64 has nothing in stage 1, but test-arm takes build's output: it waits.
        self.assertEqual(self.trigger.triggered, ["bb-build-0-x86_64"])
        self.trigger.finish("bb-build-0-x86_64", SUCCESS)
        stage2 = ["bb-test-arm-0-aarch64", "bb-test-x86-0-x86_64", "bb-test-x86-1-x86_64"]
        self.assertEqual(self.trigger.triggered[1:], stage2)

        # report waits for the whole of stage 2 on its arch.
        self.trigger.finish("bb-test-x86-1-x86_64", SUCCESS)
        self.assertEqual(self.trigger.triggered[4:], [])
        self.trigger.finish("bb-test-x86-0-x86_64", SUCCESS)
        self.assertEqual(self.trigger.triggered[4:], ["bb-report-0-x86_64"])
        self.trigger.finish("bb-test-arm-0-aarch64", SUCCESS)
        self.assertEqual(self.trigger.triggered[5:], ["bb-report-0-aarch64"])
        self.trigger.finish("bb-report-0-aarch64", SUCCESS)
        self.assertFalse(d.called)
        self.trigger.finish("bb-report-0-x86_64", SUCCESS)
        yield d

        self.assertEqual(sorted(self.trigger.triggered), sorted(table.values()))
        self.assertEqual(len(self.trigger.triggered), len(set(self.trigger.triggered)))
        matrix = self.trigger.call("bb-test-x86-1-x86_64").properties
        self.assertEqual((matrix["gating_job"], matrix["gating_job_index"]), ("test-x86", 1))
        self.assertEqual(matrix["gating_arch"], "x86_64")
        self.assertIn("test-x86[1]@x86_64 on bb-test-x86-1-x86_64: success", self.log_lines(step))

    # -- errors from the trigger -------------------------------------------------------

    @defer.inlineCallbacks
    def test_trigger_errors_are_exceptions_of_their_instance(self):
        _, step = self.setup_pipeline(TWO_ARCHES)
        # x86_64: the buildset cannot even be created; aarch64: the scheduler gives up
        # waiting (as Triggerable does when it is stopped).
        self.trigger.refuse["bb-build-0-x86_64"] = RuntimeError("no such builder")
        self.expect_outcome(result=EXCEPTION)
        self.expect_property(
            "gating_results",
            {
                "build-arm[0]@aarch64": "exception",
                "build[0]@x86_64": "exception",
                "test-arm[0]@aarch64": "skipped",
                "test[0]@x86_64": "skipped",
            },
            "pipeline",
        )
        d = self.run_step()
        self.assertEqual(self.trigger.triggered, ["bb-build-0-x86_64", "bb-build-arm-0-aarch64"])
        self.trigger.fail(
            "bb-build-arm-0-aarch64",
            RuntimeError("Triggerable scheduler stopped before build was complete"),
        )
        yield d

        self.assertEqual(self.trigger.triggered, ["bb-build-0-x86_64", "bb-build-arm-0-aarch64"])
        lines = self.log_lines(step)
        self.assertIn("build[0]@x86_64 on bb-build-0-x86_64: exception (no such builder)", lines)
        self.assertIn(
            "build-arm[0]@aarch64 on bb-build-arm-0-aarch64: exception "
            "(Triggerable scheduler stopped before build was complete)",
            lines,
        )
        self.assertIn("test[0]@x86_64: skipped: build[0]@x86_64 did not pass", lines)

    @defer.inlineCallbacks
    def test_failure_on_one_arch_does_not_stop_the_other(self):
        self.setup_pipeline(TWO_ARCHES)
        self.expect_outcome(result=FAILURE)
        d = self.run_step()
        self.trigger.finish("bb-build-0-x86_64", FAILURE)
        self.assertEqual(self.trigger.triggered[2:], [])
        self.trigger.finish("bb-build-arm-0-aarch64", SUCCESS)
        self.assertEqual(self.trigger.triggered[2:], ["bb-test-arm-0-aarch64"])
        self.trigger.finish("bb-test-arm-0-aarch64", SUCCESS)
        yield d

    @defer.inlineCallbacks
    def test_warnings_count_as_passed(self):
        self.setup_pipeline(TWO_ARCHES)
        self.expect_outcome(result=WARNINGS)
        d = self.run_step()
        self.trigger.finish("bb-build-0-x86_64", WARNINGS)
        self.assertEqual(self.trigger.triggered[2:], ["bb-test-0-x86_64"])
        for name in ("bb-build-arm-0-aarch64", "bb-test-0-x86_64", "bb-test-arm-0-aarch64"):
            self.trigger.finish(name, SUCCESS)
        yield d

    # -- links and stopping ------------------------------------------------------------

    @defer.inlineCallbacks
    def insert_request(
        self, builder_name: str, builderid: int, brid: int, build_number=None, retried=False
    ):
        """A build request (and optionally its build, RETRY if ``retried``: its master
        died) for FakeJobTrigger to report."""
        rows = [
            fakedb.Builder(id=builderid, name=builder_name),
            fakedb.Buildset(id=brid + 1000),
            fakedb.BuildRequest(id=brid, buildsetid=brid + 1000, builderid=builderid),
        ]
        if build_number is not None:
            rows.append(
                fakedb.Build(
                    id=brid + 2000,
                    buildrequestid=brid,
                    number=build_number,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                    builderid=builderid,
                    workerid=400,
                    **({"complete_at": 1, "results": RETRY} if retried else {}),
                )
            )
        yield self.master.db.insert_test_data(rows)
        self.trigger.brids[builder_name] = {builderid: brid}

    @defer.inlineCallbacks
    def test_finished_instances_link_to_their_builds(self):
        _, step = self.setup_pipeline(TWO_ARCHES)
        yield self.insert_request("bb-build-0-x86_64", 201, 701, build_number=3)
        self.expect_outcome(result=SUCCESS)
        d = self.run_step()
        for name in ("bb-build-0-x86_64", "bb-build-arm-0-aarch64"):
            self.trigger.finish(name, SUCCESS)
        for name in ("bb-test-0-x86_64", "bb-test-arm-0-aarch64"):
            self.trigger.finish(name, SUCCESS)
        yield d
        urls = yield self.step_urls(step)
        self.assertEqual(
            urls,
            [
                ("pipeline view", f"http://localhost:8080/#/gate/runs/{step.build.buildid}"),
                ("build[0]@x86_64 #3", "http://localhost:8080/#/builders/201/builds/3"),
            ],
        )

    @defer.inlineCallbacks
    def test_stopping_cancels_a_request_whose_build_died_with_its_master(self):
        _, step = self.setup_pipeline(TWO_ARCHES)
        yield self.insert_request("bb-build-0-x86_64", 201, 701, build_number=3, retried=True)
        yield self.insert_request("bb-build-arm-0-aarch64", 202, 702, build_number=4)
        self.expect_outcome(result=CANCELLED)
        d = self.run_step()
        self.master.mq.clearProductions()
        yield step.interrupt("gate reset")
        reason = {"reason": "pipeline run stopped: gate reset"}
        self.assertEqual(
            sorted(self.master.mq.productions),
            [
                (("control", "buildrequests", "701", "cancel"), reason),
                (("control", "builds", "2702", "stop"), reason),
            ],
        )
        self.trigger.finish("bb-build-0-x86_64", CANCELLED)
        self.trigger.finish("bb-build-arm-0-aarch64", CANCELLED)
        yield d

    @defer.inlineCallbacks
    def test_stopping_stops_running_jobs_and_starts_no_more(self):
        _, step = self.setup_pipeline(TWO_ARCHES)
        yield self.insert_request("bb-build-0-x86_64", 201, 701, build_number=3)
        yield self.insert_request("bb-build-arm-0-aarch64", 202, 702)  # no build yet
        self.expect_outcome(result=CANCELLED)
        self.expect_property(
            "gating_results",
            {
                "build-arm[0]@aarch64": "cancelled",
                "build[0]@x86_64": "success",
                # behind a job that did not pass: skipped, as always
                "test-arm[0]@aarch64": "skipped",
                # its dependency passed, but the run was stopped
                "test[0]@x86_64": "cancelled",
            },
            "pipeline",
        )
        d = self.run_step()
        self.master.mq.clearProductions()
        yield step.interrupt("user pressed stop")

        # The running build is stopped; the request that has no build yet is cancelled.
        reason = {"reason": "pipeline run stopped: user pressed stop"}
        self.assertEqual(
            sorted(self.master.mq.productions),
            [
                (("control", "buildrequests", "702", "cancel"), reason),
                (("control", "builds", "2701", "stop"), reason),
            ],
        )
        self.trigger.finish("bb-build-arm-0-aarch64", CANCELLED)
        # build finished before the stop reached it; its stage-2 job is not started.
        self.trigger.finish("bb-build-0-x86_64", SUCCESS)
        yield d

        self.assertEqual(self.trigger.triggered, ["bb-build-0-x86_64", "bb-build-arm-0-aarch64"])
        lines = self.log_lines(step)
        self.assertIn(
            "test[0]@x86_64: not started (pipeline run stopped: user pressed stop)", lines
        )
        self.assertIn("test-arm[0]@aarch64: skipped: build-arm[0]@aarch64 did not pass", lines)
        # The build that was running when the pipeline stopped is still linked.
        urls = yield self.step_urls(step)
        self.assertEqual(
            urls,
            [
                ("pipeline view", f"http://localhost:8080/#/gate/runs/{step.build.buildid}"),
                ("build[0]@x86_64 #3", "http://localhost:8080/#/builders/201/builds/3"),
            ],
        )

    # -- infrastructure failures: attempts -------------------------------------------------

    @defer.inlineCallbacks
    def insert_attempt(
        self, builder_name: str, builderid: int, brid: int, builds: list[tuple[int, int, str]]
    ):
        """A build request for FakeJobTrigger to report next, with its finished builds:
        (number, result, worker name) each."""
        rows: list[Any] = [
            fakedb.Buildset(id=brid + 1000),
            fakedb.BuildRequest(id=brid, buildsetid=brid + 1000, builderid=builderid),
        ]
        if not (yield self.master.db.builders.getBuilder(builderid)):
            rows.insert(0, fakedb.Builder(id=builderid, name=builder_name))
        for number, result, worker in builds:
            workerid = 400 + sum(map(ord, worker))
            if not (yield self.master.db.workers.getWorker(workerid=workerid)):
                rows.append(fakedb.Worker(id=workerid, name=worker))
            rows.append(
                fakedb.Build(
                    id=brid * 10 + number,
                    buildrequestid=brid,
                    number=number,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                    builderid=builderid,
                    workerid=workerid,
                    complete_at=1,
                    results=result,
                    state_string="lost connection" if result == RETRY else "exception",
                )
            )
        yield self.master.db.insert_test_data(rows)
        self.trigger.brids[builder_name] = {builderid: brid}

    def finish_call(self, number: int, result: int) -> None:
        call = self.trigger.calls[number]
        call.done.callback((result, {}))

    @defer.inlineCallbacks
    def test_an_exception_runs_the_instance_again_then_it_passes(self):
        _, step = self.setup_pipeline(TWO_ARCHES)
        yield self.insert_attempt("bb-build-0-x86_64", 201, 701, [(1, EXCEPTION, "x86-1")])
        self.expect_outcome(result=SUCCESS)
        d = self.run_step()
        yield self.insert_attempt("bb-build-0-x86_64", 201, 702, [])
        self.finish_call(0, EXCEPTION)
        # Requested again (a new buildset), its dependents not started yet.
        self.assertEqual(
            self.trigger.triggered,
            ["bb-build-0-x86_64", "bb-build-arm-0-aarch64", "bb-build-0-x86_64"],
        )
        self.finish_call(2, SUCCESS)
        self.trigger.finish("bb-build-arm-0-aarch64", SUCCESS)
        self.assertEqual(self.trigger.triggered[3:], ["bb-test-0-x86_64", "bb-test-arm-0-aarch64"])
        self.trigger.finish("bb-test-0-x86_64", SUCCESS)
        self.trigger.finish("bb-test-arm-0-aarch64", SUCCESS)
        yield d
        self.assertIn(
            "build[0]@x86_64: build 1 on x86-1 (exception: exception): infrastructure failure, "
            "trying again (attempt 2 of 3)",
            self.log_lines(step),
        )
        self.assertIn("build[0]@x86_64 on bb-build-0-x86_64: success", self.log_lines(step))

    @defer.inlineCallbacks
    def test_a_built_in_job_on_the_master_is_not_run_again_after_an_exception(self):
        pipeline = parse(
            "pipeline: [build, export]\n"
            "jobs:\n"
            "  build: {architectures: [x86_64], run: make}\n"
            "  export: {uses: koji-export}\n"
        )
        self.setup_step(RunPipeline(pipeline, builder_table(pipeline)))
        self.build.sources[""] = SimpleNamespace(
            codebase="", repository="r", branch="main", revision="abc", project="foo", changes=[]
        )
        yield self.insert_attempt("bb-export-0-master", 203, 703, [(1, EXCEPTION, "coord-1")])
        self.expect_outcome(result=EXCEPTION)
        d = self.run_step()
        self.trigger.finish("bb-build-0-x86_64", SUCCESS)
        self.finish_call(1, EXCEPTION)
        yield d
        self.assertEqual(self.trigger.triggered, ["bb-build-0-x86_64", "bb-export-0-master"])

    @defer.inlineCallbacks
    def test_a_failed_script_is_never_run_again(self):
        self.setup_pipeline(TWO_ARCHES)
        yield self.insert_attempt("bb-build-0-x86_64", 201, 701, [(1, FAILURE, "x86-1")])
        self.expect_outcome(result=FAILURE)
        d = self.run_step()
        self.finish_call(0, FAILURE)
        self.trigger.finish("bb-build-arm-0-aarch64", SUCCESS)
        self.trigger.finish("bb-test-arm-0-aarch64", SUCCESS)
        yield d
        self.assertEqual(
            self.trigger.triggered,
            ["bb-build-0-x86_64", "bb-build-arm-0-aarch64", "bb-test-arm-0-aarch64"],
        )

    @defer.inlineCallbacks
    def test_exceptions_past_the_attempts_fail_the_instance_as_infrastructure(self):
        pipeline = parse(TWO_ARCHES)
        step = self.setup_step(RunPipeline(pipeline, builder_table(pipeline), job_attempts=2))
        self.build.sources[""] = SimpleNamespace(
            codebase="", repository="r", branch="main", revision="abc", project="foo", changes=[]
        )
        yield self.insert_attempt("bb-build-0-x86_64", 201, 701, [(1, EXCEPTION, "x86-1")])
        self.expect_outcome(result=EXCEPTION)
        d = self.run_step()
        yield self.insert_attempt("bb-build-0-x86_64", 201, 702, [(2, EXCEPTION, "x86-2")])
        self.finish_call(0, EXCEPTION)
        self.finish_call(2, EXCEPTION)
        self.trigger.finish("bb-build-arm-0-aarch64", SUCCESS)
        self.trigger.finish("bb-test-arm-0-aarch64", SUCCESS)
        yield d
        self.assertEqual(self.trigger.triggered.count("bb-build-0-x86_64"), 2)
        lines = self.log_lines(step)
        why = (
            "infrastructure failure: build[0]@x86_64 did not finish in 2 attempts (not a "
            "failure of the job): build 1 on x86-1 (exception: exception); "
            "build 2 on x86-2 (exception: exception)"
        )
        self.assertIn(f"build[0]@x86_64: giving up: {why}", lines)
        self.assertIn(f"build[0]@x86_64 on bb-build-0-x86_64: exception ({why})", lines)

    @defer.inlineCallbacks
    def test_builds_lost_with_their_worker_count_and_past_the_attempts_are_cancelled(self):
        _, step = self.setup_pipeline(TWO_ARCHES)
        self.master.mq.verifyMessages = False
        yield self.insert_attempt("bb-build-0-x86_64", 201, 701, [(1, RETRY, "x86-1")])
        self.expect_outcome(result=EXCEPTION)
        d = self.run_step()
        unclaimed = (("buildrequests", "701", "unclaimed"), {"buildrequestid": 701})
        self.master.mq.clearProductions()
        self.master.mq.callConsumer(*unclaimed)  # Buildbot runs it again: attempt 2 of 3
        self.assertEqual(self.master.mq.productions, [])
        yield self.master.db.insert_test_data(
            [
                fakedb.Build(
                    id=7000 + number,
                    buildrequestid=701,
                    number=number,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                    builderid=201,
                    workerid=400 + sum(map(ord, "x86-1")),
                    complete_at=1,
                    results=RETRY,
                    state_string="lost connection",
                )
                for number in (2, 3)
            ]
        )
        self.master.mq.callConsumer(*unclaimed)  # the third lost build: no attempt left
        self.assertEqual(len(self.master.mq.productions), 1)
        routing, body = self.master.mq.productions[0]
        self.assertEqual(routing, ("control", "buildrequests", "701", "cancel"))
        self.assertIn("infrastructure failure: build[0]@x86_64 did not finish in 3", body["reason"])
        # The cancelled request finishes; the instance fails as an infrastructure failure.
        self.finish_call(0, CANCELLED)
        self.trigger.finish("bb-build-arm-0-aarch64", SUCCESS)
        self.trigger.finish("bb-test-arm-0-aarch64", SUCCESS)
        yield d
        self.assertEqual(self.trigger.triggered.count("bb-build-0-x86_64"), 1)
        lines = self.log_lines(step)
        self.assertIn(
            "build[0]@x86_64: build 1 on x86-1 (retry: lost connection): infrastructure "
            "failure, runs again on a worker of its pool (attempt 2 of 3)",
            lines,
        )
        self.assertTrue(
            any(
                line.startswith("build[0]@x86_64 on bb-build-0-x86_64: exception (infrastructure")
                for line in lines
            ),
            lines,
        )


class JobTriggerTests(SchedulerMixin, TestReactorMixin, unittest.TestCase):
    OBJECTID = 33
    SCHEDULERID = 13

    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setUpScheduler()
        yield self.master.db.insert_test_data(
            [
                fakedb.Builder(id=77, name="pipe/build/x86_64"),
                fakedb.Builder(id=78, name="pipe/test/aarch64"),
                fakedb.Builder(id=79, name="pipe"),
                fakedb.Build(
                    id=BUILDID,
                    buildrequestid=300,
                    number=7,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                    builderid=79,
                    workerid=400,
                ),
                fakedb.Worker(id=400, name="coordinator"),
                fakedb.Buildset(id=200),
                fakedb.BuildRequest(id=300, buildsetid=200, builderid=79),
            ]
        )
        self.sched = yield self.attachScheduler(
            JobTrigger(name="pipe:jobs", builderNames=["pipe/build/x86_64", "pipe/test/aarch64"]),
            self.OBJECTID,
            self.SCHEDULERID,
        )
        # As the scheduler manager does: configure (sets the scheduler's properties), start.
        yield self.sched.startService()
        self.addCleanup(self.stop_scheduler)

    @defer.inlineCallbacks
    def stop_scheduler(self):
        if self.sched.running:
            yield self.sched.stopService()

    def send_completion(self, bsid: int, results: int) -> None:
        self.master.mq.callConsumer(
            ("buildsets", str(bsid), "complete"),
            {
                "bsid": bsid,
                "submitted_at": 100,
                "complete": True,
                "complete_at": 200,
                "external_idstring": None,
                "reason": "triggering",
                "results": results,
                "sourcestamps": [],
                "parent_buildid": None,
                "parent_relationship": None,
            },
        )

    PROPS = {
        "gating_pipeline": NAME,
        "gating_run": BUILDID,
        "gating_job": "test",
        "gating_job_index": 0,
        "gating_arch": "aarch64",
    }
    STAMP = {
        "codebase": "",
        "repository": "https://git.example.org/rpms/foo.git",
        "branch": "main",
        "revision": "abc123",
        "project": "foo",
    }

    @defer.inlineCallbacks
    def test_buildset_for_exactly_the_named_builder(self):
        ids, done = self.sched.trigger_builder(
            "pipe/test/aarch64", [self.STAMP], self.PROPS, BUILDID, "pipe run 92: test[0]@aarch64"
        )
        self.reactor.advance(0)  # let the debounced _updateWaiters run
        bsid, brids = yield ids

        self.assertEqual(list(brids), [78])
        buildset = yield self.master.db.buildsets.getBuildset(bsid)
        self.assertEqual(buildset.parent_buildid, BUILDID)
        self.assertEqual(buildset.parent_relationship, "pipeline")
        self.assertEqual(buildset.reason, "pipe run 92: test[0]@aarch64")
        props = yield self.master.db.buildsets.getBuildsetProperties(bsid)
        self.assertEqual(
            dict(props),
            {
                **{k: (v, "pipeline") for k, v in self.PROPS.items()},
                "scheduler": ("pipe:jobs", "Scheduler"),
            },
        )
        stamps = yield defer.gatherResults(
            [self.master.db.sourcestamps.getSourceStamp(ssid) for ssid in buildset.sourcestamps]
        )
        self.assertEqual(
            [(s.repository, s.branch, s.revision, s.project) for s in stamps],
            [("https://git.example.org/rpms/foo.git", "main", "abc123", "foo")],
        )
        request = yield self.master.db.buildrequests.getBuildRequest(brids[78])
        self.assertEqual((request.buildername, request.waited_for), ("pipe/test/aarch64", True))
        requests = yield self.master.db.buildrequests.getBuildRequests(bsid=bsid)
        self.assertEqual(len(requests), 1)

        # The results deferred fires with the buildset's results once it completes,
        # and not for another buildset's completion.
        self.assertFalse(done.called)
        waiting = ("buildsets", None, "complete")
        self.assertIn(waiting, [q.filter for q in self.master.mq.qrefs])
        self.send_completion(bsid + 100, SUCCESS)
        self.assertFalse(done.called)
        self.send_completion(bsid, FAILURE)
        self.reactor.advance(0)
        self.assertEqual((yield done), (FAILURE, {78: brids[78]}))
        self.assertNotIn(waiting, [q.filter for q in self.master.mq.qrefs])

    @defer.inlineCallbacks
    def test_overlapping_triggers_get_their_own_results(self):
        first = self.sched.trigger_builder("pipe/build/x86_64", [], self.PROPS, BUILDID, "one")
        second = self.sched.trigger_builder("pipe/test/aarch64", [], self.PROPS, BUILDID, "two")
        self.reactor.advance(0)
        bsid1, brids1 = yield first[0]
        bsid2, brids2 = yield second[0]
        self.assertEqual((list(brids1), list(brids2)), ([77], [78]))
        self.send_completion(bsid2, SUCCESS)
        self.send_completion(bsid1, FAILURE)
        self.reactor.advance(0)
        self.assertEqual((yield first[1]), (FAILURE, brids1))
        self.assertEqual((yield second[1]), (SUCCESS, brids2))

    @defer.inlineCallbacks
    def test_stopping_the_scheduler_errs_the_waiters(self):
        _ids, done = self.sched.trigger_builder("pipe/build/x86_64", [], self.PROPS, BUILDID, "r")
        self.reactor.advance(0)
        yield self.sched.stopService()
        with self.assertRaises(RuntimeError):
            yield done

    @defer.inlineCallbacks
    def test_unknown_builder_fails_at_once_instead_of_waiting_forever(self):
        ids, done = self.sched.trigger_builder("pipe/gone/x86_64", [], self.PROPS, BUILDID, "r")
        self.reactor.advance(0)
        _bsid, brids = yield ids
        self.assertEqual(brids, {})
        with self.assertRaisesRegex(RuntimeError, "no builder named 'pipe/gone/x86_64'"):
            yield done
