"""gating.outage: what a hub outage is (as opposed to a koji fault), the back-off through
it, the hub's outage state and texts without credentials."""

from __future__ import annotations

import errno
import http.client
import itertools
import threading
from xmlrpc.client import Fault

import koji
import pytest
import requests
import urllib3.exceptions

from gating.outage import (
    DEFAULT_OUTAGE_TIMEOUT,
    DEFAULT_RETRY_MAX,
    FAULT,
    MAYBE_RUN,
    NOT_SENT,
    OutageTracker,
    RetryPolicy,
    classify,
    describe_error,
    is_unavailable,
    poll_cycle_policy,
    public_url,
    redact,
    unreachable_message,
)

HUB = "https://koji.example.org/kojihub"


def http_error(status: int) -> requests.exceptions.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.exceptions.HTTPError(f"{status} Server Error", response=response)


def refused() -> requests.exceptions.ConnectionError:
    inner = urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/kojihub", inner)
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # the hub is unavailable and did not run the call
        (refused(), NOT_SENT),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), NOT_SENT),
        (OSError(errno.ECONNREFUSED, "refused"), NOT_SENT),
        (requests.exceptions.ConnectTimeout("connect timed out"), NOT_SENT),
        (koji.ServerOffline("server is offline"), NOT_SENT),
        (koji.AuthError("ssl auth failed: ConnectionError: Connection refused"), NOT_SENT),
        # unavailable, and the call may have run (its answer was lost)
        (http_error(502), MAYBE_RUN),
        (http_error(503), MAYBE_RUN),
        (http_error(504), MAYBE_RUN),
        (http_error(500), MAYBE_RUN),
        (requests.exceptions.ReadTimeout("read timed out"), MAYBE_RUN),
        (requests.exceptions.ConnectionError("Connection aborted, RemoteDisconnected"), MAYBE_RUN),
        (http.client.RemoteDisconnected("closed"), MAYBE_RUN),
        (ConnectionResetError(errno.ECONNRESET, "reset"), MAYBE_RUN),
        (TimeoutError("timed out"), MAYBE_RUN),
        (koji.RetryError("retry of call 7"), MAYBE_RUN),
        # koji faults: the hub ran the call and said no
        (koji.BuildError("Build already exists (id=3, state=COMPLETE): bump Release"), FAULT),
        (koji.GenericError("Build already in progress (task 12)"), FAULT),
        (koji.ActionNotAllowed("repo permission required"), FAULT),
        (koji.AuthError("invalid username or password"), FAULT),
        (koji.AuthError("ssl auth failed: certificate verify failed (Timeout)"), FAULT),
        (koji.ParameterError("unexpected keyword argument"), FAULT),
        (koji.TagError("already tagged"), FAULT),
        (Fault(1000, "Traceback: ..."), FAULT),
        (http_error(403), FAULT),
        (http_error(404), FAULT),
        (ValueError("a bug"), FAULT),
    ],
)
def test_classify_tells_an_unavailable_hub_from_a_koji_fault(error, kind):
    assert classify(error) == kind
    assert is_unavailable(error) == (kind != FAULT)


def test_a_wrapped_connection_refusal_is_found_in_the_cause_chain():
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        except ConnectionRefusedError as inner:
            raise requests.exceptions.ConnectionError("could not connect") from inner
    except requests.exceptions.ConnectionError as outer:
        assert classify(outer) == NOT_SENT


def test_the_back_off_doubles_up_to_the_cap():
    policy = RetryPolicy(total=100, initial=1, maximum=8)
    assert list(itertools.islice(policy.delays(), 7)) == [1, 2, 4, 8, 8, 8, 8]
    assert list(itertools.islice(RetryPolicy(initial=5, maximum=2).delays(), 2)) == [2, 2]


def test_the_default_waits_six_hours_at_most_a_minute_apart():
    policy = RetryPolicy()
    assert policy.total == DEFAULT_OUTAGE_TIMEOUT == 6 * 3600
    assert policy.maximum == DEFAULT_RETRY_MAX == 60
    # a 6-hour outage costs about 6 * 60 attempts per waiting call, not thousands
    elapsed, attempts = 0.0, 0
    for delay in policy.delays():
        wait = policy.next_wait(delay, elapsed)
        if wait is None:
            break
        elapsed += wait
        attempts += 1
    assert 350 <= attempts <= 370
    assert elapsed == pytest.approx(policy.total)


