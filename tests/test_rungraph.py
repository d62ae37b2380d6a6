"""Tests of gating.rungraph: one pipeline run, with lpci's stage semantics per architecture."""

import textwrap
from pathlib import Path

import pytest

from gating.diagnostics import Collector
from gating.pipeline import MASTER_LANE, InstanceId, load_pipeline_file, parse_pipeline
from gating.rungraph import (
    CANCELLED,
    EXCEPTION,
    FAILURE,
    PASSING,
    RESULT_NAMES,
    RETRY,
    SKIPPED,
    SUCCESS,
    WARNINGS,
    InfraFailure,
    PipelineRun,
    infrastructure_reason,
    runs_again,
    worst,
)

FIXTURES = Path(__file__).parent / "fixtures"
I = InstanceId  # noqa: E741

# Stage 1: build (x86_64) and lint (both arches).
# Stage 2: check (x86_64); install on aarch64 takes build's x86_64 output; smoke (aarch64).
# Stage 3: report (x86_64) and docs (aarch64).
# Stage 4: export (master lane): a barrier behind everything.
CROSS_ARCH = """\
pipeline:
  - [build, lint]
  - [check, install, smoke]
  - [report, docs]
  - export
jobs:
  build:
    architectures: [x86_64]
    run: make
    output: {paths: [out/*.rpm]}
  lint: {architectures: [x86_64, aarch64], run: make lint}
  check: {architectures: [x86_64], run: make check}
  install:
    architectures: [aarch64]
    input: {job-name: build, target-directory: built}
    run: dnf install -y built/files/out/*.rpm
  smoke: {architectures: [aarch64], run: ./smoke}
  report: {architectures: [x86_64], run: ./report}
  docs: {architectures: [aarch64], run: make docs}
  export: {uses: koji-export}
"""

BUILD = I("build", 0, "x86_64")
LINT_X86 = I("lint", 0, "x86_64")
LINT_ARM = I("lint", 0, "aarch64")
CHECK = I("check", 0, "x86_64")
INSTALL = I("install", 0, "aarch64")
SMOKE = I("smoke", 0, "aarch64")
REPORT = I("report", 0, "x86_64")
DOCS = I("docs", 0, "aarch64")
EXPORT = I("export", 0, MASTER_LANE)


def new_run(text: str = CROSS_ARCH) -> PipelineRun:
    errors = Collector()
    pipeline = parse_pipeline(textwrap.dedent(text), "p1.yaml", "p1", errors)
    errors.check()
    return PipelineRun(pipeline.dependencies())


def run_one(run: PipelineRun, inst: InstanceId, result: int) -> list[InstanceId]:
    assert inst in run.ready(), f"{inst} is not ready: {run.ready()}"
    run.start(inst)
    return run.finish(inst, result)


def test_first_stage_of_every_lane_is_ready_at_once():
    assert new_run().ready() == [BUILD, LINT_X86, LINT_ARM]


def test_later_stages_wait_for_the_earlier_stages_of_their_lane():
    run = new_run()
    run_one(run, LINT_ARM, SUCCESS)
    assert run.ready() == [BUILD, LINT_X86, SMOKE]
    run_one(run, LINT_X86, SUCCESS)
    assert CHECK not in run.ready()
    run_one(run, BUILD, SUCCESS)
    assert run.ready() == [CHECK, INSTALL, SMOKE]


def test_started_instances_are_running_and_not_ready():
    run = new_run()
    run.start(BUILD)
    assert run.running == {BUILD}
    assert BUILD not in run.ready()


def test_failing_x86_job_spares_siblings_skips_x86_later_stages_and_its_aarch64_consumer():
    run = new_run()
    run.start(BUILD)
    run.start(LINT_X86)
    run.start(LINT_ARM)
    skipped = run.finish(BUILD, FAILURE, "exit code 2")
    # its x86_64 sibling keeps running; x86_64 stages 2 and 3 are skipped, and so is the
    # aarch64 job that takes build's output (and, behind it, aarch64's stage 3 and export)
    assert run.running == {LINT_X86, LINT_ARM}
    assert skipped == [CHECK, INSTALL, REPORT, DOCS, EXPORT]
    assert run.reasons[BUILD] == "exit code 2"
    assert run.reasons[CHECK] == "skipped: build[0]@x86_64 did not pass"
    assert run.reasons[INSTALL] == "skipped: build[0]@x86_64 did not pass"
    assert run.finish(LINT_X86, SUCCESS) == []
    assert run.finish(LINT_ARM, SUCCESS) == []
    # aarch64's own stage 2 job, which does not take build's output, still runs
    assert run.ready() == [SMOKE]
    assert run_one(run, SMOKE, SUCCESS) == []
    assert run.done
    assert run.result == FAILURE


def test_skip_propagates_transitively_to_every_later_stage():
    run = new_run()
    run_one(run, LINT_X86, SUCCESS)
    run_one(run, LINT_ARM, SUCCESS)
    skipped = run_one(run, BUILD, FAILURE)
    # docs (aarch64 stage 3) waits for install, which was skipped; export waits for all
    assert skipped == [CHECK, INSTALL, REPORT, DOCS, EXPORT]
    assert run.reasons[DOCS] == "skipped: install[0]@aarch64 did not pass"
    assert run.reasons[EXPORT] == "skipped: build[0]@x86_64 did not pass"
    assert run.results[DOCS] == SKIPPED
    run_one(run, SMOKE, SUCCESS)
    assert run.done
    assert run.ready() == []
    assert run.result == FAILURE


