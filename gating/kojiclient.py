"""The one koji client wrapper: every call the product makes to a koji hub goes through here.

:class:`KojiSession` wraps ``koji.ClientSession`` (the real ``koji`` client library), set up
either from a koji profile (``/etc/koji.conf.d``, ``~/.koji/config``: ``koji.read_config`` and
``koji.grab_session_options``, see :meth:`KojiSettings.from_profile`) or from explicit
:class:`KojiSettings`. Credentials (a password, the paths of a client certificate or a keytab)
are passed in by the caller, from Buildbot secrets: nothing here reads them from a repository.

What it adds to the koji library:

* **Waiting through hub outages** (:mod:`gating.outage` decides what an outage is and the
  back-off): connection errors, HTTP 5xx answers, timeouts, ``koji.ServerOffline`` and
  ``koji.RetryError`` are retried with a capped exponential back-off for as long as the
  outage lasts, up to the outage timeout (:class:`RetryPolicy` ``total``, 6 hours by
  default); then :class:`KojiUnavailable` names the hub (without credentials) and the call.
  koji's own retry loop (a fixed interval, 30 times by default) is turned off so there is one
  policy. koji faults (a ``koji.GenericError`` subclass: the hub ran the call and refused it)
  are not retried; they are raised as they are, with a note naming the hub and the call.
  :meth:`KojiSession.outage` says whether the hub is unreachable now, since when and why;
  the time a thread spent waiting for the hub does not count against the timeouts of
  :meth:`KojiSession.wait_task` and :meth:`KojiSession.wait_repo`.
* **Never twice**: a call that changes data may have run on the hub even though its answer was
  lost (a dropped connection, a 502 from a proxy, a timeout; a real hub then refuses the same
  call number with ``koji.RetryError``). Such calls are only repeated after checking that the
  first attempt left nothing behind: :meth:`KojiSession.build_from_scm` looks for its own new
  ``build`` task, :meth:`KojiSession.tag_build` for the tag or its ``tagBuild`` task. Other
  calls that change data (:data:`NOT_REPEATABLE`) are repeated only when the hub certainly did
  not run them (connection refused, ``ServerOffline``); otherwise :class:`KojiError` says the
  outcome is unknown.
* **Batching**: :meth:`KojiSession.multicall` sends several calls in one HTTP request (koji's
  ``session.multicall()``); :meth:`KojiSession.tag_history` is one such request.
* The product's verbs: scratch and non-scratch builds from SCM, following a task until it ends
  (:class:`KojiTaskFailed` carries the task id and a link to its log), the URLs of a task's or
  a build's RPMs and their download from the hub's ``topurl``, tagging, tag history, repos.

The API is blocking and thread-safe (one lock serialises the calls of a session, as koji's call
numbers must reach the hub in order); the Buildbot glue calls it from threads. No Twisted here.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xmlrpc.client import Fault

import koji
import requests

from gating.outage import (
    FAULT,
    MAYBE_RUN,
    HubOutage,
    OutageTracker,
    RetryPolicy,
    classify,
    describe_error,
    public_url,
    unreachable_message,
)

__all__ = [
    "KojiCall",
    "KojiConfigError",
    "KojiError",
    "KojiEvent",
    "KojiSession",
    "KojiSettings",
    "KojiTaskFailed",
    "KojiUnavailable",
    "RetryPolicy",
    "TagEvent",
    "TagHistory",
    "poll_delays",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

AUTH_METHODS = ("password", "ssl", "gssapi")
# koji profile ``authtype`` values -> ours.
_PROFILE_AUTH: dict[str | None, str | None] = {
    None: None,
    "": None,
    "noauth": None,
    "password": "password",
    "ssl": "ssl",
    "kerberos": "gssapi",
    "gssapi": "gssapi",
}
# Hub methods that change data and are not idempotent: repeated only when the hub certainly
# did not run them.
NOT_REPEATABLE = frozenset(
    {
        "build",
        "chainBuild",
        "tagBuild",
        "tagBuildBypass",
        "untagBuild",
        "untagBuildBypass",
        "moveBuild",
        "moveAllBuilds",
        "newRepo",
        "distRepo",
        "createTag",
        "createBuildTarget",
        "createUser",
        "importRPM",
        "CGImport",
    }
)
_FINISHED = ("CLOSED", "FAILED", "CANCELED")
# How many of our newest tasks of a method a "did my call run?" check looks at.
_PROBE_WINDOW = 50
# The first wait between two polls of a task or a repo; each wait doubles up to the poll
# interval (see poll_delays).
FIRST_POLL = 0.05


def poll_delays(poll_interval: float, first: float = FIRST_POLL) -> Iterator[float]:
    """The waits between the polls of something that ends on the hub: ``first`` seconds,
    doubled each time up to ``poll_interval``. What ends in a moment (a ``tagBuild`` task, a
    small repo) is seen within a moment, not a whole poll interval later (the export's
    serial section waits on both); a long build costs a handful of polls more."""
    delay = min(first, poll_interval)
    while True:
        yield delay
        delay = min(delay * 2, poll_interval)


class KojiError(Exception):
    """A koji operation failed (other than a koji fault, which is raised as it is)."""


class KojiConfigError(KojiError, ValueError):
    """The koji settings or profile are unusable."""


class KojiUnavailable(KojiError):
    """The hub stayed unreachable longer than the outage timeout (the retry policy's
    ``total``). The message names the hub (its URL without credentials) and the call."""

    def __init__(
        self,
        hub: str,
        call: str,
        attempts: int,
        elapsed: float,
        last: BaseException,
        timeout: float | None = None,
    ) -> None:
        self.hub = public_url(hub)
        self.call = call
        self.attempts = attempts
        self.elapsed = elapsed
        self.last = last
        super().__init__(
            unreachable_message(
                hub, call, attempts, elapsed, elapsed if timeout is None else timeout, last
            )
        )


class KojiTaskFailed(KojiError):
    """A koji task ended FAILED or CANCELED.

    ``task_id`` is the task waited for, ``failed_task_id`` the (sub)task that failed,
    ``fault`` the koji error it failed with (``None`` when canceled), ``log_url`` a link to its
    log under the hub's ``topurl``, ``web_url`` its ``taskinfo`` page when a ``weburl`` is set.
    """

    def __init__(
        self,
        task_id: int,
        method: str,
        state: str,
        fault: BaseException | None,
        failed_task_id: int,
        log_url: str,
        web_url: str | None,
    ) -> None:
        self.task_id = task_id
        self.method = method
        self.state = state
        self.fault = fault
        self.failed_task_id = failed_task_id
        self.log_url = log_url
        self.web_url = web_url
        reason = f": {fault}" if fault is not None else ""
        where = f"; log: {log_url}" + (f"; task: {web_url}" if web_url else "")
        super().__init__(f"koji task {task_id} ({method}) {state.lower()}{reason}{where}")


@dataclass(frozen=True)
class KojiSettings:
    """Where the hub is and how to log in.

    ``auth``: ``None`` (anonymous, read-only), ``"password"`` (``user`` and ``password``),
    ``"ssl"`` (``cert``: a PEM file with the client certificate and its key; ``serverca``:
    the CA that signed the hub's certificate) or ``"gssapi"`` (``principal`` and ``keytab``, or
    a ticket in ``ccache`` / the default cache). ``timeout``: seconds for one HTTP request.
    """

    server: str
    topurl: str
    weburl: str | None = None
    auth: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cert: str | None = None
    serverca: str | None = None
    principal: str | None = None
    keytab: str | None = None
    ccache: str | None = None
    no_ssl_verify: bool = False
    timeout: float = 300.0
    auth_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    profile: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("server", "topurl") + (("weburl",) if self.weburl else ()):
            value = getattr(self, name)
            if not value or urlsplit(value).scheme not in ("http", "https"):
                problems.append(f"{name} must be an http(s) URL, not {value!r}")
        if self.auth not in (None, *AUTH_METHODS):
            problems.append(
                f"auth must be one of {', '.join(AUTH_METHODS)} or None, not {self.auth!r}"
            )
        if self.auth == "password" and not (self.user and self.password):
            problems.append("auth 'password' needs a user and a password")
        if self.auth == "ssl" and not self.cert:
            problems.append(
                "auth 'ssl' needs cert (a PEM file with the client certificate and key)"
            )
        if problems:
            where = f"koji profile {self.profile!r}" if self.profile else "koji settings"
            raise KojiConfigError(f"{where}: " + "; ".join(problems))

    @classmethod
    def from_profile(
        cls,
        profile: str,
        *,
        user_config: str | None = None,
        user: str | None = None,
        password: str | None = None,
        principal: str | None = None,
        keytab: str | None = None,
        ccache: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> KojiSettings:
        """Settings from a koji profile (``koji.read_config``), credentials passed in.

        The profile's ``authtype`` chooses the login (``kerberos`` is ``gssapi``, ``noauth``
        anonymous); without one: ``password`` when a password is given, ``ssl`` when the
        profile has a readable ``cert``, else anonymous.
        """
        try:
            config = koji.read_config(profile, user_config=user_config)
        except koji.ConfigurationError as exc:
            raise KojiConfigError(f"koji profile {profile!r}: {exc}") from exc
        opts = koji.grab_session_options(config)
        authtype = config.get("authtype")
        if authtype not in _PROFILE_AUTH:
            raise KojiConfigError(f"koji profile {profile!r}: unknown authtype {authtype!r}")
        auth = _PROFILE_AUTH[authtype]
        cert = config.get("cert") or None
        if authtype is None:
            if password:
                auth = "password"
            elif cert and os.access(cert, os.R_OK):
                auth = "ssl"
        if not config.get("topurl"):
            raise KojiConfigError(f"koji profile {profile!r}: no topurl")
        profile_timeout = opts.get("timeout")
        if timeout is None:
            timeout = (
                300.0
                if profile_timeout in (None, koji.DEFAULT_REQUEST_TIMEOUT)
                else float(profile_timeout)
            )
        return cls(
            server=config["server"],
            topurl=config["topurl"],
            weburl=config.get("weburl") or None,
            auth=auth,
            user=user,
            password=password,
            cert=cert,
            serverca=opts.get("serverca") or None,
            principal=principal or config.get("principal") or None,
            keytab=keytab or config.get("keytab") or None,
            ccache=ccache,
            no_ssl_verify=bool(opts.get("no_ssl_verify", False)),
            timeout=timeout,
            auth_timeout=float(opts.get("auth_timeout") or 60),
            retry=retry or RetryPolicy(),
            profile=profile,
        )

    def client_options(self) -> dict[str, Any]:
        """Options for ``koji.ClientSession``: koji's own retries off (ours apply)."""
        opts: dict[str, Any] = {
            "timeout": self.timeout,
            "auth_timeout": self.auth_timeout,
            "max_retries": 0,
            "retry_interval": 0,
            "anon_retry": False,
            "offline_retry": False,
            "no_ssl_verify": self.no_ssl_verify,
        }
        if self.serverca:
            opts["serverca"] = self.serverca
        if self.auth == "password":
            opts["user"] = self.user
            opts["password"] = self.password
        return opts


