"""``koji-polling``: HTTP requests and time per koji poll cycle for 1, 10, 100 and 1,000
watched tags.

For each size N, a koji test hub (tests/support/koji_hub.py, real XML-RPC, recording
each request's arrival, answer time and size: :class:`bench._eventsite.TimedKojiHub`)
holds N tags, and one pipeline watches them all (``trigger: koji_tag: tag: [N tags]``).

* **A real master** (``koji-events: {source: poll, poll-interval: 1}``, one local
  worker) polls the hub. After its first two cycles, the hub's requests are counted over
  :data:`CYCLES` cycles; a cycle is the hub's requests from one poll request (the
  multiCall that starts with ``getLastEvent``) to the next. ``requests per idle poll
  cycle`` is each cycle's count (goal: every cycle one request, ``max < 2``), and every
  poll request must carry the N ``queryHistory`` calls. ``hub time per poll request`` is
  how long the hub took to answer each of them (from the request read to the answer
  written). A build is then tagged into the last watched tag: the cycle that finds the
  event is counted too (``requests of a cycle that finds a tag event``: the poll request
  and one more to read the build), and its pipeline must start (a buildset).
* **The poll cycle in-process**: before the master starts, the product's own cycle
  (:func:`gating.kojievents.poll_calls`, one ``KojiSession.multicall`` through the real
  koji client library, :func:`gating.kojievents.advance`: what
  ``KojiEventScheduler._poll_blocking`` runs in its thread) is timed :data:`CYCLES` times
  against the same hub, from building the calls to the new cursor: the cycle's time as
  the master sees it, without the master's thread hop and database write. ``client side``
  is that time less the hub's time on the cycle's request: what the koji client library
  (marshalling, HTTP) and gating.kojievents cost, whatever the hub.

The hub is the test hub, in the benchmark's process: its own time (Python, tags looked up
by name in a list) is no estimate of a real koji hub's (PostgreSQL).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from bench import Context, Figure, Goal, scenario
from bench._eventsite import (
    HubRequest,
    TimedKojiHub,
    create_event_site,
    echo_pipeline,
    is_poll,
)
from gating.kojievents import KOJI_TAG, Cursor, WatchSet, advance, poll_calls, watch_of
from gating.kojipoller import KojiEventSettings
from gating.localsite import LocalSite

SIZES = (1, 10, 100, 1000)
CYCLES = 10  # poll cycles counted (master) and timed (in-process) per size
POLL_INTERVAL = 1  # seconds (the smallest koji-events accepts)
PIPELINE = "on-tag"


def tag_names(n: int) -> list[str]:
    return [f"bench-tag-{i:04d}" for i in range(n)]


@scenario("koji-polling", "HTTP requests and time per koji poll cycle, 1 to 1,000 watched tags")
def koji_polling(ctx: Context) -> None:
    for n in SIZES:
        measure_size(ctx, n)


def measure_size(ctx: Context, n: int) -> None:
    tags = tag_names(n)
    hub = TimedKojiHub(ctx.workdir / f"hub-{n}")
    hub.start()
    try:
        for tag in tags:
            hub.create_tag(tag)
        ctx.log(f"{n} tags: timing {CYCLES} poll cycles in-process")
        cycles, hub_share = in_process(hub, tags)
        ctx.add(Figure(f"poll cycle in-process ({n} tags)", "ms", cycles))
        ctx.add(
            Figure(
                f"poll cycle in-process, client side ({n} tags)",
                "ms",
                [c - h for c, h in zip(cycles, hub_share, strict=True)],
                note=""
                if n != SIZES[0]
                else "the cycle less the hub's time on its request: the koji client library "
                "(marshalling, HTTP) and gating.kojievents",
            )
        )

        site = create_event_site(
            ctx.workdir / f"site-{n}",
            {
                "koji-events": {
                    "source": "poll",
                    "poll-interval": POLL_INTERVAL,
                    "server": hub.url,
                    "topurl": hub.topurl,
                }
            },
            {PIPELINE: echo_pipeline({"koji_tag": {"tag": tags}}, "tag=$GATING_TAG")},
        )
        try:
            site.start()
            ctx.log(f"{n} tags: master up at {site.url}; counting {CYCLES} cycles")
            master_cycles(ctx, hub, site, n)
        finally:
            site.stop()
    finally:
        hub.stop()


def in_process(hub: TimedKojiHub, tags: Sequence[str]) -> tuple[list[float], list[float]]:
    """The product's poll cycle, timed (ms) :data:`CYCLES` times after a first one; and
    the hub's time on each cycle's request (ms)."""
    watches = WatchSet((watch_of(PIPELINE, KOJI_TAG, {"tag": list(tags)}),))
    settings = KojiEventSettings(watches=watches, server=hub.url, topurl=hub.topurl)
    session = settings.session()
    try:
        cursor = Cursor()
        samples, hub_share = [], []
        for i in range(CYCLES + 1):
            start = time.perf_counter()
            results = session.multicall(poll_calls(cursor, watches, time.time()))
            cursor, events = advance(cursor, watches, results)
            if i:  # the first cycle only reads the last event
                samples.append((time.perf_counter() - start) * 1000)
                hub_share.append(hub.timed[-1].seconds * 1000)
            if events:
                raise RuntimeError(f"an idle hub reported events: {events}")
        return samples, hub_share
    finally:
        session.close()


def cycles_of(requests: Sequence[HubRequest]) -> list[list[HubRequest]]:
    """The requests grouped by poll cycle: each group starts with a poll request and holds
    every request up to the next one (the last, open group is left out)."""
    ordered = sorted(requests, key=lambda r: r.at)
    starts = [i for i, r in enumerate(ordered) if is_poll(r)]
    return [ordered[a:b] for a, b in zip(starts, starts[1:], strict=False)]


def wait_for(hub: TimedKojiHub, polls: int, since: float, timeout: float) -> list[HubRequest]:
    """Wait until the hub has answered ``polls`` poll requests after ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [r for r in hub.timed if r.at >= since]
        if sum(map(is_poll, seen)) >= polls:
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"the master made fewer than {polls} poll requests in {timeout} s")
        time.sleep(0.1)


