"""gating.gerritpoller: the Gerrit poller takes its password from a secret (its polling
runs against the Gerrit test server in tests/integration/test_gate_gerrit.py)."""

from __future__ import annotations

from gating.gerritpoller import HANDLED_EVENTS, SecretGerritEventLogPoller


def test_reviews_and_patchsets_are_the_events_handled():
    assert set(HANDLED_EVENTS) == {"patchset-created", "comment-added"}


def test_configured_with_a_secret_name_not_a_password():
    poller = SecretGerritEventLogPoller(
        name="gerrit",
        baseURL="http://127.0.0.1:1/a",
        auth=("gate", "gerrit-password"),
        handled_events=list(HANDLED_EVENTS),
        gitBaseURL="/srv/gerrit/git",
    )
    assert poller.name == "gerrit"


def event(ts: int, kind: str = "comment-added", number: int = 1) -> bytes:
    import json

    return json.dumps({"type": kind, "eventCreatedOn": ts, "change": {"number": number}}).encode()


def test_events_of_the_last_second_are_not_handled_twice():
    from gating.gerritpoller import fresh_lines

    first = [event(100), event(101), event(101, number=2)]
    lines, seen = fresh_lines(first, set())
    assert lines == first
    assert {ts for ts, _ in seen} == {101}
    # The next poll answers everything at or after second 101 again, plus a new event.
    again = [event(101), event(101, number=2), event(101, number=3), event(102)]
    lines, seen = fresh_lines(again, seen)
    assert lines == [event(101, number=3), event(102)]
    assert {ts for ts, _ in seen} == {102}


def test_bad_lines_are_passed_on_for_the_stock_poller_to_report():
    from gating.gerritpoller import fresh_lines

    lines, seen = fresh_lines([b"not json", b'{"type": "x"}'], set())
    assert lines == [b"not json", b'{"type": "x"}']
    assert seen == set()
