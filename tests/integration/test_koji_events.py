"""Koji events start pipelines: a real master polling the koji test hub (through the real
koji library), a real worker over PB running the triggered jobs."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.integration.conftest import SUCCESS
from tests.support.koji_hub import KojiTestHub

TAGS = ["f40-updates", "f40-updates-testing"] + [f"other-{n:02d}" for n in range(48)]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("hub"), first_event_id=2**31 + 11) as hub:
        for tag in TAGS:
            hub.create_tag(tag)
        yield hub


@pytest.fixture(scope="module")
def site(make_site, hub):
    site = make_site("koji-events", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["koji-events"].update(server=hub.url, topurl=hub.topurl)
    conf.write_text(yaml.safe_dump(data))
    on_tag = site.config_dir / "pipelines" / "on-tag.yaml"
    pipeline = yaml.safe_load(on_tag.read_text())
    pipeline["trigger"]["koji_tag"]["tag"] = TAGS
    on_tag.write_text(yaml.safe_dump(pipeline))
    site.start()
    return site


def poll_requests(hub: KojiTestHub) -> list[tuple[str, tuple[str, ...], str]]:
    return [entry for entry in hub.rpc_log if entry[1][:1] == ("getLastEvent",)]


def wait_for_polls(hub: KojiTestHub, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    start = len(poll_requests(hub))
    while len(poll_requests(hub)) < start + count:
        assert time.monotonic() < deadline, "the master does not poll the hub"
        time.sleep(0.2)


def job_output(site, pipeline: str, number: int) -> str:
    build = site.wait_for_build(f"{pipeline}/check/x86_64", number)
    assert build["results"] == SUCCESS
    return site.step_log(build["buildid"], "run")


def test_fifty_watched_tags_cost_one_request_per_poll_cycle(site, hub):
    wait_for_polls(hub, 2)
    before = len(hub.rpc_log)
    time.sleep(5)
    during = hub.rpc_log[before:]
    # every request of an idle master is one poll cycle: a single multicall of everything
    assert during, "no poll cycle in 5 s with a poll interval of 1 s"
    assert len(during) <= 7  # at most one request per cycle of 1 s (slower cycles on a busy host)
    for method, calls, outcome in during:
        assert method == "multiCall" and outcome == "ok"
        assert calls == ("getLastEvent", *["queryHistory"] * 50, "listBuilds")


def test_a_tag_event_triggers_its_pipeline_once_with_the_builds_properties(site, hub):
    build = hub.import_build("nova", "12.0.1", "1.fc40", owner="packager", target="f40")
    event = hub.tag_build("f40-updates", "nova-12.0.1-1.fc40", user="bodhi")
    out = job_output(site, "on-tag", 1)
    assert "event=koji_tag nvr=nova-12.0.1-1.fc40 tag=f40-updates owner=packager" in out
    run = site.wait_for_build("on-tag", 1)
    props = site.properties(run["buildid"])
    assert {k: props[k] for k in ("nvr", "name", "version", "release", "build_id")} == {
        "nvr": "nova-12.0.1-1.fc40",
        "name": "nova",
        "version": "12.0.1",
        "release": "1.fc40",
        "build_id": build["build_id"],
    }
    assert (props["task_id"], props["tag"], props["owner"], props["koji_event"]) == (
        build["task_id"],
        "f40-updates",
        "packager",
        event,
    )
    # the completed build started the koji_build pipeline (package nova) too
    assert f"event=koji_build nvr=nova-12.0.1-1.fc40 task={build['task_id']}" in job_output(
        site, "on-build", 1
    )
    wait_for_polls(hub, 3)
    assert [b["number"] for b in site.builds_of("on-tag")] == [1]
    assert [b["number"] for b in site.builds_of("on-build")] == [1]


def test_a_restart_between_events_neither_repeats_nor_misses_one(site, hub):
    site.wait_for_build("on-tag", 1)
    site.stop()
    # while the master is down: two tag events (found in one poll cycle: two runs, never
    # merged into one), a completed nova build, and a build that matches no trigger
    hub.tag_build("f40-updates-testing", "nova-12.0.1-1.fc40")
    hub.import_build("glance", "1.0", "1.fc40", owner="packager")
    hub.tag_build("f40-updates", "glance-1.0-1.fc40")
    hub.import_build("nova", "12.0.2", "1.fc40", owner="packager")
    hub.import_build("neutron", "1.0", "1.fc40", owner="packager")
    site.start()
    said = sorted(
        line
        for n in (2, 3)
        for line in job_output(site, "on-tag", n).splitlines()
        if line.startswith("event=")
    )
    assert said == [
        "event=koji_tag nvr=glance-1.0-1.fc40 tag=f40-updates owner=packager",
        "event=koji_tag nvr=nova-12.0.1-1.fc40 tag=f40-updates-testing owner=packager",
    ]
    assert "nvr=nova-12.0.2-1.fc40" in job_output(site, "on-build", 2)
    wait_for_polls(hub, 3)
    assert [b["number"] for b in site.builds_of("on-tag")] == [1, 2, 3]
    assert [b["number"] for b in site.builds_of("on-build")] == [1, 2]
