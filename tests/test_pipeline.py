"""Tests of gating.pipeline: pipeline files (a superset of lpci's .launchpad.yaml) as models."""

import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gating import arch as archmod
from gating import commands
from gating.diagnostics import Collector, ConfigError, Mark
from gating.pipeline import (
    BUILTIN_KINDS,
    IDENTIFIER_RE,
    INPUT_KEYS,
    JOB_KEYS,
    MASTER_LANE,
    MAX_ENTRIES,
    MAX_INSTANCES,
    MAX_JOBS,
    MAX_MATRIX_ENTRIES,
    MAX_TIMEOUT,
    OUTPUT_KEYS,
    PLUGIN_KEYS,
    REPOSITORY_KEYS,
    SNAP_KEYS,
    TOP_KEYS,
    TRIGGER_OPTIONS,
    InstanceId,
    Output,
    Snap,
    load_pipeline_file,
    load_pipelines,
    parse_pipeline,
    pipeline_name_for,
)
from gating.yamltree import MAX_DEPTH, MAX_FILE_BYTES
from tests.support.badinput import (
    BAD_INPUT,
    HOSTILE,
    any_text,
    assert_located,
    damaged,
    rare,
    yaml_documents,
)

FIXTURES = Path(__file__).parent / "fixtures"


def parse(text: str, name: str = "p1", filename: str = "p1.yaml", **kw):
    """(pipeline or None, error messages)."""
    errors = Collector()
    pipeline = parse_pipeline(textwrap.dedent(text), filename, name, errors, **kw)
    return pipeline, ConfigError(errors.diagnostics).messages


def ok(text: str, **kw):
    pipeline, errors = parse(text, **kw)
    assert errors == []
    return pipeline


def errors_of(text: str) -> list[str]:
    pipeline, errors = parse(text)
    assert pipeline is None
    return errors


I = InstanceId  # noqa: E741


# -- seed 001 and the design's example ------------------------------------------


def test_seed_001_stages_per_architecture_are_launchpads_cibuild_stages():
    p = load_pipeline_file(FIXTURES / "seed001.yaml")
    assert p.stages_for("x86_64") == [
        [("build-snap", 0)],
        [("test-snap", 0), ("test-snap", 1), ("test-snap", 2)],
    ]
    assert p.stages_for("aarch64") == [[("build-snap", 0)], [("test-snap", 1), ("test-snap", 2)]]
    assert p.lanes() == ["x86_64", "aarch64"]


def test_seed_001_matrix_entries_keep_their_series():
    p = load_pipeline_file(FIXTURES / "seed001.yaml")
    assert [(j.index, j.series, j.architectures) for j in p.entries("test-snap")] == [
        (0, "bionic", ("x86_64",)),
        (1, "focal", ("x86_64", "aarch64")),
        (2, "jammy", ("x86_64", "aarch64")),
    ]


def test_seed_001_test_snap_takes_build_snap_output_of_its_own_architecture():
    p = load_pipeline_file(FIXTURES / "seed001.yaml")
    assert p.producers(I("test-snap", 1, "aarch64")) == [I("build-snap", 0, "aarch64")]
    assert p.producers(I("test-snap", 0, "x86_64")) == [I("build-snap", 0, "x86_64")]


DESIGN_EXAMPLE = """\
pipeline:
  - build
  - [packstack, rpmlint]
  - export
jobs:
  build:    {uses: koji-scratch-build}
  packstack:
    architectures: [x86_64, aarch64]
    series: el9
    run: ./run-packstack.sh
    environment: {LANG: C.UTF-8}
  rpmlint:
    matrix:
      - {series: el8, architectures: [x86_64]}
      - {series: el9, architectures: [x86_64, aarch64]}
    run: rpmlint *.rpm
  export:   {uses: koji-export}
"""


def test_design_example_loads_with_built_in_kinds_in_the_master_lane():
    p = ok(DESIGN_EXAMPLE)
    assert p.lanes() == ["x86_64", "aarch64", MASTER_LANE]
    assert p.arches() == ["x86_64", "aarch64"]
    assert p.job("build").lanes == (MASTER_LANE,)
    assert p.stages_for(MASTER_LANE) == [[("build", 0)], [("export", 0)]]
    assert p.stages_for("aarch64") == [[("packstack", 0), ("rpmlint", 1)]]


def test_master_lane_jobs_are_barriers_across_every_architecture():
    deps = ok(DESIGN_EXAMPLE).dependencies()
    build = I("build", 0, MASTER_LANE)
    assert deps[build] == ()
    assert deps[I("packstack", 0, "aarch64")] == (build,)
    assert set(deps[I("export", 0, MASTER_LANE)]) == {
        build,
        I("packstack", 0, "x86_64"),
        I("packstack", 0, "aarch64"),
        I("rpmlint", 0, "x86_64"),
        I("rpmlint", 1, "x86_64"),
        I("rpmlint", 1, "aarch64"),
    }


# -- the model ----------------------------------------------------------------


def test_a_stage_is_a_job_name_or_a_list_of_job_names():
    p = ok(
        """\
        pipeline:
          - build
          - [lint, test]
        jobs:
          build: {architectures: x86_64}
          lint: {architectures: x86_64}
          test: {architectures: x86_64}
        """
    )
    assert p.stages == (("build",), ("lint", "test"))
    assert p.stage_of("test") == 1
    with pytest.raises(KeyError):
        p.stage_of("nope")


def test_debian_architecture_names_are_turned_into_rpm_names():
    p = ok("pipeline: [a1]\njobs:\n  a1: {architectures: [amd64, arm64, ppc64el, s390x]}\n")
    assert p.job("a1").architectures == ("x86_64", "aarch64", "ppc64le", "s390x")


def test_architectures_may_be_a_single_string():
    p = ok("pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n")
    assert p.job("a1").architectures == ("x86_64",)


def test_each_architecture_keeps_its_mark():
    p = ok("pipeline: [a1]\njobs:\n  a1:\n    architectures: [x86_64, arm64]\n")
    assert p.job("a1").arch_marks == (Mark("p1.yaml", 4, 21), Mark("p1.yaml", 4, 29))


