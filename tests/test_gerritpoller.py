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
