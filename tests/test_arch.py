"""Tests of gating.arch: Debian and RPM architecture names."""

import pytest

from gating import arch


@pytest.mark.parametrize(
    ("debian", "rpm"),
    [
        ("amd64", "x86_64"),
        ("arm64", "aarch64"),
        ("ppc64el", "ppc64le"),
        ("i386", "i686"),
        ("armhf", "armv7hl"),
    ],
)
def test_debian_names_become_rpm_names(debian, rpm):
    assert arch.canonical(debian) == rpm


@pytest.mark.parametrize("name", arch.RPM_ARCHES)
def test_rpm_names_are_their_own_canonical_name(name):
    assert arch.canonical(name) == name


@pytest.mark.parametrize("name", ["x86-64", "X86_64", "AMD64", "sparc", "", "ppc64"])
def test_unknown_or_misspelt_names_are_none(name):
    assert arch.canonical(name) is None


def test_s390x_and_riscv64_are_spelt_the_same_by_debian_and_rpm():
    assert arch.canonical("s390x") == "s390x"
    assert arch.canonical("riscv64") == "riscv64"


def test_known_holds_both_spellings():
    assert {"amd64", "x86_64", "arm64", "aarch64"} <= arch.KNOWN
    assert arch.KNOWN == set(arch.RPM_ARCHES) | set(arch.DEBIAN_TO_RPM)


def test_every_debian_name_maps_to_a_listed_rpm_name():
    assert set(arch.DEBIAN_TO_RPM.values()) <= set(arch.RPM_ARCHES)


def test_sort_key_orders_arches_as_listed_and_unknown_ones_last_by_name():
    names = ["zzz", "noarch", "aarch64", "aaa", "s390x", "x86_64"]
    assert sorted(names, key=arch.sort_key) == [
        "x86_64",
        "aarch64",
        "s390x",
        "noarch",
        "aaa",
        "zzz",
    ]