def test_job_fields_are_read_into_the_frozen_model():
    p = ok(
        """\
        pipeline: [build, test]
        jobs:
          build:
            series: jammy
            architectures: amd64
            packages: [git, python3-dev]
            snaps:
              - snapcraft
              - {name: lxd, channel: 5.0/stable}
              - {name: go, classic: true}
            environment: {LANG: C.UTF-8, JOBS: 4, http_proxy: null}
            run-before: echo before
            run: make
            run-after: echo after
            root: false
            timeout: 3600
            output:
              paths: ["dist/*.whl"]
              distribute: artifactory
              channels: [edge]
              properties: {version: 1.0, tags: [a, b]}
              dynamic-properties: props.env
              expires: P30D
          test:
            series: jammy
            architectures: amd64
            input: {job-name: build, target-directory: dist}
            run: make check
        """
    )
    build = p.job("build")
    assert build.series == "jammy"
    assert build.packages == ("git", "python3-dev")
    assert build.snaps == (
        Snap("snapcraft", "latest/stable", classic=True),
        Snap("lxd", "5.0/stable", classic=False),
        Snap("go", "latest/stable", classic=True),
    )
    assert build.environment == (("LANG", "C.UTF-8"), ("JOBS", "4"), ("http_proxy", None))
    assert (build.run_before, build.run, build.run_after) == ("echo before", "make", "echo after")
    assert build.root is False
    assert build.timeout == 3600
    assert build.output == Output(
        paths=("dist/*.whl",),
        distribute="artifactory",
        channels=("edge",),
        properties=(("version", 1.0), ("tags", ["a", "b"])),
        dynamic_properties="props.env",
        expires="P30D",
    )
    test = p.job("test")
    assert (test.input.job_name, test.input.target_directory) == ("build", "dist")
    assert test.input.architecture is None
    assert test.root is True
    assert test.output is None


def test_job_and_input_marks_point_into_the_file():
    p = ok(
        """\
        pipeline: [build, test]
        jobs:
          build:
            architectures: amd64
            output: {paths: [a]}
          test:
            architectures: amd64
            input: {job-name: build, target-directory: dist}
        """
    )
    assert p.job("build").mark == Mark("p1.yaml", 4, 5)
    assert p.job("test").input.mark == Mark("p1.yaml", 8, 23)


def test_expires_as_a_number_of_seconds_is_kept_as_text():
    p = ok("pipeline: [a1]\njobs:\n  a1: {architectures: amd64, output: {expires: 86400}}\n")
    assert p.job("a1").output.expires == "86400"


def test_package_repositories_are_kept_as_written():
    p = ok(
        """\
        pipeline: [a1]
        jobs:
          a1:
            architectures: amd64
            package-repositories:
              - {type: apt, ppa: launchpad/ppa, formats: [deb], suites: [focal]}
        """
    )
    assert p.job("a1").package_repositories == (
        (("type", "apt"), ("ppa", "launchpad/ppa"), ("formats", ["deb"]), ("suites", ["focal"])),
    )


def test_plugin_keys_become_the_plugin_config():
    p = ok(
        """\
        pipeline: [a1]
        jobs:
          a1:
            architectures: amd64
            plugin: miniconda
            conda-python: 3.8
            conda-packages: [mamba, pip]
        """
    )
    job = p.job("a1")
    assert job.plugin == "miniconda"
    assert job.plugin_config == (("conda-packages", ("mamba", "pip")), ("conda-python", "3.8"))


def test_plugin_key_of_another_plugin_is_an_error():
    assert errors_of(
        """\
        pipeline: [a1]
        jobs:
          a1:
            architectures: amd64
            plugin: tox
            golang-version: "1.21"
        """
    ) == ["p1.yaml:6:21: job 'a1': key 'golang-version' does not belong to plugin 'tox'"]


def test_matrix_entries_are_merged_into_a_copy_of_the_job():
    p = ok(
        """\
        pipeline: [unit]
        jobs:
          unit:
            architectures: amd64
            packages: [python3]
            run: make check
            matrix:
              - series: bionic
              - series: jammy
                architectures: [amd64, arm64]
                run: make check-all
        """
    )
    first, second = p.entries("unit")
    assert (first.index, first.series, first.architectures, first.run) == (
        0,
        "bionic",
        ("x86_64",),
        "make check",
    )
    assert (second.index, second.series, second.architectures, second.run) == (
        1,
        "jammy",
        ("x86_64", "aarch64"),
        "make check-all",
    )
    assert first.packages == second.packages == ("python3",)
    assert first.mark == Mark("p1.yaml", 8, 9)
    assert second.mark == Mark("p1.yaml", 9, 9)


def test_matrix_entry_without_architectures_says_which_entry():
    assert errors_of(
        """\
        pipeline: [unit]
        jobs:
          unit:
            matrix:
              - {series: bionic, architectures: amd64}
              - {series: jammy}
        """
    ) == ["p1.yaml:6:9: job 'unit' matrix entry 1: missing required key 'architectures'"]


def test_matrix_entry_may_not_nest_a_matrix():
    assert errors_of(
        """\
        pipeline: [unit]
        jobs:
          unit:
            architectures: amd64
            matrix:
              - {matrix: []}
        """
    ) == ["p1.yaml:6:10: unknown key 'matrix' in job 'unit' matrix entry 0"]


def test_empty_matrix_is_an_error():
    assert errors_of("pipeline: [a1]\njobs:\n  a1: {architectures: amd64, matrix: []}\n") == [
        "p1.yaml:3:38: job 'a1' 'matrix': expected a non-empty list of mappings, got a list"
    ]


def test_jobs_not_in_the_pipeline_are_checked_but_have_no_instances():
    p = ok(
        """\
        pipeline: [a1]
        jobs:
          a1: {architectures: amd64}
          spare: {architectures: s390x}
        """
    )
    assert p.job("spare").architectures == ("s390x",)
    assert p.lanes() == ["x86_64"]
    assert [i for _, i in p.instances()] == [I("a1", 0, "x86_64")]


def test_instances_are_in_stage_order_with_their_stage_number():
    p = load_pipeline_file(FIXTURES / "seed001.yaml")
    assert list(p.instances()) == [
        (0, I("build-snap", 0, "x86_64")),
        (0, I("build-snap", 0, "aarch64")),
        (1, I("test-snap", 0, "x86_64")),
        (1, I("test-snap", 1, "x86_64")),
        (1, I("test-snap", 1, "aarch64")),
        (1, I("test-snap", 2, "x86_64")),
        (1, I("test-snap", 2, "aarch64")),
    ]


def test_instance_id_prints_job_index_and_lane():
    assert str(I("test-snap", 2, "aarch64")) == "test-snap[2]@aarch64"


def test_job_lookup_of_a_missing_entry_is_a_key_error():
    p = load_pipeline_file(FIXTURES / "seed001.yaml")
    with pytest.raises(KeyError):
        p.job("test-snap", 3)


