"""The koji hub down for a while: the gate pauses, no item fails for it, and it resumes by
itself (issue 9).

A real master and workers, the koji backend (rebuild mode) and the koji test hub (real
``rpmbuild``), and the koji events poller on the same hub. Four changes of two projects
are gated; while the first one holds the export section (its non-scratch build running)
and the others' scratch builds are in flight, the hub stops listening (connections
refused), comes back on the same port answering ``503 Service Unavailable`` to every call
for a while more, then answers again.

The "several minutes" of a real outage are scaled down: the backend waits at most 2 s
between two attempts (``outage-retry-max: 2``; 60 s by default) and the hub is down for
about 24 s, so every waiting call retries about ten times; the poller polls every 2 s.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.test_export_koji import (
    DEST,
    PASSWORD,
    USER,
    dest_history,
    scratch_tasks,
    seed_destination,
)
from tests.integration.test_export_local import approve, make_seeds, spec, wait_finished
from tests.integration.test_gate import git
from tests.support.koji_hub import KojiTestHub

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rpmbuild", "createrepo_c", "git", "curl")),
    reason="needs rpmbuild, createrepo_c, git and curl",
)

REFUSED_SECONDS = 12.0  # the hub's port is closed
UNAVAILABLE_SECONDS = 12.0  # then every call is answered 503
BUILD_DELAY = 8.0  # each buildArch task before the outage lasts at least this long

GATE_PIPELINE = """\
# Scratch builds of the item's speculative state, a check of its overlay (served by the
# master, not the hub), the serial export.
trigger: gate
pipeline:
  - build
  - check
  - export
jobs:
  build: {uses: koji-scratch-build}
  check:
    architectures: [x86_64]
    run: |
      sleep "$(cat DURATION 2>/dev/null || echo 1)"
      curl -sf -o /dev/null "${GATING_OVERLAY_URL%/}/repodata/repomd.xml"
      grep -q '^baseurl=' "$GATING_REPO_FILE"
  export: {uses: koji-export}
"""

TAG_PIPELINE = f"""\
# Every build tagged into the destination tag, as the koji events poller sees it.
trigger:
  koji_tag:
    tag: [{DEST}]
pipeline:
  - announce
jobs:
  announce:
    architectures: [x86_64]
    run: echo "tagged $GATING_NVR into $GATING_TAG"
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("hub"), first_event_id=2**31 + 17) as hub:
        hub.add_user(USER, PASSWORD, perms=["repo"])
        hub.create_tag("rdo-build", arches="x86_64")
        hub.create_tag(DEST)
        hub.create_tag("rdo-liberty-candidate")
        hub.create_target("rdo-liberty", "rdo-build", DEST)
        yield hub


def outage_site(make_site, hub: KojiTestHub, outage: dict):
    """The koji backend on the test hub (rebuild mode), ``outage`` its outage settings; a
    gate pipeline and a pipeline on every tag event into the destination tag."""
    site = make_site("export-local", start=False)
    make_seeds(site.basedir)
    seed_destination(hub, site.basedir)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["backend"] = {
        "type": "koji",
        "server": hub.url,
        "topurl": hub.topurl,
        "auth": "password",
        "user": USER,
        "password-secret": "koji-password",
        "target": "rdo-liberty",
        "destination-tag": DEST,
        "export-mode": "rebuild",
        "poll-interval": 1,
        **outage,
    }
    data["koji-events"] = {"source": "poll", "poll-interval": 2}  # the backend's hub
    conf.write_text(yaml.safe_dump(data))
    pipelines = site.config_dir / "pipelines"
    (pipelines / "packstack.yaml").unlink()
    (pipelines / "gate.yaml").write_text(GATE_PIPELINE)
    (pipelines / "on-tag.yaml").write_text(TAG_PIPELINE)
    secret = site.master_dir / "secrets" / "koji-password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    site.start()
    return site


@pytest.fixture(scope="module")
def site(make_site, hub):
    # scaled down for the test: production waits up to 60 s between attempts, 6 hours
    return outage_site(make_site, hub, {"outage-retry-max": 2, "outage-timeout": 900})


def propose_series(site, project: str, versions: list[str]) -> list[int]:
    """Changes of one project, each on top of the previous one (so that they merge)."""
    work = site.basedir / "dev" / f"{project}-series-{time.monotonic_ns()}"
    git(site.basedir, "clone", "-q", str(site.master_dir / "git" / f"{project}.git"), str(work))
    numbers = []
    for version in versions:
        (work / f"{project}.spec").write_text(spec(project, version))
        (work / "DURATION").write_text("1")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"{project} {version}")
        out = subprocess.run(
            ["git", "push", "origin", "HEAD:refs/for/main"],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        )
        numbers.append(int(re.search(rf"change {project}~(\d+)", out.stdout + out.stderr)[1]))
    return numbers


