"""Tests of gating.plan: the builders derived from pipelines and a worker inventory."""

import json
import textwrap
from pathlib import Path

import pytest

from gating.backend import BackendConfig
from gating.diagnostics import Collector, ConfigError
from gating.inventory import Inventory, Worker
from gating.pipeline import MASTER_LANE, InstanceId, load_pipeline_file, parse_pipeline
from gating.plan import (
    COORDINATOR_WORKERS,
    SUPPORTED_PLUGINS,
    BuilderSpec,
    builder_name,
    make_plan,
    sorted_builders,
)
from gating.site import load_config

FIXTURES = Path(__file__).parent / "fixtures"
INSTALL = ("sudo", "dnf", "install", "-y")

X86_EL9 = Worker("x86-el9", "x86_64", series=("el9",), package_install=INSTALL)
X86_EL10 = Worker("x86-el10", "x86_64", series=("el10",), package_install=INSTALL)
ARM_ANY = Worker("arm-any", "aarch64", package_install=INSTALL)
MULTIARCH = Inventory((X86_EL9, X86_EL10, ARM_ANY))


def pipeline(text: str, name: str = "rdo"):
    errors = Collector()
    p = parse_pipeline(textwrap.dedent(text), f"{name}.yaml", name, errors)
    errors.check()
    return p


def plan_errors(text: str, inventory: Inventory) -> list[str]:
    errors = Collector()
    make_plan([pipeline(text)], inventory, errors)
    return ConfigError(errors.diagnostics).messages


def seed001():
    return load_pipeline_file(FIXTURES / "seed001.yaml", "seed001.yaml")


def test_builder_names_are_pipeline_job_arch_with_the_index_only_for_matrix_jobs():
    p = seed001()
    assert builder_name(p, p.job("build-snap"), "x86_64") == "seed001/build-snap/x86_64"
    assert builder_name(p, p.job("test-snap", 2), "aarch64") == "seed001/test-snap#2/aarch64"


def test_plan_without_inventory_has_a_pipeline_builder_and_one_builder_per_instance():
    errors = Collector()
    plan = make_plan([seed001()], None, errors)
    assert not errors
    assert [(b.name, b.kind, b.arch, b.workernames) for b in plan.builders] == [
        ("seed001", "pipeline", None, COORDINATOR_WORKERS),
        ("seed001/build-snap/x86_64", "job", "x86_64", ()),
        ("seed001/build-snap/aarch64", "job", "aarch64", ()),
        ("seed001/test-snap#0/x86_64", "job", "x86_64", ()),
        ("seed001/test-snap#1/x86_64", "job", "x86_64", ()),
        ("seed001/test-snap#1/aarch64", "job", "aarch64", ()),
        ("seed001/test-snap#2/x86_64", "job", "x86_64", ()),
        ("seed001/test-snap#2/aarch64", "job", "aarch64", ()),
    ]


def test_job_builder_records_its_job_index_and_series():
    plan = make_plan([seed001()], None, Collector())
    assert plan.builder("seed001/test-snap#0/x86_64") == BuilderSpec(
        "seed001/test-snap#0/x86_64", "seed001", "job", "x86_64", "test-snap", 0, "bionic", ()
    )
    with pytest.raises(KeyError):
        plan.builder("seed001/test-snap#0/aarch64")


def test_instance_builder_names_the_builder_of_an_instance():
    p = seed001()
    plan = make_plan([p], None, Collector())
    assert plan.instance_builder(p, InstanceId("test-snap", 1, "aarch64")) == (
        "seed001/test-snap#1/aarch64"
    )


def test_master_lane_jobs_get_builtin_builders_on_the_coordinators():
    p = pipeline(
        "pipeline: [build, export]\njobs:\n  build: {architectures: x86_64}\n"
        "  export: {uses: koji-export}\n"
    )
    plan = make_plan([p], MULTIARCH, Collector())
    assert [(b.name, b.kind) for b in plan.builders] == [
        ("rdo", "pipeline"),
        ("rdo/build/x86_64", "job"),
        ("rdo/export/master", "builtin"),
        ("gating-rpmbuild", "rpmbuild"),  # the local backend builds on a worker
    ]
    assert plan.builder("rdo/export/master").workernames == COORDINATOR_WORKERS
    assert plan.builder("gating-rpmbuild").workernames == tuple(
        w.name for w in MULTIARCH.pool("x86_64")
    )
    assert p.lanes() == ["x86_64", MASTER_LANE]


