"""``queue-scale``: the gate scheduler with 500 queued items and 20 workers.

A real master with 20 local workers (:mod:`bench._gatesite`), the ``rdo`` queue's window
fixed at 20 (window, window-floor and window-ceiling: a failure does not shrink it, so
every round below has the same shape). 500 changes are proposed (250 to each of ``nova``
and ``ceilometer``, each with ``DURATION`` 3600 so no job finishes during the run) and
approved in alternation (``POST plugins/gating/api/approve``): 20 items testing on the
20 workers, 480 queued. Then rounds of queue events at 500 items, each round:

* ``POST api/dequeue`` of a testing item (at window positions 0, 10, 5, 15, in turn): its
  run is cancelled and everything behind it in the window is reset (cancelled, tested
  again without it), and the next queued item starts; the change is approved again
  (it goes to the back: 500 items again);
* a quick failure: the running ``packstack`` job build of the item at window position
  2, 12, 7, 17 (in turn) is stopped (``POST api/v2/builds/ID`` ``stop``): its buildset
  fails, the item fails and everything behind it in the window is reset; the failing
  item is then dequeued and approved again.

After each event the scenario waits until every item of the window runs its job again.
The cancelled runs' buildsets complete too: each is an event of its own (a result of a
superseded attempt, ignored by the model, but handled by the scheduler).

The scheduler's time per event comes from ``master/gate-events.jsonl``, one line per
event written by the scheduler itself (:meth:`gating.gate.GateScheduler._record_event`):
``event_ms``, how long the event held the gate: the model's step (``step_ms``) and the
serialization of the whole gate state (``serialize_ms``). The write to the database
follows without holding the gate (``write_ms``, reported apart: until the database held
the state). Only events with at least 95% of the items in the gate count (the last
approvals and the rounds). Goal: p95 under 50 ms. Also reported: the same by event kind,
the actions the events gave (cancel, start, report) and the gate's bookkeeping after each,
the dequeue response time, the master's memory (``VmRSS``, ``VmHWM``), ``GET api/gate``
(time, size) and the Gate page load in headless Chromium (as :mod:`bench.gate_page`
measures it, until the queue shows 500 ``[data-testid=gate-item]``).

Smaller runs for development: ``QUEUE_SCALE_ITEMS``, ``QUEUE_SCALE_WORKERS`` (also the
window) and ``QUEUE_SCALE_ROUNDS`` in the environment (default 500, 20, 8).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench import Context, Figure, Goal, scenario
from bench._gatesite import (
    PROJECTS,
    approve,
    create_gate_site,
    get,
    propose_in_parallel,
    queue_status,
    wait_for_states,
)
from bench.gate_page import SEEN_SCRIPT, _describe
from gating.gate import EVENTS_FILE
from gating.localsite import LocalSite

ITEMS = int(os.environ.get("QUEUE_SCALE_ITEMS", "500"))
WORKERS = int(os.environ.get("QUEUE_SCALE_WORKERS", "20"))
WINDOW = WORKERS
ROUNDS = int(os.environ.get("QUEUE_SCALE_ROUNDS", "8"))
DURATION = 3600  # seconds each packstack run sleeps: longer than the benchmark
AT_SCALE = 0.95  # events count at scale with at least this share of ITEMS in the gate
API_RUNS = 20
PAGE_RUNS = 5
PAGE_TIMEOUT = 60.0  # seconds
SETTLE_TIMEOUT = 300.0  # seconds for the window to run again after an event
GOAL_EVENT_MS = 50.0

# The window positions of the items dequeued and failed, round after round (as fractions
# of the window: 0, 10, 5, 15 and 2, 12, 7, 17 with a window of 20).
DEQUEUE_AT = (0.0, 0.5, 0.25, 0.75)
FAIL_AT = (0.1, 0.6, 0.35, 0.85)

# As bench.gate_page's, counting the items of the queues only (not the finished ones).
READY_SCRIPT = """
(() => {
  const want = %d;
  const bench = (window.__gatingBench = {ready: null, rootAt: null});
  const check = () => {
    const root = document.querySelector('[data-testid=gate-page]');
    if (!root) return;
    if (bench.rootAt === null) bench.rootAt = performance.now();
    const items = root.querySelectorAll('[data-testid=gate-queue] [data-testid=gate-item]');
    if (items.length >= want) {
      bench.ready = performance.now();
      observer.disconnect();
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true, attributes: true,
                              attributeFilter: ['data-testid']});
})();
"""

QUEUE_SCRIPT = """
() => [...document.querySelectorAll('[data-testid=gate-queue] [data-testid=gate-item]')]
  .map(e => e.getAttribute('data-change'))
