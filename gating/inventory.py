"""The worker inventory: which workers exist, their architecture, series and capacity.

Passwords are never in the inventory: each worker's password is the Buildbot
secret named by ``password-secret`` (default ``worker-<name>``), read from the
master's secrets provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gating import arch as archmod
from gating.diagnostics import Collector, Mark, did_you_mean
from gating.yamltree import Node, Reader, describe, load

# Buildbot's own rule for worker names (buildbot.util.identifiers), kept ASCII.
WORKER_NAME_RE = re.compile(r"^[a-zA-Z_-][a-zA-Z0-9_-]{0,49}\Z")

WORKER_KEYS = frozenset(
    {"name", "arch", "series", "max-builds", "tags", "password-secret", "package-install", "host"}
)


@dataclass(frozen=True)
class Worker:
    name: str
    arch: str
    series: tuple[str, ...] = ()
    max_builds: int = 1
    tags: tuple[str, ...] = ()
    password_secret: str = ""
    package_install: tuple[str, ...] = ()
    host: str | None = None
    mark: Mark = field(default=Mark("<none>"), compare=False)

    def runs(self, arch: str, series: str | None) -> bool:
        """Can this worker run a job instance of ``arch`` and ``series``?

        A worker that lists no series runs any series.
        """
        return self.arch == arch and (series is None or not self.series or series in self.series)


@dataclass(frozen=True)
class Inventory:
    workers: tuple[Worker, ...] = ()
    file: str = ""

    def pool(self, arch: str, series: str | None = None) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.runs(arch, series))

    def arches(self) -> list[str]:
        return sorted({w.arch for w in self.workers}, key=archmod.sort_key)


def parse_inventory(text: str | bytes, filename: str, errors: Collector) -> Inventory:
    root = load(text, filename, errors)
    if root is None:
        return Inventory(file=filename)
    r = Reader(errors)
    top = r.mapping(root, "the worker inventory", {"workers"}, required=("workers",))
    if not top or "workers" not in top:
        return Inventory(file=filename)
    node = top["workers"]
    if not node.is_seq:
        r.fail(node, f"'workers': expected a list of workers, got {describe(node)}")
        return Inventory(file=filename)
    workers: list[Worker] = []
    seen: dict[str, Mark] = {}
    for entry in node.value:
        worker = _worker(r, entry)
        if worker is None:
            continue
        if worker.name in seen:
            r.fail(
                entry,
                f"worker '{worker.name}' is defined twice (first at line {seen[worker.name].line})",
            )
            continue
        seen[worker.name] = worker.mark
        workers.append(worker)
    return Inventory(tuple(workers), filename)


def _worker(r: Reader, entry: Node) -> Worker | None:
    f = r.mapping(entry, "worker", WORKER_KEYS, required=("name", "arch"))
    if f is None or "name" not in f or "arch" not in f:
        return None
    name = r.string(f["name"], "worker 'name'")
    if name is not None and not WORKER_NAME_RE.match(name):
        r.fail(
            f["name"],
            f"worker name '{name}': use at most 50 ASCII letters, digits, '_' or '-', "
            "not starting with a digit",
        )
        name = None
    what = f"worker '{name}'"
    raw_arch = r.string(f["arch"], f"{what} 'arch'")
    arch = archmod.canonical(raw_arch) if raw_arch is not None else None
    if raw_arch is not None and arch is None:
        r.fail(
            f["arch"],
            f"{what}: unknown architecture '{raw_arch}'{did_you_mean(raw_arch, archmod.KNOWN)}",
        )
    series: tuple[str, ...] = ()
    if "series" in f:
        series = tuple(
            s for s, _ in r.string_list(f["series"], f"{what} 'series'", allow_single=True) or ()
        )
    max_builds = 1
    if "max-builds" in f:
        max_builds = r.integer(f["max-builds"], f"{what} 'max-builds'", minimum=1) or 1
    tags = (
        tuple(s for s, _ in r.string_list(f["tags"], f"{what} 'tags'") or ()) if "tags" in f else ()
    )
    secret = f"worker-{name}"
    if "password-secret" in f:
        secret = r.string(f["password-secret"], f"{what} 'password-secret'") or secret
    install: tuple[str, ...] = ()
    if "package-install" in f:
        install = tuple(
            s for s, _ in r.string_list(f["package-install"], f"{what} 'package-install'") or ()
        )
        if not install:
            r.fail(
                f["package-install"],
                f"{what} 'package-install': expected a command, e.g. [dnf, install, -y]",
            )
    host = r.string(f["host"], f"{what} 'host'") if "host" in f else None
    if name is None or arch is None:
        return None
    return Worker(name, arch, series, max_builds, tags, secret, install, host, entry.mark)


def load_inventory(path: Path, display: str, errors: Collector) -> Inventory:
    try:
        data = path.read_bytes()
    except OSError as exc:
        errors.error(Mark(display), f"cannot read the worker inventory: {exc.strerror}")
        return Inventory(file=display)
    return parse_inventory(data, display, errors)
