"""What a koji hub outage is, and how long and how often to wait through one.

Pure decisions, no Twisted and no I/O (the koji client wrapper, :mod:`gating.kojiclient`,
applies them):

* :func:`classify`: an error of a hub call is either a **fault** (the hub ran the call and
  refused it: a failed build, "bump Release", permission denied, a bad argument; fail at
  once with koji's text) or a sign that the hub is **unavailable** (connection refused or
  reset, timeouts, HTTP 5xx, koji's ``ServerOffline`` and ``RetryError``): wait and try again
  for as long as the outage lasts. An unavailable hub either certainly did not run the call
  (:data:`NOT_SENT`) or may have (:data:`MAYBE_RUN`: the answer was lost), which decides
  whether a call that changes data may simply be sent again.
* :class:`RetryPolicy`: the capped exponential back-off, bounded by the outage timeout (the
  ``backend: outage-timeout`` setting, :data:`DEFAULT_OUTAGE_TIMEOUT`: 6 hours), after which
  the call fails with :class:`Unreachable`'s text (the hub's URL without credentials).
* :class:`OutageTracker`: whether a hub is unreachable right now, since when and why (what
  the gate page and ``gating queue`` show while the gate waits), thread-safe.
* :func:`public_url`, :func:`redact`: hub URLs and error texts without credentials or koji
  session keys, fit for an item's reason, a log or the web UI.
"""

from __future__ import annotations

import errno
import http.client
import re
import threading
import time
import xml.parsers.expat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xmlrpc.client import Fault

import koji
import requests
import urllib3.exceptions

# How long a hub may stay unreachable before the call waiting for it fails (seconds).
DEFAULT_OUTAGE_TIMEOUT = 6 * 3600.0
# The longest wait between two attempts to reach an unavailable hub (seconds).
DEFAULT_RETRY_MAX = 60.0
DEFAULT_RETRY_FIRST = 1.0

FAULT = "fault"  # the hub ran the call and refused it: do not retry
NOT_SENT = "not_sent"  # unavailable; the hub certainly did not run the call
MAYBE_RUN = "maybe_run"  # unavailable; the hub may have run the call (the answer was lost)

_MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off through an outage: waits ``initial``, ``initial * factor``, ...
    capped at ``maximum``, until ``total`` seconds (the outage timeout) have passed since
    the first failed attempt of a call."""

    total: float = DEFAULT_OUTAGE_TIMEOUT
    initial: float = DEFAULT_RETRY_FIRST
    maximum: float = DEFAULT_RETRY_MAX
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (self.total >= 0 and self.initial > 0 and self.maximum > 0 and self.factor >= 1):
            raise ValueError(f"unusable retry policy: {self!r}")

    def delays(self) -> Iterator[float]:
        """The waits between attempts, without end (the caller stops at ``total``)."""
        delay = min(self.initial, self.maximum)
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)

    def next_wait(self, delay: float, elapsed: float) -> float | None:
        """The wait before the next attempt, ``delay`` from :meth:`delays`, when ``elapsed``
        seconds have passed since the first failure; ``None``: the outage outlasted
        ``total``, give up."""
        left = self.total - elapsed
        if left <= 0:
            return None
        return min(delay, left)


def poll_cycle_policy(poll_interval: float) -> RetryPolicy:
    """The retries of one poll cycle (the koji events poller): a cycle gives up within
    about one poll interval, and the next cycle tries again from the same cursor, so an
    outage neither blocks the poller for long nor loses an event."""
    interval = max(float(poll_interval), 1.0)
    return RetryPolicy(total=interval, initial=min(1.0, interval / 4), maximum=interval / 2)


# ---------------------------------------------------------------------- classification


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """An exception and those it wraps (args, urllib3's ``reason``, cause, context)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen or len(seen) > 30:
            continue
        seen.add(id(current))
        yield current
        todo.extend(current.args)
        todo.extend([getattr(current, "reason", None), current.__cause__, current.__context__])


_LOGIN_CONNECTION_WORDS = (
    "ConnectionError",
    "Timeout",
    "ServerOffline",
    "Connection refused",
    "RemoteDisconnected",
)


def classify(exc: BaseException) -> str:
    """:data:`FAULT` (the hub answered no: fail now), :data:`NOT_SENT` (the hub is
    unavailable and did not run the call) or :data:`MAYBE_RUN` (the hub is unavailable
    or its answer was lost: the call may have run)."""
    if isinstance(exc, koji.ServerOffline):
        return NOT_SENT
    if isinstance(exc, koji.RetryError):
        return MAYBE_RUN
    if isinstance(exc, koji.AuthError) and not isinstance(exc, koji.AuthExpired):
        # ssl_login and gssapi_login turn every error, connection errors too, into an
        # AuthError whose text names the original error.
        text = str(exc)
        if (
            ("ssl auth failed" in text or "gssapi auth failed" in text)
            and any(word in text for word in _LOGIN_CONNECTION_WORDS)
            and "certificate" not in text.lower()
        ):
            return NOT_SENT
        return FAULT
    if isinstance(exc, (koji.GenericError, Fault)):
        return FAULT
    if isinstance(exc, requests.exceptions.SSLError) and koji.is_requests_cert_error(exc):
        return FAULT
    if isinstance(exc, requests.exceptions.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return MAYBE_RUN if status >= 500 else FAULT
    chain = list(_chain(exc))
    if any(
        isinstance(
            e,
            (
                urllib3.exceptions.NewConnectionError,
                ConnectionRefusedError,
                requests.exceptions.ConnectTimeout,
                urllib3.exceptions.ConnectTimeoutError,
            ),
        )
        for e in chain
    ):
        return NOT_SENT
    if any(getattr(e, "errno", None) == errno.ECONNREFUSED for e in chain):
        return NOT_SENT
    if isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            http.client.HTTPException,
            xml.parsers.expat.ExpatError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return MAYBE_RUN
    return FAULT


def is_unavailable(exc: BaseException) -> bool:
    """The hub did not answer (wait for it), as opposed to a koji fault (fail now)."""
    return classify(exc) != FAULT


# ---------------------------------------------------------------------- texts


_SECRET_QUERY = re.compile(r"(?i)(session-key|session_key|password|passwd|token)=([^&\s'\"]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")


def public_url(url: str) -> str:
    """``url`` without a user name, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact(text: str) -> str:
    """An error text without the credentials it may carry (a URL's ``user:password@``,
    koji's ``session-key=``, ``password=`` ...), cut to a readable length."""
    text = _USERINFO.sub(r"\1", text)
    text = _SECRET_QUERY.sub(r"\1=XXX", text)
    if len(text) > _MAX_ERROR_TEXT:
        text = text[: _MAX_ERROR_TEXT - 3] + "..."
    return text


def describe_error(exc: BaseException) -> str:
    """``Type: text`` of an error, redacted."""
    return redact(f"{type(exc).__name__}: {exc}")


def unreachable_message(
    hub: str, call: str, attempts: int, elapsed: float, timeout: float, last: BaseException
) -> str:
    """Why a call gave up on an unavailable hub (an item's failure reason)."""
    return (
        f"koji hub {public_url(hub)} unreachable: {call} failed {attempts} time(s) over "
        f"{elapsed:.1f} s, more than the outage timeout of {timeout:g} s (backend "
        f"'outage-timeout'); last error: {describe_error(last)}"
    )


# ---------------------------------------------------------------------- the hub's state


@dataclass(frozen=True)
class HubOutage:
    """A hub unreachable since ``since`` (epoch seconds): ``failures`` failed attempts so
    far, the last of ``call`` with ``error``."""

    hub: str
    since: float
    failures: int
    call: str
    error: str

    def describe(self, now: float) -> str:
        stamp = time.strftime("%H:%M:%S UTC", time.gmtime(self.since))
        return (
            f"koji hub {public_url(self.hub)} unreachable since {stamp} "
            f"({max(now - self.since, 0.0):.0f} s, {self.failures} failed attempts; last: "
            f"{self.call}: {self.error}); builds and exports wait for it"
        )

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "hub": public_url(self.hub),
            "since": self.since,
            "seconds": round(max(now - self.since, 0.0), 1),
            "failures": self.failures,
            "call": self.call,
            "error": self.error,
            "text": self.describe(now),
        }


class OutageTracker:
    """Whether one hub is unreachable now: every failed attempt of an unavailable hub
    (:meth:`failed`) starts or continues an outage, any answer (:meth:`answered`, a koji
    fault too) ends it. Thread-safe; ``clock`` gives epoch seconds."""

    def __init__(self, hub: str, clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self._clock = clock
        self._guard = threading.Lock()
        self._outage: HubOutage | None = None
        self.outages = 0  # how many outages began (for the record and the tests)

    def failed(self, call: str, exc: BaseException) -> bool:
        """Note a failed attempt; True when it began an outage."""
        with self._guard:
            old = self._outage
            began = old is None
            if began:
                self.outages += 1
            self._outage = HubOutage(
                self.hub,
                self._clock() if old is None else old.since,
                1 if old is None else old.failures + 1,
                call,
                describe_error(exc),
            )
            return began

    def answered(self) -> HubOutage | None:
        """The hub answered: the outage that this ended, if there was one."""
        with self._guard:
            old, self._outage = self._outage, None
            return old

    def current(self) -> HubOutage | None:
        with self._guard:
            return self._outage

    def now(self) -> float:
        return self._clock()