def test_warnings_pass_like_success():
    run = new_run()
    run_one(run, BUILD, WARNINGS)
    run_one(run, LINT_X86, SUCCESS)
    assert CHECK in run.ready()
    assert WARNINGS in PASSING


@pytest.mark.parametrize("result", [FAILURE, EXCEPTION, CANCELLED, RETRY, SKIPPED])
def test_every_result_that_is_not_a_pass_blocks_what_follows(result):
    run = new_run()
    assert CHECK in run_one(run, BUILD, result)


def test_master_lane_export_runs_only_when_everything_before_it_passed():
    run = new_run()
    order = [BUILD, LINT_X86, LINT_ARM, CHECK, INSTALL, SMOKE, REPORT, DOCS]
    for inst in order:
        assert EXPORT not in run.ready()
        run_one(run, inst, SUCCESS)
    assert run.ready() == [EXPORT]
    run_one(run, EXPORT, SUCCESS)
    assert run.done
    assert run.result == SUCCESS


def test_failure_on_one_arch_does_not_skip_the_other_arch_in_seed_001():
    run = PipelineRun(load_pipeline_file(FIXTURES / "seed001.yaml").dependencies())
    build_arm = I("build-snap", 0, "aarch64")
    skipped = run_one(run, build_arm, FAILURE)
    assert skipped == [I("test-snap", 1, "aarch64"), I("test-snap", 2, "aarch64")]
    run_one(run, I("build-snap", 0, "x86_64"), SUCCESS)
    assert run.ready() == [I("test-snap", n, "x86_64") for n in range(3)]


def test_cancel_pending_cancels_what_has_not_started_and_leaves_running_ones():
    run = new_run()
    run_one(run, LINT_ARM, SUCCESS)
    run.start(BUILD)
    cancelled = run.cancel_pending("stopped by alice")
    assert cancelled == [LINT_X86, CHECK, INSTALL, SMOKE, REPORT, DOCS, EXPORT]
    assert all(run.results[i] == CANCELLED for i in cancelled)
    assert run.reasons[SMOKE] == "stopped by alice"
    assert run.running == {BUILD}
    assert not run.done
    run.finish(BUILD, CANCELLED)
    assert run.done
    assert run.result == CANCELLED
    assert run.ready() == []


def test_start_twice_is_an_error():
    run = new_run()
    run.start(BUILD)
    with pytest.raises(ValueError, match=r"build\[0\]@x86_64 was already started"):
        run.start(BUILD)
    run.finish(BUILD, SUCCESS)
    with pytest.raises(ValueError, match="already started"):
        run.start(BUILD)


def test_start_of_an_unknown_instance_is_a_key_error():
    with pytest.raises(KeyError):
        new_run().start(I("nope", 0, "x86_64"))


def test_finish_of_an_instance_that_was_not_started_is_an_error():
    run = new_run()
    with pytest.raises(ValueError, match="was not started"):
        run.finish(BUILD, SUCCESS)


def test_empty_run_is_done_and_successful():
    run = PipelineRun({})
    assert run.done and run.result == SUCCESS and run.ready() == []


# -- worst ---------------------------------------------------------------------


def test_result_codes_and_names_are_buildbots():
    assert (SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED) == tuple(range(7))
    assert RESULT_NAMES[FAILURE] == "failure"
    assert RESULT_NAMES[CANCELLED] == "cancelled"


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([], SUCCESS),
        ([SKIPPED], SKIPPED),
        ([SKIPPED, SUCCESS], SUCCESS),
        ([SUCCESS, WARNINGS], WARNINGS),
        ([WARNINGS, FAILURE, SKIPPED], FAILURE),
        ([FAILURE, EXCEPTION], EXCEPTION),
        ([EXCEPTION, CANCELLED], CANCELLED),
        ([CANCELLED, RETRY, FAILURE], RETRY),
    ],
)
def test_worst_follows_buildbots_order(results, expected):
    assert worst(results) == expected


def test_worst_of_every_result_is_retry_and_order_is_buildbots():
    order = [RETRY, CANCELLED, EXCEPTION, FAILURE, WARNINGS, SUCCESS, SKIPPED]
    for n, result in enumerate(order):
        assert worst(order[n:]) == result


# -- infrastructure failures: attempts --------------------------------------------------


@pytest.mark.parametrize(
    ("results", "attempts", "again"),
    [
        ([RETRY], 3, True),
        ([EXCEPTION], 3, True),
        ([RETRY, EXCEPTION], 3, True),
        ([RETRY, RETRY, EXCEPTION], 3, False),  # used up
        ([RETRY], 1, False),  # job-attempts 1: never again
        ([FAILURE], 3, False),  # the job's script failed: never again
        ([RETRY, FAILURE], 3, False),
        ([CANCELLED], 3, False),  # stopped by someone
        ([SUCCESS], 3, False),
        ([], 3, False),
    ],
)
def test_only_infrastructure_failures_run_again_up_to_the_attempts(results, attempts, again):
    assert runs_again(results, attempts) is again


def test_the_infrastructure_reason_says_so_and_names_each_build_and_worker():
    inst = I("packstack", 0, "x86_64")
    reason = infrastructure_reason(
        inst,
        [
            InfraFailure(4, "x86-1", RETRY, "retry lost connection"),
            InfraFailure(5, "", EXCEPTION),
        ],
    )
    assert reason == (
        "infrastructure failure: packstack[0]@x86_64 did not finish in 2 attempts (not a "
        "failure of the job): build 4 on x86-1 (retry: retry lost connection); "
        "build 5 on an unknown worker (exception)"
    )
    assert "1 attempt (" in infrastructure_reason(inst, [InfraFailure(1, "w", RETRY)])
