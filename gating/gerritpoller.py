"""Buildbot's Gerrit events-log poller, with its HTTP password taken from a Buildbot secret
(the stock class takes the password as a plain value).

Buildbot 4.3's ``GerritEventLogPoller`` also hands its connector's bound ``do_poll`` to
``util.poll.Poller``, which calls it with the service as an argument: every poll fails
with a TypeError on a real master. The poller is rebuilt here with a function of the
right shape."""

from __future__ import annotations

from typing import Any

from buildbot.changes.gerritchangesource import GerritEventLogPoller
from buildbot.process.properties import Secret
from buildbot.util import poll
from twisted.internet import defer

HANDLED_EVENTS = ("patchset-created", "comment-added")


class SecretGerritEventLogPoller(GerritEventLogPoller):
    """``auth`` is ``(user, secret_name)``; the password is read from the secrets provider."""

    def checkConfig(self, baseURL: str, auth: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().checkConfig(baseURL, ("user", "password"), **kwargs)

    @defer.inlineCallbacks
    def reconfigService(self, baseURL: str, auth: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        user, secret = auth
        password = yield self.renderSecrets(Secret(secret))
        yield super().reconfigService(baseURL, (user, password), **kwargs)
        connector = self._connector
        self._poller = poll.Poller(lambda _service: connector.do_poll(), self, self.master.reactor)
