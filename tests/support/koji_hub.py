"""A koji hub test server: koji's XML-RPC wire protocol on loopback, with real ``rpmbuild``.

The product talks to it only through the real ``koji`` client library (``koji.ClientSession``),
so what it speaks is what a koji 1.36 hub speaks:

* XML-RPC over HTTP ``POST`` to ``/kojihub`` (and ``/kojihub/ssllogin``, where the client sends
  ``sslLogin``), answers marshalled by ``koji.xmlrpcplus.dumps`` (``<i8>`` for integers past
  32 bits, ``<nil/>``), a ``Koji-Version`` header on every answer;
* keyword arguments by koji's ``__starstar`` convention, decoded with ``koji.decode_args``; a
  call that does not match the method's signature is a ``koji.ParameterError`` fault;
* errors as XML-RPC faults with koji's fault codes (``faultString`` is ``str(error)`` for koji's
  own errors, ``"<class ...>: message"`` for others, as the hub writes them), so the client's
  ``koji.convertFault`` gives back ``koji.GenericError``, ``ActionNotAllowed``, ``AuthError``,
  ``TagError``, ``BuildError``, ``ParameterError``, ``RetryError``, ``ServerOffline``...;
* ``multiCall`` (and ``system.multicall``): a list of ``{methodName, params}``, answered with a
  list of ``[result]`` or ``{faultCode, faultString, traceback}``, one session check for the
  whole batch;
* sessions: ``login(user, password)`` against the users added with :meth:`add_user`,
  ``sslLogin`` from a verified client certificate (``tls=True``: the user is the certificate's
  CN, created at first login as the hub's ``LoginCreatesUser`` does), ``logout``; the session
  travels in the ``Koji-Session-Id``/``-Key``/``-Callnum`` headers (``header-auth``) or, for old
  clients, the query string; a call number lower than the last one that changed data is a
  ``SequenceError``, the same one again is a ``RetryError`` (the hub refuses to run twice a call
  whose answer was lost): this is how a real hub protects a retried ``build`` or ``tagBuild``;
* methods: ``echo``, ``hello``, ``getAPIVersion``, ``getKojiVersion``, ``getLoggedInUser``,
  ``getUser``, ``getLastEvent``, ``getEvent``, ``getTag``, ``listTags``, ``getBuildTarget``,
  ``getBuildTargets``, ``getBuild``, ``listBuilds``, ``listRPMs``, ``listTagged``, ``tagBuild``
  (a ``tagBuild`` task, as on a real hub), ``untagBuild`` (immediate), ``queryHistory``
  (``tag_listing``), ``build``, ``getTaskInfo``, ``getTaskChildren``, ``getTaskDescendents``,
  ``getTaskResult``, ``listTaskOutput``, ``listTasks``, ``cancelTask``, ``newRepo``, ``getRepo``,
  ``repoInfo``, ``system.listMethods``.

Build tasks do what a koji builder does, on this host, in a background thread:
``build(src, target, opts)`` with ``src`` = ``git+file:///path#<commit>`` or
``git+http(s)://<loopback>/...#<commit>`` makes a ``build`` task (FREE -> OPEN -> CLOSED or
FAILED) with two children: ``buildSRPMFromSCM`` (``git clone``, ``git reset --hard <commit>``,
``rpmbuild -bs`` of the one spec file) and ``buildArch`` (``rpmbuild --rebuild`` of that SRPM,
``noarch`` when the spec says ``BuildArch: noarch``, else this host's arch). Their outputs and
``build.log`` stay in ``work/tasks/<id % 10000>/<id>/``. A non-scratch build makes a build
record once the SRPM is known (an NVR that already exists is koji's ``GenericError``
"Build already exists (id=..., state=COMPLETE): ..." and fails the task, a FAILED or CANCELED
build is recycled), imports its files into ``packages/<name>/<version>/<release>/<arch>/``
(logs in ``data/logs/<arch>/``) and tags it into the target's destination tag (unless
``opts['skip_tag']``). Build tag ``extra`` keys ``rpm.macro.<name>`` are passed to ``rpmbuild``
as ``--define``. ``rpmbuild`` runs with ``--nodeps`` (there is no buildroot).

Every data change (tag, untag, new build, new repo) is an event: ids from a counter (start it
past 2**31 with ``first_event_id`` to exercise ``i8``), timestamps, ``getLastEvent`` and
``queryHistory(tables=['tag_listing'], tag=..., afterEvent=...)`` read them.

``newRepo(tag)`` (``repo`` permission) is a task that writes ``repos/<tag>/<repo_id>/<arch>/``:
the latest build of each package tagged at the repo's event, hard-linked, and ``createrepo_c``
metadata. ``auto_repos=True`` regenerates a tag's repo after every tag change, as kojira would.

The topurl (``/kojifiles``) serves ``packages/``, ``work/`` and ``repos/`` under ``root`` over
HTTP ``GET``/``HEAD`` (directories as a small HTML index).

Test-side helpers (Python, not HTTP): :meth:`add_user`, :meth:`create_tag`,
:meth:`create_target`, :meth:`fail_next` (``refused``, ``reset``, ``http500``, ``http503``,
``offline``, ``slow``, ``lost``), :meth:`fail_builds`, :attr:`build_delay`, :attr:`task_log`,
:attr:`request_count`, :attr:`rpc_log`, :meth:`builds`, :meth:`tasks`, :meth:`tagged`,
:meth:`wait_idle`, :meth:`client_cert`, :meth:`hold_tasks` / :meth:`release_tasks`.
"""

from __future__ import annotations

import datetime
import fnmatch
import html
import inspect
import itertools
import os
import re
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import traceback
import xmlrpc.client
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import koji
from koji.xmlrpcplus import Fault, dumps

HUB_PATH = "/kojihub"
FILES_PATH = "/kojifiles"
KOJI_VERSION = "1.36.1"
FAULT_KINDS = ("refused", "reset", "http500", "http503", "offline", "slow", "lost")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Methods that change data: their call number is remembered, so that the same call number
# again is a RetryError (as the real hub remembers the call number of a committed call).
MUTATING = frozenset(
    {"build", "tagBuild", "untagBuild", "newRepo", "cancelTask", "login", "sslLogin", "logout"}
)
# Methods the real hub lets a client retry under the same call number.
RETRY_WHITELIST = frozenset({"host.taskWait", "host.taskUnwait", "repoExpire", "repoDelete"})

TASK = koji.TASK_STATES
BUILD = koji.BUILD_STATES
REPO = koji.REPO_STATES

_GIT_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
)


class _Canceled(Exception):
    """The task was canceled (or the hub stopped) while it ran."""


