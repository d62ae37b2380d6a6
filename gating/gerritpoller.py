"""Buildbot's Gerrit events-log poller, with its HTTP password taken from a Buildbot secret
(the stock class takes the password as a plain value).

Buildbot 4.3's ``GerritEventLogPoller`` also hands its connector's bound ``do_poll`` to
``util.poll.Poller``, which calls it with the service as an argument: every poll fails
with a TypeError on a real master. The poller is rebuilt here with a function of the
right shape."""

from __future__ import annotations

import json
from typing import Any

from buildbot.changes.gerritchangesource import GerritEventLogPoller, build_gerrit_event_hash
from buildbot.process.properties import Secret
from buildbot.util import poll
from twisted.internet import defer

HANDLED_EVENTS = ("patchset-created", "comment-added")
SEEN_KEY = "gating_last_second_events"


def fresh_lines(
    lines: list[bytes], seen: set[tuple[int, str]]
) -> tuple[list[bytes], set[tuple[int, str]]]:
    """Drop the events already in ``seen`` ((time, hash) pairs); return the lines to handle
    and the (time, hash) pairs of the newest second to remember (pure)."""
    out: list[bytes] = []
    seen = set(seen)
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            out.append(line)  # the stock poller logs bad lines
            continue
        if not isinstance(event, dict) or not isinstance(event.get("eventCreatedOn"), int):
            out.append(line)
            continue
        key = (event["eventCreatedOn"], build_gerrit_event_hash(event))
        if key in seen:
            continue
        seen.add(key)
        out.append(line)
    newest = max((ts for ts, _ in seen), default=None)
    return out, {(ts, h) for ts, h in seen if ts == newest}


class SecretGerritEventLogPoller(GerritEventLogPoller):
    """``auth`` is ``(user, secret_name)``; the password is read from the secrets provider."""

    def checkConfig(self, baseURL: str, auth: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().checkConfig(baseURL, ("user", "password"), **kwargs)

    @defer.inlineCallbacks
    def reconfigService(self, baseURL: str, auth: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        user, secret = auth
        password = yield self.renderSecrets(Secret(secret))
        yield super().reconfigService(baseURL, (user, password), **kwargs)
        self._seen_events: set[tuple[int, str]] | None = None
        connector = self._connector
        self._poller = poll.Poller(lambda _service: connector.do_poll(), self, self.master.reactor)

    @defer.inlineCallbacks
    def _lines_received(self, lines: list[bytes]) -> Any:
        if self._seen_events is None:
            saved = yield self.master.db.state.getState(self._oid, SEEN_KEY, [])
            self._seen_events = {(int(ts), str(h)) for ts, h in saved}
        lines, seen = fresh_lines(lines, self._seen_events)
        yield super()._lines_received(lines)
        if seen != self._seen_events:
            self._seen_events = seen
            yield self.master.db.state.setState(self._oid, SEEN_KEY, sorted(seen))