def test_trusted_is_carried_into_the_model():
    assert (
        ok("pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n", trusted=False).trusted is False
    )


# -- inputs and dependencies ---------------------------------------------------

CROSS_ARCH = """\
pipeline:
  - [build, lint]
  - [check, install, smoke]
jobs:
  build:
    architectures: [x86_64]
    run: make
    output: {paths: [out/*.rpm]}
  lint: {architectures: [x86_64, aarch64], run: make lint}
  check: {architectures: [x86_64], run: make check}
  install:
    architectures: [aarch64, ppc64le]
    input: {job-name: build, target-directory: built}
    run: dnf install built/files/out/*.rpm
  smoke: {architectures: [aarch64], run: ./smoke}
"""


def test_input_from_a_job_on_one_other_architecture_uses_that_architecture():
    p = ok(CROSS_ARCH)
    assert p.input_lane(I("install", 0, "aarch64")) == "x86_64"
    assert p.producers(I("install", 0, "ppc64le")) == [I("build", 0, "x86_64")]
    assert p.input_lane(I("smoke", 0, "aarch64")) is None
    assert p.producers(I("smoke", 0, "aarch64")) == []


def test_dependencies_are_earlier_stages_of_the_lane_plus_the_input_producers():
    deps = ok(CROSS_ARCH).dependencies()
    assert deps[I("build", 0, "x86_64")] == ()
    assert deps[I("lint", 0, "aarch64")] == ()
    assert deps[I("check", 0, "x86_64")] == (I("build", 0, "x86_64"), I("lint", 0, "x86_64"))
    assert deps[I("smoke", 0, "aarch64")] == (I("lint", 0, "aarch64"),)
    assert deps[I("install", 0, "aarch64")] == (I("lint", 0, "aarch64"), I("build", 0, "x86_64"))
    assert deps[I("install", 0, "ppc64le")] == (I("build", 0, "x86_64"),)


def test_input_from_a_multi_arch_job_takes_the_consumers_own_architecture():
    p = load_pipeline_file(FIXTURES / "seed001.yaml")
    deps = p.dependencies()
    assert deps[I("test-snap", 1, "aarch64")] == (I("build-snap", 0, "aarch64"),)


def test_input_architecture_picks_the_producer_explicitly():
    p = ok(
        """\
        pipeline: [build, test]
        jobs:
          build: {architectures: [x86_64, aarch64], output: {paths: [a]}}
          test:
            architectures: [ppc64le]
            input: {job-name: build, target-directory: in, architecture: arm64}
        """
    )
    assert p.job("test").input.architecture == "aarch64"
    assert p.producers(I("test", 0, "ppc64le")) == [I("build", 0, "aarch64")]


def test_input_from_a_matrix_job_takes_every_entry_on_the_chosen_lane():
    p = ok(
        """\
        pipeline: [build, test]
        jobs:
          build:
            matrix: [{series: el9}, {series: el10}]
            architectures: [x86_64]
            output: {paths: [a]}
          test:
            architectures: [x86_64]
            input: {job-name: build, target-directory: in}
        """
    )
    assert p.producers(I("test", 0, "x86_64")) == [I("build", 0, "x86_64"), I("build", 1, "x86_64")]


def test_input_unknown_architecture_is_an_error():
    assert errors_of(
        """\
        pipeline: [build, test]
        jobs:
          build: {architectures: x86_64, output: {paths: [a]}}
          test:
            architectures: x86_64
            input: {job-name: build, target-directory: in, architecture: x64}
        """
    ) == ["p1.yaml:6:66: job 'test' input: unknown architecture 'x64'; did you mean 'x86_64'?"]


def test_input_missing_target_directory_is_an_error():
    assert errors_of(
        """\
        pipeline: [build, test]
        jobs:
          build: {architectures: x86_64, output: {paths: [a]}}
          test: {architectures: x86_64, input: {job-name: build}}
        """
    ) == ["p1.yaml:4:40: job 'test' 'input': missing required key 'target-directory'"]


# -- triggers ------------------------------------------------------------------


def test_trigger_may_be_a_name_a_list_or_a_mapping():
    body = "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n"
    assert [t.kind for t in ok("trigger: gate\n" + body).triggers] == ["gate"]
    assert [t.kind for t in ok("trigger: [gate, check]\n" + body).triggers] == ["gate", "check"]
    p = ok("trigger:\n  gate: {projects: [nova]}\n  nightly: {hour: 3}\n" + body)
    assert [(t.kind, t.options) for t in p.triggers] == [
        ("gate", (("projects", ["nova"]),)),
        ("nightly", (("hour", 3),)),
    ]
    assert p.triggers[1].option("hour") == 3
    assert p.triggers[1].option("minute", 0) == 0


def test_trigger_list_entries_may_carry_options():
    p = ok(
        "trigger:\n  - koji_tag: {tag: rdo-testing}\n  - compose\n"
        "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n"
    )
    assert [(t.kind, t.options, t.mark) for t in p.triggers] == [
        ("koji_tag", (("tag", "rdo-testing"),), Mark("p1.yaml", 2, 5)),
        ("compose", (), Mark("p1.yaml", 3, 5)),
    ]


def test_trigger_options_are_typed():
    p = ok(
        "trigger:\n  nightly: {hour: [1, 13], minute: 5, projects: nova}\n"
        "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n"
    )
    assert p.triggers[0].options == (("hour", [1, 13]), ("minute", 5), ("projects", "nova"))
    assert errors_of(
        "trigger:\n  nightly: {hour: '3', minute: 60}\n"
        "  koji_build: {package: [nova, 7]}\n"
        "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n"
    ) == [
        "p1.yaml:2:19: trigger 'nightly' 'hour': expected an integer from 0 to 23, got a string",
        "p1.yaml:2:32: trigger 'nightly' 'minute': expected an integer from 0 to 59, "
        "got an integer (60)",
        "p1.yaml:3:32: trigger 'koji_build' 'package' entry: expected a string, got an integer (7)",
    ]


def test_trigger_of_the_wrong_shape_is_an_error():
    assert errors_of(
        "trigger: [[gate], {gate: null, check: null}]\n"
        "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n"
    ) == [
        "p1.yaml:1:11: 'trigger' entry: expected a trigger name or a mapping of one trigger "
        "name to its options, got a list",
        "p1.yaml:1:19: 'trigger' entry: expected a trigger name or a mapping of one trigger "
        "name to its options, got a mapping",
    ]
    assert errors_of("trigger: 7\npipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n") == [
        "p1.yaml:1:10: 'trigger': expected a trigger name, a list or a mapping, got an integer (7)"
    ]


