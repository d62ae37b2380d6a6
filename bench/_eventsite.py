"""Helpers of the event benchmarks (``koji-polling``, ``event-latency``):

* :class:`TimedKojiHub`: the koji test hub (tests/support/koji_hub.py) that also records,
  for every XML-RPC request, when it came, how long the hub took to answer it and how big
  it was;
* :class:`BuildRequestWatch`: a WebSocket client of the master's ``/ws`` (Buildbot's own
  protocol, the one its web UI uses) subscribed to ``buildrequests/*/new``: each new build
  request is timestamped (``time.monotonic()`` of this process) the moment its message
  arrives. Standard library only (RFC 6455 client framing).
* :func:`create_event_site`: a site (not started) whose configuration is written here:
  its workers, pipelines and ``gating.yaml`` keys.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gating.localsite import LocalSite, free_port
from tests.support.koji_hub import KojiTestHub


@dataclass(frozen=True)
class HubRequest:
    """One XML-RPC request the hub answered."""

    at: float  # time.monotonic() when the hub started on it
    seconds: float  # until its answer was written
    size: int  # request body, bytes
    method: str
    calls: tuple[str, ...]  # the methods of a multiCall


class TimedKojiHub(KojiTestHub):
    """:class:`KojiTestHub` that records a :class:`HubRequest` per XML-RPC request."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._timed: list[HubRequest] = []
        self._timed_lock = threading.Lock()

    def _handle_rpc(self, handler: Any, body: bytes) -> None:
        start = time.monotonic()
        before = len(self._rpc_log)
        try:
            super()._handle_rpc(handler, body)
        finally:
            seconds = time.monotonic() - start
            with self._lock:
                entry = self._rpc_log[before] if len(self._rpc_log) > before else None
            method, calls = (entry[0], entry[1]) if entry else ("?", ())
            with self._timed_lock:
                self._timed.append(HubRequest(start, seconds, len(body), method, calls))

    @property
    def timed(self) -> list[HubRequest]:
        with self._timed_lock:
            return list(self._timed)


def is_poll(request: HubRequest) -> bool:
    """The koji event scheduler's poll request: a multiCall starting with getLastEvent."""
    return request.method == "multiCall" and request.calls[:1] == ("getLastEvent",)


# -- Buildbot's websocket ---------------------------------------------------------------


class BuildRequestWatch:
    """Build requests as the master announces them on its websocket (``/ws``,
    ``startConsuming buildrequests/*/new``), each with the local monotonic time of its
    arrival. Use as a context manager."""

    PATH = "buildrequests/*/new"

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url
        self.timeout = timeout
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._acked = threading.Event()
        self._closed = False
        self.error: BaseException | None = None

    def __enter__(self) -> BuildRequestWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = parts.path.rstrip("/") + "/ws"
        sock = socket.create_connection((host, port), timeout=self.timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError(f"{self.url}: websocket handshake: connection closed")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"{self.url}: websocket handshake refused: {status!r}")
        sock.settimeout(None)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name="bench-ws", daemon=True)
        self._thread.start()
        self._send({"cmd": "startConsuming", "path": self.PATH, "_id": 1})
        if not self._acked.wait(self.timeout):
            raise TimeoutError(f"{self.url}: no answer to startConsuming {self.PATH}")
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)

    def _send(self, message: Mapping[str, Any], opcode: int = 1) -> None:
        self._frame(json.dumps(message).encode(), opcode)

    def _frame(self, payload: bytes, opcode: int) -> None:
        assert self._sock is not None
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def _read(self) -> None:
        message = b""
        try:
            while True:
                b0, b1 = self._recv_exact(2)
                opcode, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self._recv_exact(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self._recv_exact(8))
                mask = self._recv_exact(4) if b1 & 0x80 else b""
                payload = self._recv_exact(n)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 9:  # ping
                    self._frame(payload, 10)
                    continue
                if opcode == 8:  # close
                    return
                if opcode in (0, 1, 2):
                    message += payload
                    if b0 & 0x80:
                        self._message(time.monotonic(), message)
                        message = b""
        except (OSError, ConnectionError) as exc:
            if not self._closed:
                self.error = exc
        finally:
            self._acked.set()
            with self._cond:
                self._cond.notify_all()

    def _message(self, at: float, raw: bytes) -> None:
        data = json.loads(raw)
        if data.get("_id") == 1 and "code" in data:
            if data["code"] != 200:
                self.error = RuntimeError(f"startConsuming {self.PATH}: {data}")
            self._acked.set()
            return
        key = str(data.get("k", ""))
        if key.startswith("buildrequests/") and key.endswith("/new"):
            with self._cond:
                self.seen.append((at, data.get("m") or {}))
                self._cond.notify_all()

    def first_after(
        self,
        since: float,
        match: Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> tuple[float, dict[str, Any]]:
        """The first build request announced at or after ``since`` (monotonic) that
        ``match`` accepts, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, msg in self.seen:
                    if at >= since and match(msg):
                        return at, msg
                if self.error is not None:
                    raise RuntimeError(f"websocket: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no new build request within {timeout:g} s")
                self._cond.wait(left)


# -- sites ------------------------------------------------------------------------------


def create_event_site(
    base: Path,
    settings: Mapping[str, Any],
    pipelines: Mapping[str, Mapping[str, Any]],
    workers: Sequence[Mapping[str, Any]] = ({"name": "bench-x86_64", "arch": "x86_64"},),
    secrets: Mapping[str, str] | None = None,
) -> LocalSite:
    """A site in ``base`` (created, not started): ``gating.yaml`` holds ``settings`` (on
    top of the title, the SQLite database and the file names), ``pipelines/NAME.yaml`` each
    pipeline of ``pipelines``."""
    config = base / "config"
    (config / "pipelines").mkdir(parents=True)
    data = {
        "title": "bench",
        "database": "sqlite:///state.sqlite",
        "workers": "workers.yaml",
        "pipelines": "pipelines",
        **settings,
    }
    (config / "gating.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (config / "workers.yaml").write_text(yaml.safe_dump({"workers": [dict(w) for w in workers]}))
    for name, pipeline in pipelines.items():
        (config / "pipelines" / f"{name}.yaml").write_text(
            yaml.safe_dump(dict(pipeline), sort_keys=False)
        )
    site = LocalSite(base, www_port=free_port(), pb_port=free_port())
    for name, value in (secrets or {}).items():
        folder = site.master_dir / "secrets"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    site.create()
    return site


def echo_pipeline(trigger: Any, text: str = "event=$GATING_EVENT") -> dict[str, Any]:
    """A pipeline of one x86_64 job that echoes ``text``, started by ``trigger``."""
    return {
        "trigger": trigger,
        "pipeline": ["check"],
        "jobs": {"check": {"architectures": ["x86_64"], "run": f'echo "{text}"\n'}},
    }


def builder_ids(site: LocalSite) -> dict[str, int]:
    return {b["name"]: b["builderid"] for b in site.api("builders")["builders"]}


def wait_idle(site: LocalSite, timeout: float = 120) -> bool:
    """Wait until the master has no unfinished build request; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = site.api("buildrequests?complete=false&limit=1")["buildrequests"]
        if not pending:
            return True
        time.sleep(0.3)
    return False


def buildset_properties(site: LocalSite, bsid: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"{site.url}api/v2/buildsets/{bsid}/properties") as resp:
        props = json.load(resp)["properties"]
    return {k: v[0] for k, v in (props[0] if props else {}).items()}