def _timestr(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(" ")


def _as_ts(value: Any) -> float:
    """A timestamp argument: a number, or a date string as the hub accepts them."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, xmlrpc.client.DateTime):
        value = value.value
    text = str(value).replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z", "%Y%m%d %H:%M:%S"):
        try:
            parsed = datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return parsed.timestamp()
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise koji.GenericError(f"Invalid time: {value!r}") from None


def _fault(exc: BaseException) -> Fault:
    """An exception as the hub reports it in a single call."""
    if isinstance(exc, Fault):
        return exc
    if isinstance(exc, koji.GenericError):
        return Fault(exc.faultCode, str(exc))
    return Fault(getattr(exc, "faultCode", 1), f"{type(exc)}: {exc}")


def _query_opts(rows: list[dict[str, Any]], query_opts: Mapping[str, Any] | None) -> Any:
    """Apply koji's queryOpts (order, offset, limit, countOnly, asList) to a list of rows."""
    if not query_opts:
        return rows
    order = query_opts.get("order")
    if order:
        for key in reversed(str(order).split(",")):
            key = key.strip()
            reverse = key.startswith("-")
            key = key.lstrip("-")
            rows = sorted(
                rows, key=lambda row, k=key: (row.get(k) is None, row.get(k)), reverse=reverse
            )
    offset = int(query_opts.get("offset") or 0)
    rows = rows[offset:]
    if query_opts.get("limit") is not None:
        rows = rows[: int(query_opts["limit"])]
    if query_opts.get("countOnly"):
        return len(rows)
    return rows


@dataclass
class _Task:
    id: int
    method: str
    request: list[Any]
    owner: int
    parent: int | None = None
    label: str | None = None
    arch: str = "noarch"
    priority: int = 20
    state: int = TASK["FREE"]
    create_ts: float = field(default_factory=time.time)
    start_ts: float | None = None
    completion_ts: float | None = None
    result: Any = None
    fault: Fault | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def info(self, request: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "state": self.state,
            "create_time": _timestr(self.create_ts),
            "create_ts": self.create_ts,
            "start_time": _timestr(self.start_ts),
            "start_ts": self.start_ts,
            "completion_time": _timestr(self.completion_ts),
            "completion_ts": self.completion_ts,
            "channel_id": 1,
            "host_id": 1 if self.start_ts is not None else None,
            "parent": self.parent,
            "label": self.label,
            "waiting": None,
            "awaited": None,
            "owner": self.owner,
            "method": self.method,
            "arch": self.arch,
            "priority": self.priority,
            "weight": 1.0,
        }
        if request:
            data["request"] = self.request
        return data

    @property
    def finished(self) -> bool:
        return self.state in (TASK["CLOSED"], TASK["FAILED"], TASK["CANCELED"])


@dataclass
class _Ctx:
    """What one HTTP request carries: the method asked, the session, the TLS client name."""

    method: str
    session: dict[str, Any] | None = None
    user: dict[str, Any] | None = None
    peer_cn: str | None = None
    peer_verified: bool = False
    mutated: bool = False


@dataclass
class _PendingFault:
    kind: str
    remaining: int | None  # None: a time window
    until: float | None
    delay: float
    method: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], hub: KojiTestHub, tls: ssl.SSLContext | None
    ) -> None:
        self.hub = hub
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            try:
                request.settimeout(30)
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away is not a test failure


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "KojiTestHub/" + KOJI_VERSION

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path not in (HUB_PATH, HUB_PATH + "/ssllogin"):
            self._plain(404, "Not Found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.hub._handle_rpc(self, body)

    def do_GET(self) -> None:
        self._files(head=False)

    def do_HEAD(self) -> None:
        self._files(head=True)

    def _files(self, head: bool) -> None:
        hub = self.server.hub
        path = unquote(urlsplit(self.path).path)
        if path.rstrip("/") == HUB_PATH:
            self._plain(
                405,
                "Method Not Allowed\nThis is an XML-RPC server. Only POST requests are accepted.\n",
                [("Allow", "POST")],
            )
            return
        if not (path == FILES_PATH or path.startswith(FILES_PATH + "/")):
            self._plain(404, "Not Found\n")
            return
        with hub._lock:
            hub._file_request_count += 1
        rel = path[len(FILES_PATH) :].lstrip("/")
        root = hub.root.resolve()
        target = (root / rel).resolve()
        top = rel.split("/", 1)[0]
        if (rel and top not in ("packages", "work", "repos")) or not target.is_relative_to(root):
            self._plain(404, "Not Found\n")
            return
        if target.is_dir():
            if not path.endswith("/"):
                self.send_response(301)
                self.send_header("Location", path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
            items = "".join(
                f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>\n' for n in names
            )
            page = (
                f"<html><body><h1>Index of {html.escape(path)}</h1><ul>\n{items}</ul>"
                "</body></html>\n"
            )
            self._send(200, page.encode(), "text/html; charset=utf-8", head=head)
            return
        if not target.is_file():
            self._plain(404, "Not Found\n")
            return
        ctype = (
            "text/plain; charset=utf-8"
            if target.suffix in (".log", ".txt")
            else "text/xml"
            if target.suffix == ".xml"
            else "application/octet-stream"
        )
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.end_headers()
        if not head:
            with open(target, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)

    def _plain(self, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._send(status, text.encode(), "text/plain", headers=headers)

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        *,
        head: bool = False,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def drop(self) -> None:
        """Close the connection at once, with a TCP reset and no answer."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass
        self.wfile = _NullWriter()

    def peer(self) -> tuple[str | None, bool]:
        conn = self.connection
        if not isinstance(conn, ssl.SSLSocket):
            return None, False
        cert = conn.getpeercert()
        if not cert:
            return None, False
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value, True
        return None, True


class _NullWriter:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class KojiTestHub:
    """A koji hub on loopback (see the module docstring). Use as a context manager or
    :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        first_event_id: int = 1,
        first_task_id: int = 1,
        build_slots: int = 4,
        auto_repos: bool = False,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.tls = tls
        self.build_slots = build_slots
        self.auto_repos = auto_repos
        self.build_delay = 0.0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        self._server_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(build_slots)
        self._threads: list[threading.Thread] = []
        self._ids = {
            name: itertools.count(1)
            for name in ("user", "session", "tag", "target", "package", "build", "rpm", "repo")
        }
        self._event_ids = itertools.count(first_event_id)
        self._task_ids = itertools.count(first_task_id)
        self._users: dict[int, dict[str, Any]] = {}
        self._sessions: dict[int, dict[str, Any]] = {}
        self._tags: dict[int, dict[str, Any]] = {}
        self._targets: dict[int, dict[str, Any]] = {}
        self._packages: dict[str, int] = {}
        self._builds: dict[int, dict[str, Any]] = {}
        self._rpms: dict[int, dict[str, Any]] = {}
        self._listings: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._tasks: dict[int, _Task] = {}
        self._repos: dict[int, dict[str, Any]] = {}
        self._faults: list[_PendingFault] = []
        self._fail_patterns: list[re.Pattern[str]] = []
        self._held: set[str] = set()
        self._request_count = 0
        self._file_request_count = 0
        self._rpc_log: list[tuple[str, tuple[str, ...], str]] = []
        self._host_arch: str | None = None
        self.ca_cert: Path | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> KojiTestHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for sub in ("packages", "work", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if self.tls and self._ssl_context is None:
            self._ssl_context = self._make_tls()
        self._stopping.clear()
        self._serve()

    def stop(self) -> None:
        self._stopping.set()
        with self._server_lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            for task in self._tasks.values():
                task.cancel.set()
                for proc in task.procs:
                    _kill(proc)
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=30)

    def _serve(self) -> None:
        server = _Server((self.host, self.port), self, self._ssl_context)
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"koji-hub-{self.port}",
            daemon=True,
        )
        with self._server_lock:
            self._server = server
            self._server_thread = thread
        thread.start()

    @property
    def url(self) -> str:
        """The hub's XML-RPC URL (``server`` in a koji profile)."""
        return f"{self._scheme}://{self._netloc}{HUB_PATH}"

    @property
    def topurl(self) -> str:
        """The hub's file URL (``topurl`` in a koji profile)."""
        return f"{self._scheme}://{self._netloc}{FILES_PATH}"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def _netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # ---------------------------------------------------------------- test-side controls

    def add_user(
        self, name: str, password: str | None = None, perms: Iterable[str] = ()
    ) -> dict[str, Any]:
        """A user who may ``login`` with this password (or ``sslLogin`` with a certificate
        whose CN is ``name``); ``perms``: e.g. ``admin``, ``repo``."""
        with self._lock:
            user = self._user_by_name(name)
            if user is None:
                uid = next(self._ids["user"])
                user = {
                    "id": uid,
                    "name": name,
                    "status": koji.USER_STATUS["NORMAL"],
                    "usertype": koji.USERTYPES["NORMAL"],
                    "krb_principals": [],
                }
                self._users[uid] = user
            user["password"] = password
            user["perms"] = set(perms)
            return self._user_info(user)

    def create_tag(
        self, name: str, arches: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        with self._lock:
            if self._tag(name) is not None:
                raise ValueError(f"tag {name} exists")
            tid = next(self._ids["tag"])
            self._tags[tid] = {
                "id": tid,
                "name": name,
                "arches": arches,
                "locked": False,
                "perm": None,
                "perm_id": None,
                "maven_support": False,
                "maven_include_all": False,
                "extra": dict(extra or {}),
            }
            self._new_event()
            return dict(self._tags[tid])

    def create_target(self, name: str, build_tag: str, dest_tag: str) -> dict[str, Any]:
        with self._lock:
            btag, dtag = self._tag(build_tag, strict=True), self._tag(dest_tag, strict=True)
            tid = next(self._ids["target"])
            self._targets[tid] = {
                "id": tid,
                "name": name,
                "build_tag": btag["id"],
                "build_tag_name": btag["name"],
                "dest_tag": dtag["id"],
                "dest_tag_name": dtag["name"],
            }
            self._new_event()
            return dict(self._targets[tid])

    def fail_next(
        self,
        n: int = 1,
        kind: str = "http500",
        *,
        duration: float | None = None,
        delay: float = 2.0,
        method: str | None = None,
    ) -> None:
        """Inject faults into hub (XML-RPC) requests.

        ``kind``: ``http500`` (an HTTP 500 answer), ``http503`` (503 Service Unavailable, as
        the proxy in front of a hub being restarted answers), ``offline`` (koji's
        ``ServerOffline`` fault, as a hub in maintenance answers), ``slow`` (answer
        ``delay`` seconds late), ``reset`` (close the connection with no answer, before
        running the call), ``lost`` (run the call, then close the connection with no
        answer), all before the call is run except ``lost``; for the next ``n`` requests,
        or for every request during ``duration`` seconds; with ``method``, only requests
        calling that method (alone or in a multiCall) count. ``refused``: stop listening at
        once for ``duration`` seconds (default 1): new connections are refused, then the hub
        listens again on the same port.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        if kind == "refused":
            self._refuse_for(1.0 if duration is None else duration)
            return
        with self._lock:
            if duration is None:
                self._faults.append(_PendingFault(kind, n, None, delay, method))
            else:
                until = time.monotonic() + duration
                self._faults.append(_PendingFault(kind, None, until, delay, method))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_patterns.clear()

    def fail_builds(self, pattern: str | None) -> None:
        """Make ``buildArch`` tasks fail when the regular expression ``pattern`` matches the
        build's SCM URL or NVR; ``None`` clears the patterns."""
        with self._lock:
            if pattern is None:
                self._fail_patterns.clear()
            else:
                self._fail_patterns.append(re.compile(pattern))

    def hold_tasks(self, method: str) -> None:
        """New and waiting tasks of ``method`` stay FREE (as on a hub whose builders are
        busy) until :meth:`release_tasks` or their cancellation."""
        with self._changed:
            self._held.add(method)

    def release_tasks(self, method: str | None = None) -> None:
        """Let held tasks of ``method`` (``None``: of every method) run."""
        with self._changed:
            if method is None:
                self._held.clear()
            else:
                self._held.discard(method)
            self._changed.notify_all()

    @property
    def request_count(self) -> int:
        """XML-RPC HTTP requests received (a multiCall is one)."""
        with self._lock:
            return self._request_count

    @property
    def file_request_count(self) -> int:
        with self._lock:
            return self._file_request_count

    @property
    def rpc_log(self) -> list[tuple[str, tuple[str, ...], str]]:
        """One ``(method, multicall methods, outcome)`` per XML-RPC request; outcome is
        ``ok``, ``fault <code>`` or the injected fault kind."""
        with self._lock:
            return list(self._rpc_log)

    @property
    def task_log(self) -> list[tuple[int, str, float, float | None]]:
        """``(task_id, method, start_ts, end_ts)`` of every task that started, by start."""
        with self._lock:
            rows = [
                (t.id, t.method, t.start_ts, t.completion_ts)
                for t in self._tasks.values()
                if t.start_ts is not None
            ]
        return sorted(rows, key=lambda row: (row[2], row[0]))

    def builds(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                self._build_info(b) for b in sorted(self._builds.values(), key=lambda b: b["id"])
            ]

    def tasks(self, method: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                t.info(request=True)
                for t in sorted(self._tasks.values(), key=lambda t: t.id)
                if method is None or t.method == method
            ]

    def tagged(self, tag: str) -> list[str]:
        """NVRs in the tag now, newest tagging first."""
        with self._lock:
            tinfo = self._tag(tag, strict=True)
            rows = [r for r in self._listings if r["tag_id"] == tinfo["id"] and r["active"]]
            rows.sort(key=lambda r: r["create_event"], reverse=True)
            return [self._builds[r["build_id"]]["nvr"] for r in rows]

    def import_build(
        self,
        name: str,
        version: str,
        release: str,
        *,
        owner: str = "kojiadmin",
        target: str | None = None,
    ) -> dict[str, Any]:
        """A COMPLETE build made by someone else (no RPMs): a closed ``build`` task whose
        request names ``target``, as a packager's ``koji build`` leaves behind."""
        user = self.add_user(owner) if self._user_by_name(owner) is None else None
        with self._lock:
            uid = (user or self._user_by_name(owner))["id"]
            nvr = f"{name}-{version}-{release}"
            if any(b["nvr"] == nvr for b in self._builds.values()):
                raise ValueError(f"build {nvr} exists")
            now = time.time()
            task = _Task(
                id=next(self._task_ids),
                method="build",
                request=[f"git+https://src.example.org/rpms/{name}#0", target, {}],
                owner=uid,
                state=TASK["CLOSED"],
                create_ts=now,
                start_ts=now,
                completion_ts=now,
            )
            self._tasks[task.id] = task
            build_id = next(self._ids["build"])
            package_id = self._packages.setdefault(name, next(self._ids["package"]))
            event = self._new_event()
            self._builds[build_id] = {
                "id": build_id,
                "package_id": package_id,
                "name": name,
                "version": version,
                "release": release,
                "epoch": None,
                "nvr": nvr,
                "state": BUILD["COMPLETE"],
                "task_id": task.id,
                "owner_id": uid,
                "creation_event_id": event,
                "creation_ts": now,
                "start_ts": now,
                "completion_ts": time.time(),
                "source": task.request[0],
                "extra": {},
                "volume_id": 0,
                "volume_name": "DEFAULT",
                "draft": False,
                "cg_id": None,
                "cg_name": None,
            }
            self._changed.notify_all()
            return self._build_info(self._builds[build_id])

    def tag_build(self, tag: str, nvr: str, *, user: str = "kojiadmin") -> int:
        """Tag a build as an admin would (no task); the tag event's id."""
        if self._user_by_name(user) is None:
            self.add_user(user)
        with self._lock:
            tinfo = self._tag(tag, strict=True)
            binfo = self._build(nvr, strict=True)
            uinfo = self._user_by_name(user)
            assert tinfo is not None and binfo is not None and uinfo is not None
            return self._tag_build(tinfo, binfo, uinfo["id"])

    def add_task(
        self, method: str, request: list[Any], *, state: str = "OPEN", owner: str = "kojiadmin"
    ) -> int:
        """A task someone else started (a compose's image task, say), in ``state``."""
        if self._user_by_name(owner) is None:
            self.add_user(owner)
        with self._lock:
            uid = self._user_by_name(owner)["id"]  # type: ignore[index]
            task = _Task(id=next(self._task_ids), method=method, request=list(request), owner=uid)
            task.state = TASK[state]
            if task.finished:
                task.start_ts = task.completion_ts = time.time()
            self._tasks[task.id] = task
            self._changed.notify_all()
            return task.id

    def set_task_state(self, task_id: int, state: str) -> None:
        with self._lock:
            task = self._tasks[task_id]
            task.state = TASK[state]
            if task.finished:
                task.completion_ts = time.time()
            self._changed.notify_all()

    def untag_build(self, tag: str, nvr: str, *, user: str = "kojiadmin") -> None:
        """Untag a build as an admin would (no task)."""
        if self._user_by_name(user) is None:
            self.add_user(user)
        with self._lock:
            tinfo = self._tag(tag, strict=True)
            binfo = self._build(nvr, strict=True)
            uinfo = self._user_by_name(user)
            assert tinfo is not None and binfo is not None and uinfo is not None
            self._untag(tinfo, binfo, uinfo["id"], strict=True)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no task is FREE or OPEN."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(not t.finished for t in self._tasks.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("koji test hub: tasks still running")
                self._changed.wait(left)

    def client_cert(self, name: str) -> Path:
        """A PEM file (certificate and key) for ``sslLogin`` as ``name`` (``tls=True``)."""
        if not self.tls or self._ssl_context is None:
            raise RuntimeError("client certificates need KojiTestHub(tls=True) started")
        return self._issue(name, server=False)

    # ---------------------------------------------------------------- faults

    def _refuse_for(self, duration: float) -> None:
        with self._server_lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()

        def reopen() -> None:
            if not self._stopping.wait(duration):
                for _ in range(100):
                    try:
                        self._serve()
                        return
                    except OSError:
                        time.sleep(0.05)

        thread = threading.Thread(target=reopen, daemon=True)
        thread.start()

    def _take_fault(self, methods: tuple[str, ...]) -> _PendingFault | None:
        now = time.monotonic()
        with self._lock:
            for fault in list(self._faults):
                if fault.method is not None and fault.method not in methods:
                    continue
                if fault.until is not None:
                    if now >= fault.until:
                        self._faults.remove(fault)
                        continue
                    return fault
                assert fault.remaining is not None
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---------------------------------------------------------------- XML-RPC

    def _handle_rpc(self, handler: _Handler, body: bytes) -> None:
        with self._lock:
            self._request_count += 1
        try:
            params, method = xmlrpc.client.loads(body)
        except Exception as exc:  # noqa: BLE001 - a malformed request is a 400, as on the hub
            handler._plain(400, f"Bad Request: {exc}\n")
            return
        subs: tuple[str, ...] = ()
        if method in ("multiCall", "system.multicall") and params and isinstance(params[0], list):
            subs = tuple(str(c.get("methodName")) for c in params[0] if isinstance(c, dict))
        fault = self._take_fault((method, *subs))
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "http500":
            self._log_rpc(method, subs, "http500")
            handler._plain(500, "Internal Server Error\n")
            return
        if fault is not None and fault.kind == "http503":
            self._log_rpc(method, subs, "http503")
            handler._plain(503, "Service Unavailable\n", [("Retry-After", "5")])
            return
        if fault is not None and fault.kind == "reset":
            self._log_rpc(method, subs, "reset")
            handler.drop()
            return
        if fault is not None and fault.kind == "offline":
            self._log_rpc(method, subs, "offline")
            self._reply(handler, Fault(koji.ServerOffline.faultCode, "server is offline"))
            return
        ctx = _Ctx(method=method)
        ctx.peer_cn, ctx.peer_verified = handler.peer()
        try:
            with self._lock:
                self._check_session(ctx, handler)
                result: Any = self._dispatch(ctx, method, params)
                if (
                    ctx.mutated
                    and ctx.session is not None
                    and ctx.session.get("pending_callnum") is not None
                ):
                    ctx.session["callnum"] = ctx.session["pending_callnum"]
        except Exception as exc:  # noqa: BLE001 - every error becomes a fault
            response: Any = _fault(exc)
        else:
            response = (result,)
        outcome = f"fault {response.faultCode}" if isinstance(response, Fault) else "ok"
        if fault is not None and fault.kind == "lost":
            self._log_rpc(method, subs, "lost")
            handler.drop()
            return
        self._log_rpc(method, subs, outcome)
        self._reply(handler, response)

    def _log_rpc(self, method: str, subs: tuple[str, ...], outcome: str) -> None:
        with self._lock:
            self._rpc_log.append((method, subs, outcome))

    def _reply(self, handler: _Handler, response: Any) -> None:
        if isinstance(response, Fault):
            body = dumps(response).encode()
        else:
            body = dumps(response, methodresponse=1).encode()
        handler._send(200, body, "text/xml", headers=[("Koji-Version", KOJI_VERSION)])

    def _check_session(self, ctx: _Ctx, handler: _Handler) -> None:
        headers = handler.headers
        sid = headers.get("Koji-Session-Id")
        key = headers.get("Koji-Session-Key")
        callnum = headers.get("Koji-Session-Callnum") or headers.get("Koji-Callnum")
        query = urlsplit(handler.path).query
        if sid is None and query:
            args = parse_qs(query)
            sid = (args.get("session-id") or [None])[0]
            key = (args.get("session-key") or [None])[0]
            callnum = (args.get("callnum") or [None])[0]
        if sid is None:
            return
        try:
            session = self._sessions.get(int(sid))
        except ValueError:
            session = None
        if session is None or session["key"] != key or session["closed"]:
            raise koji.AuthError("Invalid session or bad credentials")
        if callnum is not None:
            try:
                num = int(callnum)
            except ValueError:
                raise koji.AuthError(f"Invalid callnum: {callnum!r}") from None
            last = session["callnum"]
            if last is not None:
                if last > num:
                    raise koji.SequenceError(f"{last} > {num} (session {session['id']})")
                if last == num and ctx.method not in RETRY_WHITELIST:
                    raise koji.RetryError(
                        f"unable to retry call {num} (method {ctx.method}) "
                        f"for session {session['id']}"
                    )
            session["pending_callnum"] = num
        ctx.session = session
        ctx.user = self._users[session["user_id"]]

    def _dispatch(self, ctx: _Ctx, method: str, params: tuple[Any, ...]) -> Any:
        if method in ("multiCall", "system.multicall"):
            args, opts = koji.decode_args(*params)
            if opts or len(args) != 1 or not isinstance(args[0], list):
                raise koji.ParameterError("multiCall takes one argument: a list of calls")
            results: list[Any] = []
            for call in args[0]:
                try:
                    if not isinstance(call, dict) or "methodName" not in call:
                        raise koji.GenericError(f"Invalid call: {call!r}")
                    if call["methodName"] in ("multiCall", "system.multicall"):
                        raise koji.GenericError("multiCall cannot be nested")
                    results.append(
                        [self._call(ctx, call["methodName"], tuple(call.get("params", ())))]
                    )
                except Fault as fault:
                    results.append({"faultCode": fault.faultCode, "faultString": fault.faultString})
                except Exception as exc:  # noqa: BLE001 - a fault entry, as the hub makes it
                    results.append(
                        {
                            "faultCode": getattr(exc, "faultCode", 1),
                            "faultString": ", ".join(str(a) for a in exc.args),
                            "traceback": traceback.format_exception(exc),
                        }
                    )
            return results
        return self._call(ctx, method, params)

    def _call(self, ctx: _Ctx, method: str, params: tuple[Any, ...]) -> Any:
        if method == "system.listMethods":
            return sorted(n[4:] for n in dir(self) if n.startswith("rpc_")) + [
                "multiCall",
                "system.multicall",
                "system.listMethods",
            ]
        func = getattr(self, "rpc_" + method, None) if method.isidentifier() else None
        if func is None:
            raise koji.GenericError(f"Invalid method: {method}")
        args, opts = koji.decode_args(*params)
        try:
            bound = inspect.signature(func).bind(ctx, *args, **opts)
        except TypeError as exc:
            raise koji.ParameterError(str(exc)) from None
        result = func(*bound.args, **bound.kwargs)
        if method in MUTATING:
            ctx.mutated = True
        return result

    # ---------------------------------------------------------------- lookups (lock held)

    def _user_by_name(self, name: str) -> dict[str, Any] | None:
        return next((u for u in self._users.values() if u["name"] == name), None)

    def _user_info(self, user: dict[str, Any]) -> dict[str, Any]:
        return {k: user[k] for k in ("id", "name", "status", "usertype", "krb_principals")}

    def _user(self, info: Any, strict: bool = False) -> dict[str, Any] | None:
        user = (
            self._users.get(info)
            if isinstance(info, int)
            else self._user_by_name(info)
            if isinstance(info, str)
            else None
        )
        if user is None and strict:
            raise koji.GenericError(f"No such user: {info!r}")
        return user

    def _tag(self, info: Any, strict: bool = False) -> dict[str, Any] | None:
        if isinstance(info, dict):
            info = info.get("id", info.get("name"))
        tag = (
            self._tags.get(info)
            if isinstance(info, int)
            else next((t for t in self._tags.values() if t["name"] == info), None)
        )
        if tag is None and strict:
            raise koji.GenericError(f"No such tagInfo: {info!r}")
        return tag

    def _target(self, info: Any, strict: bool = False) -> dict[str, Any] | None:
        target = (
            self._targets.get(info)
            if isinstance(info, int)
            else next((t for t in self._targets.values() if t["name"] == info), None)
        )
        if target is None and strict:
            raise koji.GenericError(f"No such build target: {info}")
        return target

    def _build(self, info: Any, strict: bool = False) -> dict[str, Any] | None:
        build = None
        if isinstance(info, int):
            build = self._builds.get(info)
        elif isinstance(info, str):
            build = next((b for b in self._builds.values() if b["nvr"] == info), None)
        elif isinstance(info, dict):
            if info.get("id") is not None:
                build = self._builds.get(info["id"])
            else:
                nvr = f"{info.get('name')}-{info.get('version')}-{info.get('release')}"
                build = next((b for b in self._builds.values() if b["nvr"] == nvr), None)
        if build is None and strict:
            raise koji.GenericError(f"No such build: {info!r}")
        return build

    def _task(self, task_id: Any, strict: bool = True) -> _Task | None:
        task = self._tasks.get(task_id) if isinstance(task_id, int) else None
        if task is None and strict:
            raise koji.GenericError(f"No such task: {task_id!r}")
        return task

    def _build_info(self, build: dict[str, Any]) -> dict[str, Any]:
        owner = self._users.get(build["owner_id"], {})
        info = {k: v for k, v in build.items() if not k.startswith("_")}
        info.update(
            {
                "build_id": build["id"],
                "package_name": build["name"],
                "owner_name": owner.get("name"),
                "creation_time": _timestr(build["creation_ts"]),
                "start_time": _timestr(build["start_ts"]),
                "completion_time": _timestr(build["completion_ts"]),
            }
        )
        return info

    def _new_event(self) -> int:
        event_id = next(self._event_ids)
        ts = time.time()
        if self._events and ts <= self._events[-1]["ts"]:
            ts = self._events[-1]["ts"] + 1e-6
        self._events.append({"id": event_id, "ts": ts})
        return event_id

    def _event_ts(self, event_id: int | None) -> float | None:
        if event_id is None:
            return None
        return next((e["ts"] for e in self._events if e["id"] == event_id), None)

    @staticmethod
    def _require_login(ctx: _Ctx) -> dict[str, Any]:
        if ctx.user is None:
            raise koji.ActionNotAllowed("you must be logged in for this operation")
        return ctx.user

    @staticmethod
    def _require_perm(ctx: _Ctx, perm: str) -> dict[str, Any]:
        user = ctx.user
        if user is None:
            raise koji.ActionNotAllowed(f"{perm} permission required (user not logged in)")
        if perm not in user["perms"] and "admin" not in user["perms"]:
            raise koji.ActionNotAllowed(f"{perm} permission required (logged in as {user['name']})")
        return user

    # ---------------------------------------------------------------- RPC: session, misc

    def rpc_echo(self, ctx: _Ctx, *args: Any) -> list[Any]:
        return list(args)

    def rpc_hello(self, ctx: _Ctx, *args: Any) -> str:
        return "Hello World"

    def rpc_getAPIVersion(self, ctx: _Ctx) -> int:
        return koji.API_VERSION

    def rpc_getKojiVersion(self, ctx: _Ctx) -> str:
        return KOJI_VERSION

    def _create_session(self, user: dict[str, Any], authtype: int) -> dict[str, Any]:
        sid = next(self._ids["session"])
        key = f"{user['id']}-{secrets.token_urlsafe(16)}"
        self._sessions[sid] = {
            "id": sid,
            "key": key,
            "user_id": user["id"],
            "callnum": None,
            "authtype": authtype,
            "closed": False,
            "pending_callnum": None,
        }
        return {"session-id": sid, "session-key": key, "header-auth": True}

    def rpc_login(
        self,
        ctx: _Ctx,
        user: str,
        password: str,
        opts: Any = None,
        renew: bool = False,
        exclusive: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(password, str) or not password:
            raise koji.AuthError("invalid username or password")
        if ctx.user is not None and not renew:
            raise koji.AuthError("Already logged in")
        found = self._user_by_name(user)
        if found is None or found.get("password") != password:
            raise koji.AuthError("invalid username or password")
        return self._create_session(found, koji.AUTHTYPES["NORMAL"])

    def rpc_sslLogin(
        self,
        ctx: _Ctx,
        proxyuser: str | None = None,
        proxyauthtype: Any = None,
        renew: bool = False,
        exclusive: Any = None,
    ) -> dict[str, Any]:
        if ctx.user is not None and not renew:
            raise koji.AuthError("Already logged in")
        if not ctx.peer_verified:
            raise koji.AuthError("could not verify client: NONE")
        if not ctx.peer_cn:
            raise koji.AuthError("unable to get user information (CN) from client certificate")
        if proxyuser:
            raise koji.AuthError(f"{ctx.peer_cn} is not authorized to login other users")
        user = self._user_by_name(ctx.peer_cn)
        if user is None:  # LoginCreatesUser
            self.add_user(ctx.peer_cn)
            user = self._user_by_name(ctx.peer_cn)
            assert user is not None
        return self._create_session(user, koji.AUTHTYPES["SSL"])

    def rpc_logout(self, ctx: _Ctx, session_id: int | None = None) -> None:
        if ctx.session is None:
            raise koji.AuthError("Not logged in")
        target = self._sessions.get(session_id) if session_id else ctx.session
        if target is None:
            raise koji.GenericError(f"No such session: {session_id}")
        if (
            target["user_id"] != ctx.session["user_id"]
            and "admin" not in self._users[ctx.session["user_id"]]["perms"]
        ):
            raise koji.ActionNotAllowed("only admins or owner may logout other session")
        target["closed"] = True

    def rpc_getLoggedInUser(self, ctx: _Ctx) -> dict[str, Any] | None:
        if ctx.user is None or ctx.session is None:
            return None
        info = self._user_info(ctx.user)
        info["authtype"] = ctx.session["authtype"]
        return info

    def rpc_getUser(
        self,
        ctx: _Ctx,
        userInfo: Any = None,
        strict: bool = False,
        krb_princs: bool = True,
        groups: bool = False,
    ) -> dict[str, Any] | None:
        if userInfo is None:
            return self.rpc_getLoggedInUser(ctx)
        user = self._user(userInfo, strict=strict)
        return None if user is None else self._user_info(user)

    def rpc_getLastEvent(
        self, ctx: _Ctx, before: Any = None, strict: bool = True
    ) -> dict[str, Any] | None:
        events = self._events
        if before is not None:
            cutoff = _as_ts(before)
            events = [e for e in events if e["ts"] < cutoff]
        if not events:
            if strict:
                raise koji.GenericError("No event found")
            return None
        return dict(events[-1])

    def rpc_getEvent(self, ctx: _Ctx, id: int, strict: bool = True) -> dict[str, Any] | None:
        event = next((dict(e) for e in self._events if e["id"] == id), None)
        if event is None and strict:
            raise koji.GenericError(f"No such event: {id}")
        return event

    # ---------------------------------------------------------------- RPC: tags, targets

    def rpc_getTag(
        self,
        ctx: _Ctx,
        tagInfo: Any,
        strict: bool = False,
        event: Any = None,
        blocked: bool = False,
    ) -> dict[str, Any] | None:
        tag = self._tag(tagInfo, strict=strict)
        return None if tag is None else dict(tag)

    def rpc_listTags(
        self,
        ctx: _Ctx,
        build: Any = None,
        package: Any = None,
        perms: bool = True,
        queryOpts: Any = None,
        pattern: str | None = None,
    ) -> Any:
        tags = list(self._tags.values())
        if build is not None:
            binfo = self._build(build, strict=True)
            assert binfo is not None
            ids = {
                r["tag_id"] for r in self._listings if r["build_id"] == binfo["id"] and r["active"]
            }
            tags = [t for t in tags if t["id"] in ids]
        if package is not None:
            ids = {
                r["tag_id"]
                for r in self._listings
                if r["active"] and self._builds[r["build_id"]]["name"] == package
            }
            tags = [t for t in tags if t["id"] in ids]
        if pattern:
            tags = [t for t in tags if fnmatch.fnmatchcase(t["name"], pattern)]
        return _query_opts([dict(t) for t in sorted(tags, key=lambda t: t["id"])], queryOpts)

    def rpc_getBuildTarget(
        self, ctx: _Ctx, info: Any, event: Any = None, strict: bool = False
    ) -> dict[str, Any] | None:
        target = self._target(info, strict=strict)
        return None if target is None else dict(target)

    def rpc_getBuildTargets(
        self,
        ctx: _Ctx,
        info: Any = None,
        event: Any = None,
        buildTagID: Any = None,
        destTagID: Any = None,
        queryOpts: Any = None,
    ) -> Any:
        rows = [
            dict(t)
            for t in self._targets.values()
            if (info is None or info in (t["id"], t["name"]))
            and (buildTagID is None or buildTagID in (t["build_tag"], t["build_tag_name"]))
            and (destTagID is None or destTagID in (t["dest_tag"], t["dest_tag_name"]))
        ]
        return _query_opts(rows, queryOpts)

    def _active_at(self, row: dict[str, Any], event: int | None) -> bool:
        if event is None:
            return bool(row["active"])
        return row["create_event"] <= event and (
            row["revoke_event"] is None or row["revoke_event"] > event
        )

    def rpc_listTagged(
        self,
        ctx: _Ctx,
        tag: Any,
        event: Any = None,
        inherit: bool = False,
        prefix: str | None = None,
        latest: bool = False,
        package: Any = None,
        owner: Any = None,
        type: Any = None,
        strict: bool = True,
        extra: bool = False,
        draft: Any = None,
    ) -> list[dict[str, Any]]:
        tinfo = self._tag(tag, strict=True)
        assert tinfo is not None
        rows = [
            r for r in self._listings if r["tag_id"] == tinfo["id"] and self._active_at(r, event)
        ]
        rows.sort(key=lambda r: r["create_event"], reverse=True)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for row in rows:
            build = self._builds[row["build_id"]]
            if prefix and not build["name"].startswith(prefix):
                continue
            if package is not None and build["name"] != package:
                continue
            if owner is not None and owner not in (
                build["owner_id"],
                self._users[build["owner_id"]]["name"],
            ):
                continue
            if latest:
                if build["name"] in seen:
                    continue
                seen.add(build["name"])
            info = self._build_info(build)
            info.update(
                {
                    "tag_id": tinfo["id"],
                    "tag_name": tinfo["name"],
                    "create_event": row["create_event"],
                }
            )
            out.append(info)
        return out

    def _tag_build(self, tag: dict[str, Any], build: dict[str, Any], user_id: int) -> int:
        if any(
            r["tag_id"] == tag["id"] and r["build_id"] == build["id"] and r["active"]
            for r in self._listings
        ):
            raise koji.TagError(f"build {build['nvr']} already tagged ({tag['name']})")
        if build["state"] != BUILD["COMPLETE"]:
            raise koji.TagError(f"build {build['nvr']} not complete: state {BUILD[build['state']]}")
        event = self._new_event()
        self._listings.append(
            {
                "tag_id": tag["id"],
                "build_id": build["id"],
                "create_event": event,
                "revoke_event": None,
                "creator_id": user_id,
                "revoker_id": None,
                "active": True,
            }
        )
        self._tag_changed(tag)
        return event

    def _tag_changed(self, tag: dict[str, Any]) -> None:
        if self.auto_repos and not self._stopping.is_set():
            owner = self._user_by_name("kojira") or self._users.get(
                self.add_user("kojira", perms=("repo",))["id"]
            )
            assert owner is not None
            self._repo_task(tag, owner["id"], None)

    def rpc_tagBuild(
        self, ctx: _Ctx, tag: Any, build: Any, force: bool = False, fromtag: Any = None
    ) -> int:
        user = self._require_login(ctx)
        tinfo = self._tag(tag, strict=True)
        binfo = self._build(build, strict=True)
        from_info = self._tag(fromtag, strict=True) if fromtag is not None else None
        assert tinfo is not None and binfo is not None
        if tinfo["locked"] and "admin" not in user["perms"]:
            raise koji.ActionNotAllowed(f"tag {tinfo['name']} is locked")
        task = self._new_task(
            "tagBuild",
            [tinfo["id"], binfo["id"], force, from_info["id"] if from_info else None],
            owner=user["id"],
            priority=10,
        )

        def run() -> None:
            with self._lock:
                if from_info is not None:
                    self._untag(from_info, binfo, user["id"], strict=True)
                self._tag_build(tinfo, binfo, user["id"])

        self._start(task, run)
        return task.id

    def _untag(
        self, tag: dict[str, Any], build: dict[str, Any], user_id: int, strict: bool
    ) -> None:
        row = next(
            (
                r
                for r in self._listings
                if r["tag_id"] == tag["id"] and r["build_id"] == build["id"] and r["active"]
            ),
            None,
        )
        if row is None:
            if strict:
                raise koji.TagError(f"build {build['nvr']} not in tag {tag['name']}")
            return
        row.update(revoke_event=self._new_event(), revoker_id=user_id, active=None)
        self._tag_changed(tag)

    def rpc_untagBuild(
        self, ctx: _Ctx, tag: Any, build: Any, strict: bool = True, force: bool = False
    ) -> None:
        user = self._require_login(ctx)
        tinfo = self._tag(tag, strict=True)
        binfo = self._build(build, strict=True)
        assert tinfo is not None and binfo is not None
        self._untag(tinfo, binfo, user["id"], strict=strict)

    def rpc_queryHistory(self, ctx: _Ctx, tables: Any = None, **kwargs: Any) -> dict[str, Any]:
        known = {
            "tag",
            "build",
            "package",
            "user",
            "editor",
            "afterEvent",
            "beforeEvent",
            "after",
            "before",
            "active",
            "queryOpts",
        }
        for key in kwargs:
            if key not in known:
                raise koji.GenericError(f"Invalid option: {key}")
        if tables is None:
            tables = ["tag_listing"]
        for table in tables:
            if table != "tag_listing":
                raise koji.GenericError(f"No such history table: {table}")
        rows = list(self._listings)
        if kwargs.get("tag") is not None:
            tinfo = self._tag(kwargs["tag"], strict=True)
            assert tinfo is not None
            rows = [r for r in rows if r["tag_id"] == tinfo["id"]]
        if kwargs.get("build") is not None:
            binfo = self._build(kwargs["build"], strict=True)
            assert binfo is not None
            rows = [r for r in rows if r["build_id"] == binfo["id"]]
        if kwargs.get("package") is not None:
            rows = [r for r in rows if self._builds[r["build_id"]]["name"] == kwargs["package"]]
        editor = kwargs.get("editor", kwargs.get("user"))
        if editor is not None:
            uinfo = self._user(editor, strict=True)
            assert uinfo is not None
            rows = [r for r in rows if uinfo["id"] in (r["creator_id"], r["revoker_id"])]
        if kwargs.get("afterEvent") is not None:
            after = int(kwargs["afterEvent"])
            rows = [
                r
                for r in rows
                if r["create_event"] > after
                or (r["revoke_event"] is not None and r["revoke_event"] > after)
            ]
        if kwargs.get("beforeEvent") is not None:
            before = int(kwargs["beforeEvent"])
            rows = [
                r
                for r in rows
                if r["create_event"] < before
                or (r["revoke_event"] is not None and r["revoke_event"] < before)
            ]
        if kwargs.get("after") is not None:
            after_ts = _as_ts(kwargs["after"])
            rows = [
                r
                for r in rows
                if (self._event_ts(r["create_event"]) or 0) > after_ts
                or (self._event_ts(r["revoke_event"]) or 0) > after_ts
            ]
        if kwargs.get("before") is not None:
            before_ts = _as_ts(kwargs["before"])
            rows = [r for r in rows if (self._event_ts(r["create_event"]) or 0) < before_ts]
        if kwargs.get("active") is not None:
            rows = [r for r in rows if bool(r["active"]) == bool(kwargs["active"])]
        out = []
        for row in sorted(rows, key=lambda r: r["create_event"]):
            build = self._builds[row["build_id"]]
            tag = self._tags[row["tag_id"]]
            out.append(
                {
                    **row,
                    "tag.name": tag["name"],
                    "name": build["name"],
                    "version": build["version"],
                    "release": build["release"],
                    "epoch": build["epoch"],
                    "build.state": build["state"],
                    "creator_name": self._users[row["creator_id"]]["name"],
                    "revoker_name": (
                        self._users[row["revoker_id"]]["name"]
                        if row["revoker_id"] is not None
                        else None
                    ),
                    "create_ts": self._event_ts(row["create_event"]),
                    "revoke_ts": self._event_ts(row["revoke_event"]),
                }
            )
        return {"tag_listing": _query_opts(out, kwargs.get("queryOpts"))}

    # ---------------------------------------------------------------- RPC: builds

    def rpc_getBuild(self, ctx: _Ctx, buildInfo: Any, strict: bool = False) -> Any:
        build = self._build(buildInfo, strict=strict)
        return None if build is None else self._build_info(build)

    def rpc_listBuilds(
        self,
        ctx: _Ctx,
        packageID: Any = None,
        userID: Any = None,
        taskID: Any = None,
        prefix: str | None = None,
        state: Any = None,
        volumeID: Any = None,
        source: str | None = None,
        createdBefore: Any = None,
        createdAfter: Any = None,
        completeBefore: Any = None,
        completeAfter: Any = None,
        type: Any = None,
        typeInfo: Any = None,
        queryOpts: Any = None,
        pattern: str | None = None,
        cgID: Any = None,
        draft: Any = None,
    ) -> Any:
        rows = []
        for build in sorted(self._builds.values(), key=lambda b: b["id"]):
            if packageID is not None and packageID not in (build["package_id"], build["name"]):
                continue
            if userID is not None and userID not in (
                build["owner_id"],
                self._users[build["owner_id"]]["name"],
            ):
                continue
            if taskID is not None and taskID != -1 and build["task_id"] != taskID:
                continue
            if taskID == -1 and build["task_id"] is None:
                continue
            if prefix and not build["name"].startswith(prefix):
                continue
            if state is not None and build["state"] != state:
                continue
            if source and not fnmatch.fnmatchcase(build["source"] or "", source):
                continue
            if pattern and not fnmatch.fnmatchcase(build["nvr"], pattern):
                continue
            if createdAfter is not None and build["creation_ts"] <= _as_ts(createdAfter):
                continue
            if createdBefore is not None and build["creation_ts"] >= _as_ts(createdBefore):
                continue
            done = build["completion_ts"]
            if completeAfter is not None and (done is None or done <= _as_ts(completeAfter)):
                continue
            if completeBefore is not None and (done is None or done >= _as_ts(completeBefore)):
                continue
            rows.append(self._build_info(build))
        return _query_opts(rows, queryOpts)

    def rpc_listRPMs(
        self,
        ctx: _Ctx,
        buildID: Any = None,
        buildrootID: Any = None,
        imageID: Any = None,
        componentBuildrootID: Any = None,
        hostID: Any = None,
        arches: Any = None,
        queryOpts: Any = None,
        draft: Any = None,
    ) -> Any:
        rows = [
            dict(r)
            for r in sorted(self._rpms.values(), key=lambda r: r["id"])
            if (buildID is None or r["build_id"] == buildID)
        ]
        if arches is not None:
            wanted = [arches] if isinstance(arches, str) else list(arches)
            rows = [r for r in rows if r["arch"] in wanted]
        return _query_opts(rows, queryOpts)

    def rpc_build(
        self,
        ctx: _Ctx,
        src: Any,
        target: Any,
        opts: Any = None,
        priority: Any = None,
        channel: Any = None,
    ) -> int:
        user = self._require_login(ctx)
        if not isinstance(src, str) or not src.startswith("git+"):
            raise koji.ActionNotAllowed(
                "policy violation (build_from_srpm): only SCM builds are allowed"
            )
        opts = dict(opts or {})
        self._target(target, strict=True)
        task = self._new_task(
            "build",
            [src, target, opts],
            owner=user["id"],
            priority=20 if priority is None else int(priority),
        )
        self._start(task, lambda: self._run_build(task))
        return task.id

    # ---------------------------------------------------------------- RPC: tasks

    def rpc_getTaskInfo(
        self, ctx: _Ctx, task_id: Any, request: bool = False, strict: bool = False
    ) -> Any:
        if isinstance(task_id, list):
            return [self.rpc_getTaskInfo(ctx, t, request=request, strict=strict) for t in task_id]
        task = self._task(task_id, strict=strict)
        return None if task is None else task.info(request=request)

    def rpc_getTaskChildren(
        self, ctx: _Ctx, task_id: int, request: bool = False, strict: bool = False
    ) -> list[dict[str, Any]]:
        self._task(task_id, strict=strict)
        return [
            t.info(request=request)
            for t in sorted(self._tasks.values(), key=lambda t: t.id)
            if t.parent == task_id
        ]

    def rpc_getTaskDescendents(
        self, ctx: _Ctx, task_id: int, request: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        todo = [task_id]
        while todo:
            current = todo.pop(0)
            children = self.rpc_getTaskChildren(ctx, current, request=request)
            out[str(current)] = children
            todo.extend(c["id"] for c in children)
        return out

    def rpc_getTaskResult(self, ctx: _Ctx, task_id: int, raise_fault: bool = True) -> Any:
        task = self._task(task_id)
        assert task is not None
        if task.state == TASK["CANCELED"]:
            raise koji.GenericError(f"Task {task_id} is canceled")
        if task.state not in (TASK["CLOSED"], TASK["FAILED"]):
            raise koji.GenericError(f"Task {task_id} is not finished")
        if task.fault is not None:
            if raise_fault:
                raise task.fault
            return {"faultCode": task.fault.faultCode, "faultString": task.fault.faultString}
        return task.result

    def rpc_listTaskOutput(
        self,
        ctx: _Ctx,
        taskID: int,
        stat: bool = False,
        all_volumes: bool = False,
        strict: bool = False,
    ) -> Any:
        workdir = self._task_dir(taskID)
        if not workdir.is_dir():
            if strict:
                raise koji.GenericError(f"Task {taskID} has no output")
            return {} if (stat or all_volumes) else []
        files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
        if stat:
            out: dict[str, Any] = {}
            for name in files:
                st = (workdir / name).stat()
                out[name] = {
                    "st_size": str(st.st_size),
                    "st_atime": st.st_atime,
                    "st_mtime": st.st_mtime,
                    "st_ctime": st.st_ctime,
                }
            return out
        if all_volumes:
            return {name: ["DEFAULT"] for name in files}
        return files

    def rpc_listTasks(self, ctx: _Ctx, opts: Any = None, queryOpts: Any = None) -> Any:
        opts = dict(opts or {})
        rows = []
        for task in sorted(self._tasks.values(), key=lambda t: t.id):
            if opts.get("id") is not None and task.id not in _listify(opts["id"]):
                continue
            if opts.get("method") is not None and task.method not in _listify(opts["method"]):
                continue
            if opts.get("owner") is not None and task.owner not in _listify(opts["owner"]):
                continue
            if opts.get("state") is not None and task.state not in _listify(opts["state"]):
                continue
            if opts.get("not_state") is not None and task.state in _listify(opts["not_state"]):
                continue
            if "parent" in opts and task.parent not in _listify(opts["parent"]):
                continue
            if opts.get("createdAfter") is not None and task.create_ts <= _as_ts(
                opts["createdAfter"]
            ):
                continue
            if opts.get("createdBefore") is not None and task.create_ts >= _as_ts(
                opts["createdBefore"]
            ):
                continue
            info = task.info(request=True)
            owner = self._users[task.owner]
            info.update(owner_name=owner["name"], owner_type=owner["usertype"])
            if not opts.get("decode"):
                info["request"] = dumps(tuple(task.request), "request")
            rows.append(info)
        return _query_opts(rows, queryOpts)

    def rpc_cancelTask(self, ctx: _Ctx, task_id: int, recurse: bool = True) -> None:
        user = self._require_login(ctx)
        task = self._task(task_id)
        assert task is not None
        if task.owner != user["id"] and "admin" not in user["perms"]:
            raise koji.ActionNotAllowed("Cannot cancel task, not owner")
        self._cancel(task, recurse)

    def _cancel(self, task: _Task, recurse: bool) -> None:
        if not task.finished:
            task.state = TASK["CANCELED"]
            task.completion_ts = time.time()
            task.cancel.set()
            for proc in task.procs:
                _kill(proc)
            self._changed.notify_all()
        if recurse:
            for child in [t for t in self._tasks.values() if t.parent == task.id]:
                self._cancel(child, True)

    # ---------------------------------------------------------------- RPC: repos

    def rpc_newRepo(
        self,
        ctx: _Ctx,
        tag: Any,
        event: Any = None,
        src: bool = False,
        debuginfo: bool = False,
        separate_src: bool = False,
    ) -> int:
        user = self._require_perm(ctx, "repo")
        tinfo = self._tag(tag, strict=True)
        assert tinfo is not None
        return self._repo_task(tinfo, user["id"], event)

    def _repo_task(self, tag: dict[str, Any], owner: int, event: int | None) -> int:
        task = self._new_task("newRepo", [tag["name"], {"event": event}], owner=owner, priority=15)
        self._start(task, lambda: self._run_new_repo(task, tag, event))
        return task.id

    def _repo_info(self, repo: dict[str, Any]) -> dict[str, Any]:
        info = {k: v for k, v in repo.items() if not k.startswith("_")}
        info["creation_time"] = _timestr(repo["create_ts"])
        return info

    def rpc_getRepo(
        self,
        ctx: _Ctx,
        tag: Any,
        state: Any = None,
        event: Any = None,
        dist: bool = False,
        min_event: Any = None,
    ) -> dict[str, Any] | None:
        tinfo = self._tag(tag, strict=True)
        assert tinfo is not None
        wanted = REPO["READY"] if state is None else state
        repos = [
            r
            for r in self._repos.values()
            if r["tag_id"] == tinfo["id"]
            and r["state"] == wanted
            and r["dist"] == bool(dist)
            and (event is None or r["create_event"] <= event)
            and (min_event is None or r["create_event"] >= min_event)
        ]
        if not repos:
            return None
        return self._repo_info(max(repos, key=lambda r: (r["create_event"], r["id"])))

    def rpc_repoInfo(self, ctx: _Ctx, repo_id: int, strict: bool = False) -> Any:
        repo = self._repos.get(repo_id)
        if repo is None:
            if strict:
                raise koji.GenericError(f"Repo {repo_id} does not exist")
            return None
        return self._repo_info(repo)

    # ---------------------------------------------------------------- tasks machinery

    def _task_dir(self, task_id: int) -> Path:
        return self.root / "work" / koji.pathinfo.taskrelpath(task_id)

    def _new_task(
        self,
        method: str,
        request: list[Any],
        *,
        owner: int,
        parent: int | None = None,
        label: str | None = None,
        arch: str = "noarch",
        priority: int = 20,
    ) -> _Task:
        with self._lock:
            task = _Task(
                id=next(self._task_ids),
                method=method,
                request=request,
                owner=owner,
                parent=parent,
                label=label,
                arch=arch,
                priority=priority,
            )
            self._tasks[task.id] = task
            self._changed.notify_all()
            return task

    def _start(self, task: _Task, body: Callable[[], Any]) -> None:
        def run() -> None:
            with self._changed:
                while (
                    task.method in self._held and not task.finished and not self._stopping.is_set()
                ):
                    self._changed.wait(0.5)
                if task.finished:  # cancelled while held
                    return
            with self._slots:
                self._run_task(task, body)

        thread = threading.Thread(target=run, name=f"koji-task-{task.id}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _run_task(self, task: _Task, body: Callable[[], Any]) -> Any:
        """Run a task's body: FREE -> OPEN -> CLOSED, or FAILED with the error's fault."""
        with self._lock:
            if task.finished:
                raise _Canceled()
            task.state = TASK["OPEN"]
            task.start_ts = time.time()
            self._changed.notify_all()
        try:
            result = body()
            self._check_cancel(task)
        except BaseException as exc:
            with self._lock:
                if not task.finished:
                    if isinstance(exc, _Canceled):
                        task.state = TASK["CANCELED"]
                    else:
                        task.state = TASK["FAILED"]
                        task.fault = _fault(exc)
                    task.completion_ts = time.time()
                    self._changed.notify_all()
            if task.parent is not None:
                raise
            return None
        with self._lock:
            task.state = TASK["CLOSED"]
            task.result = result
            task.completion_ts = time.time()
            self._changed.notify_all()
        return result

    def _check_cancel(self, task: _Task) -> None:
        if task.cancel.is_set() or self._stopping.is_set():
            raise _Canceled()

    def _sleep(self, task: _Task, seconds: float) -> None:
        if seconds > 0 and task.cancel.wait(seconds):
            raise _Canceled()
        self._check_cancel(task)

    def _run(
        self,
        task: _Task,
        cmd: list[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run a command for a task, appending its output to ``log``; its exit status."""
        self._check_cancel(task)
        with open(log, "ab") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with self._lock:
                task.procs.append(proc)
            try:
                code = proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                _kill(proc)
                code = proc.wait()
            finally:
                with self._lock:
                    task.procs.remove(proc)
        self._check_cancel(task)
        return code

    @property
    def host_arch(self) -> str:
        if self._host_arch is None:
            self._host_arch = subprocess.run(
                ["rpm", "--eval", "%{_arch}"], check=True, capture_output=True, text=True
            ).stdout.strip()
        return self._host_arch

    # ---------------------------------------------------------------- the build task

    def _run_build(self, task: _Task) -> None:
        src, target_name, opts = task.request
        scratch = bool(opts.get("scratch"))
        with self._lock:
            target = self._target(target_name, strict=True)
            assert target is not None
            build_tag = dict(self._tags[target["build_tag"]])
            dest_tag = dict(self._tags[target["dest_tag"]])
        srpm_task = self._new_task(
            "buildSRPMFromSCM", [src, build_tag["id"], {}], owner=task.owner, parent=task.id
        )
        srpm_result = self._run_task(srpm_task, lambda: self._build_srpm(srpm_task, src, build_tag))
        srpm = self.root / "work" / srpm_result["srpm"]
        header = _rpm_headers([srpm])[0]
        build_id = None
        if not scratch:
            with self._lock:
                build_id = self._init_build(task, header, srpm_result["source"]["source"], src)
        try:
            arch = "noarch" if header["buildarchs"] == ["noarch"] else self.host_arch
            arch_task = self._new_task(
                "buildArch",
                [srpm_result["srpm"], build_tag["id"], arch, True, {}],
                owner=task.owner,
                parent=task.id,
                label=arch,
                arch=arch,
            )
            arch_result = self._run_task(
                arch_task, lambda: self._build_arch(arch_task, srpm, arch, build_tag, src, header)
            )
            self._check_cancel(task)
            if build_id is not None:
                with self._lock:
                    self._complete_build(
                        build_id, srpm_task, arch_task, srpm_result, arch_result, arch
                    )
                    if not opts.get("skip_tag"):
                        self._tag_build(dest_tag, self._builds[build_id], task.owner)
        except BaseException as exc:
            if build_id is not None:
                with self._lock:
                    build = self._builds[build_id]
                    if build["state"] == BUILD["BUILDING"]:
                        build["state"] = (
                            BUILD["CANCELED"] if isinstance(exc, _Canceled) else BUILD["FAILED"]
                        )
                        build["completion_ts"] = time.time()
                        self._new_event()
            raise
        return None

    def _git_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        return env

    def _rpm_defines(self, tag: Mapping[str, Any]) -> list[str]:
        defines = ["--define", "debug_package %{nil}"]
        for key, value in sorted(tag.get("extra", {}).items()):
            if key.startswith("rpm.macro."):
                defines += ["--define", f"{key[len('rpm.macro.') :]} {value}"]
        return defines

    def _build_srpm(self, task: _Task, src: str, tag: Mapping[str, Any]) -> dict[str, Any]:
        workdir = self._task_dir(task.id)
        workdir.mkdir(parents=True, exist_ok=True)
        checkout_log = workdir / "checkout.log"
        build_log = workdir / "build.log"
        url, _, ref = src[len("git+") :].partition("#")
        parts = urlsplit(url)
        if not ref:
            raise koji.GenericError(f"Invalid SCM URL (no commit): {src}")
        if parts.scheme not in ("file", "http", "https") or (
            parts.scheme != "file" and parts.hostname not in LOOPBACK_HOSTS
        ):
            raise koji.BuildError(f"{src} is not in the list of allowed SCMs")
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as tmp:
            checkout = Path(tmp) / "checkout"
            env = self._git_env()
            for cmd in (
                ["git", "clone", "-n", url, str(checkout)],
                ["git", "-C", str(checkout), "reset", "--hard", ref],
            ):
                if self._run(task, cmd, checkout_log, env=env) != 0:
                    raise koji.BuildError(
                        f'Error running GIT command "{" ".join(cmd[-3:])}", '
                        "see checkout.log for details"
                    )
            sha = subprocess.run(
                ["git", "-C", str(checkout), "rev-parse", "HEAD"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            specs = sorted(checkout.glob("*.spec"))
            if len(specs) != 1:
                raise koji.BuildError(f"Need exactly one spec file in {src}, found {len(specs)}")
            out = Path(tmp) / "srpm"
            cmd = [
                "rpmbuild",
                "--define",
                f"_topdir {tmp}/rpmbuild",
                "--define",
                f"_sourcedir {checkout}",
                "--define",
                f"_specdir {checkout}",
                "--define",
                f"_srcrpmdir {out}",
                *self._rpm_defines(tag),
                "--nodeps",
                "-bs",
                str(specs[0]),
            ]
            code = self._run(task, cmd, build_log, env={**env, "HOME": tmp})
            srpms = sorted(out.glob("*.src.rpm"))
            if code != 0 or len(srpms) != 1:
                raise koji.BuildError(
                    f"error building srpm, rpmbuild exited with status "
                    f"{code}; see build.log for more information"
                )
            shutil.move(str(srpms[0]), workdir / srpms[0].name)
        rel = koji.pathinfo.taskrelpath(task.id)
        return {
            "srpm": f"{rel}/{srpms[0].name}",
            "logs": [f"{rel}/checkout.log", f"{rel}/build.log"],
            "brootid": task.id,
            "source": {"source": f"git+{url}#{sha}", "url": src},
        }

    def _build_arch(
        self,
        task: _Task,
        srpm: Path,
        arch: str,
        tag: Mapping[str, Any],
        src: str,
        header: Mapping[str, Any],
    ) -> dict[str, Any]:
        workdir = self._task_dir(task.id)
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "build.log"
        self._sleep(task, self.build_delay)
        nvr = f"{header['name']}-{header['version']}-{header['release']}"
        with self._lock:
            forced = any(p.search(src) or p.search(nvr) for p in self._fail_patterns)
        if forced:
            with open(log, "a") as fh:
                fh.write(
                    f"error: Bad exit status from build of {nvr} (injected by the koji "
                    "test hub's fail_builds)\n"
                )
            raise koji.BuildError(
                f"error building package (arch {arch}), mock exited with "
                "status 1; see build.log for more information"
            )
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as tmp:
            out = Path(tmp) / "rpms"
            cmd = [
                "rpmbuild",
                "--define",
                f"_topdir {tmp}/rpmbuild",
                "--define",
                f"_rpmdir {out}",
                *self._rpm_defines(tag),
                "--nodeps",
                "--rebuild",
                str(srpm),
            ]
            code = self._run(task, cmd, log, env={**self._git_env(), "HOME": tmp})
            rpms = sorted(out.rglob("*.rpm"))
            if code != 0 or not rpms:
                raise koji.BuildError(
                    f"error building package (arch {arch}), mock exited "
                    f"with status {code}; see build.log for more "
                    "information"
                )
            for rpm in rpms:
                shutil.move(str(rpm), workdir / rpm.name)
        shutil.copy2(srpm, workdir / srpm.name)
        rel = koji.pathinfo.taskrelpath(task.id)
        return {
            "rpms": [f"{rel}/{r.name}" for r in rpms],
            "srpms": [f"{rel}/{srpm.name}"],
            "logs": [f"{rel}/build.log"],
            "brootid": task.id,
        }

    def _init_build(
        self, task: _Task, header: Mapping[str, Any], source: str, original_url: str
    ) -> int:
        nvr = f"{header['name']}-{header['version']}-{header['release']}"
        data = {
            "name": header["name"],
            "version": header["version"],
            "release": header["release"],
            "epoch": header["epoch"],
            "task_id": task.id,
            "owner": task.owner,
            "state": BUILD["BUILDING"],
            "source": source,
        }
        old = self._build(nvr)
        if old is not None:
            state = BUILD[old["state"]]
            if state == "BUILDING":
                raise koji.GenericError(f"Build already in progress (task {old['task_id']})")
            if state not in ("FAILED", "CANCELED"):
                raise koji.GenericError(
                    f"Build already exists (id={old['id']}, state={state}): {data!r}"
                )
            build_id = old["id"]
        else:
            build_id = next(self._ids["build"])
        package_id = self._packages.setdefault(header["name"], next(self._ids["package"]))
        event = self._new_event()
        now = time.time()
        self._builds[build_id] = {
            "id": build_id,
            "package_id": package_id,
            "name": header["name"],
            "version": header["version"],
            "release": header["release"],
            "epoch": header["epoch"],
            "nvr": nvr,
            "state": BUILD["BUILDING"],
            "task_id": task.id,
            "owner_id": task.owner,
            "creation_event_id": event,
            "creation_ts": now,
            "start_ts": now,
            "completion_ts": None,
            "source": source,
            "extra": {"source": {"original_url": original_url}},
            "volume_id": 0,
            "volume_name": "DEFAULT",
            "draft": False,
            "cg_id": None,
            "cg_name": None,
        }
        return build_id

    def _complete_build(
        self,
        build_id: int,
        srpm_task: _Task,
        arch_task: _Task,
        srpm_result: Mapping[str, Any],
        arch_result: Mapping[str, Any],
        arch: str,
    ) -> None:
        build = self._builds[build_id]
        builddir = Path(koji.PathInfo(topdir=str(self.root)).build(build))
        files = [self.root / "work" / p for p in arch_result["rpms"]]
        srpm = self.root / "work" / srpm_result["srpm"]
        for header, path in zip(_rpm_headers([*files, srpm]), [*files, srpm], strict=True):
            dest = builddir / koji.pathinfo.rpm(header)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            rpm_id = next(self._ids["rpm"])
            self._rpms[rpm_id] = {
                "id": rpm_id,
                "build_id": build_id,
                "name": header["name"],
                "version": header["version"],
                "release": header["release"],
                "epoch": header["epoch"],
                "arch": header["arch"],
                "nvr": f"{header['name']}-{header['version']}-{header['release']}",
                "size": path.stat().st_size,
                "buildtime": header["buildtime"],
                "payloadhash": header["sigmd5"],
                "external_repo_id": 0,
                "external_repo_name": "INTERNAL",
                "metadata_only": False,
                "extra": None,
                "buildroot_id": arch_task.id if header["arch"] != "src" else srpm_task.id,
                "draft": False,
            }
        logdir = builddir / "data" / "logs" / arch
        logdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self._task_dir(arch_task.id) / "build.log", logdir / "build.log")
        build["state"] = BUILD["COMPLETE"]
        build["completion_ts"] = time.time()
        self._new_event()

    # ---------------------------------------------------------------- the newRepo task

    def _run_new_repo(self, task: _Task, tag: dict[str, Any], event: int | None) -> list[int]:
        with self._lock:
            event_id = event if event is not None else self._events[-1]["id"]
            repo_id = next(self._ids["repo"])
            self._new_event()
            repo = {
                "id": repo_id,
                "tag_id": tag["id"],
                "tag_name": tag["name"],
                "state": REPO["INIT"],
                "create_event": event_id,
                "create_ts": self._event_ts(event_id) or time.time(),
                "dist": False,
                "task_id": task.id,
                "begin_event": None,
                "end_event": None,
            }
            self._repos[repo_id] = repo
            seen: set[str] = set()
            builds = []
            rows = [
                r
                for r in self._listings
                if r["tag_id"] == tag["id"] and self._active_at(r, event_id)
            ]
            for row in sorted(rows, key=lambda r: r["create_event"], reverse=True):
                build = self._builds[row["build_id"]]
                if build["name"] not in seen:
                    seen.add(build["name"])
                    builds.append(build)
            rpms = [
                (b, r)
                for b in builds
                for r in self._rpms.values()
                if r["build_id"] == b["id"] and r["arch"] != "src"
            ]
        arches = (tag.get("arches") or self.host_arch).split()
        repodir = Path(koji.PathInfo(topdir=str(self.root)).repo(repo_id, tag["name"]))
        try:
            for arch in arches:
                archdir = repodir / arch
                archdir.mkdir(parents=True, exist_ok=True)
                for build, rpm in rpms:
                    if rpm["arch"] in (arch, "noarch"):
                        path = Path(
                            koji.PathInfo(topdir=str(self.root)).build(build)
                        ) / koji.pathinfo.rpm(rpm)
                        os.link(path, archdir / path.name)
                if (
                    self._run(
                        task,
                        ["createrepo_c", "--quiet", str(archdir)],
                        self.root / "tmp" / f"newRepo-{task.id}.log",
                    )
                    != 0
                ):
                    raise koji.GenericError(f"createrepo_c failed for {tag['name']}/{arch}")
        except BaseException:
            with self._lock:
                repo["state"] = REPO["PROBLEM"]
            raise
        with self._lock:
            for other in self._repos.values():
                if other["tag_id"] == tag["id"] and other["state"] == REPO["READY"]:
                    other["state"] = REPO["EXPIRED"]
            repo["state"] = REPO["READY"]
        return [repo_id, event_id]

    # ---------------------------------------------------------------- TLS

    def _make_tls(self) -> ssl.SSLContext:
        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self._ca = _make_ca()
        self.ca_cert = pki / "ca.pem"
        self.ca_cert.write_bytes(self._ca[1])
        server_pem = self._issue(self.host, server=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(server_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(self.ca_cert)
        return ctx

    def _issue(self, name: str, server: bool) -> Path:
        pem = _issue_cert(self._ca, name, server=server, ip=self.host if server else None)
        path = self.root / "pki" / (f"server-{name}.pem" if server else f"client-{name}.pem")
        path.write_bytes(pem)
        path.chmod(0o600)
        return path


def _listify(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def _rpm_headers(paths: list[Path]) -> list[dict[str, Any]]:
    """Header fields of RPM files, in order, read with ``rpm -qp``."""
    fmt = (
        "%{NAME}\\t%{VERSION}\\t%{RELEASE}\\t%{EPOCH}\\t%{ARCH}\\t%{BUILDTIME}\\t"
        "%|SOURCERPM?{bin}:{src}|\\t%{SIGMD5}\\t[%{BUILDARCHS} ]\\n"
    )
    out = subprocess.run(
        ["rpm", "-qp", "--nosignature", "--nodigest", "--qf", fmt, *map(str, paths)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    headers = []
    for line in out.splitlines():
        name, version, release, epoch, arch, buildtime, kind, sigmd5, buildarchs = line.split("\t")
        headers.append(
            {
                "name": name,
                "version": version,
                "release": release,
                "epoch": None if epoch == "(none)" else int(epoch),
                "arch": "src" if kind == "src" else arch,
                "buildtime": int(buildtime),
                "sigmd5": sigmd5,
                "buildarchs": buildarchs.split(),
            }
        )
    if len(headers) != len(paths):
        raise koji.GenericError(f"could not read the headers of {paths}")
    return headers


def _make_ca() -> tuple[Any, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "koji test hub CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (key, cert), cert.public_bytes(serialization.Encoding.PEM)


def _issue_cert(ca: tuple[Any, bytes], name: str, *, server: bool, ip: str | None) -> bytes:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    (ca_key, ca_cert), _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
        if ip:
            alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