def gate_queue(site) -> dict:
    """``gating queue --json``, read from the master's API directly (no CLI process to
    start: what the answer shows is at most a few milliseconds old)."""
    with urllib.request.urlopen(site.url + "plugins/gating/api/queue", timeout=30) as resp:
        return json.load(resp)


@dataclasses.dataclass
class Seen:
    """One reading of the gate, made between ``start`` and ``end`` (monotonic time)."""

    start: float
    end: float
    holder: str | None
    merged: frozenset[str]
    notes: list[dict]


class GateRecorder(threading.Thread):
    """Reads the gate every 0.3 s: every state of each item, who holds the export section,
    what merged, and the gate-level notes."""

    def __init__(self, site) -> None:
        super().__init__(daemon=True)
        self.site = site
        self.states: dict[str, list[str]] = collections.defaultdict(list)
        self.seen: list[Seen] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            start = time.monotonic()
            try:
                status = gate_queue(self.site)
            except (OSError, json.JSONDecodeError):
                time.sleep(0.2)
                continue
            items = [i for q in status["queues"] for i in q["items"]] + status["finished"]
            for item in items:
                states = self.states[item["change"]]
                if not states or states[-1] != item["state"]:
                    states.append(item["state"])
            holding = [i["change"] for i in items if i["export"] == "holding"]
            merged = frozenset(i["change"] for i in items if i["state"] == "merged")
            self.seen.append(
                Seen(start, time.monotonic(), (holding or [None])[0], merged, status["notes"])
            )
            self.halt.wait(0.3)

    def between(self, start: float, end: float) -> list[Seen]:
        """The readings made entirely between ``start`` and ``end``."""
        return [s for s in self.seen if start <= s.start and s.end <= end]