def test_koji_backend_needs_no_rpmbuild_builder():
    p = pipeline("pipeline: [build]\njobs:\n  build: {uses: koji-scratch-build}\n")
    backend = BackendConfig(kind="koji", server="http://k/", topurl="http://k/f", target="t")
    plan = make_plan([p], MULTIARCH, Collector(), backend=backend)
    assert [b.kind for b in plan.builders] == ["pipeline", "builtin"]


def test_workernames_are_the_pool_of_the_arch_and_series():
    p = pipeline(
        """\
        pipeline: [build, [test, lint]]
        jobs:
          build: {architectures: [x86_64, aarch64], series: el9}
          test:
            architectures: [x86_64, aarch64]
            matrix: [{series: el9}, {series: el10}]
          lint: {architectures: [x86_64]}
        """
    )
    errors = Collector()
    plan = make_plan([p], MULTIARCH, errors)
    assert not errors
    assert {b.name: b.workernames for b in plan.builders if b.kind == "job"} == {
        "rdo/build/x86_64": ("x86-el9",),
        "rdo/build/aarch64": ("arm-any",),
        "rdo/test#0/x86_64": ("x86-el9",),
        "rdo/test#0/aarch64": ("arm-any",),
        "rdo/test#1/x86_64": ("x86-el10",),
        "rdo/test#1/aarch64": ("arm-any",),
        "rdo/lint/x86_64": ("x86-el9", "x86-el10"),
    }


def test_job_on_an_arch_without_a_pool_names_the_job_and_the_arch_at_the_arch_entry():
    assert plan_errors(
        """\
        pipeline: [build]
        jobs:
          build:
            architectures: [x86_64, ppc64el, aarch64]
        """,
        MULTIARCH,
    ) == [
        "rdo.yaml:4:29: job 'build' runs on architecture 'ppc64le', but no worker pool has "
        "that architecture (pools: x86_64, aarch64)"
    ]


def test_no_pool_error_of_a_matrix_entry_names_the_entry():
    assert plan_errors(
        """\
        pipeline: [test]
        jobs:
          test:
            matrix:
              - {architectures: [x86_64]}
              - {architectures: [s390x]}
        """,
        Inventory((X86_EL9,)),
    ) == [
        "rdo.yaml:6:26: job 'test' (matrix entry 1) runs on architecture 's390x', but no worker "
        "pool has that architecture (pools: x86_64)"
    ]


def test_empty_inventory_says_there_are_no_pools():
    assert plan_errors(
        "pipeline: [build]\njobs:\n  build: {architectures: amd64}\n", Inventory()
    ) == [
        "rdo.yaml:3:26: job 'build' runs on architecture 'x86_64', but no worker pool has that "
        "architecture (pools: none)"
    ]


def test_job_whose_series_no_worker_of_the_arch_runs_is_an_error():
    assert plan_errors(
        "pipeline: [build]\njobs:\n  build: {architectures: [x86_64, aarch64], series: el8}\n",
        MULTIARCH,
    ) == ["rdo.yaml:3:27: job 'build' needs series 'el8' on x86_64, but no x86_64 worker runs it"]


def test_job_with_packages_needs_a_package_install_command_on_every_worker_of_its_pool():
    bare = Worker("x86-bare", "x86_64")
    bare2 = Worker("x86-bare2", "x86_64")
    text = "pipeline: [build]\njobs:\n  build: {architectures: x86_64, packages: [rpm-build]}\n"
    assert plan_errors(text, Inventory((X86_EL9, bare, bare2))) == [
        "rdo.yaml:3:10: job 'build' installs packages, but x86_64 worker(s) x86-bare, x86-bare2 "
        "have no 'package-install' command in the inventory"
    ]
    assert plan_errors(text, Inventory((X86_EL9,))) == []


def test_job_without_packages_runs_on_workers_without_package_install():
    text = "pipeline: [build]\njobs:\n  build: {architectures: x86_64}\n"
    assert plan_errors(text, Inventory((Worker("x86-bare", "x86_64"),))) == []


