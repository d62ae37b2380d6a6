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
import json
import re
import shutil
import subprocess
import threading
import time
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
from tests.integration.test_gate import git, queue_json
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


@pytest.fixture(scope="module")
def site(make_site, hub):
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
        # scaled down for the test: production waits up to 60 s between attempts
        "outage-retry-max": 2,
        "outage-timeout": 900,
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


class GateRecorder(threading.Thread):
    """Reads ``gating queue --json`` every half second: every state and history line of
    each item, and the gate-level notes, with the time they were seen."""

    def __init__(self, site) -> None:
        super().__init__(daemon=True)
        self.site = site
        self.states: dict[str, list[str]] = collections.defaultdict(list)
        self.history: dict[str, list[str]] = {}
        self.notes: list[tuple[float, dict]] = []
        self.holding: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                status = queue_json(self.site)
            except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired):
                time.sleep(0.2)
                continue
            now = time.monotonic()
            items = [i for q in status["queues"] for i in q["items"]] + status["finished"]
            for item in items:
                states = self.states[item["change"]]
                if not states or states[-1] != item["state"]:
                    states.append(item["state"])
                self.history[item["change"]] = item["history"]
                if item["export"] == "holding":
                    self.holding.append((now, item["change"]))
            self.notes.extend((now, note) for note in status.get("notes", []))
            self.halt.wait(0.5)


def wait_until(what: str, condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def holder(site) -> str | None:
    for queue in queue_json(site)["queues"]:
        for item in queue["items"]:
            if item["export"] == "holding":
                return item["change"]
    return None


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
        exporting = holder(site)  # the master answers: only the hub is down
        assert exporting is not None, "no change holds the export section"
        time.sleep(max(0.0, down + REFUSED_SECONDS - time.monotonic()))
        wait_until("the hub to listen again", lambda: hub.request_count > requests_before, 60)
        time.sleep(max(0.0, down + REFUSED_SECONDS + UNAVAILABLE_SECONDS - 1 - time.monotonic()))
        # Still down: the same change holds the section (a tagBuild task the hub had
        # accepted may have run meanwhile, but nothing merged).
        status = queue_json(site)
        assert holder(site) == exporting
        merged = {i["change"] for i in status["finished"] if i["state"] == "merged"}
        assert not merged & set(keys[keys.index(exporting) :]), merged
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
    # The section stayed with its holder through the outage (it waited, nobody else
    # started one).
    during = [change for at, change in recorder.holding if down + 1 < at < up - 1]
    assert during and set(during) == {exporting}, during

    # The gate said why it paused: a gate-level note naming the hub, not its password.
    notes = [note for at, note in recorder.notes if down <= at <= up + 5]
    assert notes, "no gate note during the outage"
    assert all(n["kind"] == "hub-unreachable" and n["hub"] == hub.url for n in notes)
    assert any("build backend" in n["users"] for n in notes)
    assert any("koji events" in n["users"] for n in notes)
    assert all(PASSWORD not in json.dumps(n) for n in notes)
    assert hub.url in notes[-1]["text"]
    assert not [n for at, n in recorder.notes if at > up + 30], "the note outlived the outage"

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