# -- whole-file checks ---------------------------------------------------------


def test_missing_pipeline_and_jobs_are_reported_together():
    assert errors_of("license: {spdx: MIT}\n") == [
        "p1.yaml:1:1: the pipeline file: missing required key 'jobs'",
        "p1.yaml:1:1: the pipeline file: missing required key 'pipeline'",
    ]


def test_jobs_must_be_a_mapping():
    assert errors_of("pipeline: [a1]\njobs: [a1]\n") == [
        "p1.yaml:1:12: stage 1 names job 'a1', which is not defined in 'jobs'",
        "p1.yaml:2:7: 'jobs': expected a mapping, got a list",
    ]


def test_empty_pipeline_is_an_error():
    assert errors_of("pipeline: []\njobs:\n  a1: {architectures: amd64}\n") == [
        "p1.yaml:1:11: 'pipeline': expected at least one stage"
    ]


def test_pipeline_name_from_the_file_must_be_an_identifier():
    _, errors = parse("pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n", name="RDO")
    assert errors == [
        "p1.yaml:1:1: pipeline name 'RDO' (from the file name) must be at least two characters: "
        "lower-case ASCII letters, digits, '+', '.', '_' or '-', starting with a letter or digit"
    ]


def test_too_many_jobs_is_an_error():
    jobs = "".join(f"  j{i}: {{architectures: amd64}}\n" for i in range(MAX_JOBS + 1))
    assert f"p1.yaml:3:3: too many jobs ({MAX_JOBS + 1}; at most {MAX_JOBS})" in errors_of(
        "pipeline: [j0]\njobs:\n" + jobs
    )


def test_too_many_matrix_entries_is_an_error():
    entries = "".join("      - {series: el9}\n" for _ in range(MAX_MATRIX_ENTRIES + 1))
    assert errors_of(
        "pipeline: [a1]\njobs:\n  a1:\n    architectures: amd64\n    matrix:\n" + entries
    ) == [
        f"p1.yaml:6:7: job 'a1' 'matrix': too many entries "
        f"({MAX_MATRIX_ENTRIES + 1}; at most {MAX_MATRIX_ENTRIES})"
    ]


def test_too_many_instances_is_an_error():
    arches = "[x86_64, aarch64, ppc64le, s390x, i686, armv7hl, riscv64, noarch]"
    entries = "".join(f"      - {{series: s{i:02}}}\n" for i in range(MAX_MATRIX_ENTRIES))
    jobs = "".join(
        f"  j{n}:\n    architectures: {arches}\n    matrix:\n" + entries for n in range(4)
    )
    count = 4 * MAX_MATRIX_ENTRIES * 8
    assert count > MAX_INSTANCES
    assert errors_of("pipeline: [[j0, j1, j2, j3]]\njobs:\n" + jobs) == [
        f"p1.yaml:1:1: too many job instances ({count}; at most {MAX_INSTANCES})"
    ]


def test_timeout_over_a_week_is_an_error():
    assert errors_of(
        f"pipeline: [a1]\njobs:\n  a1: {{architectures: amd64, timeout: {MAX_TIMEOUT + 1}}}\n"
    ) == [f"p1.yaml:3:39: job 'a1' 'timeout': at most {MAX_TIMEOUT} seconds"]


def test_built_in_kind_needs_no_architectures():
    p = ok("pipeline: [export]\njobs:\n  export: {uses: koji-export}\n")
    assert p.job("export").architectures == ()
    assert p.lanes() == [MASTER_LANE]


def test_bad_series_identifier_is_an_error():
    assert errors_of("pipeline: [a1]\njobs:\n  a1: {architectures: amd64, series: EL9}\n") == [
        "p1.yaml:3:38: job 'a1' 'series': 'EL9' must be at least two characters: lower-case "
        "ASCII letters, digits, '+', '.', '_' or '-', starting with a letter or digit"
    ]


# -- files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("pipelines/packstack.yaml", "packstack"),
        ("pipelines/nightly.yml", "nightly"),
        ("repo/.launchpad.yaml", "launchpad"),
        ("noext", "noext"),
    ],
)
def test_pipeline_name_comes_from_the_file_name(path, name):
    assert pipeline_name_for(Path(path)) == name


def test_load_pipeline_file_names_the_pipeline_and_shows_the_display_path():
    p = load_pipeline_file(FIXTURES / "seed001.yaml", "shown/seed001.yaml")
    assert (p.name, p.file) == ("seed001", "shown/seed001.yaml")
    # the document starts at its first key, after the comments
    assert p.mark == Mark("shown/seed001.yaml", 6, 1)


def test_missing_pipeline_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_pipeline_file(tmp_path / "gone.yaml", "gone.yaml")
    assert exc.value.messages == [
        "gone.yaml:1:1: cannot read pipeline file: No such file or directory"
    ]


def test_load_pipelines_reports_every_error_of_every_file(tmp_path):
    (tmp_path / "aa.yaml").write_text("pipeline: [x1]\njobs: {}\n")
    (tmp_path / "bb.yaml").write_text("pipeline: [y1]\njobs:\n  y1: {architectures: vax}\n")
    (tmp_path / "cc.yaml").write_text("pipeline: [z1]\njobs:\n  z1: {architectures: amd64}\n")
    with pytest.raises(ConfigError) as exc:
        load_pipelines([(tmp_path / n, n) for n in ("cc.yaml", "bb.yaml", "aa.yaml")])
    assert exc.value.messages == [
        "aa.yaml:1:12: stage 1 names job 'x1', which is not defined in 'jobs'",
        "bb.yaml:3:23: job 'y1': unknown architecture 'vax'",
    ]


def test_load_pipelines_returns_them_in_order(tmp_path):
    (tmp_path / "b1.yaml").write_text("pipeline: [y1]\njobs:\n  y1: {architectures: amd64}\n")
    (tmp_path / "a1.yaml").write_text("pipeline: [z1]\njobs:\n  z1: {architectures: amd64}\n")
    got = load_pipelines([(tmp_path / "b1.yaml", "b1.yaml"), (tmp_path / "a1.yaml", "a1.yaml")])
    assert [p.name for p in got] == ["b1", "a1"]


def expected_messages() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (FIXTURES / "broken" / "EXPECTED").read_text().splitlines():
        if line and not line.startswith("#"):
            out.setdefault(line.split(":", 1)[0], []).append(line)
    return out


