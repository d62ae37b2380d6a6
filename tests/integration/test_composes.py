"""Compose locations start pipelines, and their check reports agree in JSON, mail and the UI.

Composes are real productmd metadata (tests/support/composes.py) served over loopback HTTP;
a STATUS-less nightly is judged by its koji tasks on the koji test hub; mail goes to an
SMTP sink on loopback through Buildbot's mail reporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email import message_from_bytes
from pathlib import Path

import pytest
import yaml
from aiosmtpd.controller import Controller

from gating.localsite import free_port
from tests.integration.conftest import FAILURE, SUCCESS
from tests.support.browser import artifacts_dir, browser_page
from tests.support.composes import ComposeServer, image, set_status, write_compose
from tests.support.koji_hub import KojiTestHub

GATING = str(Path(sys.executable).parent / "gating")
JOB = "compose-tests/workstation-live/x86_64"
RAWHIDE_A = "Fedora-Rawhide-20261101.n.0"
RAWHIDE_B = "Fedora-Rawhide-20261102.n.0"
BRANCHED_1 = "Fedora-41-20261101.n.0"
BRANCHED_2 = "Fedora-41-20261102.n.0"
NIGHTLY = "Fedora-Nightly-20261103.n.0"
EXPECTED = [
    {"subvariant": "Workstation", "type": "live", "arch": "x86_64"},
    {"subvariant": "Server", "type": "dvd", "arch": "x86_64"},
    {"subvariant": "KDE", "type": "live", "arch": "x86_64"},
]
IMAGES_A = [
    image("Server", "dvd", "x86_64"),
    image("Workstation", "live", "x86_64"),
    image("Everything", "boot", "x86_64"),
]
IMAGES_B = [
    image("Server", "dvd", "x86_64"),
    image("Everything", "boot", "x86_64"),
    image("Cloud", "qcow2", "x86_64", subvariant="Cloud_Base"),
]


class Sink:
    """Keeps every message the SMTP server receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp():
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with KojiTestHub(tmp_path_factory.mktemp("hub")) as hub:
        hub.create_tag("f42")  # a hub always has events
        yield hub


@pytest.fixture(scope="module")
def composes(tmp_path_factory):
    root = tmp_path_factory.mktemp("composes")
    for name in ("rawhide", "branched", "nightly"):
        (root / name).mkdir()
    with ComposeServer(root) as server:
        yield root, server


