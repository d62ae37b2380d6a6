"""Tests of gating.pipeline: pipeline files (a superset of lpci's .launchpad.yaml) as models."""

import textwrap
from pathlib import Path

import pytest

from gating.diagnostics import Collector, ConfigError, Mark
from gating.pipeline import (
    MASTER_LANE,
    MAX_INSTANCES,
    MAX_JOBS,
    MAX_MATRIX_ENTRIES,
    MAX_TIMEOUT,
    InstanceId,
    Output,
    Snap,
    load_pipeline_file,
    load_pipelines,
    parse_pipeline,
    pipeline_name_for,
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