"""


@scenario("queue-scale", "scheduler time per queue event with 500 queued items, 20 workers")
def queue_scale(ctx: Context) -> None:
    ctx.log(f"creating the gate site ({WORKERS} workers, window {WINDOW})")
    site = create_gate_site(
        ctx.workdir / "site", window=WINDOW, window_floor=WINDOW, workers=WORKERS
    )
    try:
        start = time.monotonic()
        site.start(timeout=300)
        ctx.add(Figure(f"site start (master + {WORKERS} workers)", "s", [time.monotonic() - start]))
        ctx.log(f"site up at {site.url}")
        order = _fill(ctx, site)
        fill_end = _events_size(site)
        _rounds(ctx, site)
        events = _read_events(site)
        for figure in _event_figures(events, fill_end):
            ctx.add(figure)
        ctx.add(_memory(site, "VmRSS"))
        ctx.add(_memory(site, "VmHWM"))
        expected = {f"{p}~{n}" for p, n in order}
        for figure in _measure_api(ctx, site.url, expected):
            ctx.add(figure)
        ctx.add(_measure_page(ctx, site.url, expected))
    finally:
        ctx.log("stopping the site")
        site.stop()


# -- filling the queue ----------------------------------------------------------------


def _fill(ctx: Context, site: LocalSite) -> list[tuple[str, int]]:
    """Propose and approve ITEMS changes; wait for WINDOW testing and the rest queued."""
    per_project = {p: ITEMS // len(PROJECTS) for p in PROJECTS}
    per_project[PROJECTS[0]] += ITEMS - sum(per_project.values())
    start = time.monotonic()
    numbers = propose_in_parallel(
        site,
        per_project,
        files=lambda p, i: {
            f"bench/{p}-{i:03d}.txt": f"{p} {i}\n",
            "DURATION": f"{DURATION}\n",
        },
        message=lambda p, i: f"Bench change {i} of {p}",
        threads_per_project=2,
    )
    ctx.add(Figure(f"propose {ITEMS} changes (git push)", "s", [time.monotonic() - start]))
    ctx.log(f"proposed {ITEMS} changes")
    order = [
        (p, numbers[p][i])
        for i in range(max(per_project.values()))
        for p in PROJECTS
        if i < len(numbers[p])
    ]
    approvals = []
    for n, (project, number) in enumerate(order, 1):
        t0 = time.perf_counter()
        approve(site, project, number)
        approvals.append((time.perf_counter() - t0) * 1000)
        if n % 100 == 0:
            ctx.log(f"approved {n} changes")
    ctx.add(Figure("approve (POST api/approve)", "ms", approvals))
    want = {"testing": WINDOW, "queued": ITEMS - WINDOW}
    counts = wait_for_states(site, want, timeout=SETTLE_TIMEOUT)
    ctx.log(f"gate: {counts}")
    if counts != want:
        raise RuntimeError(f"expected {want} in the gate, found {counts}")
    _settle(site)
    return order


def _window(site: LocalSite) -> list[dict[str, Any]]:
    """The window's items as api/gate shows them (with their jobs)."""
    body, _ = get(site.url + "plugins/gating/api/gate")
    return json.loads(body)["queues"][0]["items"][:WINDOW]


def _settle(site: LocalSite, timeout: float = SETTLE_TIMEOUT) -> list[dict[str, Any]]:
    """Wait until every item of the window is testing with its job build running."""
    deadline = time.monotonic() + timeout
    while True:
        window = _window(site)
        ready = [
            i
            for i in window
            if i["state"] == "testing" and any(j["state"] == "running" for j in i["jobs"])
        ]
        if len(ready) == WINDOW:
            return window
        if time.monotonic() > deadline:
            states = [(i["change"], i["state"], [j["state"] for j in i["jobs"]]) for i in window]
            raise TimeoutError(f"the window did not run again within {timeout:.0f} s: {states}")
        time.sleep(2)  # as often as an open Gate page polls


