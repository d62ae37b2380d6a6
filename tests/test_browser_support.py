"""tests/support/browser.py: the system Chromium driven by Playwright, on loopback only.

Skipped only when no Chromium is installed (scripts/bootstrap.sh installs it, so CI runs
these)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gating.localsite import free_port
from tests.support.browser import (
    NO_CHROMIUM,
    artifacts_dir,
    browser_page,
    buildbot_login,
    buildbot_user,
    chromium_path,
)

pytestmark = pytest.mark.skipif(chromium_path() is None, reason=NO_CHROMIUM)

PAGE = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>browser support</title></head>
<body>
<p id="text">before</p>
<button id="go" onclick="document.getElementById('text').textContent = 'after';
  console.log('clicked')">Go</button>
<img src="http://example.invalid/tracker.png" alt="">
</body></html>
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE if self.path == "/" else b"not found\n"
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_chromium_path_honours_gating_chromium(monkeypatch, tmp_path):
    fake = tmp_path / "chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GATING_CHROMIUM", str(fake))
    assert chromium_path() == str(fake)
    monkeypatch.setenv("GATING_CHROMIUM", str(tmp_path / "missing"))
    assert chromium_path() is None


def test_artifacts_dir_honours_gating_test_artifacts(monkeypatch, tmp_path):
    monkeypatch.setenv("GATING_TEST_ARTIFACTS", str(tmp_path / "art"))
    assert artifacts_dir() == tmp_path / "art"
    assert (tmp_path / "art").is_dir()


def test_a_page_is_clicked_and_its_screenshot_and_console_saved(page_server, tmp_path):
    artifacts = tmp_path / "artifacts"
    with browser_page(artifacts, "click test") as page:
        page.goto(page_server)
        assert page.locator("#text").text_content() == "before"
        page.click("#go")
        page.wait_for_function("document.getElementById('text').textContent === 'after'")
        assert page.locator("#text").text_content() == "after"
    screenshot = artifacts / "click_test.png"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = (artifacts / "click_test.console.txt").read_text()
    assert "console.log: clicked" in console
    # The image on another host was never fetched.
    assert "blocked: http://example.invalid/tracker.png" in console


def test_without_the_request_filter_other_hosts_are_still_unreachable(page_server, tmp_path):
    with browser_page(tmp_path, "unfiltered", filter_requests=False) as page:
        page.goto(page_server)  # loopback is reached directly
        page.click("#go")
        assert page.locator("#text").text_content() == "after"
        # Neither resolved nor fetched: the dead proxy or the resolver rules fail it.
        page.wait_for_function(
            "[...document.images].every(i => i.complete && i.naturalWidth === 0)"
        )
    console = (tmp_path / "unfiltered.console.txt").read_text()
    assert "requestfailed: http://example.invalid/tracker.png" in console
    assert "blocked:" not in console


def test_the_artifacts_are_saved_when_the_block_fails(page_server, tmp_path):
    with pytest.raises(AssertionError, match="on purpose"):
        with browser_page(tmp_path, "failing") as page:
            page.goto(page_server)
            raise AssertionError("on purpose")
    assert (tmp_path / "failing.png").exists()
    assert (tmp_path / "failing.console.txt").exists()


# -- logging in to a real Buildbot ------------------------------------------------------

MASTER_CFG = """\
from buildbot.plugins import schedulers, util, worker

c = BuildmasterConfig = {{}}
c["title"] = "browser login test"
c["buildbotURL"] = "http://127.0.0.1:{port}/"
c["buildbotNetUsageData"] = None
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["protocols"] = {{"pb": {{"port": "tcp:{pb_port}:interface=127.0.0.1"}}}}
c["workers"] = [worker.Worker("w", "pw")]
c["builders"] = [util.BuilderConfig(name="b", workernames=["w"], factory=util.BuildFactory())]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b"])]
c["www"] = {{
    "port": "tcp:{port}:interface=127.0.0.1",
    "plugins": {{}},
    "auth": util.UserPasswordAuth({{"alice": "s3cret"}}),
}}
"""


def _buildbot(*args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "buildbot")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def buildbot_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bare Buildbot 4.3 master with ``UserPasswordAuth`` (alice / s3cret)."""
    base = tmp_path_factory.mktemp("buildbot-login") / "master"
    port = free_port()
    proc = _buildbot("create-master", "--quiet", str(base))
    assert proc.returncode == 0, proc.stderr
    (base / "master.cfg").write_text(
        textwrap.dedent(MASTER_CFG.format(port=port, pb_port=free_port()))
    )
    proc = _buildbot("start", str(base))
    assert proc.returncode == 0, proc.stdout + proc.stderr + (base / "twistd.log").read_text()
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "config", timeout=5).close()
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        _buildbot("stop", str(base))


def test_buildbot_login_helper(buildbot_url, tmp_path):
    with browser_page(tmp_path, "login") as page:
        assert buildbot_user(page, buildbot_url) is None
        with pytest.raises(RuntimeError, match="HTTP 401"):
            buildbot_login(page, buildbot_url, "alice", "wrong")
        buildbot_login(page, buildbot_url, "alice", "s3cret")
        page.goto(buildbot_url + "#/")
        # The web UI itself shows the user (its top bar's user menu).
        page.get_by_text("alice", exact=True).first.wait_for(timeout=15000)
        assert buildbot_user(page, buildbot_url) == "alice"


def test_buildbot_login_with_http_credentials(buildbot_url, tmp_path):
    with browser_page(tmp_path, "login-creds", http_credentials=("alice", "s3cret")) as page:
        page.goto(buildbot_url + "auth/login")
        assert buildbot_user(page, buildbot_url) == "alice"


def test_buildbot_login_with_credentials_in_the_url(buildbot_url, tmp_path):
    with browser_page(tmp_path, "login-url") as page:
        page.goto(buildbot_url.replace("http://", "http://alice:s3cret@") + "auth/login")
        assert buildbot_user(page, buildbot_url) == "alice"
