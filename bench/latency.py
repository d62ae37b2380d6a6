"""``event-latency``: from an event to the first build request it makes.

The moment of the build request is when the master announces it on its websocket: the
benchmark subscribes to ``buildrequests/*/new`` on ``/ws`` (Buildbot's own protocol, the
one its web UI uses; :class:`bench._eventsite.BuildRequestWatch`) and timestamps each
message on arrival. The REST API's ``submitted_at`` is whole seconds, too coarse for a
goal of 1 s. The message is sent once the build request is in the database (Buildbot's
``addBuildset`` commits, then announces). The event's moment is taken in this process
just before it happens (``time.monotonic()`` for both ends). Each build request is checked
to be the event's: its buildset's properties (``nvr``, ``compose_id``, ``gating_change``).

Two sites, one after the other, each a real master with one local worker on loopback:

* **polled** (a :class:`~bench._eventsite.TimedKojiHub` koji test hub, a
  :class:`tests.support.composes.ComposeServer`, and the embedded forge of the gate):
  ``koji-events: {source: poll, poll-interval: 2}`` and a ``koji_tag`` pipeline; a compose
  location polled every 2 s and a ``compose`` pipeline; the gated project ``nova`` (queue
  ``rdo``) and its ``gate`` pipeline (``packstack``, which sleeps ``$(cat DURATION)``: 0).

  - *koji tag event*: ``tagBuild`` on the hub (the event is on the hub when it returns)
    to the ``on-tag`` pipeline's build request;
  - *compose FINISHED*: a compose already ``latest`` and ``STARTED`` gets ``STATUS``
    FINISHED, to the ``compose-tests`` pipeline's build request;
  - *git push + approve*: ``git push origin HEAD:refs/for/main`` of a change to ``nova``,
    then ``POST plugins/gating/api/approve`` (what ``gating approve`` sends) to the
    ``packstack`` pipeline's build request, measured from the approval (the push makes
    no build request: it only records the change) and from the push.

  A polled event waits for the next poll: its latency is anywhere between the cycle's own
  time and one poll interval more. Each event comes after a random pause (0 to one poll
  interval) so that the runs do not all fall at the same point of the poll cycle.
* **push** (a private RabbitMQ broker, tests/support/rabbitmq.py): ``koji-events:
  {source: amqp}``; *AMQP koji tag message*: a ``buildsys.tag`` message, shaped as
  fedora-messaging sends it, published on ``amq.topic`` (a connection opened beforehand,
  publisher confirms), to the ``on-tag`` pipeline's build request.

The master is idle before each event (no unfinished build request, the gate empty).
Goals: the push-based paths (the approval, the AMQP message) under 1 s, every run; the
polled ones within their poll interval plus 1 s, every run.

There is no Buildbot change hook in this product (``change_hook_dialects`` is empty: the
embedded forge records a push itself, and Gerrit is polled), so the push-based paths
measured are the approval and the AMQP message.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import Context, Figure, Goal, scenario
from bench._eventsite import (
    BuildRequestWatch,
    TimedKojiHub,
    builder_ids,
    buildset_properties,
    create_event_site,
    echo_pipeline,
    wait_idle,
)
from bench._gatesite import approve, git, make_seeds, push_for_review, queue_status
from gating.localsite import LocalSite

RUNS = 5
POLL_INTERVAL = 2  # seconds, koji-events and the compose location
PUSH_GOAL = 1.0  # seconds
TAG = "f40-updates"
AMQP_QUEUE = "gating-bench-koji"
TOPIC_PREFIX = "org.fedoraproject.prod.buildsys"
RANDOM = random.Random(8)


def polled_goal() -> Goal:
    return Goal("max", POLL_INTERVAL + 1.0)


@scenario("event-latency", "from koji, compose, approval and AMQP events to the build request")
def event_latency(ctx: Context) -> None:
    polled_site(ctx)
    amqp_site(ctx)


# -- the polled site ----------------------------------------------------------------------


def polled_site(ctx: Context) -> None:
    from tests.support.composes import ComposeServer, image, write_compose

    base = ctx.workdir / "polled"
    root = ctx.workdir / "composes"
    (root / "rawhide").mkdir(parents=True)
    compose_ids = [f"Fedora-Rawhide-202611{i:02d}.n.0" for i in range(1, RUNS + 2)]
    images = [image("Workstation", "live", "x86_64")]
    write_compose(root / "rawhide", compose_ids[0], images, status="STARTED")
    point(root / "rawhide", compose_ids[0])

    hub = TimedKojiHub(ctx.workdir / "hub")
    hub.start()
    hub.create_tag(TAG)
    try:
        with ComposeServer(root) as server:
            make_seeds(base)
            site = create_event_site(
                base,
                {
                    "secrets-dir": "secrets",
                    "forge-dir": "git",
                    "poll-interval": POLL_INTERVAL,
                    "queues": {"rdo": {"window": 20}},
                    "projects": [
                        {
                            "name": "nova",
                            "repository": "../seeds/nova",
                            "branches": ["main"],
                            "queue": "rdo",
                        }
                    ],
                    "koji-events": {
                        "source": "poll",
                        "poll-interval": POLL_INTERVAL,
                        "server": hub.url,
                        "topurl": hub.topurl,
                    },
                    "composes": [
                        {
                            "name": "rawhide",
                            "location": server.url_for("rawhide/latest"),
                            "poll-interval": POLL_INTERVAL,
                        }
                    ],
                },
                {
                    "on-tag": echo_pipeline({"koji_tag": {"tag": [TAG]}}, "nvr=$GATING_NVR"),
                    "compose-tests": echo_pipeline({"compose": {}}, "id=$GATING_COMPOSE_ID"),
                    "packstack": {
                        "trigger": "gate",
                        "pipeline": ["packstack"],
                        "jobs": {
                            "packstack": {
                                "architectures": ["x86_64"],
                                "run": 'sleep "$(cat DURATION 2>/dev/null || echo 0)"\n',
                            }
                        },
                    },
                },
            )
            try:
                site.start()
                ctx.log(f"polled site up at {site.url}")
                with BuildRequestWatch(site.url) as watch:
                    ids = builder_ids(site)
                    koji_poll_latency(ctx, site, watch, hub, ids["on-tag"])
                    compose_latency(ctx, site, watch, root, compose_ids, images, ids)
                    approve_latency(ctx, site, watch, ids["packstack"])
            finally:
                ctx.log("stopping the polled site")
                site.stop()
    finally:
        hub.stop()


def point(location: Path, compose_id: str) -> None:
    """Make ``location/latest`` point at ``compose_id`` (atomically)."""
    link = location / "latest"
    tmp = link.with_name("latest.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(compose_id)
    os.replace(tmp, link)


def settle(site: LocalSite, gate: bool) -> None:
    """Wait until the master is idle: no unfinished build request, nothing in the gate."""
    if not wait_idle(site):
        raise RuntimeError("the master still has unfinished build requests after 120 s")
    deadline = time.monotonic() + 120
    while gate and any(q["items"] for q in queue_status(site)["queues"]):
        if time.monotonic() > deadline:
            raise RuntimeError("the gate still holds items after 120 s")
        time.sleep(0.3)


def measure(
    ctx: Context,
    site: LocalSite,
    watch: BuildRequestWatch,
    what: str,
    builderid: int,
    event: Callable[[int], tuple[float, Callable[[dict[str, Any]], bool]]],
    pause: float = 0.0,
    gate: bool = True,
) -> list[float]:
    """:data:`RUNS` latencies (s) of ``event(i)``, which makes the event and returns its
    moment and a check of the build request's buildset properties."""
    samples = []
    for i in range(RUNS):
        settle(site, gate)
        if pause:
            time.sleep(RANDOM.uniform(0, pause))
        start, check = event(i)
        at, msg = watch.first_after(start, lambda m: m.get("builderid") == builderid, 60)
        props = buildset_properties(site, msg["buildsetid"])
        if not check(props):
            raise RuntimeError(f"{what} run {i + 1}: build request of another event: {props}")
        samples.append(at - start)
        ctx.log(f"{what} run {i + 1}: {samples[-1] * 1000:.0f} ms")
    return samples