def master_cycles(ctx: Context, hub: TimedKojiHub, site: LocalSite, n: int) -> None:
    # the first cycle reads the last event, the second is the first full one
    warm = wait_for(hub, 2, 0.0, 60)
    since = max(r.at for r in warm if is_poll(r))
    files_before = hub.file_request_count
    seen = wait_for(hub, CYCLES + 1, since, CYCLES * POLL_INTERVAL * 5 + 30)
    files = hub.file_request_count - files_before
    cycles = cycles_of(seen)[:CYCLES]
    counts = [float(len(c)) for c in cycles]
    if files:
        counts[-1] += files  # file downloads (none expected) count as requests too
    polls = [c[0] for c in cycles]
    wrong = [p.calls for p in polls if p.calls != ("getLastEvent", *["queryHistory"] * n)]
    note = f"{len(cycles)} consecutive cycles, poll interval {POLL_INTERVAL} s; "
    note += f"{files} file request(s); "
    note += (
        f"every poll request: getLastEvent + {n} queryHistory in one multiCall"
        if not wrong
        else f"{len(wrong)} poll request(s) of another shape: {wrong[0][:3]}..."
    )
    error = None if not wrong else f"poll requests without the {n} queryHistory calls"
    ctx.add(
        Figure(
            f"requests per idle poll cycle ({n} tags)",
            "requests",
            counts,
            goal=Goal("max", 2),
            note=note,
            error=error,
        )
    )
    ctx.add(
        Figure(f"hub time per poll request ({n} tags)", "ms", [p.seconds * 1000 for p in polls])
    )
    ctx.add(
        Figure(
            f"poll request size ({n} tags)",
            "bytes",
            [float(statistics.median(p.size for p in polls))],
        )
    )

    # one tag event: the cycle that finds it, and its pipeline run
    before = time.monotonic()
    hub.import_build("bench", "1.0", "1.fc40", owner="packager")
    hub.tag_build(tag_names(n)[-1], "bench-1.0-1.fc40", user="bodhi")
    seen = wait_for(hub, 3, before, 30)
    found = next((c for c in cycles_of(seen) if any("getBuild" in r.calls for r in c)), None)
    if found is None:
        raise RuntimeError(f"no poll cycle read the tagged build ({n} tags)")
    ctx.add(
        Figure(
            f"requests of a cycle that finds a tag event ({n} tags)",
            "requests",
            [float(len(found))],
            note=" + ".join(
                f"{r.method}({', '.join(sorted(set(r.calls)))})" if r.calls else r.method
                for r in found
            ),
        )
    )
    deadline = time.monotonic() + 60
    while not site.api("buildsets")["buildsets"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tag event started no pipeline run ({n} tags)")
        time.sleep(0.2)
    hub_ms = statistics.median(p.seconds for p in polls) * 1000
    ctx.log(f"{n} tags: requests/cycle {counts}, hub {hub_ms:.1f} ms per poll request")