# -- the rounds of events -------------------------------------------------------------


def _dequeue(site: LocalSite, key: str, reason: str) -> float:
    req = urllib.request.Request(
        site.url + "plugins/gating/api/dequeue",
        data=json.dumps({"change": key, "reason": reason}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"dequeue {key}: HTTP {exc.code} {exc.read().decode()}") from exc
    return (time.perf_counter() - start) * 1000


def _reapprove(site: LocalSite, key: str) -> None:
    project, number = key.rsplit("~", 1)
    approve(site, project, int(number))


def _wait_failed(site: LocalSite, key: str, timeout: float = 120) -> bool:
    """Wait until ``key`` is failing (True) or has left the queue (False: a failing head
    leaves at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = queue_status(site)["queues"][0]["items"]
        state = next((i["state"] for i in items if i["change"] == key), None)
        if state in ("failing", None):
            return state == "failing"
        time.sleep(0.5)
    raise TimeoutError(f"{key} did not fail within {timeout:.0f} s")


def _rounds(ctx: Context, site: LocalSite) -> None:
    dequeue_ms = []
    for r in range(ROUNDS):
        window = _settle(site)
        victim = window[int(DEQUEUE_AT[r % len(DEQUEUE_AT)] * WINDOW)]["change"]
        dequeue_ms.append(_dequeue(site, victim, "bench: dequeued"))
        _reapprove(site, victim)
        ctx.log(f"round {r + 1}: dequeued {victim} ({dequeue_ms[-1]:.0f} ms) and approved again")

        window = _settle(site)
        item = window[int(FAIL_AT[r % len(FAIL_AT)] * WINDOW)]
        build = next(j["buildid"] for j in item["jobs"] if j["state"] == "running")
        site.rpc(f"builds/{build}", "stop", reason="bench: a quick failure")
        if _wait_failed(site, item["change"]):
            dequeue_ms.append(_dequeue(site, item["change"], "bench: failed"))
        _reapprove(site, item["change"])
        ctx.log(f"round {r + 1}: failed {item['change']} (build {build}), dequeued, approved")
    _settle(site)
    ctx.add(Figure("dequeue (POST api/dequeue, with its resets)", "ms", dequeue_ms))


# -- the figures ----------------------------------------------------------------------


def _events_path(site: LocalSite) -> Path:
    return site.master_dir / EVENTS_FILE


def _events_size(site: LocalSite) -> int:
    path = _events_path(site)
    return len(path.read_text().splitlines()) if path.exists() else 0


def _read_events(site: LocalSite) -> list[dict[str, Any]]:
    path = _events_path(site)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _event_figures(events: list[dict[str, Any]], fill_end: int) -> list[Figure]:
    """The scheduler's time per event at scale, overall and by kind, from the events with
    at least AT_SCALE * ITEMS items in the gate."""
    if not events:
        return [Figure("scheduler time per queue event", "ms", error=f"no {EVENTS_FILE}")]
    floor = int(AT_SCALE * ITEMS)
    scale = [e for e in events if (e.get("items") or 0) >= floor]
    name = f"scheduler time per queue event (>= {floor} items)"
    if not scale:
        return [Figure(name, "ms", error=f"no event with {floor} items or more")]
    count = {k: sum(1 for e in scale if e["event"] == k) for k in ("approve", "dequeue")}
    note = (
        f"{len(scale)} events: {count['approve']} approvals, {count['dequeue']} dequeues, "
        f"{len(scale) - sum(count.values())} buildset completions "
        f"({max(0, len(events) - fill_end)} events in the rounds); the model's step and the "
        "state's serialization, while the event holds the gate"
    )
    out = [
        Figure(
            name, "ms", [e["event_ms"] for e in scale], goal=Goal("p95", GOAL_EVENT_MS), note=note
        ),
        Figure("  model step", "ms", [e["step_ms"] for e in scale]),
        Figure("  state serialization", "ms", [e["serialize_ms"] for e in scale]),
        Figure("then until the state is in the database", "ms", [e["write_ms"] for e in scale]),
    ]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for e in scale:
        kind = e["event"]
        if kind == "buildset_complete":
            kind += " (reset)" if "Start" in e.get("kinds", []) else " (no action)"
        kinds.setdefault(kind, []).append(e)
    for kind, group in sorted(kinds.items()):
        out.append(Figure(f"  event {kind}", "ms", [e["event_ms"] for e in group]))
    resets = [e for e in scale if e.get("actions", 0) > 1]
    if resets:
        out += [
            Figure("actions per resetting event", "", [float(e["actions"]) for e in resets]),
            Figure(
                "  the gate's bookkeeping after each (total)",
                "ms",
                [e["action_saves_ms"] for e in resets],
            ),
            Figure(
                "  the actions' work (git, builds; total)", "ms", [e["actions_ms"] for e in resets]
            ),
        ]
    out.append(Figure("gate state saved (at the end)", "bytes", [float(scale[-1]["state_bytes"])]))
    return out


def _memory(site: LocalSite, field: str) -> Figure:
    name = f"master {field} ({ITEMS} items)"
    pid = site.master_pid()
    if pid is None:
        return Figure(name, "MiB", error="the master is not running")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return Figure(name, "MiB", [int(line.split()[1]) / 1024])
    return Figure(name, "MiB", error=f"no {field} in /proc/{pid}/status")


def _measure_api(ctx: Context, url: str, expected: set[str]) -> list[Figure]:
    body, _ = get(url + "plugins/gating/api/gate")
    items = json.loads(body)["queues"][0]["items"]
    shown = {i["change"] for i in items}
    if len(items) != ITEMS or shown != expected:
        error = f"api/gate answered {len(items)} items in queues[0].items, not the {ITEMS} approved"
        return [Figure("GET api/gate", "ms", error=error)]
    samples = []
    for _ in range(API_RUNS):
        _, seconds = get(url + "plugins/gating/api/gate")
        samples.append(seconds * 1000)
    ctx.log(f"api/gate: {len(body)} bytes, median {statistics.median(samples):.0f} ms")
    return [
        Figure(f"GET api/gate ({ITEMS} items)", "ms", samples),
        Figure("api/gate size", "bytes", [float(len(body))]),
    ]


def _measure_page(ctx: Context, url: str, expected: set[str]) -> Figure:
    name = f"Gate page load ({ITEMS} items)"
    try:
        from tests.support.browser import (
            NO_CHROMIUM,
            browser_page,
            chromium_path,
            playwright_available,
        )
    except ImportError as exc:
        return Figure(name, "s", error=f"tests.support.browser: {exc}")
    if chromium_path() is None:
        return Figure(name, "s", error=NO_CHROMIUM)
    if not playwright_available():
        return Figure(name, "s", error="playwright is not installed (pip install .[test])")

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    samples: list[float] = []
    for run in range(1, PAGE_RUNS + 1):
        with browser_page(
            ctx.artifacts, f"queue-scale-{run}", filter_requests=False, full_page=False
        ) as page:
            page.add_init_script(READY_SCRIPT % ITEMS)
            page.goto(url + "#/gate", wait_until="commit")
            try:
                page.wait_for_function(
                    "window.__gatingBench && window.__gatingBench.ready !== null",
                    timeout=PAGE_TIMEOUT * 1000,
                )
            except PlaywrightTimeout:
                seen = page.evaluate(SEEN_SCRIPT)
                error = (
                    f"the Gate page did not show {ITEMS} items within {PAGE_TIMEOUT:.0f} s "
                    f"(run {run}: {_describe(seen)})"
                )
                return Figure(name, "s", samples, error=error)
            ready = page.evaluate("window.__gatingBench.ready") / 1000
            changes = page.evaluate(QUEUE_SCRIPT)
        if set(changes) != expected or len(changes) != ITEMS:
            error = f"the Gate page's queue shows {len(changes)} items, not the {ITEMS} approved"
            return Figure(name, "s", samples, error=error)
        samples.append(ready)
        ctx.log(f"Gate page run {run}: {ready:.3f} s")
    return Figure(name, "s", samples, note="fresh browser and profile each run")
