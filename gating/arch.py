"""Architecture names: Debian's are accepted and turned into RPM's."""

from __future__ import annotations

# RPM names, in the order plans and the UI list them.
RPM_ARCHES: tuple[str, ...] = (
    "x86_64",
    "aarch64",
    "ppc64le",
    "s390x",
    "i686",
    "armv7hl",
    "riscv64",
    "noarch",
)

DEBIAN_TO_RPM: dict[str, str] = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "ppc64el": "ppc64le",
    "i386": "i686",
    "armhf": "armv7hl",
}

KNOWN: frozenset[str] = frozenset(RPM_ARCHES) | frozenset(DEBIAN_TO_RPM)


def canonical(name: str) -> str | None:
    """The RPM name of ``name`` (Debian or RPM spelling), or ``None`` if unknown."""
    if name in DEBIAN_TO_RPM:
        return DEBIAN_TO_RPM[name]
    if name in RPM_ARCHES:
        return name
    return None


def sort_key(arch: str) -> tuple[int, str]:
    """Sort arches in :data:`RPM_ARCHES` order, unknown ones last by name."""
    try:
        return (RPM_ARCHES.index(arch), arch)
    except ValueError:
        return (len(RPM_ARCHES), arch)
