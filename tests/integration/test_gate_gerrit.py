"""The gate on Gerrit: a Gerrit test server on loopback (REST + events-log, the protocol
Buildbot's Gerrit poller and our REST client speak), a real master and workers: an approval
enqueues, success submits through REST, failure votes Verified-1 with the reason."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.integration.test_gate import queue_json, wait_until_finished
from tests.support.gerrit_server import GerritTestServer


@pytest.fixture(scope="module")
def gerrit(tmp_path_factory):
    # Module-scoped and requested before make_site: the masters stop before Gerrit does.
    root = tmp_path_factory.mktemp("gerrit-server")
    server = GerritTestServer(root / "gerrit", user="gate", password="s3cret-gerrit-pw")
    server.start()
    server.create_project("nova", ["main"], {"nova.spec": "Name: openstack-nova\n"})
    yield server
    server.stop()


def test_approval_enqueues_success_submits_failure_votes_verified_minus_one(gerrit, make_site):
    site = make_site("gerrit", start=False)
    conf = site.config_dir / "gating.yaml"
    data = yaml.safe_load(conf.read_text())
    data["gerrit"] = {
        "url": gerrit.url,
        "user": "gate",
        "password-secret": "gerrit-password",
        "git-url": str(gerrit.root / "git" / "{project}.git"),
        "approvals": {"Code-Review": 2, "Workflow": 1},
    }
    conf.write_text(yaml.safe_dump(data))
    secret = site.master_dir / "secrets" / "gerrit-password"
    secret.write_text("s3cret-gerrit-pw")
    os.chmod(secret, 0o600)
    site.start()

    good = gerrit.upload_change("nova", "main", {"a.txt": "A\n"}, "A: good change")
    bad = gerrit.upload_change("nova", "main", {"FAIL": "x\n", "DURATION": "1\n"}, "B: breaks")
    unapproved = gerrit.upload_change("nova", "main", {"c.txt": "C\n"}, "C: only reviewed")
    gerrit.approve("nova", good, {"Code-Review": 2, "Workflow": 1})
    gerrit.approve("nova", bad, {"Code-Review": 2, "Workflow": 1})
    gerrit.approve("nova", unapproved, {"Code-Review": 2})

    finished = wait_until_finished(site, [f"nova~{good}", f"nova~{bad}"])
    assert finished[f"nova~{good}"]["state"] == "merged"
    assert finished[f"nova~{bad}"]["state"] == "dequeued"
    # The gate (and its page) links each change to its page on Gerrit.
    assert finished[f"nova~{good}"]["url"] == f"{gerrit.url}/c/nova/+/{good}"

    assert gerrit.status("nova", good) == "MERGED"
    assert gerrit.status("nova", bad) == "NEW"
    submits = [p for m, p in gerrit.request_log if m == "POST" and p.endswith("/submit")]
    assert len(submits) == 1 and f"~{good}/" in submits[0] + "/"
    votes = [r for r in gerrit.reviews("nova", bad) if r["user"] == "gate"]
    assert votes[-1]["labels"] == {"Verified": -1}
    assert "job packstack on x86_64: failure" in votes[-1]["message"]
    # Code-Review+2 alone does not meet the rule: that change never entered the gate.
    status = queue_json(site)
    seen = {i["change"] for q in status["queues"] for i in q["items"]}
    seen |= {i["change"] for i in status["finished"]}
    assert f"nova~{unapproved}" not in seen
    # The Gerrit password is nowhere in the master's log or the gate's API answer.
    log = (site.master_dir / "twistd.log").read_text()
    assert "s3cret-gerrit-pw" not in log
    assert "s3cret-gerrit-pw" not in json.dumps(status)