BROKEN = sorted(p.name for p in (FIXTURES / "broken").glob("*.yaml"))


@pytest.mark.parametrize("name", BROKEN)
def test_broken_pipeline_file_gives_exactly_the_expected_errors(name):
    display = f"broken/{name}"
    with pytest.raises(ConfigError) as exc:
        load_pipeline_file(FIXTURES / "broken" / name, display)
    assert exc.value.messages == expected_messages()[display]


def test_every_expected_message_belongs_to_a_broken_file():
    assert sorted(expected_messages()) == [f"broken/{n}" for n in BROKEN]


# -- limits --------------------------------------------------------------------------


def test_a_file_over_the_size_limit_names_the_file():
    text = "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n" + "#" * MAX_FILE_BYTES
    size = len(text.encode())
    assert errors_of(text) == [
        f"p1.yaml:1:1: file is too large ({size} bytes; the limit is {MAX_FILE_BYTES})"
    ]


def test_the_size_limit_counts_bytes_not_characters():
    text = "pipeline: [a1]\njobs:\n  a1: {architectures: amd64}\n# " + "é" * (MAX_FILE_BYTES // 2)
    assert len(text) < MAX_FILE_BYTES < len(text.encode())
    assert errors_of(text)[0].startswith("p1.yaml:1:1: file is too large")


def test_nesting_deeper_than_the_limit_is_an_error_at_the_deepest_list():
    # the root mapping, jobs, a1, output and properties are 5 levels: list n is level 5 + n
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    column = len("      properties: {k: ") + MAX_DEPTH + 1 - 5
    assert errors_of(
        f"pipeline: [a1]\njobs:\n  a1:\n    architectures: amd64\n    output:\n"
        f"      properties: {{k: {deep}}}\n"
    ) == [
        f"p1.yaml:6:{column}: nested too deeply "
        f"(more than {MAX_DEPTH} levels of lists and mappings)"
    ]


def test_nesting_up_to_the_limit_loads():
    deep = "[" * (MAX_DEPTH - 5) + "]" * (MAX_DEPTH - 5)
    ok(
        f"pipeline: [a1]\njobs:\n  a1:\n    architectures: amd64\n    output:\n"
        f"      properties: {{k: {deep}}}\n"
    )


def test_too_many_job_entries_in_a_pipeline_is_an_error_at_jobs():
    entries = "".join(f"      - {{series: s{i:02}}}\n" for i in range(MAX_MATRIX_ENTRIES))
    count = MAX_ENTRIES // MAX_MATRIX_ENTRIES + 1
    jobs = "".join(
        f"  j{n}:\n    architectures: amd64\n    matrix:\n" + entries for n in range(count)
    )
    assert errors_of("pipeline: [j0]\njobs:\n" + jobs) == [
        f"p1.yaml:3:3: too many job entries ({count * MAX_MATRIX_ENTRIES}, each matrix entry "
        f"counted; at most {MAX_ENTRIES})"
    ]


def test_a_pipeline_at_every_limit_loads_quickly():
    """MAX_ENTRIES entries, MAX_INSTANCES instances, each taking another job's output: the
    graph checks stay fast (they once scanned every entry for every instance)."""
    per_job = MAX_MATRIX_ENTRIES // 2
    producers = MAX_ENTRIES // per_job // 2
    entry = "".join(f"      - {{series: s{i:02}}}\n" for i in range(per_job))
    jobs = "".join(
        f"  p{n}:\n    architectures: [amd64, arm64]\n    output: {{paths: [x]}}\n"
        f"    matrix:\n" + entry
        for n in range(producers)
    ) + "".join(
        f"  c{n}:\n    architectures: amd64\n    input: {{job-name: p{n}, target-directory: i}}\n"
        f"    matrix:\n" + entry
        for n in range(producers)
    )
    stages = f"[[{', '.join(f'p{n}' for n in range(producers))}], " + (
        f"[{', '.join(f'c{n}' for n in range(producers))}]]"
    )
    start = time.monotonic()
    p = ok(f"pipeline: {stages}\njobs:\n" + jobs)
    assert len(p.jobs) <= MAX_ENTRIES and sum(1 for _ in p.instances()) <= MAX_INSTANCES
    assert time.monotonic() - start < 10


# -- hostile values that become command arguments ------------------------------------


@pytest.mark.parametrize("package", ["-x", "--setopt=reposdir=/tmp", "a\\nb", "", "a\\tb"])
def test_a_package_name_that_is_an_option_or_has_control_characters_is_an_error(package):
    errors = errors_of(
        f'pipeline: [a1]\njobs:\n  a1: {{architectures: amd64, packages: [gcc, "{package}"]}}\n'
    )
    assert len(errors) == 1
    assert errors[0].startswith("p1.yaml:3:46: job 'a1' 'packages': ")
    assert "is not a package name" in errors[0]


def test_package_names_are_arguments_after_the_install_command():
    p = ok("pipeline: [a1]\njobs:\n  a1: {architectures: amd64, packages: ['$(x)', 'a b']}\n")
    assert commands.package_command(("dnf", "install", "-y"), p.job("a1").packages) == [
        "dnf",
        "install",
        "-y",
        "$(x)",
        "a b",
    ]


@pytest.mark.parametrize(
    ("snaps", "column", "message"),
    [
        ("[--devmode]", 38, "job 'a1' snap '--devmode': a snap name is"),
        ("[{name: -x}]", 45, "job 'a1' snap '-x': a snap name is"),
        ("[{name: lxd, channel: '-x'}]", 59, "job 'a1' snap channel '-x': expected"),
        ("['a;b']", 38, "job 'a1' snap 'a;b': a snap name is"),
    ],
)
def test_snap_names_and_channels_that_could_be_options_are_errors(snaps, column, message):
    errors = errors_of(f"pipeline: [a1]\njobs:\n  a1: {{architectures: amd64, snaps: {snaps}}}\n")
    assert len(errors) == 1
    assert errors[0].startswith(f"p1.yaml:3:{column}: {message}")


def test_a_nul_character_anywhere_is_an_error():
    assert errors_of(
        'pipeline: [a1]\njobs:\n  a1: {architectures: amd64, run: "make\\0", '
        'environment: {"A\\0": x}}\n'
    ) == [
        "p1.yaml:3:35: a NUL character is not allowed",
        "p1.yaml:3:59: a NUL character is not allowed",
    ]


def test_an_environment_name_with_equals_is_an_error():
    assert errors_of(
        "pipeline: [a1]\njobs:\n  a1: {architectures: amd64, environment: {A=B: x}}\n"
    ) == ["p1.yaml:3:44: job 'a1' 'environment': 'A=B' is not a variable name (empty, or has '=')"]


def test_a_name_with_a_trailing_newline_is_not_an_identifier():
    # regression: IDENTIFIER_RE ended in '$', which also matches before a final newline
    assert errors_of('pipeline: ["b1\\n"]\njobs:\n  "b1\\n": {architectures: amd64}\n') == [
        "p1.yaml:3:3: job name 'b1\\n' must be at least two characters: lower-case ASCII "
        "letters, digits, '+', '.', '_' or '-', starting with a letter or digit"
    ]


def test_a_huge_sexagesimal_integer_is_an_error_not_a_crash():
    # regression: '1:0:0...' (YAML 1.1 base 60) made an integer Python cannot print
    text = "pipeline: [a1]\njobs:\n  a1: {architectures: amd64, run: 1" + ":0" * 3000 + "}\n"
    assert errors_of(text) == [
        "p1.yaml:3:35: bad value: a number of more than 100 characters (quote it if it is text)",
        "p1.yaml:3:35: job 'a1' 'run': expected a string, got nothing (null)",
    ]


def test_hostile_job_names_are_printed_on_one_line():
    errors = errors_of('pipeline: [a1]\njobs:\n  "x\\ny.yaml:1:1: fake": {architectures: amd64}\n')
    assert all(e.startswith("p1.yaml:") and "\n" not in e for e in errors)
    assert any("job name 'x\\ny.yaml:1:1: fake' must be" in e for e in errors)


# -- bad input: property-based -------------------------------------------------------

_GOOD_NAMES = ("build", "test", "lint", "export", "smoke", "rpmlint")
_BAD_NAMES = ("Bad", "b", "x y", "-x", "a\nb", "$(x)")
_ARCHES = ("x86_64", "aarch64", "amd64", "arm64", "ppc64le", "s390x", "i386", "noarch")
_KEYS = tuple(sorted(TOP_KEYS | JOB_KEYS | OUTPUT_KEYS | INPUT_KEYS | SNAP_KEYS | REPOSITORY_KEYS))
_WORDS = (*_GOOD_NAMES, *_ARCHES, *TRIGGER_OPTIONS, *BUILTIN_KINDS, *PLUGIN_KEYS, "el8", "el9")
_text = st.one_of(
    st.sampled_from(("make", "./run.sh", "rpmlint *.rpm")), st.sampled_from(HOSTILE[:12])
)
_arches = st.lists(st.sampled_from(_ARCHES[:6]), min_size=1, max_size=3, unique=True)


def _arch_value(arches):
    return arches[0] if len(arches) == 1 else arches


@st.composite
def _job(draw, names):
    """A job that is mostly valid; damaged() makes some values wrong afterwards."""
    if rare(draw, 12):
        return {"uses": draw(st.sampled_from(sorted(BUILTIN_KINDS)))}
    job: dict = {"architectures": _arch_value(draw(_arches))}
    optional = {
        "series": st.sampled_from(["el8", "el9", "focal"]),
        "run": _text,
        "run-before": _text,
        "run-after": _text,
        "packages": st.lists(st.sampled_from(["gcc", "rpm-build", "python3-*", "$(x)"])),
        "environment": st.dictionaries(
            st.sampled_from(["LANG", "CI", "X_1"]), st.one_of(st.none(), _text, st.integers())
        ),
        "timeout": st.integers(1, MAX_TIMEOUT),
        "root": st.booleans(),
        "output": st.fixed_dictionaries(
            {"paths": st.lists(st.sampled_from(["out/*.rpm", "**/*.log", "a b"]), max_size=2)},
            optional={
                "properties": st.dictionaries(st.sampled_from(["kind", "n"]), _text, max_size=2),
                "distribute": st.just("artifactory"),
                "channels": st.lists(st.sampled_from(["edge", "stable"]), max_size=2),
                "expires": st.one_of(st.integers(1, 10**6), st.just("1 day")),
            },
        ),
        "snaps": st.lists(
            st.one_of(
                st.sampled_from(["lxd", "core22"]),
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["lxd", "charmcraft"])},
                    optional={
                        "channel": st.sampled_from(["latest/stable", "5.0/edge"]),
                        "classic": st.booleans(),
                    },
                ),
            ),
            max_size=2,
        ),
        "package-repositories": st.lists(
            st.fixed_dictionaries(
                {"type": st.just("apt"), "url": st.just("http://example.org/repo")},
                optional={
                    "formats": st.just(["deb"]),
                    "components": st.just(["main"]),
                    "suites": st.just(["focal"]),
                    "trusted": st.booleans(),
                },
            ),
            max_size=1,
        ),
    }
    for key, strategy in optional.items():
        if rare(draw, 4):
            job[key] = draw(strategy)
    if rare(draw, 8):
        job["input"] = {
            "job-name": draw(st.sampled_from(names)),
            "target-directory": draw(st.sampled_from(["in", "deps/x"])),
        }
        if rare(draw, 3):
            job["input"]["architecture"] = draw(st.sampled_from(_ARCHES[:4]))
    if rare(draw, 4):
        job["matrix"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "series": st.sampled_from(["el8", "el9"]),
                        "architectures": _arches.map(_arch_value),
                        "run": _text,
                    },
                ),
                min_size=1,
                max_size=3,
            )
        )
    if rare(draw, 10):
        job["plugin"] = draw(st.sampled_from(sorted(PLUGIN_KEYS)))
        if job["plugin"] == "miniconda":
            job["conda-python"] = draw(st.sampled_from([3.9, "3.11"]))
            job["conda-packages"] = ["numpy"]
        elif job["plugin"] == "golang":
            job["golang-version"] = "1.21"
    return job


