"""A private crossbar WAMP router for tests: the real ``crossbar`` on a free loopback port,
its node directory (generated ``config.json``, keys, logs) in a temporary directory, one
realm where anonymous clients may publish and subscribe to anything (what Buildbot's
``wamp`` message queue needs between masters).

crossbar lives in a virtualenv of its own (``.venv-crossbar``, made by
``scripts/bootstrap.sh``): it pulls in about a hundred packages (web3, numpy, ...) and
pins ``idna==2.5``, which the master's virtualenv must not get. ``CROSSBAR`` overrides
the program; ``crossbar`` on ``PATH`` is the last resort.

    with CrossbarRouter(root) as router:
        router.url    # ws://127.0.0.1:PORT/ws
        router.realm  # realm1

The router runs in a session of its own (the node controller and its router worker);
``stop`` sends SIGTERM to that process group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from gating.localsite import REPO_ROOT, free_port

REALM = "realm1"
START_TIMEOUT = 90.0


def find_crossbar() -> Path | None:
    if os.environ.get("CROSSBAR"):
        return Path(os.environ["CROSSBAR"])
    own = REPO_ROOT / ".venv-crossbar" / "bin" / "crossbar"
    if own.exists():
        return own
    found = shutil.which("crossbar")
    return Path(found) if found else None


def router_config(port: int, realm: str = REALM) -> dict[str, Any]:
    """A crossbar node configuration (version 2): one router worker, one realm that
    anonymous clients may use fully, a WebSocket transport at ``/ws`` on 127.0.0.1 (a web
    transport: ``/`` is an empty static folder, as a leaf resource there would answer
    ``/ws`` itself)."""
    return {
        "version": 2,
        "controller": {},
        "workers": [
            {
                "type": "router",
                "realms": [
                    {
                        "name": realm,
                        "roles": [
                            {
                                "name": "anonymous",
                                "permissions": [
                                    {
                                        "uri": "",
                                        "match": "prefix",
                                        "allow": {
                                            "call": True,
                                            "register": True,
                                            "publish": True,
                                            "subscribe": True,
                                        },
                                        "disclose": {"caller": False, "publisher": False},
                                        "cache": True,
                                    }
                                ],
                            }
                        ],
                    }
                ],
                "transports": [
                    {
                        "type": "web",
                        "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1"},
                        "paths": {
                            "/": {"type": "static", "directory": "web"},
                            "ws": {"type": "websocket"},
                        },
                    }
                ],
            }
        ],
    }


class CrossbarRouter:
    def __init__(self, root: Path, *, realm: str = REALM) -> None:
        self.root = Path(root)
        self.realm = realm
        self.port = free_port()
        self.program = find_crossbar()
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def cbdir(self) -> Path:
        return self.root / "node"

    @property
    def output_path(self) -> Path:
        return self.root / "crossbar.log"

    def start(self, timeout: float = START_TIMEOUT) -> CrossbarRouter:
        if self.program is None:
            raise RuntimeError(
                "crossbar is not installed (scripts/bootstrap.sh makes .venv-crossbar; "
                "or set CROSSBAR=/path/to/crossbar)"
            )
        began = time.monotonic()
        (self.cbdir / "web").mkdir(parents=True, exist_ok=True)  # "/": nothing to serve
        (self.cbdir / "config.json").write_text(
            json.dumps(router_config(self.port, self.realm), indent=1)
        )
        self._output = open(self.output_path, "ab")  # noqa: SIM115 (closed in stop)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
        self._proc = subprocess.Popen(
            [
                str(self.program),
                "start",
                "--cbdir",
                str(self.cbdir),
                "--config",
                "config.json",
                "--loglevel",
                "warn",
                "--logformat",
                "none",
            ],
            stdout=self._output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.root,
            start_new_session=True,  # one process group: the controller and its workers
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"crossbar exited ({self._proc.returncode}) while starting:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            self.stop()
            raise TimeoutError(f"crossbar did not listen within {timeout}s:\n{self.log_tail()}")
        self.start_seconds = time.monotonic() - began
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.output_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        proc = self._proc
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # the router worker may outlive the controller for a moment
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> CrossbarRouter:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
