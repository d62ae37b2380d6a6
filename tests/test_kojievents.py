"""gating.kojievents: poll cycles against the koji test hub through the real koji library,
and the matching of events to triggers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gating.kojiclient import KojiSession, KojiSettings
from gating.kojievents import (
    KOJI_BUILD,
    KOJI_TAG,
    Cursor,
    KojiBuildEvent,
    WatchSet,
    advance,
    detail_calls,
    event_from_message,
    poll_calls,
    watch_of,
    with_details,
)
from tests.support.koji_hub import KojiTestHub

EVENT0 = 2**31 + 7  # event ids past 32 bits travel as <i8>


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[KojiTestHub]:
    with KojiTestHub(tmp_path / "hub", first_event_id=EVENT0) as hub:
        yield hub


@pytest.fixture
def session(hub: KojiTestHub) -> Iterator[KojiSession]:
    with KojiSession(KojiSettings(server=hub.url, topurl=hub.topurl)) as session:
        yield session


def cycle(
    session: KojiSession, cursor: Cursor, watches: WatchSet
) -> tuple[Cursor, list[KojiBuildEvent]]:
    """One poll cycle, as the scheduler runs it."""
    calls = poll_calls(cursor, watches, time.time())
    cursor, events = advance(cursor, watches, session.multicall(calls))
    calls = detail_calls(events, watches)
    if calls:
        events = with_details(events, watches, session.multicall(calls))
    return cursor, events


def tags_watch(*tags: str, package: str | None = None) -> WatchSet:
    opts = {"tag": list(tags)} if tags else {}
    if package:
        opts["package"] = package
    return WatchSet((watch_of("on-tag", KOJI_TAG, opts),))


def test_fifty_watched_tags_cost_one_request_per_idle_cycle(hub, session):
    tags = [f"f{n}-updates" for n in range(50)]
    for tag in tags:
        hub.create_tag(tag)
    watches = tags_watch(*tags)
    cursor, events = cycle(session, Cursor(), watches)
    assert events == [] and cursor.started
    before = hub.request_count
    for _ in range(5):
        cursor, events = cycle(session, cursor, watches)
        assert events == []
    assert hub.request_count - before == 5
    methods = hub.rpc_log[-1][1]
    assert methods.count("queryHistory") == 50 and methods[0] == "getLastEvent"


def test_a_tag_event_is_reported_once_with_the_builds_details(hub, session):
    hub.create_tag("f40-updates")
    hub.create_tag("f40-other")
    watches = tags_watch("f40-updates")
    cursor, _ = cycle(session, Cursor(), watches)
    build = hub.import_build("nova", "1.0", "2.fc40", owner="packager")
    event_id = hub.tag_build("f40-updates", "nova-1.0-2.fc40", user="bodhi")
    hub.tag_build("f40-other", "nova-1.0-2.fc40")
    cursor, events = cycle(session, cursor, watches)
    assert events == [
        KojiBuildEvent(
            kind=KOJI_TAG,
            build_id=build["build_id"],
            nvr="nova-1.0-2.fc40",
            name="nova",
            version="1.0",
            release="2.fc40",
            task_id=build["task_id"],
            owner="packager",
            tag="f40-updates",
            event_id=event_id,
            tagged_by="bodhi",
        )
    ]
    assert events[0].properties() == {
        "event": "koji_tag",
        "nvr": "nova-1.0-2.fc40",
        "name": "nova",
        "version": "1.0",
        "release": "2.fc40",
        "build_id": build["build_id"],
        "task_id": build["task_id"],
        "owner": "packager",
        "tag": "f40-updates",
        "koji_event": event_id,
    }
    assert watches.pipelines_for(events[0]) == ["on-tag"]
    cursor, events = cycle(session, cursor, watches)
    assert events == []


def test_a_saved_cursor_neither_misses_nor_repeats_events(hub, session):
    hub.create_tag("f40-updates")
    watches = tags_watch("f40-updates")
    cursor, _ = cycle(session, Cursor(), watches)
    hub.import_build("nova", "1.0", "1.fc40")
    hub.tag_build("f40-updates", "nova-1.0-1.fc40")
    cursor, events = cycle(session, cursor, watches)
    assert [e.nvr for e in events] == ["nova-1.0-1.fc40"]
    saved = Cursor.from_json(cursor.to_json())  # what the master keeps in its database
    hub.import_build("nova", "1.0", "2.fc40")
    hub.tag_build("f40-updates", "nova-1.0-2.fc40")
    # "restart": a new session from the saved cursor
    with KojiSession(KojiSettings(server=hub.url, topurl=hub.topurl)) as again:
        cursor, events = cycle(again, saved, watches)
    assert [e.nvr for e in events] == ["nova-1.0-2.fc40"]


def test_the_first_cycle_reports_no_history(hub, session):
    hub.create_tag("f40-updates")
    hub.import_build("nova", "1.0", "1.fc40")
    hub.tag_build("f40-updates", "nova-1.0-1.fc40")
    watches = WatchSet(
        (watch_of("t", KOJI_TAG, {"tag": "f40-updates"}), watch_of("b", KOJI_BUILD, {}))
    )
    cursor, events = cycle(session, Cursor(), watches)
    assert events == [] and cursor.event_id is not None
    cursor, events = cycle(session, cursor, watches)
    assert events == []


def test_completed_builds_with_package_and_target_filters(hub, session):
    watches = WatchSet(
        (
            watch_of("any-build", KOJI_BUILD, {}),
            watch_of("nova-builds", KOJI_BUILD, {"package": "nova"}),
            watch_of("f40-builds", KOJI_BUILD, {"target": "f40-candidate"}),
        )
    )
    hub.create_tag("f40")  # a hub always has events
    cursor, _ = cycle(session, Cursor(), watches)
    nova = hub.import_build("nova", "1.0", "1.fc40", owner="alice", target="f40-candidate")
    glance = hub.import_build("glance", "2.0", "1.fc41", owner="bob", target="f41-candidate")
    cursor, events = cycle(session, cursor, watches)
    assert [(e.nvr, e.owner, e.target, e.task_id) for e in events] == [
        ("nova-1.0-1.fc40", "alice", "f40-candidate", nova["task_id"]),
        ("glance-2.0-1.fc41", "bob", "f41-candidate", glance["task_id"]),
    ]
    assert watches.pipelines_for(events[0]) == ["any-build", "nova-builds", "f40-builds"]
    assert watches.pipelines_for(events[1]) == ["any-build"]
    # reported builds are not reported again, though they are still inside the overlap
    cursor, events = cycle(session, cursor, watches)
    assert events == []
    assert {b for b, _ in cursor.recent_builds} == {nova["build_id"], glance["build_id"]}
    again, events = cycle(session, Cursor.from_json(cursor.to_json()), watches)
    assert events == []


def test_untagging_is_not_a_tag_event(hub, session):
    hub.create_tag("f40-updates")
    hub.import_build("nova", "1.0", "1.fc40")
    watches = tags_watch("f40-updates")
    cursor, _ = cycle(session, Cursor(), watches)
    hub.tag_build("f40-updates", "nova-1.0-1.fc40")
    cursor, events = cycle(session, cursor, watches)
    assert len(events) == 1
    hub.untag_build("f40-updates", "nova-1.0-1.fc40")
    cursor, events = cycle(session, cursor, watches)
    assert events == []


def test_a_trigger_without_tags_watches_every_tag_with_one_query():
    watches = WatchSet((watch_of("p", KOJI_TAG, {}), watch_of("q", KOJI_TAG, {"tag": "x"})))
    assert watches.tags is None
    calls = poll_calls(Cursor(event_id=5, complete_ts=1.0), watches)
    assert [c.method for c in calls] == ["getLastEvent", "queryHistory"]
    assert "tag" not in calls[1].kwargs


def test_all_builds_asks_for_every_completed_build_without_a_pipeline_to_start():
    watches = WatchSet((), all_builds=True)
    assert watches.watches_builds and not watches.watches_tags
    calls = poll_calls(Cursor(event_id=5, complete_ts=1000.0), watches)
    assert [c.method for c in calls] == ["getLastEvent", "listBuilds"]
    build = {
        "build_id": 3,
        "nvr": "nova-1-1.fc40",
        "name": "nova",
        "version": "1",
        "release": "1.fc40",
        "completion_ts": 1001.0,
    }
    _, events = advance(
        Cursor(event_id=5, complete_ts=1000.0), watches, [{"id": 6, "ts": 1002.0}, [build]]
    )
    assert [e.nvr for e in events] == ["nova-1-1.fc40"]
    assert watches.pipelines_for(events[0]) == []
    assert WatchSet((watch_of("p", KOJI_TAG, {}),), all_builds=True).watches_builds


def test_package_globs_and_tag_filters():
    w = watch_of("p", KOJI_TAG, {"tag": ["a", "b"], "package": ["python-*", "nova"]})
    event = KojiBuildEvent(KOJI_TAG, 1, "python-x-1-1", "python-x", "1", "1", tag="a")
    assert w.matches(event)
    assert not w.matches(KojiBuildEvent(KOJI_TAG, 1, "glance-1-1", "glance", "1", "1", tag="a"))
    assert not w.matches(KojiBuildEvent(KOJI_TAG, 1, "nova-1-1", "nova", "1", "1", tag="c"))
    assert not w.matches(KojiBuildEvent(KOJI_BUILD, 1, "nova-1-1", "nova", "1", "1"))


def test_event_keys_identify_events_across_sources():
    a = KojiBuildEvent(KOJI_BUILD, 7, "n-1-1", "n", "1", "1", owner="x")
    b = KojiBuildEvent(KOJI_BUILD, 7, "n-1-1", "n", "1", "1", task_id=3)
    assert a.key == b.key == "koji_build:7"
    t = KojiBuildEvent(KOJI_TAG, 7, "n-1-1", "n", "1", "1", tag="f40", event_id=9)
    assert t.key == "koji_tag:f40:7:9"


def test_messages_of_kojis_fedmsg_plugin():
    body = {
        "build_id": 42,
        "name": "nova",
        "version": "1.0",
        "release": "1.fc40",
        "owner": "alice",
        "task_id": 77,
        "new": 1,
        "old": 0,
        "attribute": "state",
        "instance": "primary",
    }
    event = event_from_message("org.fedoraproject.prod.buildsys.build.state.change", body)
    assert event == KojiBuildEvent(
        KOJI_BUILD, 42, "nova-1.0-1.fc40", "nova", "1.0", "1.fc40", task_id=77, owner="alice"
    )
    building = {**body, "new": 0}
    assert (
        event_from_message("org.fedoraproject.prod.buildsys.build.state.change", building) is None
    )
    tag = {
        "build_id": 42,
        "name": "nova",
        "version": "1.0",
        "release": "1.fc40",
        "tag": "f40-updates",
        "owner": "alice",
        "user": "bodhi",
    }
    event = event_from_message("org.fedoraproject.prod.buildsys.tag", tag)
    assert event is not None and (event.kind, event.tag, event.tagged_by) == (
        KOJI_TAG,
        "f40-updates",
        "bodhi",
    )
    assert event_from_message("org.fedoraproject.prod.buildsys.untag", tag) is None
    with pytest.raises(ValueError, match="buildsys.tag: missing or bad field"):
        event_from_message("org.fedoraproject.prod.buildsys.tag", {"name": "nova"})
