"""Faults of the master itself (issue 9): a master SIGKILLed at the worst moments, then
restarted. A real master with real workers over PB, the koji test hub (the real ``koji``
library on loopback), real git, ``rpmbuild`` and ``createrepo_c``.

* killed in the middle of a koji-events poll cycle that found events, after one event's
  pipelines were started and before the cycle was saved: each event starts its pipelines
  exactly once after the restart (none lost, none repeated);
* killed while the gate's koji scratch builds run on the hub: the gate resumes by itself,
  every change merges once with its RPM landed, in gate order, and the orphaned scratch
  tasks are adopted (their results are the ones the overlays use: no second task for the
  same (package, commit)).

The kill in the export section itself (between the koji tag and the git merge) is in
tests/integration/test_export_koji.py, next to the other koji export tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest
import yaml

from tests.integration.conftest import SUCCESS
from tests.support.koji_hub import KojiTestHub

TAGS = ["f40-updates", "f40-updates-testing"]


def kill_master(site) -> None:
    """SIGKILL the site's master (its workers live on and reconnect to the next one)."""
    pid = site.master_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while site.master_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.master_pid() is None


def wait_for(condition, what: str, timeout: float = 300, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def object_state(site, name: str):
    with sqlite3.connect(site.master_dir / "state.sqlite") as db:
        rows = db.execute("SELECT value_json FROM object_state WHERE name = ?", (name,)).fetchall()
    return [json.loads(r[0]) for r in rows]


# -- (c) a kill in the middle of a koji-events poll cycle ---------------------------------


@pytest.fixture(scope="module")
def events_hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("events-hub"), first_event_id=2**31 + 101) as hub:
        for tag in TAGS:
            hub.create_tag(tag)
        yield hub


@pytest.fixture(scope="module")
def events_site(make_site, events_hub):
    site = make_site("koji-events", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["koji-events"].update(server=events_hub.url, topurl=events_hub.topurl)
    conf.write_text(yaml.safe_dump(data))
    return site


def event_lines(site, pipeline: str) -> list[str]:
    """The ``event=...`` line each finished run of ``pipeline`` printed."""
    lines = []
    for build in site.builds_of(f"{pipeline}/check/x86_64"):
        assert build["complete"] and build["results"] == SUCCESS, build
        log = site.step_log(build["buildid"], "run")
        lines += [line for line in log.splitlines() if line.startswith("event=")]
    return sorted(lines)


def runs_done(site, pipeline: str) -> int:
    try:
        builds = site.builds_of(f"{pipeline}/check/x86_64")
    except KeyError:
        return 0
    return sum(1 for b in builds if b["complete"])


def test_a_master_killed_in_a_poll_cycle_neither_loses_nor_repeats_an_event(
    events_site, events_hub, tmp_path, monkeypatch
):
    site, hub = events_site, events_hub
    from gating.kojipoller import TEST_HOOKS_ENV

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv(TEST_HOOKS_ENV, str(hooks))
    site.start()
    # The first cycle sets the cursor at the hub's last event.
    wait_for(lambda: object_state(site, "koji_cursor"), "the master never polled", 120)

    # Three events the next cycle finds together (the hub is offline meanwhile): a completed
    # nova build (on-build) and two taggings of it (on-tag).
    (hooks / "pause-koji-fire-after-buildsets").write_text("")
    hub.fail_next(kind="offline", duration=4)
    build = hub.import_build("nova", "12.0.1", "1.fc40", owner="packager")
    hub.tag_build("f40-updates", "nova-12.0.1-1.fc40", user="bodhi")
    hub.tag_build("f40-updates-testing", "nova-12.0.1-1.fc40", user="bodhi")

    # The cycle found them, started the first event's pipeline and stopped there.
    wait_for(lambda: (hooks / "paused-koji-fire-after-buildsets").exists(), "no cycle paused")
    (firing,) = object_state(site, "koji_firing")
    assert firing and firing not in (object_state(site, "koji_fired") or [[]])[0]
    kill_master(site)
    (hooks / "pause-koji-fire-after-buildsets").unlink()
    site.start()

    expected_tags = [
        "event=koji_tag nvr=nova-12.0.1-1.fc40 tag=f40-updates owner=packager",
        "event=koji_tag nvr=nova-12.0.1-1.fc40 tag=f40-updates-testing owner=packager",
    ]
    expected_builds = [f"event=koji_build nvr=nova-12.0.1-1.fc40 task={build['task_id']}"]
    wait_for(lambda: runs_done(site, "on-tag") >= 2, "the tag events did not run")
    wait_for(lambda: runs_done(site, "on-build") >= 1, "the build event did not run")
    # A few more cycles: nothing else starts.
    polls = len(hub.rpc_log)
    wait_for(lambda: len(hub.rpc_log) >= polls + 3, "the master stopped polling", 60)
    time.sleep(2)  # a run started by a late duplicate would be requested by now
    assert event_lines(site, "on-tag") == expected_tags
    assert event_lines(site, "on-build") == expected_builds
    for pipeline in ("on-tag", "on-build"):
        requests = site.api(f"builders/{site.builder_ids()[pipeline]}/buildrequests")
        assert len(requests["buildrequests"]) == len(
            expected_tags if pipeline == "on-tag" else expected_builds
        )
    (fired,) = object_state(site, "koji_fired")
    assert len(fired) == len(set(fired)) == 3
    assert object_state(site, "koji_firing") == [None]