_trigger_name = st.sampled_from(sorted(TRIGGER_OPTIONS))
_trigger_options = st.fixed_dictionaries(
    {},
    optional={
        "projects": st.one_of(st.just("nova"), st.just(["nova", "glance"])),
        "branches": st.just(["main"]),
        "hour": st.one_of(st.integers(0, 23), st.lists(st.integers(0, 23), max_size=2)),
        "minute": st.integers(0, 59),
    },
)


@st.composite
def _pipeline_document(draw):
    names = draw(st.lists(st.sampled_from(_GOOD_NAMES), min_size=1, max_size=4, unique=True))
    if rare(draw, 10):
        names.append(draw(st.sampled_from(_BAD_NAMES)))
    jobs = {name: draw(_job(names)) for name in names}
    order = draw(st.permutations(names))
    stages: list = []
    for name in order:
        if stages and rare(draw, 3):
            last = stages[-1]
            stages[-1] = [*last, name] if isinstance(last, list) else [last, name]
        else:
            stages.append(name if draw(st.booleans()) else [name])
    doc: dict = {"pipeline": stages, "jobs": jobs}
    if rare(draw, 3):
        doc["trigger"] = draw(
            st.one_of(
                _trigger_name,
                st.lists(_trigger_name, max_size=2, unique=True),
                st.dictionaries(st.sampled_from(["nightly", "dist_git_commit"]), _trigger_options),
            )
        )
    if rare(draw, 8):
        doc["license"] = {"spdx": "MIT"}
    return doc


