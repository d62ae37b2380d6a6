"""The web UI in headless Chromium against a real master with real workers over PB: the
Gate page (a queue of three items: one failing, the one behind it reset), its live update
when an item merges, the pipeline view, and who may control the gate."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.test_gate import GATING, make_seeds, propose
from tests.support.browser import (
    NO_CHROMIUM,
    artifacts_dir,
    browser_page,
    buildbot_login,
    chromium_path,
)

pytestmark = pytest.mark.skipif(chromium_path() is None, reason=NO_CHROMIUM)

ADMIN_PASSWORD = "s3cret-admin-pw"  # written to the site's secrets dir by the test


def items(page) -> list[tuple[str, str]]:
    loc = page.locator("[data-testid=gate-queue] [data-testid=gate-item]")
    return [
        (loc.nth(i).get_attribute("data-change"), loc.nth(i).get_attribute("data-state"))
        for i in range(loc.count())
    ]


def item(page, key: str):
    return page.locator(f'[data-testid=gate-queue] [data-testid=gate-item][data-change="{key}"]')


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_gate_page_shows_the_queue_updates_live_and_only_admins_control_it(make_site):
    site = make_site("webui", start=False, secrets={"admin-password": ADMIN_PASSWORD})
    make_seeds(site.basedir)
    site.start()
    a = propose(site, "nova", {"a.txt": "A\n", "a.duration": "25"}, "A: nova change")
    b = propose(site, "ceilometer", {"b.txt": "B\n", "FAIL": "x"}, "B: ceilometer change")
    c = propose(site, "nova", {"c.txt": "C\n", "c.duration": "300"}, "C: nova change")
    A, B, C = f"nova~{a}", f"ceilometer~{b}", f"nova~{c}"
    url = site.url
    # Anonymous users may not approve.
    assert post(url + "plugins/gating/api/approve", {"project": "nova", "change": a})[0] == 403

    # The admin approves with the CLI (it logs in to Buildbot first).
    env = {**os.environ, "GATING_PASSWORD": ADMIN_PASSWORD}
    for project, number in (("nova", a), ("ceilometer", b), ("nova", c)):
        proc = subprocess.run(
            [GATING, "approve", project, str(number), "--url", url, "--user", "admin"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
    with browser_page(artifacts_dir(), "webui-anonymous") as page:
        page.goto(url + "#/gate")
        page.locator("[data-testid=gate-page][data-loaded=true]").wait_for()
        # B fails (its packstack job), C is reset and tested again on top of A alone.
        item(page, B).locator("[data-testid=item-reason]").wait_for(timeout=120_000)
        item(page, C).locator("[data-testid=item-reset]").wait_for(timeout=60_000)
        page.wait_for_function(
            """key => {
                const el = document.querySelector(
                    `[data-testid=gate-queue] [data-testid=gate-item][data-change="${key}"]`);
                return el && el.querySelectorAll('[data-testid=gate-job]').length === 3
                  && el.querySelector('[data-testid=item-ahead]')
                  && el.querySelector('[data-testid=item-attempt]').textContent === 'attempt 2';
            }""",
            arg=C,
            timeout=60_000,
        )
        # What a person sees: the items in order, B's reason, C's new base, the arches.
        assert items(page) == [(A, "testing"), (B, "failing"), (C, "testing")]
        reason = item(page, B).locator("[data-testid=item-reason]").inner_text()
        assert "job packstack on x86_64: failure" in reason
        ahead = item(page, C).locator("[data-testid=ahead-change]").all_inner_texts()
        assert ahead == [A]
        assert f"{B} failed" in item(page, C).locator("[data-testid=item-reset]").inner_text()
        assert item(page, B).locator("[data-testid=ahead-change]").all_inner_texts() == [A]
        jobs = item(page, A).locator("[data-testid=gate-job]")
        arches = [
            (jobs.nth(i).get_attribute("data-job"), jobs.nth(i).get_attribute("data-arch"))
            for i in range(jobs.count())
        ]
        assert arches == [("unit", "x86_64"), ("unit", "aarch64"), ("packstack", "x86_64")]
        visible_arches = item(page, A).locator("[data-testid=job-arch]").all_inner_texts()
        assert visible_arches == ["x86_64", "aarch64", "x86_64"]
        page.screenshot(path=str(artifacts_dir() / "gate-page-three-items.png"), full_page=True)
        assert (artifacts_dir() / "gate-page-three-items.png").stat().st_size > 10_000

        # Anonymous: no control on the page, and the REST calls are refused.
        assert page.locator("[data-testid=gate-page]").get_attribute("data-admin") == "false"
        for control in ("dequeue", "stop-build", "rebuild-build", "reenqueue"):
            assert page.locator(f"[data-testid={control}]").count() == 0
        status, body = post(url + "plugins/gating/api/dequeue", {"change": C})
        assert status == 403 and "admins" in body["error"]
        answer = page.request.post(url + "plugins/gating/api/dequeue", data={"change": C})
        assert answer.status == 403
        pipeline_build = item(page, A).locator("[data-testid=gate-job]").first
        buildid = int(
            json.loads(urllib.request.urlopen(url + "plugins/gating/api/gate").read())["queues"][0][
                "items"
            ][0]["jobs"][0]["buildid"]
        )
        assert pipeline_build.get_attribute("data-state") == "success"
        stop = page.request.post(
            url + f"api/v2/builds/{buildid}",
            data={"jsonrpc": "2.0", "method": "rebuild", "params": {}, "id": 1},
        )
        assert stop.status == 403
        # Buildbot's own control endpoints too: stop a build, force a pipeline.
        for endpoint, method, params in (
            (f"api/v2/builds/{buildid}", "stop", {"reason": "anonymous"}),
            ("api/v2/forceschedulers/force-gate", "force", {"builderid": 1}),
        ):
            status, _ = post(
                url + endpoint, {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
            )
            assert status == 403, (endpoint, method, status)
        assert pipeline_build.get_attribute("data-state") == "success"

        # A merges: the page shows it without a reload.
        page.evaluate("window.__gatingNoReload = true")
        page.locator(f'[data-testid=finished-item][data-change="{A}"][data-state=merged]').wait_for(
            timeout=120_000
        )
        assert page.evaluate("window.__gatingNoReload") is True
        wait_for(lambda: A not in dict(items(page)), 10, f"{A} to leave the queue")
        page.locator(
            f'[data-testid=finished-item][data-change="{B}"][data-state=dequeued]'
        ).wait_for(timeout=30_000)
        assert items(page) == [(C, "testing")]

        # The pipeline view of A's run: its stages with their jobs per arch.
        item_a = page.locator(f'[data-testid=finished-item][data-change="{A}"]')
        item_a.locator("[data-testid=pipeline-link]").click()
        page.locator("[data-testid=run-page][data-state=success]").wait_for()
        stages = page.locator("[data-testid=run-stage]")
        assert stages.count() == 2
        lanes = stages.nth(0).locator("[data-testid=run-lane]")
        assert [lanes.nth(i).get_attribute("data-arch") for i in range(lanes.count())] == [
            "x86_64",
            "aarch64",
        ]
        assert stages.nth(1).locator("[data-testid=run-job]").get_attribute("data-job") == (
            "packstack"
        )
        page.screenshot(path=str(artifacts_dir() / "pipeline-run.png"), full_page=True)

    # The admin sees the controls and dequeues C from the page.
    with browser_page(artifacts_dir(), "webui-admin") as admin:
        buildbot_login(admin, url, "admin", ADMIN_PASSWORD)
        admin.goto(url + "#/gate")
        admin.locator("[data-testid=gate-page][data-admin=true]").wait_for()
        c_item = item(admin, C)
        c_item.locator("[data-testid=dequeue]").click()
        c_item.locator("[data-testid=dequeue-reason]").fill("needs a rebase; $(rm -rf ~)")
        c_item.locator("[data-testid=dequeue-confirm]").click()
        finished_c = admin.locator(
            f'[data-testid=finished-item][data-change="{C}"][data-state=dequeued]'
        )
        finished_c.wait_for(timeout=30_000)
        assert "needs a rebase; $(rm -rf ~) (by admin)" in finished_c.inner_text()
        assert items(admin) == []
        admin.screenshot(path=str(artifacts_dir() / "gate-page-admin.png"), full_page=True)
        # The admin's REST calls are let through (a refusal on the merits is a 400).
        answer = admin.request.post(url + "plugins/gating/api/dequeue", data={"change": C})
        assert answer.status == 400 and "not in the gate" in answer.json()["error"]
