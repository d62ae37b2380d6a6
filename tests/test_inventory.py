"""Tests of gating.inventory: workers, their architecture, series and capacity."""

import textwrap

from gating.diagnostics import Collector, ConfigError, Mark
from gating.inventory import Inventory, Worker, load_inventory, parse_inventory


def parse(text: str):
    errors = Collector()
    inv = parse_inventory(textwrap.dedent(text), "workers.yaml", errors)
    return inv, ConfigError(errors.diagnostics).messages


def test_workers_are_read_with_defaults():
    inv, errors = parse(
        """\
        workers:
          - name: x86-1
            arch: x86_64
        """
    )
    assert errors == []
    assert inv.workers == (Worker("x86-1", "x86_64", password_secret="worker-x86-1"),)
    (w,) = inv.workers
    assert (w.series, w.max_builds, w.tags, w.package_install, w.host) == ((), 1, (), (), None)
    assert w.mark == Mark("workers.yaml", 2, 5)


def test_every_worker_field_is_read():
    inv, errors = parse(
        """\
        workers:
          - name: arm_builder-2
            arch: arm64
            series: [el9, el10]
            max-builds: 3
            tags: [kvm, big]
            password-secret: arm-pw
            package-install: [sudo, dnf, install, -y]
            host: arm2.example.org
        """
    )
    assert errors == []
    assert inv.workers[0] == Worker(
        "arm_builder-2",
        "aarch64",
        ("el9", "el10"),
        3,
        ("kvm", "big"),
        "arm-pw",
        ("sudo", "dnf", "install", "-y"),
        "arm2.example.org",
    )


def test_series_may_be_a_single_string():
    inv, _ = parse("workers:\n  - {name: w1, arch: x86_64, series: el9}\n")
    assert inv.workers[0].series == ("el9",)


def test_worker_without_series_runs_any_series():
    w = Worker("w1", "x86_64")
    assert w.runs("x86_64", None)
    assert w.runs("x86_64", "el9")
    assert not w.runs("aarch64", None)


def test_worker_with_series_runs_only_those_but_any_job_without_a_series():
    w = Worker("w1", "x86_64", series=("el9",))
    assert w.runs("x86_64", "el9")
    assert not w.runs("x86_64", "el10")
    assert w.runs("x86_64", None)


def test_pool_is_the_workers_of_an_arch_and_series():
    el9 = Worker("el9", "x86_64", series=("el9",))
    any_x86 = Worker("any", "x86_64")
    arm = Worker("arm", "aarch64")
    inv = Inventory((el9, any_x86, arm))
    assert inv.pool("x86_64") == (el9, any_x86)
    assert inv.pool("x86_64", "el10") == (any_x86,)
    assert inv.pool("aarch64", "el9") == (arm,)
    assert inv.pool("s390x") == ()


def test_arches_are_listed_in_canonical_order_once():
    inv = Inventory(
        (
            Worker("a", "s390x"),
            Worker("b", "aarch64"),
            Worker("c", "x86_64"),
            Worker("d", "aarch64"),
        )
    )
    assert inv.arches() == ["x86_64", "aarch64", "s390x"]


def test_worker_defined_twice_is_an_error():
    inv, errors = parse(
        """\
        workers:
          - {name: w1, arch: x86_64}
          - {name: w1, arch: aarch64}
        """
    )
    assert errors == ["workers.yaml:3:5: worker 'w1' is defined twice (first at line 2)"]
    assert [w.arch for w in inv.workers] == ["x86_64"]


def test_bad_worker_entries_are_all_reported():
    _, errors = parse(
        """\
        workers:
          - {name: 9lives, arch: x86_64}
          - {name: w2, arch: x86}
          - {name: w3, arch: amd64, max-builds: 0, package-install: []}
          - {name: w4, arch: arm64, tags: kvm, hots: a}
          - just-a-name
          - {arch: x86_64}
          - {name: w7, arch: x86_64, series: 9}
        """
    )
    assert errors == [
        "workers.yaml:2:12: worker name '9lives': use at most 50 ASCII letters, digits, '_' "
        "or '-', not starting with a digit",
        "workers.yaml:3:22: worker 'w2': unknown architecture 'x86'; did you mean 'x86_64'?",
        "workers.yaml:4:41: worker 'w3' 'max-builds': expected an integer of at least 1, got 0",
        "workers.yaml:4:61: worker 'w3' 'package-install': expected a command, "
        "e.g. [dnf, install, -y]",
        "workers.yaml:5:35: worker 'w4' 'tags': expected a list of strings, got a string",
        "workers.yaml:5:40: unknown key 'hots' in worker; did you mean 'host'?",
        "workers.yaml:6:5: worker: expected a mapping, got a string",
        "workers.yaml:7:5: worker: missing required key 'name'",
        "workers.yaml:8:38: worker 'w7' 'series': expected a string or a list of strings, "
        "got an integer (9)",
    ]


def test_worker_name_longer_than_buildbot_allows_is_an_error():
    name = "w" * 51
    _, errors = parse(f"workers:\n  - {{name: {name}, arch: x86_64}}\n")
    assert errors == [
        f"workers.yaml:2:12: worker name '{name}': use at most 50 ASCII letters, digits, '_' "
        "or '-', not starting with a digit"
    ]


def test_workers_must_be_a_list():
    inv, errors = parse("workers: {w1: x86_64}\n")
    assert errors == ["workers.yaml:1:10: 'workers': expected a list of workers, got a mapping"]
    assert inv == Inventory(file="workers.yaml")


def test_inventory_needs_a_workers_key():
    _, errors = parse("worker: []\n")
    assert errors == [
        "workers.yaml:1:1: the worker inventory: missing required key 'workers'",
        "workers.yaml:1:1: unknown key 'worker' in the worker inventory; did you mean 'workers'?",
    ]


def test_inventory_yaml_errors_are_reported_with_their_place():
    inv, errors = parse("workers:\n  - {name: w1, arch: x86_64\n")
    assert errors == [
        "workers.yaml:3:1: YAML syntax error: expected ',' or '}', but got '<stream end>' "
        "(while parsing a flow mapping that starts at line 2, column 5)"
    ]
    assert inv.workers == ()


def test_load_inventory_of_a_missing_file_is_an_error(tmp_path):
    errors = Collector()
    inv = load_inventory(tmp_path / "nope.yaml", "nope.yaml", errors)
    assert inv == Inventory(file="nope.yaml")
    assert [str(d) for d in errors.diagnostics] == [
        "nope.yaml:1:1: cannot read the worker inventory: No such file or directory"
    ]


def test_load_inventory_reads_the_file(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("workers:\n  - {name: w1, arch: ppc64el}\n")
    errors = Collector()
    inv = load_inventory(path, "w.yaml", errors)
    assert not errors
    assert (inv.file, inv.workers[0].arch) == ("w.yaml", "ppc64le")


def test_a_worker_name_with_a_final_newline_is_an_error():
    # regression: the name check ended in '$', which also matches before a final newline
    _, errors = parse('workers:\n  - {name: "w1\\n", arch: x86_64}\n')
    assert errors == [
        "workers.yaml:2:12: worker name 'w1\\n': use at most 50 ASCII letters, digits, '_' "
        "or '-', not starting with a digit"
    ]