PIPELINE_DOCUMENTS = damaged(_pipeline_document(), _WORDS, _KEYS)


def check_model(p):
    """What a loaded pipeline promises the rest of the gate."""
    job_names = {j.name for j in p.jobs}
    assert all(IDENTIFIER_RE.match(name) for name in job_names)
    assert {name for stage in p.stages for name in stage} <= job_names
    assert len(p.jobs) <= MAX_ENTRIES
    assert sum(1 for _ in p.instances()) <= MAX_INSTANCES
    for job in p.jobs:
        assert all(archmod.canonical(a) == a for a in job.architectures)
        assert job.timeout is None or 1 <= job.timeout <= MAX_TIMEOUT
        for script in (job.run_before, commands.run_script(job), job.run_after):
            if script is not None:
                assert commands.script_command(script)[-1] == script
        install = commands.package_command(("dnf", "install", "-y"), job.packages)
        assert not any(arg.startswith("-") or "\0" in arg for arg in install[3:])
        for snap in job.snaps:
            assert not commands.snap_command(snap)[2].startswith("-")
        if job.input is not None:
            assert not job.input.target_directory.startswith("/")
    p.dependencies()
    for lane in p.lanes():
        p.stages_for(lane)


def check_pipeline(text):
    errors = Collector()
    pipeline = parse_pipeline(text, "p1.yaml", "p1", errors)
    assert_located(errors, "p1.yaml", text)
    if pipeline is None:
        assert errors.diagnostics, "no pipeline and no error"
        event("errors")
    else:
        assert not errors.diagnostics
        event("valid pipeline")
        check_model(pipeline)


@BAD_INPUT
@given(any_text())
def test_any_text_or_bytes_gives_a_pipeline_or_errors_with_their_place(text):
    check_pipeline(text)


@BAD_INPUT
@given(yaml_documents(PIPELINE_DOCUMENTS))
def test_any_pipeline_shaped_file_gives_a_pipeline_or_errors_with_their_place(text):
    check_pipeline(text)


# -- in-repo pipelines and the untrusted mode ------------------------------------


def untrusted(text: str) -> tuple[object, list[str]]:
    return parse(text, name="in-repo", filename=".gating.yaml", trusted=False)


def test_the_in_repo_kind_runs_on_its_architectures_with_the_default_file():
    p = ok(
        """\
        trigger: gate
        pipeline: [own]
        jobs:
          own: {uses: in-repo-pipeline, architectures: [x86_64, aarch64], timeout: 600}
        """
    )
    job = p.job("own")
    assert (job.uses, job.file, job.timeout) == ("in-repo-pipeline", ".gating.yaml", 600)
    assert job.lanes == ("x86_64", "aarch64")
    assert MASTER_LANE not in p.lanes()


def test_the_in_repo_kind_takes_a_relative_file_and_a_matrix():
    p = ok(
        """\
        trigger: [check, dist_git_commit]
        pipeline: [own]
        jobs:
          own:
            uses: in-repo-pipeline
            file: ci/pipeline.yaml
            matrix:
              - {architectures: x86_64, series: el9}
              - {architectures: aarch64, series: el10}
        """
    )
    assert [(j.file, j.series, j.architectures) for j in p.entries("own")] == [
        ("ci/pipeline.yaml", "el9", ("x86_64",)),
        ("ci/pipeline.yaml", "el10", ("aarch64",)),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "../x.yaml",
        "/etc/passwd",
        "a/../b",
        "./a",
        "a//b",
        "-rf",
        ".git/config",
        "sub/.git/HEAD",
        "a b",
        "é",
        "",
    ],
)
def test_an_in_repo_file_outside_the_repository_is_refused_with_its_place(path):
    errors = errors_of(
        f"pipeline: [own]\njobs:\n  own: {{uses: in-repo-pipeline, architectures: x86_64, "
        f"file: {path!r}}}\n"
    )
    assert len(errors) == 1 and errors[0].startswith("p1.yaml:3:"), errors
    assert "must be a relative path inside the project repository" in errors[0]


def test_the_in_repo_kind_needs_architectures_and_says_what_does_not_apply():
    errors = errors_of(
        """\
        pipeline: [own]
        jobs:
          own: {uses: in-repo-pipeline, run: make, environment: {A: b}}
        """
    )
    assert errors == [
        "p1.yaml:3:8: job 'own': missing required key 'architectures'",
        "p1.yaml:3:33: job 'own': key 'run' does not apply to 'in-repo-pipeline' (the "
        "repository's pipeline file says what runs; allowed: architectures, file, matrix, "
        "series, timeout, uses)",
        "p1.yaml:3:44: job 'own': key 'environment' does not apply to 'in-repo-pipeline' (the "
        "repository's pipeline file says what runs; allowed: architectures, file, matrix, "
        "series, timeout, uses)",
    ]


def test_file_belongs_to_the_in_repo_kind_only():
    assert errors_of("pipeline: [a1]\njobs:\n  a1: {architectures: x86_64, file: x.yaml}\n") == [
        "p1.yaml:3:37: job 'a1': 'file' applies only to 'uses: in-repo-pipeline'"
    ]


def test_the_in_repo_kind_runs_only_on_triggers_with_a_project_commit():
    errors = errors_of(
        """\
        trigger: [gate, koji_build, nightly]
        pipeline: [own]
        jobs:
          own: {uses: in-repo-pipeline, architectures: x86_64}
        """
    )
    assert errors == [
        "p1.yaml:4:8: job 'own' uses 'in-repo-pipeline', which runs the pipeline file of the "
        "project commit under test: the pipeline's triggers must be check, dist_git_commit, "
        "gate, not koji_build, nightly"
    ]


