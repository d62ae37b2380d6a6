"""The benchmark harness: ``python -m bench [SCENARIO...]`` (see bench/README.md).

A scenario is a function in a module of this package, registered with :func:`scenario`;
it gets a :class:`Context` (a fresh work directory, the artifacts directory, a logger) and
reports :class:`Figure` s with ``ctx.add(figure)`` as it measures them (or returns them).
Every module of ``bench/`` whose name does not start with ``_`` is imported by
:func:`discover`, so adding a scenario is adding a module::

    from bench import Context, Figure, Goal, scenario

    @scenario("config-scale", "gating check of a 2,000-job configuration")
    def config_scale(ctx: Context) -> None:
        samples = [...]
        ctx.add(Figure("check", "s", samples, goal=Goal("median", 5.0)))

A figure that could not be measured carries an ``error`` instead of samples; a scenario
that raises keeps the figures it added and gets one such figure more; the other
scenarios still run.
"""

from __future__ import annotations

import datetime
import importlib
import math
import os
import pkgutil
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# Never let Playwright fetch a browser of its own (tests/support/browser.py).
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


# How a goal compares the statistic with its limit.
GOAL_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda value, limit: value < limit,
    "<=": lambda value, limit: value <= limit,
    ">": lambda value, limit: value > limit,
    ">=": lambda value, limit: value >= limit,
}


@dataclass(frozen=True)
class Goal:
    """``stat`` (median, p95, min, max) of a figure must be below ``limit`` (the figure's
    unit); ``op`` says otherwise: ``"<="``, ``">"`` (e.g. a ratio of at least 5: ``Goal(
    "median", 5, ">=")``) or ``">="``."""

    stat: str
    limit: float
    op: str = "<"

    def __post_init__(self) -> None:
        if self.op not in GOAL_OPS:
            raise ValueError(f"unknown goal comparison {self.op!r}; known: {', '.join(GOAL_OPS)}")

    def text(self, unit: str) -> str:
        return f"{self.stat} {self.op} {self.limit:g} {unit}".rstrip()

    def holds(self, value: float) -> bool:
        return GOAL_OPS[self.op](value, self.limit)


@dataclass
class Figure:
    """One measured quantity: its samples (one or more runs) in ``unit``."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    goal: Goal | None = None
    error: str | None = None
    note: str = ""
    scenario: str = ""

    @property
    def runs(self) -> int:
        return len(self.samples)

    def stat(self, name: str) -> float | None:
        if not self.samples:
            return None
        if name == "median":
            return float(statistics.median(self.samples))
        if name == "min":
            return float(min(self.samples))
        if name == "max":
            return float(max(self.samples))
        if name == "p95":
            return percentile(self.samples, 95)
        raise ValueError(f"unknown statistic {name!r}")

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None without a goal or without samples."""
        if self.goal is None:
            return None
        value = self.stat(self.goal.stat)
        return None if value is None else self.goal.holds(value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "unit": self.unit,
            "runs": self.runs,
            "median": self.stat("median"),
            "p95": self.stat("p95") if self.runs >= P95_MIN_RUNS else None,
            "min": self.stat("min"),
            "max": self.stat("max"),
            "samples": self.samples,
            "goal": None if self.goal is None else self.goal.text(self.unit),
            "met": self.met,
            "error": self.error,
            "note": self.note,
        }


# Below this many runs a p95 is not shown: it would only be the maximum.
P95_MIN_RUNS = 20


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass
class Context:
    """What a scenario gets: ``workdir``, a fresh directory of its own (removed afterwards
    unless ``keep``), ``artifacts``, where screenshots and logs go, and :meth:`log`."""

    name: str
    workdir: Path
    artifacts: Path
    keep: bool = False
    started: float = field(default_factory=time.monotonic)
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> Figure:
        """Report a figure (it is kept if the scenario fails later)."""
        figure.scenario = self.name
        self.figures.append(figure)
        return figure

    def log(self, message: str) -> None:
        print(
            f"bench: {self.name}: {time.monotonic() - self.started:7.1f}s {message}",
            file=sys.stderr,
            flush=True,
        )


ScenarioFn = Callable[[Context], "list[Figure] | None"]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: ScenarioFn


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register the decorated function as the scenario ``name``."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS and SCENARIOS[name].run is not fn:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, description, fn)
        return fn

    return register


def discover() -> dict[str, Scenario]:
    """Import every scenario module of bench/ (names not starting with ``_``)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return SCENARIOS


def run_scenario(sc: Scenario, workroot: Path, artifacts: Path, keep: bool = False) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{sc.name}-", dir=workroot))
    ctx = Context(sc.name, workdir, artifacts, keep)
    ctx.log(f"start (work directory {workdir})")
    try:
        for figure in sc.run(ctx) or []:
            ctx.add(figure)
    except Exception as exc:
        traceback.print_exc()
        ctx.add(Figure("scenario", "", error=f"failed: {type(exc).__name__}: {exc}"))
    finally:
        if keep:
            ctx.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ctx.log("done")
    return ctx.figures


# -- the report -------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return ""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


COLUMNS = ("scenario", "figure", "median", "p95", "min", "max", "unit", "runs", "goal", "met?")


def table_rows(figures: Sequence[Figure]) -> list[list[str]]:
    rows = []
    for f in figures:
        if f.error is not None:
            rows.append([f.scenario, f.name, "", "", "", "", f.unit, str(f.runs), *_goal(f)])
            continue
        many = f.runs > 1
        rows.append(
            [
                f.scenario,
                f.name,
                _num(f.stat("median")),
                _num(f.stat("p95")) if f.runs >= P95_MIN_RUNS else "",
                _num(f.stat("min")) if many else "",
                _num(f.stat("max")) if many else "",
                f.unit,
                str(f.runs),
                *_goal(f),
            ]
        )
    return rows


def _goal(f: Figure) -> list[str]:
    if f.goal is None:
        return ["", ""]
    met = f.met
    return [f.goal.text(f.unit), "n/a" if met is None else ("yes" if met else "NO")]


def format_table(figures: Sequence[Figure]) -> str:
    """A Markdown table (aligned, so it reads as plain text too), then the errors and
    notes of the figures."""
    rows = [list(COLUMNS), *table_rows(figures)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4, 5, 7}

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)
    )
    lines = [line(rows[0]), rule + "|", *(line(r) for r in rows[1:])]
    remarks = []
    for f in figures:
        if f.error is not None:
            remarks.append(f"- {f.scenario} / {f.name}: NOT MEASURED: {f.error}")
        elif f.note:
            remarks.append(f"- {f.scenario} / {f.name}: {f.note}")
    return "\n".join(lines + ([""] + remarks if remarks else [])) + "\n"


def machine() -> dict[str, Any]:
    """This machine: CPU model and cores, memory (from /proc), OS, Python."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "memory_bytes": None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_bytes"] = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return info


def machine_text(info: dict[str, Any]) -> str:
    mem = info.get("memory_bytes")
    memory = f"{mem / 2**30:.1f} GiB" if mem else "unknown memory"
    return f"{info['cores']} cores ({info['cpu']}), {memory}, {info['os']}, Python {info['python']}"


def report(figures: Sequence[Figure], argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": " ".join(["python -m bench", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": [f.as_dict() for f in figures],
    }