def point(root: Path, location: str, compose_id: str) -> None:
    link = root / location / "latest"
    tmp = link.with_name("latest.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(compose_id)
    os.replace(tmp, link)


@pytest.fixture(scope="module")
def site(make_site, hub, composes, smtp):
    root, server = composes
    write_compose(root / "rawhide", RAWHIDE_A, IMAGES_A, status="STARTED")
    point(root, "rawhide", RAWHIDE_A)
    write_compose(root / "branched", BRANCHED_1, IMAGES_A, status="FINISHED")
    point(root, "branched", BRANCHED_1)
    # an old-style nightly: no STATUS, no composeinfo; its image task is still open
    write_compose(root / "nightly", NIGHTLY, IMAGES_A, status=None, composeinfo=False)
    point(root, "nightly", NIGHTLY)
    site = make_site("composes", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["composes"] = [
        {
            "name": name,
            "location": server.url_for(f"{name}/latest"),
            "poll-interval": 1,
            "expected": EXPECTED,
        }
        for name in ("rawhide", "branched", "nightly")
    ]
    data["koji-events"] = {"server": hub.url, "topurl": hub.topurl}
    data["mail"]["port"] = smtp[1]
    conf.write_text(yaml.safe_dump(data))
    site.nightly_task = hub.add_task(
        "createImage", ["Fedora-Workstation", "Rawhide", "20261103.n.0", {}], state="OPEN"
    )
    site.start()
    return site


def runs(site) -> list[dict]:
    """The compose pipeline's runs, each with its properties."""
    out = []
    for build in site.builds_of("compose-tests"):
        out.append({**build, "props": site.properties(build["buildid"])})
    return sorted(out, key=lambda b: b["number"])


def compose_runs(site) -> list[tuple[str, str]]:
    return [(r["props"]["compose_name"], r["props"]["compose_id"]) for r in runs(site)]


def report(site, compose_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(plugin(site, f"api/compose-reports/{compose_id}"))
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        time.sleep(0.5)
    raise TimeoutError(f"no report of {compose_id}")


def plugin(site, path: str) -> bytes:
    with urllib.request.urlopen(f"{site.url}plugins/gating/{path}", timeout=10) as answer:
        return answer.read()


def wait_polls(site, seconds: float = 4) -> None:
    time.sleep(seconds)


def test_a_finished_location_triggers_while_another_is_still_started(site):
    build = site.wait_for_build("compose-tests", 1)
    assert compose_runs(site) == [("branched", BRANCHED_1)]
    props = runs(site)[0]["props"]
    assert props["compose_status"] == "FINISHED"
    assert [i["subvariant"] for i in props["compose_images"]] == [
        "Everything",
        "Server",
        "Workstation",
    ]
    assert build["results"] == SUCCESS
    wait_polls(site)
    # rawhide is STARTED and the nightly's task is open: neither triggered
    assert compose_runs(site) == [("branched", BRANCHED_1)]


def test_finished_incomplete_triggers_once(site, composes):
    root, _ = composes
    set_status(root / "rawhide" / RAWHIDE_A, "FINISHED_INCOMPLETE")
    site.wait_for_build("compose-tests", 2)
    wait_polls(site)
    assert compose_runs(site) == [("branched", BRANCHED_1), ("rawhide", RAWHIDE_A)]
    assert runs(site)[1]["props"]["compose_status"] == "FINISHED_INCOMPLETE"
    data = report(site, RAWHIDE_A)
    assert (data["result"], data["previous"], data["failed_jobs"]) == ("passed", None, [])


def test_doomed_is_reported_as_failed_without_a_run(site, composes):
    root, _ = composes
    write_compose(root / "branched", BRANCHED_2, IMAGES_A, status="DOOMED")
    point(root, "branched", BRANCHED_2)
    data = report(site, BRANCHED_2)
    assert (data["result"], data["state"], data["compose"]["status"]) == (
        "failed",
        "doomed",
        "DOOMED",
    )
    wait_polls(site, 3)
    assert ("branched", BRANCHED_2) not in compose_runs(site)


def test_a_statusless_nightly_waits_for_its_open_koji_tasks(site, hub):
    wait_polls(site, 3)
    assert ("nightly", NIGHTLY) not in compose_runs(site)
    hub.set_task_state(site.nightly_task, "CLOSED")
    deadline = time.monotonic() + 120
    while ("nightly", NIGHTLY) not in compose_runs(site):
        assert time.monotonic() < deadline, "the nightly did not trigger"
        time.sleep(0.5)
    report(site, NIGHTLY)
    wait_polls(site, 3)
    assert compose_runs(site).count(("nightly", NIGHTLY)) == 1


def test_the_report_of_two_composes_agrees_in_json_mail_ui_and_cli(site, composes, smtp):
    root, server = composes
    write_compose(root / "rawhide", RAWHIDE_B, IMAGES_B, status="FINISHED")
    point(root, "rawhide", RAWHIDE_B)
    data = report(site, RAWHIDE_B)
    keys = lambda images: [(i["subvariant"], i["type"], i["arch"]) for i in images]  # noqa: E731
    assert data["previous"] == RAWHIDE_A
    assert keys(data["added"]) == [("Cloud_Base", "qcow2", "x86_64")]
    assert keys(data["removed"]) == [("Workstation", "live", "x86_64")]
    assert data["missing_expected"] == [
        {"subvariant": "KDE", "type": "live", "arch": "x86_64"},
        {"subvariant": "Workstation", "type": "live", "arch": "x86_64"},
    ]
    run = next(r for r in runs(site) if r["props"]["compose_id"] == RAWHIDE_B)
    job = next(b for b in site.builds_of(JOB) if b["buildid"] > 0 and b["results"] == FAILURE)
    assert run["results"] == FAILURE
    assert len(data["failed_jobs"]) == 1
    failed = data["failed_jobs"][0]
    assert (failed["name"], failed["result"]) == (JOB, "failure")
    assert failed["url"].endswith(f"/#/builders/{job['builderid']}/builds/{job['number']}")
    assert data["result"] == "failed"

    # the JSON file, the API and the CLI agree
    stored = json.loads((site.master_dir / "compose-reports" / f"{RAWHIDE_B}.json").read_text())
    assert stored == data
    cli = subprocess.run(
        [
            GATING,
            "compose-check",
            server.url_for("rawhide/latest"),
            "--previous",
            server.url_for(f"rawhide/{RAWHIDE_A}"),
            "--json",
            *[f"--expected={e['subvariant']}:{e['type']}:{e['arch']}" for e in EXPECTED],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1, cli.stderr  # expected images are missing
    from_cli = json.loads(cli.stdout)
    for key in ("added", "removed", "missing_expected"):
        assert from_cli[key] == data[key]

    # the mail
    sink, _ = smtp
    deadline = time.monotonic() + 60
    while not any(RAWHIDE_B.encode() in m[2] for m in sink.messages):
        assert time.monotonic() < deadline, "no mail for the report"
        time.sleep(0.5)
    sender, rcpt, content = next(m for m in sink.messages if RAWHIDE_B.encode() in m[2])
    mail = message_from_bytes(content)
    assert (sender, rcpt) == ("gating@example.org", ["qa@example.org"])
    assert mail["Subject"] == data["subject"] == f"Compose check report: {RAWHIDE_B} (FINISHED)"
    body = mail.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert body.strip() == data["text"].strip()
    # one mail per report: rawhide A, branched 2 (DOOMED), the nightly, rawhide B, branched 1
    subjects = sorted(message_from_bytes(m[2])["Subject"] for m in sink.messages)
    assert len(subjects) == len(set(subjects)) == 5

    # the UI page
    page = plugin(site, f"compose/{RAWHIDE_B}").decode()
    assert f"Compose check report: {RAWHIDE_B}" in page
    for item in data["added"] + data["removed"]:
        assert item["path"] in page
    assert "KDE live x86_64" in page and failed["url"] in page
    index = plugin(site, "compose/").decode()
    for compose_id in (RAWHIDE_A, RAWHIDE_B, BRANCHED_1, BRANCHED_2, NIGHTLY):
        assert compose_id in index

    # the pages of Buildbot's web UI (Gate > Compose reports), in headless Chromium
    with browser_page(artifacts_dir(), "compose-report") as browser:
        browser.goto(site.url + "#/gate/composes")
        rows = browser.locator("[data-testid=compose-row]")
        rows.first.wait_for()
        listed = rows.all_inner_texts()
        for compose_id in (RAWHIDE_A, RAWHIDE_B, BRANCHED_1, BRANCHED_2, NIGHTLY):
            assert any(compose_id in row for row in listed), listed
        browser.get_by_role("link", name=RAWHIDE_B, exact=True).click()
        browser.locator("[data-testid=compose-page]").wait_for()
        assert browser.locator("[data-testid=compose-result]").inner_text() == "failed"
        added = browser.locator("[data-testid=compose-added]").inner_text()
        removed = browser.locator("[data-testid=compose-removed]").inner_text()
        assert [i["path"] in added for i in data["added"]] == [True]
        assert [i["path"] in removed for i in data["removed"]] == [True]
        missing = browser.locator("[data-testid=compose-missing] li").all_inner_texts()
        assert missing == ["KDE live x86_64", "Workstation live x86_64"]
        link = browser.locator("[data-testid=compose-failed] a")
        assert (link.inner_text(), link.get_attribute("href")) == (JOB, failed["url"])
