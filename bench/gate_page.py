"""``gate-page``: the web UI's Gate page load time with 200 items queued.

A real master with three local workers (:mod:`bench._gatesite`), the ``rdo`` queue's window
fixed at 3 (window-ceiling 3): 200 changes are proposed, 100 to each of ``nova`` and
``ceilometer``, each with ``DURATION`` 600 so the 3 items under test never finish during
the run, and approved in alternation (``POST plugins/gating/api/approve``). Once the
gate holds 3 items testing and 197 queued:

* ``GET api/gate``: the JSON the Gate page draws, timed 20 times (to the last byte), and
  its size;
* ``Gate page load (200 items)``: ``{url}#/gate`` opened 5 times in headless Chromium,
  each in a fresh browser and profile (cold cache), from navigation start
  (``performance.now()``) until the DOM holds the page's root ``[data-testid=gate-page]``
  with 200 ``[data-testid=gate-item]`` in it (a ``MutationObserver`` notes the moment);
  the items' ``data-change`` attributes (``project~N``) must be exactly the 200 approved
  changes. No page within 30 s is reported as "the Gate page did not show 200 items
  within 30 s" (what the page showed instead, and its screenshot).
  Goal: under 2 s, every run (max). The page runs without the request filter of
  tests/support/browser.py (a round trip to Playwright per request, ~5% of the time here);
  its launch arguments still keep it on loopback.

Also reported, without goals: the time to propose the 200 changes, and each approval's
response time.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import Context, Figure, Goal, scenario
from bench._gatesite import (
    PROJECTS,
    approve,
    create_gate_site,
    get,
    propose_in_parallel,
    wait_for_states,
)

ITEMS = 200
WINDOW = 3
DURATION = 600  # seconds each packstack run sleeps: longer than the benchmark
API_RUNS = 20
PAGE_RUNS = 5
PAGE_TIMEOUT = 30.0  # seconds
GOAL_LOAD = 2.0  # seconds

# Notes in window.__gatingBench the moment (performance.now(), i.e. since navigation
# start) the page's root holds ITEMS items; installed before any script of the page.
READY_SCRIPT = """
(() => {
  const want = %d;
  const bench = (window.__gatingBench = {ready: null, rootAt: null});
  const check = () => {
    const root = document.querySelector('[data-testid=gate-page]');
    if (!root) return;
    if (bench.rootAt === null) bench.rootAt = performance.now();
    if (root.querySelectorAll('[data-testid=gate-item]').length >= want) {
      bench.ready = performance.now();
      observer.disconnect();
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true, attributes: true,
                              attributeFilter: ['data-testid']});
})();
"""

SEEN_SCRIPT = """
() => {
  const root = document.querySelector('[data-testid=gate-page]');
  const items = root ? [...root.querySelectorAll('[data-testid=gate-item]')] : [];
  return {root: !!root, changes: items.map(e => e.getAttribute('data-change')),
          url: location.href, title: document.title};
}
"""


@scenario("gate-page", "the web UI's Gate page load time with 200 items queued")
def gate_page(ctx: Context) -> None:
    ctx.log("creating the gate site (window 3)")
    site = create_gate_site(ctx.workdir / "site", window=WINDOW)
    try:
        start = time.monotonic()
        site.start()
        ctx.add(Figure("site start (master + 3 workers)", "s", [time.monotonic() - start]))
        ctx.log(f"site up at {site.url}")

        per_project = {p: ITEMS // len(PROJECTS) for p in PROJECTS}
        start = time.monotonic()
        numbers = propose_in_parallel(
            site,
            per_project,
            files=lambda p, i: {
                f"bench/{p}-{i:03d}.txt": f"{p} {i}\n",
                "DURATION": f"{DURATION}\n",
            },
            message=lambda p, i: f"Bench change {i} of {p}",
        )
        ctx.add(Figure(f"propose {ITEMS} changes (git push)", "s", [time.monotonic() - start]))
        ctx.log(f"proposed {ITEMS} changes")

        # Alternate the projects, as reviewers of both would.
        order = [
            (p, numbers[p][i])
            for i in range(max(per_project.values()))
            for p in PROJECTS
            if i < len(numbers[p])
        ]
        approvals = []
        for project, number in order:
            t0 = time.perf_counter()
            approve(site, project, number)
            approvals.append((time.perf_counter() - t0) * 1000)
        ctx.add(Figure("approve (POST api/approve)", "ms", approvals))
        expected = {f"{p}~{n}" for p, n in order}
        ctx.log(f"approved {len(order)} changes")

        want = {"testing": WINDOW, "queued": ITEMS - WINDOW}
        counts = wait_for_states(site, want)
        ctx.log(f"gate: {counts}")
        if counts != want:
            ctx.log(f"warning: expected {want} in the gate, measuring with {counts}")

        for figure in measure_api(ctx, site.url, expected):
            ctx.add(figure)
        ctx.add(measure_page(ctx, site.url, expected))
    finally:
        ctx.log("stopping the site")
        site.stop()


def measure_api(ctx: Context, url: str, expected: set[str]) -> list[Figure]:
    body, _ = get(url + "plugins/gating/api/gate")
    data = json.loads(body)
    items = data["queues"][0]["items"] if data.get("queues") else []
    shown = {i["change"] for i in items}
    if len(items) != ITEMS or shown != expected:
        error = f"api/gate answered {len(items)} items in queues[0].items, not the {ITEMS} approved"
        return [Figure("GET api/gate", "ms", error=error)]
    samples = []
    for _ in range(API_RUNS):
        _, seconds = get(url + "plugins/gating/api/gate")
        samples.append(seconds * 1000)
    ctx.log(f"api/gate: {len(body)} bytes, median {sorted(samples)[len(samples) // 2]:.0f} ms")
    return [
        Figure(f"GET api/gate ({ITEMS} items)", "ms", samples),
        Figure("api/gate size", "bytes", [float(len(body))]),
    ]


def measure_page(ctx: Context, url: str, expected: set[str]) -> Figure:
    name = f"Gate page load ({ITEMS} items)"
    goal = Goal("max", GOAL_LOAD)
    try:
        from tests.support.browser import (
            NO_CHROMIUM,
            browser_page,
            chromium_path,
            playwright_available,
        )
    except ImportError as exc:
        return Figure(name, "s", goal=goal, error=f"tests.support.browser: {exc}")
    if chromium_path() is None:
        return Figure(name, "s", goal=goal, error=NO_CHROMIUM)
    if not playwright_available():
        return Figure(
            name, "s", goal=goal, error="playwright is not installed (pip install .[test])"
        )

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    samples: list[float] = []
    for run in range(1, PAGE_RUNS + 1):
        # No request filter (it costs a round trip to Playwright per request): the launch
        # arguments alone keep the page on loopback. A screenshot of the viewport only.
        with browser_page(
            ctx.artifacts, f"gate-page-{run}", filter_requests=False, full_page=False
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
                    f"(run {run}: {_describe(seen)}; screenshot "
                    f"{ctx.artifacts / f'gate-page-{run}.png'})"
                )
                ctx.log(error)
                return Figure(name, "s", samples, goal=goal, error=error)
            ready = page.evaluate("window.__gatingBench.ready") / 1000
            seen = page.evaluate(SEEN_SCRIPT)
        changes = set(seen["changes"])
        if changes != expected or len(seen["changes"]) != ITEMS:
            error = (
                f"the Gate page shows {len(seen['changes'])} items, not the {ITEMS} approved "
                f"changes once each (missing {sorted(expected - changes)[:5]}, "
                f"unexpected {sorted(changes - expected)[:5]})"
            )
            return Figure(name, "s", samples, goal=goal, error=error)
        samples.append(ready)
        ctx.log(f"Gate page run {run}: {ready:.3f} s")
    return Figure(name, "s", samples, goal=goal, note="fresh browser and profile each run")


def _describe(seen: dict[str, Any]) -> str:
    if not seen["root"]:
        return f"no [data-testid=gate-page] element at {seen['url']}"
    return f"[data-testid=gate-page] holds {len(seen['changes'])} [data-testid=gate-item]"