def koji_poll_latency(
    ctx: Context, site: LocalSite, watch: BuildRequestWatch, hub: TimedKojiHub, builderid: int
) -> None:
    def event(i: int) -> tuple[float, Callable[[dict[str, Any]], bool]]:
        nvr = f"bench-1.0-{i + 1}.fc40"
        hub.import_build("bench", "1.0", f"{i + 1}.fc40", owner="packager")
        start = time.monotonic()
        hub.tag_build(TAG, nvr, user="bodhi")
        return start, lambda props: props.get("nvr") == nvr and props.get("tag") == TAG

    samples = measure(ctx, site, watch, "koji tag", builderid, event, pause=POLL_INTERVAL)
    ctx.add(
        Figure(
            f"koji tag event -> build request (poll every {POLL_INTERVAL} s)",
            "s",
            samples,
            goal=polled_goal(),
        )
    )


def compose_latency(
    ctx: Context,
    site: LocalSite,
    watch: BuildRequestWatch,
    root: Path,
    compose_ids: list[str],
    images: list[dict[str, Any]],
    ids: dict[str, int],
) -> None:
    from tests.support.composes import set_status, write_compose

    def event(i: int) -> tuple[float, Callable[[dict[str, Any]], bool]]:
        compose_id = compose_ids[i + 1]
        write_compose(root / "rawhide", compose_id, images, status="STARTED")
        point(root / "rawhide", compose_id)
        time.sleep(POLL_INTERVAL * 1.5)  # seen as STARTED by a poll first
        time.sleep(RANDOM.uniform(0, POLL_INTERVAL))
        start = time.monotonic()
        set_status(root / "rawhide" / compose_id, "FINISHED")
        return start, lambda props: props.get("compose_id") == compose_id

    samples = measure(ctx, site, watch, "compose", ids["compose-tests"], event)
    ctx.add(
        Figure(
            f"compose FINISHED -> build request (poll every {POLL_INTERVAL} s)",
            "s",
            samples,
            goal=polled_goal(),
        )
    )