def wait_until(what: str, condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def gate_events(site) -> list[dict]:
    path = Path(site.master_dir) / "gate-events.jsonl"
    if not path.exists():  # no event yet
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_gate_waits_through_a_hub_outage_and_resumes_by_itself(site, hub):
    started = time.monotonic()
    events_before = len(gate_events(site))
    tag_runs_before = len(site.builds_of("on-tag"))
    nova = propose_series(site, "nova", ["14.0.1", "14.0.2"])
    ceilometer = propose_series(site, "ceilometer", ["9.0.1", "9.0.2"])
    order = [("nova", nova[0]), ("ceilometer", ceilometer[0])]
    order += [("nova", nova[1]), ("ceilometer", ceilometer[1])]
    keys = [f"{p}~{n}" for p, n in order]
    nvrs = ["nova-14.0.1-1", "ceilometer-9.0.1-1", "nova-14.0.2-1", "ceilometer-9.0.2-1"]
    recorder = GateRecorder(site)
    recorder.start()
    hub.build_delay = BUILD_DELAY
    before = {t["id"] for t in hub.tasks("build")}

    def in_flight(scratch: bool) -> list[dict]:
        return [
            t
            for t in hub.tasks("build")
            if t["id"] not in before
            and bool((t["request"][2] or {}).get("scratch")) == scratch
            and t["state"] in (0, 1)  # FREE, OPEN
        ]

    try:
        # The first change alone; once its scratch build is done, the three others: their
        # scratch builds run while the export section makes a non-scratch build (the hub's
        # builds last 8 s). The hub goes down when both are in flight.
        approve(site, *order[0])
        wait_until(
            "the first change's scratch build",
            lambda: any(t["state"] == 2 for t in scratch_tasks(hub) if t["id"] not in before),
        )
        for project, number in order[1:]:
            approve(site, project, number)
        wait_until(
            "an export section with scratch builds in flight",
            lambda: in_flight(scratch=False) and in_flight(scratch=True),
        )
        scratch_in_flight = in_flight(scratch=True)

        # The outage: the port closed, then 503 for every call. Builds started from now
        # on are quick again.
        hub.build_delay = 1.0
        down = time.monotonic()
        requests_before = hub.request_count
        hub.fail_next(kind="http503", duration=REFUSED_SECONDS + UNAVAILABLE_SECONDS)
        hub.fail_next(kind="refused", duration=REFUSED_SECONDS)
        time.sleep(REFUSED_SECONDS)
        wait_until("the hub to listen again", lambda: hub.request_count > requests_before, 60)
        time.sleep(max(0.0, down + REFUSED_SECONDS + UNAVAILABLE_SECONDS - time.monotonic()))
        up = time.monotonic()

        done = wait_finished(site, keys, timeout=300)
    finally:
        hub.build_delay = 0.0
        hub.clear_faults()
        recorder.halt.set()
        recorder.join(timeout=30)
    took = time.monotonic() - started

    # Every change merged, once, in gate order, and only with its RPM landed (once).
    assert [done[k]["state"] for k in keys] == ["merged"] * 4, json.dumps(done, indent=1)
    history = [(action, nvr) for _e, action, nvr in dest_history(hub) if nvr in nvrs]
    assert history == [("tag", nvr) for nvr in nvrs]
    assert [hub.tagged(DEST).count(nvr) for nvr in nvrs] == [1, 1, 1, 1]
    for project, versions in (("nova", ["14.0.1", "14.0.2"]), ("ceilometer", ["9.0.1", "9.0.2"])):
        log = git(site.master_dir / "git" / f"{project}.git", "log", "--format=%s", "main")
        assert [line for line in log.splitlines() if line.startswith(project + " ")] == [
            f"{project} {v}" for v in reversed(versions)
        ]
    holds = [
        json.loads(line)
        for line in (site.master_dir / "export-holds.jsonl").read_text().splitlines()
    ]
    holds = [h for h in holds if h["change"] in keys]
    assert [h["change"] for h in holds] == keys
    for first, second in zip(holds, holds[1:], strict=False):
        assert first["end"] <= second["start"]
    # One scratch build per (package, commit), one non-scratch build per change.
    urls = [t["request"][0] for t in scratch_tasks(hub) if t["id"] not in before]
    assert len(urls) == len(set(urls)) == 4

    # No item failed or was reset: one attempt each, nothing in their histories, no
    # failure event of the gate.
    for key in keys:
        assert done[key]["attempt"] == 1, done[key]
        assert recorder.states[key][-1] == "merged"
        assert not {"failing", "dequeued"} & set(recorder.states[key]), recorder.states[key]
        bad = [
            line
            for line in done[key]["history"]
            if re.search(r"fail|reset|not merged|dequeued|testing again", line)
        ]
        assert bad == [], done[key]["history"]
    events = [e["event"] for e in gate_events(site)[events_before:]]
    assert not {"job_failed", "export_failed", "dequeue"} & set(events), events
    # While the hub was down the gate paused: the section stayed with the change that
    # held it (it waited; nobody else started one), nothing merged, and the gate said why
    # in a note naming the hub (not its password).
    during = recorder.between(down + 0.5, up)
    assert len(during) >= 10, len(during)
    exporting = during[0].holder
    assert exporting in keys and {s.holder for s in during} == {exporting}, during
    assert {s.merged for s in during} == {during[0].merged}
    assert exporting not in during[0].merged
    notes = [n for s in recorder.between(down + 5, up) for n in s.notes]
    assert notes, "no gate note during the outage"
    assert all(n["kind"] == "hub-unreachable" and n["hub"] == hub.url for n in notes)
    assert {user for n in notes for user in n["users"]} == {"build backend", "koji events"}
    assert all(PASSWORD not in json.dumps(n) for n in notes)
    assert hub.url in notes[-1]["text"] and "unreachable since" in notes[-1]["text"]
    assert not [s for s in recorder.seen if s.start > up + 30 and s.notes], "a note outlived it"

    # The outage really was met: calls were answered 503 and the poller polled through.
    outcomes = collections.Counter(outcome for _m, _s, outcome in hub.rpc_log)
    assert outcomes["http503"] >= 10, outcomes
    assert scratch_in_flight  # scratch builds were in flight when the hub went down

    # The koji events poller delivered each tag event once: one run per NVR.
    wait_until(
        "the tag events' runs",
        lambda: (
            len([b for b in site.builds_of("on-tag") if b["complete"]])
            >= tag_runs_before + len(nvrs)
        ),
        120,
    )
    time.sleep(5)  # a few more poll cycles: nothing is delivered twice
    runs = site.builds_of("on-tag")[tag_runs_before:]
    announced = collections.Counter(site.properties(b["buildid"]).get("nvr") for b in runs)
    assert announced == collections.Counter(nvrs), announced
    print(f"hub outage test: {took:.0f} s for four changes through a 24 s outage")


def test_an_outage_longer_than_the_outage_timeout_fails_the_item_naming_the_hub(make_site, hub):
    site = outage_site(make_site, hub, {"outage-retry-max": 1, "outage-timeout": 4})
    (number,) = propose_series(site, "nova", ["15.0.1"])
    before = {t["id"] for t in hub.tasks("build")}
    hub.build_delay = 5.0
    try:
        approve(site, "nova", number)
        wait_until(
            "its scratch build",
            lambda: [t for t in hub.tasks("build") if t["id"] not in before and t["state"] == 1],
        )
        hub.fail_next(kind="refused", duration=15)
        done = wait_finished(site, [f"nova~{number}"], timeout=120)
    finally:
        hub.build_delay = 0.0
    item = done[f"nova~{number}"]
    assert item["state"] == "dequeued", item
    reason = item["reason"]
    assert f"koji hub {hub.url} unreachable: getTaskInfo(" in reason, reason
    assert "more than the outage timeout of 4 s (backend 'outage-timeout')" in reason
    assert "Connection refused" in reason and PASSWORD not in reason
    assert "nova-15.0.1-1" not in hub.tagged(DEST)