def test_the_local_backend_needs_a_pool_of_its_build_arch():
    p = pipeline("pipeline: [build]\njobs:\n  build: {uses: koji-scratch-build}\n")
    errors = Collector()
    make_plan([p], MULTIARCH, errors, backend=BackendConfig(build_arch="riscv64"))
    assert ConfigError(errors.diagnostics).messages == [
        "rdo.yaml:3:10: built-in jobs build with the local backend on the 'riscv64' workers "
        "(backend 'build-arch'), but no worker has that architecture "
        "(pools: x86_64, aarch64)"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "pipeline: [export, test]\njobs:\n  export: {uses: koji-export}\n"
        "  test: {architectures: x86_64}\n",
        "pipeline: [[test, export]]\njobs:\n  export: {uses: koji-export}\n"
        "  test: {architectures: x86_64}\n",
    ],
)
def test_koji_export_must_be_alone_in_the_last_stage(text):
    messages = plan_errors(text, MULTIARCH)
    assert len(messages) == 1
    assert "uses 'koji-export', which must be the only job of the pipeline's last stage" in (
        messages[0]
    )


def test_supported_plugins_are_the_ones_with_a_run_command():
    assert SUPPORTED_PLUGINS == {"tox", "pyproject-build"}


def test_unsupported_plugin_is_an_error_with_an_inventory():
    text = "pipeline: [test]\njobs:\n  test: {architectures: x86_64, plugin: golang}\n"
    assert plan_errors(text, MULTIARCH) == [
        "rdo.yaml:3:9: job 'test': plugin 'golang' is not supported by this gate "
        "(supported: pyproject-build, tox)"
    ]
    ok = "pipeline: [test]\njobs:\n  test: {architectures: x86_64, plugin: tox}\n"
    assert plan_errors(ok, MULTIARCH) == []


def test_apt_package_repositories_are_an_error_on_rpm_pools():
    text = (
        "pipeline: [test]\njobs:\n  test:\n    architectures: x86_64\n"
        "    package-repositories: [{type: apt, ppa: launchpad/ppa}]\n"
    )
    assert plan_errors(text, MULTIARCH) == [
        "rdo.yaml:4:5: job 'test': 'package-repositories' (apt sources) cannot be used on RPM "
        "worker pools"
    ]


def test_plan_json_has_stages_per_lane_and_every_builder():
    plan = make_plan([seed001()], None, Collector())
    data = json.loads(json.dumps(plan.to_json()))
    (p,) = data["pipelines"]
    assert p == {
        "name": "seed001",
        "file": "seed001.yaml",
        "triggers": [],
        "stages": {
            "x86_64": [[["build-snap", 0]], [["test-snap", 0], ["test-snap", 1], ["test-snap", 2]]],
            "aarch64": [[["build-snap", 0]], [["test-snap", 1], ["test-snap", 2]]],
        },
    }
    assert data["builders"][1] == {
        "name": "seed001/build-snap/x86_64",
        "kind": "job",
        "pipeline": "seed001",
        "arch": "x86_64",
        "job": "build-snap",
        "index": 0,
        "series": "focal",
        "workernames": [],
    }


def test_sorted_builders_puts_pipeline_builders_first_then_arches_in_order():
    config = load_config(FIXTURES / "sites" / "multiarch")
    assert [b.name for b in sorted_builders(config.plan.builders)] == [
        "nightly",
        "nightly/smoke/aarch64",
        "rdo",
        "rdo/build/x86_64",
        "rdo/packstack/x86_64",
        "rdo/rpmlint#0/x86_64",
        "rdo/rpmlint#1/x86_64",
        "rdo/packstack/aarch64",
        "rdo/rpmlint#1/aarch64",
    ]


def test_multiarch_site_builders_are_pinned_to_their_pools():
    plan = load_config(FIXTURES / "sites" / "multiarch").plan
    assert {b.name: b.workernames for b in plan.builders} == {
        "nightly": COORDINATOR_WORKERS,
        "nightly/smoke/aarch64": ("arm-any",),
        "rdo": COORDINATOR_WORKERS,
        "rdo/build/x86_64": ("x86-el9",),
        "rdo/packstack/x86_64": ("x86-el9",),
        "rdo/packstack/aarch64": ("arm-any",),
        "rdo/rpmlint#0/x86_64": ("x86-el9",),
        "rdo/rpmlint#1/x86_64": ("x86-el10",),
        "rdo/rpmlint#1/aarch64": ("arm-any",),
    }
