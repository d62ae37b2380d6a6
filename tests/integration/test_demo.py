"""The README's first command, run as written: it starts the demo master with its
workers, the web UI answers on http://127.0.0.1:8010; the demo's change goes through the
gate with the local build backend (scratch build on a worker, install test from the
overlay, export): its RPM appears in the local destination repository after the merge,
and the merge runs the sample pipeline; all builds pass; Ctrl-C stops everything."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gating.localsite import REPO_ROOT

UI = "http://127.0.0.1:8010/"


def get(path: str) -> bytes:
    with urllib.request.urlopen(UI + path, timeout=10) as resp:
        return resp.read()


def api(path: str) -> dict:
    return json.loads(get("api/v2/" + path))


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def demo(tmp_path: Path):
    for port in (8010, 9989):
        if not port_free(port):
            pytest.fail(f"port {port} is taken: stop whatever runs there (a demo?) first")
    basedir = tmp_path / "demo"
    proc = subprocess.Popen(
        [str(REPO_ROOT / "scripts" / "demo.sh"), "--basedir", str(basedir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        else:
            pytest.fail("demo exited early:\n" + "".join(lines))
        yield proc, basedir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_readme_run_command_gates_a_change_and_serves_the_ui(demo):
    proc, basedir = demo
    assert b"<html" in get("").lower()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        builds = api("builds?complete=true")["builds"]
        names = {b["builderid"]: b["name"] for b in api("builders")["builders"]}
        done: dict[str, list[int]] = {}
        for b in builds:
            done.setdefault(names[b["builderid"]], []).append(b["results"])
        if "sample" in done:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the gate and the sample pipeline did not finish: {done}")
    assert done == {
        "gate": [0],
        "gate/build/master": [0],
        "gate/install/x86_64": [0],
        "gate/export/master": [0],
        "gating-rpmbuild": [0, 0],  # the scratch build, then the release build
        "sample": [0],
        "sample/build/x86_64": [0],
        "sample/lint/x86_64": [0],
        "sample/lint/aarch64": [0],
        "sample/inspect/x86_64": [0],
        "sample/test/aarch64": [0],
    }
    # The change merged, and its RPM is in the local destination repository.
    with urllib.request.urlopen(UI + "plugins/gating/api/queue", timeout=10) as resp:
        queue = json.load(resp)
    assert [i["state"] for i in queue["finished"]] == ["merged"]
    repo = basedir / "master" / "backend" / "local" / "tags" / "demo"
    assert [p.name for p in repo.glob("Packages/*/*.rpm")] == ["hello-gating-1.0-1.noarch.rpm"]
    listing = get("plugins/gating/repos/tags/demo/repodata/repomd.xml")
    assert b"primary" in listing
    # The sample pipeline ran on the merge, through the git poller.
    changes = api("changes")["changes"]
    assert {c["project"] for c in changes} == {"sample-distgit"}
    # Console, grid and waterfall views are installed.
    index = get("").decode()
    for view in ("console_view", "grid_view", "waterfall_view"):
        assert view in index

    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 0
    assert port_free(8010)
    assert not (basedir / "master" / "twistd.pid").exists()