def test_next_wait_stops_at_the_outage_timeout():
    policy = RetryPolicy(total=10, initial=1, maximum=4)
    assert policy.next_wait(4, 0) == 4
    assert policy.next_wait(4, 8) == 2  # never past the timeout
    assert policy.next_wait(4, 10) is None
    assert policy.next_wait(4, 11) is None
    assert RetryPolicy(total=0).next_wait(1, 0) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"total": -1}, {"initial": 0}, {"maximum": 0}, {"factor": 0.5}],
)
def test_unusable_policies_are_refused(kwargs):
    with pytest.raises(ValueError, match="unusable retry policy"):
        RetryPolicy(**kwargs)


def test_a_poll_cycle_gives_up_within_one_poll_interval():
    assert poll_cycle_policy(60) == RetryPolicy(total=60, initial=1, maximum=30)
    assert poll_cycle_policy(2) == RetryPolicy(total=2, initial=0.5, maximum=1)
    assert poll_cycle_policy(0.1).total == 1  # at least a second


def test_public_url_drops_credentials_query_and_fragment():
    assert public_url("https://bot:s3cret@koji.example.org:8443/kojihub?x=1#y") == (
        "https://koji.example.org:8443/kojihub"
    )
    assert public_url(HUB) == HUB
    assert public_url("http://[::1]:80/kojihub") == "http://[::1]:80/kojihub"


def test_redact_removes_passwords_and_session_keys():
    text = (
        "HTTPSConnectionPool(host='koji', port=443): Max retries exceeded with url: "
        "/kojihub?session-id=12&session-key=1-AbCdEf&callnum=3 (https://bot:pw@koji/x)"
    )
    clean = redact(text)
    assert "1-AbCdEf" not in clean and "bot:pw" not in clean
    assert "session-key=XXX" in clean and "session-id=12" in clean
    assert "password=XXX" in redact("login failed: password=hunter2&user=x")
    assert len(redact("x" * 1000)) == 300


def test_the_give_up_message_names_the_hub_without_its_credentials():
    message = unreachable_message(
        "https://bot:s3cret@koji.example.org/kojihub",
        "getTaskInfo(42)",
        12,
        21601.5,
        21600,
        refused(),
    )
    assert message.startswith("koji hub https://koji.example.org/kojihub unreachable: ")
    assert "getTaskInfo(42) failed 12 time(s) over 21601.5 s" in message
    assert "outage timeout of 21600 s (backend 'outage-timeout')" in message
    assert "ConnectionError" in message and "s3cret" not in message


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_tracker_follows_one_outage_from_the_first_failure_to_the_first_answer():
    clock = Clock()
    tracker = OutageTracker(HUB, clock)
    assert tracker.current() is None and tracker.answered() is None
    assert tracker.failed("getTaskInfo(1)", refused()) is True
    clock.now += 30
    assert tracker.failed("build(...)", http_error(503)) is False
    outage = tracker.current()
    assert outage is not None
    assert (outage.since, outage.failures, outage.call) == (1_000_000.0, 2, "build(...)")
    assert outage.error.startswith("HTTPError: 503")
    clock.now += 15
    shown = outage.to_json(clock.now)
    assert shown["seconds"] == 45 and shown["hub"] == HUB and shown["failures"] == 2
    assert shown["text"].startswith(f"koji hub {HUB} unreachable since ")
    assert "(45 s, 2 failed attempts" in shown["text"]
    assert "builds and exports wait for it" in shown["text"]
    assert tracker.answered() == outage
    assert tracker.current() is None
    tracker.failed("getTaskInfo(1)", refused())
    assert tracker.current().since == clock.now and tracker.outages == 2


def test_the_tracker_hides_credentials_of_the_hub_and_errors():
    tracker = OutageTracker("https://bot:pw@koji.example.org/kojihub", Clock())
    tracker.failed("call", requests.exceptions.ConnectionError("https://bot:pw@koji/ refused"))
    shown = tracker.current().to_json(0)
    assert "bot:pw" not in repr(shown)
    assert describe_error(ValueError("https://a:b@h/")) == "ValueError: https://h/"


def test_the_tracker_is_thread_safe():
    tracker = OutageTracker(HUB, Clock())

    def fail() -> None:
        for _ in range(500):
            tracker.failed("call", refused())

    threads = [threading.Thread(target=fail) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.current().failures == 2000 and tracker.outages == 1