def approve_latency(
    ctx: Context, site: LocalSite, watch: BuildRequestWatch, builderid: int
) -> None:
    pushed: list[float] = []
    work = site.basedir / "dev" / "nova"
    git(site.basedir, "clone", "-q", str(site.master_dir / "git" / "nova.git"), str(work))

    def event(i: int) -> tuple[float, Callable[[dict[str, Any]], bool]]:
        git(work, "fetch", "-q", "origin")
        git(work, "checkout", "-q", "--detach", "origin/main")
        (work / "bench").mkdir(exist_ok=True)
        (work / "bench" / f"change-{i}.txt").write_text(f"{i}\n")
        (work / "DURATION").write_text("0\n")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"Bench change {i}")
        push = time.monotonic()
        number = push_for_review(work, "nova")
        pushed.append(push)
        start = time.monotonic()
        approve(site, "nova", number)
        return start, lambda props: props.get("gating_change") == f"nova~{number}"

    samples = measure(ctx, site, watch, "approve", builderid, event)
    ctx.add(
        Figure(
            "approve (POST api/approve) -> build request", "s", samples, goal=Goal("max", PUSH_GOAL)
        )
    )
    # from the push: the same build requests
    firsts = [
        watch.first_after(p, lambda m: m.get("builderid") == builderid, 1)[0] - p for p in pushed
    ]
    ctx.add(
        Figure(
            "git push + approve -> build request",
            "s",
            firsts,
            note="from the start of `git push origin HEAD:refs/for/main` (the change "
            "committed beforehand in a clone of the forge's repository)",
        )
    )


# -- the AMQP site ------------------------------------------------------------------------


def amqp_site(ctx: Context) -> None:
    from tests.support.rabbitmq import RabbitMQServer, find_server

    name = "AMQP koji tag message -> build request"
    if find_server() is None:
        ctx.add(
            Figure(name, "s", goal=Goal("max", PUSH_GOAL), error="rabbitmq-server is not installed")
        )
        return
    with RabbitMQServer(ctx.workdir / "rabbitmq") as rabbit:
        vhost = quote(rabbit.vhost, safe="")
        site = create_event_site(
            ctx.workdir / "push",
            {
                "koji-events": {
                    "source": "amqp",
                    "amqp-url": f"amqp://{rabbit.user}@127.0.0.1:{rabbit.port}/{vhost}",
                    "amqp-password-secret": "amqp-password",
                    "amqp-queue": AMQP_QUEUE,
                }
            },
            {"on-tag": echo_pipeline({"koji_tag": {"tag": [TAG]}}, "nvr=$GATING_NVR")},
            secrets={"amqp-password": rabbit.password},
        )
        try:
            site.start()
            wait_consuming(site)
            ctx.log(f"AMQP site up at {site.url}, consuming {AMQP_QUEUE}")
            with BuildRequestWatch(site.url) as watch, Publisher(rabbit.amqp_url) as publisher:
                ids = builder_ids(site)

                def event(i: int) -> tuple[float, Callable[[dict[str, Any]], bool]]:
                    release = f"{i + 1}.fc40"
                    body = {
                        "build_id": 5000 + i,
                        "name": "bench",
                        "version": "1.0",
                        "release": release,
                        "tag": TAG,
                        "tag_id": 1,
                        "owner": "packager",
                        "user": "bodhi",
                    }
                    start = time.monotonic()
                    publisher.publish(f"{TOPIC_PREFIX}.tag", body)
                    nvr = f"bench-1.0-{release}"
                    return start, lambda props: props.get("nvr") == nvr

                samples = measure(ctx, site, watch, "amqp", ids["on-tag"], event, gate=False)
                ctx.add(Figure(name, "s", samples, goal=Goal("max", PUSH_GOAL)))
        finally:
            ctx.log("stopping the AMQP site")
            site.stop()


def wait_consuming(site: LocalSite, timeout: float = 60) -> None:
    log = site.master_dir / "twistd.log"
    deadline = time.monotonic() + timeout
    while f"consuming {AMQP_QUEUE} on" not in log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the master did not start consuming {AMQP_QUEUE}")
        time.sleep(0.2)


class Publisher:
    """Publishes fedora-messaging-shaped messages (as tests.support.rabbitmq.publish does)
    on one connection opened beforehand, with publisher confirms."""

    def __init__(self, amqp_url: str) -> None:
        import pika

        self._pika = pika
        self._connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.close()

    def publish(self, topic: str, body: dict[str, Any]) -> str:
        message_id = str(uuid.uuid4())
        sent_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        properties = self._pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            headers={
                "fedora_messaging_schema": "base.message",
                "fedora_messaging_severity": 20,
                "sent-at": sent_at,
            },
            message_id=message_id,
        )
        self._channel.basic_publish("amq.topic", topic, json.dumps(body).encode(), properties)
        return message_id