def test_untrusted_uses_of_every_built_in_kind_is_refused_where_it_is_written():
    for kind in sorted(BUILTIN_KINDS):
        pipeline, errors = untrusted(f"pipeline: [a1]\njobs:\n  a1: {{uses: {kind}}}\n")
        assert pipeline is None
        assert errors == [
            f".gating.yaml:3:14: job 'a1': 'uses: {kind}': built-in job kinds act with the "
            "site's rights (the build backend, the export, the repository's pipeline); a "
            "pipeline file from a repository cannot use them"
        ]


def test_untrusted_uses_of_koji_export_in_a_matrix_entry_is_refused_too():
    pipeline, errors = untrusted(
        """\
        pipeline: [a1]
        jobs:
          a1:
            architectures: x86_64
            matrix:
              - {run: make}
              - {uses: koji-export}
        """
    )
    assert pipeline is None
    assert [e.split(": ", 1)[0] for e in errors] == [".gating.yaml:7:16"]
    assert "'uses: koji-export'" in errors[0]


def test_untrusted_trigger_is_refused_where_it_is_written():
    pipeline, errors = untrusted(
        """\
        pipeline: [a1]
        trigger: gate
        jobs:
          a1: {architectures: x86_64, run: make}
        """
    )
    assert pipeline is None
    assert errors == [
        ".gating.yaml:2:1: 'trigger': a pipeline file from a repository cannot say when it "
        "runs (the site's pipeline that runs it with 'uses: in-repo-pipeline' decides)"
    ]


def test_a_trusted_file_keeps_its_triggers():
    assert [
        t.kind
        for t in ok(
            "trigger: gate\npipeline: [a1]\njobs:\n  a1: {architectures: x86_64}\n"
        ).triggers
    ] == ["gate"]


@pytest.mark.parametrize("key", ["queue", "queues", "projects", "project", "pipelines", "branches"])
def test_untrusted_membership_keys_are_refused_at_the_top_and_in_jobs(key):
    pipeline, errors = untrusted(
        f"{key}: other\npipeline: [a1]\njobs:\n  a1: {{architectures: x86_64, {key}: x}}\n"
    )
    assert pipeline is None
    rule = (
        "only the site configuration says which queue a project belongs to and which "
        "pipelines run for it; a pipeline file from a repository cannot"
    )
    assert errors == [
        f".gating.yaml:1:1: '{key}' in the pipeline file: {rule}",
        f".gating.yaml:4:31: '{key}' in job 'a1': {rule}",
    ]
    # A trusted file gets the usual message.
    trusted = errors_of(f"{key}: other\npipeline: [a1]\njobs:\n  a1: {{architectures: x86_64}}\n")
    assert len(trusted) == 1
    assert trusted[0].startswith(f"p1.yaml:1:1: unknown key '{key}' in the pipeline file")


def test_untrusted_jobs_cannot_install_packages_or_hand_files_to_the_master():
    pipeline, errors = untrusted(
        """\
        pipeline: [a1, b1]
        jobs:
          a1:
            architectures: x86_64
            packages: [gcc]
            snaps: [lxd]
            package-repositories: [{type: apt, url: "http://example.org"}]
            output: {paths: [out/*]}
          b1:
            architectures: x86_64
            input: {job-name: a1, target-directory: in}
        """
    )
    assert pipeline is None
    places = sorted(e.split(": ", 1)[0] for e in errors)
    assert places == [
        ".gating.yaml:11:5",
        ".gating.yaml:5:5",
        ".gating.yaml:6:5",
        ".gating.yaml:7:5",
        ".gating.yaml:8:5",
    ], errors
    assert any("'packages': installs packages with the pool's package-install" in e for e in errors)
    assert any("'output': hands files to the master" in e for e in errors)


def test_untrusted_environment_has_no_pass_through_and_no_gating_names():
    pipeline, errors = untrusted(
        """\
        pipeline: [a1]
        jobs:
          a1:
            architectures: x86_64
            environment:
              HOME_DIR: null
              GATING_MERGE_COMMIT: "0000"
              gating_change: x
              TOKEN: "%(secret:worker-password)s"
        """
    )
    assert pipeline is None
    assert [e.split(": ", 1)[0] for e in errors] == [
        ".gating.yaml:6:7",
        ".gating.yaml:7:7",
        ".gating.yaml:8:7",
    ]
    assert "'HOME_DIR' is null, which passes the worker's own variable through" in errors[0]
    assert "GATING_* variables are the run's own" in errors[1]


def test_untrusted_text_with_buildbot_renderables_is_kept_literally():
    pipeline, errors = untrusted(
        """\
        pipeline: [a1]
        jobs:
          a1:
            architectures: x86_64
            environment: {TOKEN: "%(secret:worker-password)s", P: "%(prop:gating_change)s"}
            run: echo "%(secret:worker-password)s"
        """
    )
    assert errors == []
    job = pipeline.job("a1")
    assert dict(job.environment) == {
        "TOKEN": "%(secret:worker-password)s",
        "P": "%(prop:gating_change)s",
    }
    assert job.run == 'echo "%(secret:worker-password)s"'
    assert pipeline.trusted is False


def test_an_untrusted_lpci_file_without_refused_keys_loads_as_a_trusted_one():
    pipeline, errors = untrusted(
        """\
        pipeline:
          - build
          - [test, lint]
        jobs:
          build: {architectures: [amd64, arm64], run: make, timeout: 60}
          test:
            matrix:
              - {series: el9, architectures: [x86_64]}
              - {series: el10, architectures: [x86_64, aarch64]}
            run: make check
          lint: {architectures: amd64, plugin: tox, environment: {LANG: C.UTF-8}}
        license: {spdx: MIT}
        """
    )
    assert errors == []
    assert pipeline.stages_for("aarch64") == [[("build", 0)], [("test", 1)]]
    assert pipeline.stages_for("x86_64") == [
        [("build", 0)],
        [("test", 0), ("test", 1), ("lint", 0)],
    ]


def test_untrusted_files_keep_every_limit_of_the_loader():
    jobs = "".join(f"  j{i:03}: {{architectures: x86_64}}\n" for i in range(MAX_JOBS + 1))
    pipeline, errors = untrusted(f"pipeline: [j000]\njobs:\n{jobs}")
    assert pipeline is None
    assert any(f"too many jobs ({MAX_JOBS + 1}; at most {MAX_JOBS})" in e for e in errors)