@dataclass(frozen=True)
class KojiCall:
    """One call of a :meth:`KojiSession.multicall`."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, *args: Any, **kwargs: Any) -> KojiCall:
        return cls(method, args, kwargs)

    def describe(self) -> str:
        return _describe_call(self.method, self.args, self.kwargs)


@dataclass(frozen=True)
class KojiEvent:
    """A hub event: ids increase with every change, ``ts`` is the hub's epoch time."""

    id: int
    ts: float


@dataclass(frozen=True)
class TagEvent:
    """A build tagged into (``action`` ``"tag"``) or untagged from (``"untag"``) a tag."""

    event_id: int
    ts: float | None
    tag: str
    nvr: str
    build_id: int
    action: str
    user: str | None


@dataclass(frozen=True)
class TagHistory:
    """The tag events after some event, up to and including ``last_event``."""

    last_event: KojiEvent
    events: tuple[TagEvent, ...]


@dataclass(frozen=True)
class _Found:
    value: Any


class KojiSession:
    """A koji hub, through the koji client library, with retries (see the module docstring).

    ``sleep`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        settings: KojiSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pathinfo = koji.PathInfo(topdir=settings.topurl.rstrip("/"))
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.RLock()
        self._session: koji.ClientSession | None = None
        self._user: dict[str, Any] | None = None
        self._http: requests.Session | None = None
        self.outages = OutageTracker(settings.server)
        self._waited = threading.local()

    @classmethod
    def from_profile(cls, profile: str, **kwargs: Any) -> KojiSession:
        """A session from a koji profile; ``kwargs`` as :meth:`KojiSettings.from_profile`."""
        return cls(KojiSettings.from_profile(profile, **kwargs))

    def __enter__(self) -> KojiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KojiSession({self.settings.server!r}, auth={self.settings.auth!r})"

    @property
    def hub(self) -> str:
        return self.settings.server

    def outage(self) -> HubOutage | None:
        """The hub's current outage (calls are waiting for it to answer), or ``None``."""
        return self.outages.current()

    def waited(self) -> float:
        """Seconds the calling thread has spent so far waiting for an unavailable hub."""
        return getattr(self._waited, "seconds", 0.0)

    def close(self) -> None:
        """Log out (once, no retries) and close the HTTP connections."""
        with self._lock:
            session, self._session = self._session, None
            self._user = None
            if session is not None:
                try:
                    if session.logged_in:
                        session.logout()
                except Exception as exc:  # noqa: BLE001 - closing is best effort
                    log.info("koji hub %s: logout failed: %s", self.hub, describe_error(exc))
                session.rsession.close()
            if self._http is not None:
                self._http.close()
                self._http = None

    # ------------------------------------------------------------------ calls

    def login(self) -> None:
        """Log in now (calls log in when they first need to)."""
        self._koji("login", lambda session: None)

    def logged_in_user(self) -> dict[str, Any]:
        """The hub's record of the user we are logged in as."""
        with self._lock:
            if self._user is not None:
                return self._user
        user = self.call("getLoggedInUser")
        if not user:
            raise KojiError(f"koji hub {self.hub}: not logged in (auth is {self.settings.auth!r})")
        with self._lock:
            self._user = user
        return user

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One hub call, retried as the module docstring says."""
        return self._koji(
            _describe_call(method, args, kwargs),
            lambda session: session.callMethod(method, *args, **kwargs),
            repeatable=method not in NOT_REPEATABLE,
        )

    def multicall(
        self, calls: Iterable[KojiCall | Sequence[Any]], *, strict: bool = True
    ) -> list[Any]:
        """Several calls in one HTTP request; their results, in order.

        ``calls``: :class:`KojiCall` or ``(method, args[, kwargs])``. With ``strict`` the
        first fault is raised (as koji's ``multicall(strict=True)``); without, a failed call's
        place holds its koji error.
        """
        batch = [c if isinstance(c, KojiCall) else KojiCall(*c) for c in calls]
        if not batch:
            return []

        def attempt(session: koji.ClientSession) -> list[Any]:
            mc = session.multicall(strict=False)
            for c in batch:
                mc.callMethod(c.method, *c.args, **c.kwargs)
            return mc.call_all()

        described = "multiCall(" + ", ".join(c.method for c in batch) + ")"
        entries = self._koji(
            described, attempt, repeatable=not any(c.method in NOT_REPEATABLE for c in batch)
        )
        results: list[Any] = []
        for c, entry in zip(batch, entries, strict=True):
            if isinstance(entry, dict):
                err = koji.convertFault(Fault(entry["faultCode"], entry["faultString"]))
                if strict:
                    err.add_note(f"koji hub {self.hub}: {c.describe()} in {described}")
                    raise err
                results.append(err)
            else:
                results.append(entry[0])
        return results

    # ------------------------------------------------------------------ builds and tasks

    def build_from_scm(
        self,
        url: str,
        target: str,
        scratch: bool,
        *,
        opts: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> int:
        """Start a build of ``url`` (``git+https://...#<commit>``) for ``target``; its task id.

        A retry after an answer that may have been lost first looks for the task the lost
        attempt would have made (our newest ``build`` tasks with the same request), so a
        flaky hub never gets two builds from one call.
        """
        build_opts = dict(opts or {})
        build_opts["scratch"] = bool(scratch)
        owner = self.logged_in_user()["id"]
        newest = self._newest_task_id("build", owner)

        def probe() -> _Found | None:
            for task in self._recent_tasks("build", owner, newest):
                request = task.get("request") or []
                if (
                    len(request) >= 3
                    and request[0] == url
                    and request[1] == target
                    and bool((request[2] or {}).get("scratch")) == bool(scratch)
                ):
                    log.warning(
                        "koji hub %s: build of %s for %s had run (task %s) although "
                        "its answer was lost",
                        self.hub,
                        url,
                        target,
                        task["id"],
                    )
                    return _Found(task["id"])
            return None

        kwargs: dict[str, Any] = {} if priority is None else {"priority": priority}
        return self._koji(
            _describe_call("build", (url, target, build_opts), kwargs),
            lambda session: session.build(url, target, build_opts, **kwargs),
            repeatable=False,
            probe=probe,
        )

    def task_info(self, task_id: int) -> dict[str, Any]:
        return self.call("getTaskInfo", task_id, strict=True)

    def wait_task(
        self, task_id: int, poll_interval: float = 5.0, timeout: float | None = None
    ) -> Any:
        """Poll a task until it ends (soon after it starts, then every ``poll_interval``:
        :func:`poll_delays`); its result. FAILED or CANCELED raises
        :class:`KojiTaskFailed`; ``timeout`` (seconds) raises :class:`KojiError`."""
        deadline = None if timeout is None else self._clock() + timeout
        waited = self.waited()
        delays = poll_delays(poll_interval)
        while True:
            info = self.task_info(task_id)
            state = koji.TASK_STATES[info["state"]]
            if state == "CLOSED":
                return self.call("getTaskResult", task_id)
            if state in ("FAILED", "CANCELED"):
                raise self._task_failure(task_id, info)
            if deadline is not None and self._clock() >= deadline + self.waited() - waited:
                raise KojiError(
                    f"koji task {task_id} ({info['method']}) still {state} after "
                    f"{timeout} s: {self.task_url(task_id)}"
                )
            self._sleep(next(delays))

    def cancel_task(self, task_id: int) -> None:
        self.call("cancelTask", task_id)

    def task_url(self, task_id: int) -> str:
        """The task's web page when a ``weburl`` is set, else its work directory."""
        if self.settings.weburl:
            return f"{self.settings.weburl.rstrip('/')}/taskinfo?taskID={task_id}"
        return self.pathinfo.task(task_id) + "/"

    def task_rpms(self, task_id: int, *, include_srpm: bool = False) -> list[str]:
        """Download URLs (under ``topurl``) of the RPMs a finished build task made: the
        outputs of its ``buildArch`` subtasks (or of the task itself)."""
        info, children = self.multicall(
            [
                KojiCall.of("getTaskInfo", task_id, strict=True),
                KojiCall.of("getTaskChildren", task_id),
            ]
        )
        tasks = [t for t in [info, *children] if t["method"] == "buildArch"]
        if include_srpm:
            tasks += [t for t in children if t["method"] == "buildSRPMFromSCM"]
        if not tasks:
            tasks = [info, *children]
        outputs = self.multicall([KojiCall.of("listTaskOutput", t["id"]) for t in tasks])
        urls: dict[str, str] = {}
        for task, files in zip(tasks, outputs, strict=True):
            for name in sorted(files):
                base = posixpath.basename(name)
                if not base.endswith(".rpm") or base in urls:
                    continue
                if base.endswith(".src.rpm") and not include_srpm:
                    continue
                urls[base] = f"{self.pathinfo.task(task['id'])}/{name}"
        return [urls[name] for name in sorted(urls)]

    def get_build(self, build: int | str) -> dict[str, Any] | None:
        """A build by id or NVR, or ``None``."""
        return self.call("getBuild", build)

    def task_build(self, task_id: int) -> dict[str, Any] | None:
        """The build a non-scratch build task made, or ``None``."""
        builds = self.call("listBuilds", taskID=task_id)
        return builds[0] if builds else None

    def build_rpms(self, nvr: str, *, include_srpm: bool = False) -> list[str]:
        """Download URLs (under ``topurl``) of a build's RPMs."""
        build = self.call("getBuild", nvr, strict=True)
        rpms = self.call("listRPMs", buildID=build["id"])
        base = self.pathinfo.build(build)
        return sorted(
            f"{base}/{self.pathinfo.rpm(r)}" for r in rpms if include_srpm or r["arch"] != "src"
        )

    def download(self, urls: Iterable[str], dest_dir: Path | str) -> list[Path]:
        """Download files (from the hub's ``topurl``) into ``dest_dir``, retried as calls
        are; the paths written. A file appears complete or not at all."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        paths = []
        for url in urls:
            name = posixpath.basename(urlsplit(url).path)
            if not name or name in (".", ".."):
                raise KojiError(f"cannot download {url}: no file name")
            path = dest / name
            self._retrying(
                f"GET {url}", lambda url=url, path=path: self._fetch(url, path), repeatable=True
            )
            paths.append(path)
        return paths

    def _fetch(self, url: str, path: Path) -> None:
        with self._lock:
            if self._http is None:
                self._http = requests.Session()
            http = self._http
        verify: bool | str = self.settings.serverca or not self.settings.no_ssl_verify
        part = path.with_name(path.name + ".part")
        with http.get(url, stream=True, timeout=self.settings.timeout, verify=verify) as resp:
            resp.raise_for_status()
            with open(part, "wb") as out:
                for chunk in resp.iter_content(1 << 16):
                    out.write(chunk)
        os.replace(part, path)

    # ------------------------------------------------------------------ tags and events

    def latest_event(self) -> KojiEvent:
        event = self.call("getLastEvent")
        return KojiEvent(event["id"], event["ts"])

    def tag_history(self, tags: Sequence[str], after_event: int | None) -> TagHistory:
        """Tag and untag events of ``tags`` after ``after_event`` (all when ``None``), up to
        the hub's last event, from ONE request (``getLastEvent`` and a ``queryHistory`` per
        tag in a multicall). Pass ``last_event.id`` as the next ``after_event``."""
        query: dict[str, Any] = {"tables": ["tag_listing"]}
        if after_event is not None:
            query["afterEvent"] = after_event
        results = self.multicall(
            [KojiCall.of("getLastEvent")]
            + [KojiCall("queryHistory", (), {**query, "tag": tag}) for tag in tags]
        )
        last = KojiEvent(results[0]["id"], results[0]["ts"])
        after = -1 if after_event is None else after_event
        events = []
        for history in results[1:]:
            for row in history["tag_listing"]:
                nvr = f"{row['name']}-{row['version']}-{row['release']}"
                if after < row["create_event"] <= last.id:
                    events.append(
                        TagEvent(
                            row["create_event"],
                            row.get("create_ts"),
                            row["tag.name"],
                            nvr,
                            row["build_id"],
                            "tag",
                            row.get("creator_name"),
                        )
                    )
                revoked = row.get("revoke_event")
                if revoked is not None and after < revoked <= last.id:
                    events.append(
                        TagEvent(
                            revoked,
                            row.get("revoke_ts"),
                            row["tag.name"],
                            nvr,
                            row["build_id"],
                            "untag",
                            row.get("revoker_name"),
                        )
                    )
        events.sort(key=lambda e: (e.event_id, e.action != "untag", e.tag, e.nvr))
        return TagHistory(last, tuple(events))

    def tag_build(
        self, tag: str, nvr: str, *, wait: bool = True, poll_interval: float = 5.0
    ) -> int | None:
        """Tag a build into a tag, once: ``None`` if it is tagged already, else the
        ``tagBuild`` task id (waited for unless ``wait`` is false). A retry never tags twice:
        it first looks whether the tag or a ``tagBuild`` task of ours for it is there."""
        build, tag_info, tags = self.multicall(
            [
                KojiCall.of("getBuild", nvr, strict=True),
                KojiCall.of("getTag", tag, strict=True),
                KojiCall.of("listTags", build=nvr),
            ]
        )
        if any(t["id"] == tag_info["id"] for t in tags):
            return None
        owner = self.logged_in_user()["id"]
        newest = self._newest_task_id("tagBuild", owner)

        def probe() -> _Found | None:
            tagged = self._raw(lambda session: session.listTags(build=build["id"]))
            if any(t["id"] == tag_info["id"] for t in tagged):
                return _Found(None)
            for task in self._recent_tasks("tagBuild", owner, newest):
                request = task.get("request") or []
                if request[:2] == [tag_info["id"], build["id"]] and koji.TASK_STATES[
                    task["state"]
                ] in ("FREE", "OPEN", "ASSIGNED"):
                    return _Found(task["id"])
            return None

        task_id = self._koji(
            _describe_call("tagBuild", (tag, nvr), {}),
            lambda session: session.tagBuild(tag_info["id"], build["id"]),
            repeatable=False,
            probe=probe,
        )
        if task_id is None or not wait:
            return task_id
        try:
            self.wait_task(task_id, poll_interval=poll_interval)
        except KojiTaskFailed as exc:
            if isinstance(exc.fault, koji.TagError) and "already tagged" in str(exc.fault):
                log.info("koji hub %s: %s was already in %s", self.hub, nvr, tag)
                return task_id
            raise
        return task_id

    def untag_build(self, tag: str, nvr: str) -> None:
        """Remove a build from a tag; nothing if it is not there."""
        self._koji(
            _describe_call("untagBuild", (tag, nvr), {"strict": False}),
            lambda session: session.untagBuild(tag, nvr, strict=False),
            repeatable=True,
        )

    def new_repo(self, tag: str) -> int:
        """Ask for a new repo of a tag (``repo`` permission); the ``newRepo`` task id. A
        duplicate request only regenerates the repo once more, so it is retried freely."""
        return self._koji(
            _describe_call("newRepo", (tag,), {}),
            lambda session: session.newRepo(tag),
            repeatable=True,
        )

    def get_repo(self, tag: str) -> dict[str, Any] | None:
        """The tag's current (READY) repo, or ``None``."""
        return self.call("getRepo", tag)

    def wait_repo(
        self,
        tag: str,
        min_event: int,
        poll_interval: float = 5.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll (as :meth:`wait_task`) until the tag has a READY repo made at ``min_event``
        or later; that repo."""
        deadline = None if timeout is None else self._clock() + timeout
        waited = self.waited()
        delays = poll_delays(poll_interval)
        while True:
            repo = self.get_repo(tag)
            if repo is not None and repo["create_event"] >= min_event:
                return repo
            # the time spent waiting for an unavailable hub does not count
            if deadline is not None and self._clock() >= deadline + self.waited() - waited:
                raise KojiError(
                    f"koji hub {self.hub}: no repo of {tag} at event {min_event} "
                    f"or later after {timeout} s"
                )
            self._sleep(next(delays))

    def repo_url(self, repo: Mapping[str, Any], arch: str) -> str:
        """The yum ``baseurl`` of a repo (from :meth:`get_repo`) for an arch."""
        return f"{self.pathinfo.repo(repo['id'], repo['tag_name'])}/{arch}/"

    # ------------------------------------------------------------------ internals

    def _newest_task_id(self, method: str, owner: int) -> int:
        tasks = self.call(
            "listTasks", {"method": method, "owner": owner}, {"order": "-id", "limit": 1}
        )
        return tasks[0]["id"] if tasks else 0

    def _recent_tasks(self, method: str, owner: int, after_id: int) -> list[dict[str, Any]]:
        """Our tasks of a method newer than ``after_id`` (one request, no retries)."""
        tasks = self._raw(
            lambda session: session.listTasks(
                {"method": method, "owner": owner, "decode": True},
                {"order": "-id", "limit": _PROBE_WINDOW},
            )
        )
        return [t for t in tasks if t["id"] > after_id]

    def _raw(self, fn: Callable[[koji.ClientSession], T]) -> T:
        """One attempt, no retries (for the checks made inside a retry loop)."""
        with self._lock:
            return fn(self._ensure_session())

    def _ensure_session(self) -> koji.ClientSession:
        """The koji session, logged in (lock held)."""
        if self._session is None:
            self._session = koji.ClientSession(self.settings.server, self.settings.client_options())
        session = self._session
        if self.settings.auth and not session.logged_in:
            self._login(session)
        return session

    def _login(self, session: koji.ClientSession) -> None:
        s = self.settings
        if s.auth == "password":
            session.login()
        elif s.auth == "ssl":
            session.ssl_login(cert=s.cert, serverca=s.serverca)
        elif s.auth == "gssapi":
            # gssapi_login loops max_retries times itself: let it try once.
            session.opts["max_retries"] = 1
            try:
                session.gssapi_login(principal=s.principal, keytab=s.keytab, ccache=s.ccache)
            finally:
                session.opts["max_retries"] = 0
        self._user = None
        log.info("koji hub %s: logged in (%s)", self.hub, s.auth)

    def _koji(
        self,
        describe: str,
        fn: Callable[[koji.ClientSession], T],
        *,
        repeatable: bool = True,
        probe: Callable[[], _Found | None] | None = None,
    ) -> T:
        return self._retrying(describe, lambda: self._raw(fn), repeatable=repeatable, probe=probe)

    def _retrying(
        self,
        describe: str,
        attempt: Callable[[], T],
        *,
        repeatable: bool,
        probe: Callable[[], _Found | None] | None = None,
    ) -> T:
        """Run ``attempt`` until it succeeds, a fault says no, or the hub stayed unavailable
        for longer than the outage timeout (``settings.retry.total``, counted from this
        call's first failure).

        Before attempting again a call that may have run, ``probe`` says whether it did (and
        what it returned)."""
        policy = self.settings.retry
        delays = policy.delays()
        first_failure: float | None = None
        attempts = 0
        tried = False
        try:
            while True:
                try:
                    if tried and probe is not None:
                        found = probe()
                        if found is not None:
                            self._answered()
                            return found.value
                    attempts += 1
                    tried = True
                    result = attempt()
                    self._answered()
                    return result
                except Exception as exc:
                    kind = classify(exc)
                    if kind == FAULT:
                        self._answered()
                        exc.add_note(f"koji hub {public_url(self.hub)}: {describe}")
                        raise
                    if kind == MAYBE_RUN and not repeatable and probe is None:
                        raise KojiError(
                            f"koji hub {public_url(self.hub)}: {describe}: the answer was lost "
                            f"and the call may have run; not repeating it "
                            f"({describe_error(exc)})"
                        ) from exc
                    now = self._clock()
                    if first_failure is None:
                        first_failure = now
                    elapsed = now - first_failure
                    delay = policy.next_wait(next(delays), elapsed)
                    if delay is None:
                        raise KojiUnavailable(
                            self.hub, describe, attempts, elapsed, exc, policy.total
                        ) from exc
                    began = self.outages.failed(describe, exc)
                    if began or attempts == 1 or attempts % 10 == 0:
                        log.warning(
                            "koji hub %s %s: %s failed %d time(s) (%s); retrying in %.1f s, "
                            "for at most %.0f s more",
                            public_url(self.hub),
                            "unreachable" if began else "still unreachable",
                            describe,
                            attempts,
                            describe_error(exc),
                            delay,
                            policy.total - elapsed,
                        )
                    self._sleep(delay)
        finally:
            if first_failure is not None:
                self._waited.seconds = self.waited() + (self._clock() - first_failure)

    def _answered(self) -> None:
        """The hub answered: an outage in progress has ended."""
        ended = self.outages.answered()
        if ended is not None:
            log.warning(
                "koji hub %s answers again, after %.0f s unreachable (%d failed attempts)",
                public_url(self.hub),
                self.outages.now() - ended.since,
                ended.failures,
            )

    def _task_failure(self, task_id: int, info: Mapping[str, Any]) -> KojiTaskFailed:
        state = koji.TASK_STATES[info["state"]]
        result, descendants = self.multicall(
            [
                KojiCall.of("getTaskResult", task_id, raise_fault=False),
                KojiCall.of("getTaskDescendents", task_id),
            ],
            strict=False,
        )
        fault: BaseException | None = None
        if isinstance(result, dict) and "faultCode" in result:
            fault = koji.convertFault(Fault(result["faultCode"], result["faultString"]))
        elif isinstance(result, koji.GenericError) and state == "FAILED":
            fault = result
        failed_id = task_id
        if isinstance(descendants, dict):
            failed = sorted(
                (
                    t
                    for children in descendants.values()
                    for t in children
                    if koji.TASK_STATES[t["state"]] == "FAILED"
                ),
                key=lambda t: t["id"],
            )
            # the deepest failure: a failed task none of whose children failed
            parents = {t.get("parent") for t in failed}
            leaves = [t for t in failed if t["id"] not in parents]
            if leaves:
                failed_id = leaves[0]["id"]
        log_url = self.pathinfo.task(failed_id) + "/"
        if state == "FAILED":
            try:
                files = self.call("listTaskOutput", failed_id)
            except koji.GenericError:
                files = []
            logs = [f for f in files if f.endswith(".log")]
            if logs:
                name = "build.log" if "build.log" in logs else logs[0]
                log_url = f"{self.pathinfo.task(failed_id)}/{name}"
        web_url = self.task_url(task_id) if self.settings.weburl else None
        return KojiTaskFailed(task_id, info["method"], state, fault, failed_id, log_url, web_url)


def _describe_call(method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    if method in ("login", "sslLogin"):
        return f"{method}(...)"
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = f"{method}({', '.join(parts)})"
    return text if len(text) <= 200 else text[:197] + "..."
