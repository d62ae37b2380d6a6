"""Buildbot change source for the embedded forge: every new patchset of a proposed change
becomes a Buildbot change (category ``patchset-created``, branch ``refs/changes/N/P``),
which ``trigger: check`` pipelines run on, as Gerrit's change sources do for Gerrit.

The patchsets already reported are kept in the master's database (Buildbot's object
state, ``seen``), saved after each one, and the patchset being reported is saved before
its Buildbot change is added (``adding``). So a master killed in the middle of a poll cycle
neither loses nor repeats a patchset: on restart, the patchset it was adding comes first;
it is looked up among the Buildbot changes (one query on its revision, see
:meth:`ForgeChangeSource._added_before`) and added only if it is not there (announced to
the schedulers again if no buildset came from it); the others of the cycle are news again,
and none saved as seen is. No change is added before the master has started (the first
cycle after a start would otherwise run before the schedulers listen, and the changes it
added would start no pipeline). As a Buildbot change source it is active on one master at a
time.

Left: for a project with two ``trigger: check`` pipelines, a master killed after the
first one's buildset and before the second one's does not run the second one (the change
is announced again only when no buildset came from it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from buildbot.changes.base import ReconfigurablePollingChangeSource
from buildbot.data import resultspec
from buildbot.util.state import StateMixin
from twisted.internet import defer, threads
from twisted.python import log

from gating.firing import pause_for_test
from gating.forge import ChangeInfo, LocalForge

CATEGORY = "patchset-created"
SEEN_KEY = "seen"
# The patchset ("project~N/P") whose Buildbot change is being added (None between them).
ADDING_KEY = "adding"
# How many Buildbot changes of the interrupted patchset's revision are read (the newest).
ADDED_LOOKUP_LIMIT = 20
# Integration tests only (gating.testhooks): with ``pause-forge-after-change``, a poll cycle
# stops (for good) right after its first Buildbot change was added, before the patchset is
# saved as seen, so that a test can kill the master there.
PAUSE_AFTER_CHANGE = "forge-after-change"


def patchset_key(change: ChangeInfo) -> str:
    """``project~N/P``: the key a patchset is remembered by."""
    return f"{change.key}/{change.patchset}"


def new_patchsets(changes: list[ChangeInfo], seen: set[str]) -> list[ChangeInfo]:
    """The changes whose current patchset has not been reported yet (pure)."""
    return [c for c in changes if patchset_key(c) not in seen and c.status != "merged"]


def interrupted_patchset(news: list[ChangeInfo], adding: str | None) -> ChangeInfo | None:
    """Of the patchsets to report, the one a killed master was adding, if any (pure)."""
    return next((c for c in news if adding is not None and patchset_key(c) == adding), None)


def poll_plan(
    news: list[ChangeInfo], adding: str | None, added_before: bool
) -> list[tuple[ChangeInfo, bool]]:
    """The patchsets to save as seen, in order, each with whether its Buildbot change is to
    be added: all the news, the one a killed master was adding (``adding``) first, added
    again only if its change was not found (``added_before``) (pure)."""
    first = [c for c in news if patchset_key(c) == adding]
    rest = [c for c in news if patchset_key(c) != adding]
    return [(c, not added_before) for c in first] + [(c, True) for c in rest]


def is_change_of(change: dict[str, Any], patchset: ChangeInfo) -> bool:
    """Whether a Buildbot change (from the data API) reports ``patchset`` (pure)."""
    props = change.get("properties") or {}

    def value(name: str) -> Any:
        prop = props.get(name)
        return prop[0] if isinstance(prop, (list, tuple)) and prop else None

    return (
        change.get("revision") == patchset.revision
        and change.get("category") == CATEGORY
        and value("gating_change") == patchset.key
        and value("gating_patchset") == patchset.patchset
    )


class ForgeChangeSource(ReconfigurablePollingChangeSource, StateMixin):
    compare_attrs = (*ReconfigurablePollingChangeSource.compare_attrs, "root", "projects")

    _started = False  # the master was seen started (see _master_started)

    def checkConfig(  # type: ignore[override]
        self, root: str, projects: tuple[str, ...], name: str | None = None, **kwargs: Any
    ) -> None:
        super().checkConfig(name=name or f"ForgeChangeSource:{root}", **kwargs)

    @defer.inlineCallbacks
    def reconfigService(  # type: ignore[override]
        self, root: str, projects: tuple[str, ...], name: str | None = None, **kwargs: Any
    ) -> Any:
        self.root = root
        self.projects = projects
        self.forge = LocalForge(Path(root))
        yield super().reconfigService(name=name or f"ForgeChangeSource:{root}", **kwargs)

    def describe(self) -> str:
        return f"ForgeChangeSource watching {', '.join(self.projects)} in {self.root}"

    @defer.inlineCallbacks
    def poll(self) -> Any:
        seen = set(json.loads((yield self.getState(SEEN_KEY, "[]"))))
        first_poll = not seen and not (yield self.getState("polled", False))
        if not first_poll and not (yield self._master_started()):
            return  # the next cycle reads the forge (the first one adds no change)
        adding = yield self.getState(ADDING_KEY, None)
        changes: list[ChangeInfo] = []
        for project in self.projects:
            if self.forge.repo_path(project).exists():
                changes.extend((yield threads.deferToThread(self.forge.changes, project)))
        news = new_patchsets(changes, seen)
        if first_poll:
            # Changes made before the master ever polled are not news.
            seen.update(patchset_key(c) for c in news)
            news = []
        interrupted = interrupted_patchset(news, adding)
        added_before = False
        if interrupted is not None:
            added_before = yield self._added_before(interrupted)
            log.msg(
                f"{self.name}: a restarted master finds {adding} being added: "
                + ("its change was added, not again" if added_before else "adding it now")
            )
        for change, add in poll_plan(news, adding, added_before):
            key = patchset_key(change)
            if add:
                adding = key
                yield self.setState(ADDING_KEY, adding)
                yield self._add(change)
                yield pause_for_test(PAUSE_AFTER_CHANGE, self.name)
            seen.add(key)
            yield self.setState(SEEN_KEY, json.dumps(sorted(seen)))
            if adding is not None:  # also the mark of a change found added before
                adding = None
                yield self.setState(ADDING_KEY, None)
        if first_poll:
            yield self.setState(SEEN_KEY, json.dumps(sorted(seen)))
        if adding is not None:  # a mark whose patchset is no longer news
            yield self.setState(ADDING_KEY, None)
        yield self.setState("polled", True)

    @defer.inlineCallbacks
    def _master_started(self) -> Any:
        """Whether the master has started (Buildbot marks it active once every service is
        configured). The change source is activated before the schedulers, and its first
        cycle (``pollAtLaunch``) may run before the ``trigger: check`` schedulers listen:
        a change added then would start no pipeline. One query a cycle until it is so."""
        if self._started:
            return True
        info = yield self.master.data.get(("masters", self.master.masterid))
        self._started = bool(info and info.get("active"))
        return self._started

    def _add(self, change: ChangeInfo) -> defer.Deferred:
        return self.master.data.updates.addChange(
            author=change.owner,
            project=change.project,
            repository=str(self.forge.repo_path(change.project)),
            branch=change.ref,
            revision=change.revision,
            comments=change.message,
            category=CATEGORY,
            properties={
                "gating_change": change.key,
                "gating_patchset": change.patchset,
                "target_branch": change.branch,
            },
            src="git",
        )

    @defer.inlineCallbacks
    def _added_before(self, patchset: ChangeInfo) -> Any:
        """Whether a Buildbot change reports ``patchset``: one query for the newest changes
        of its revision (only for the patchset a killed master was adding). A change found
        that no buildset was made from yet (the master was killed before its schedulers
        had it) is announced to the schedulers again: announced, not added twice."""
        found = yield self.master.data.get(
            ("changes",),
            filters=[resultspec.Filter("revision", "eq", [patchset.revision])],
            order=["-changeid"],
            limit=ADDED_LOOKUP_LIMIT,
        )
        change = next((c for c in found if is_change_of(c, patchset)), None)
        if change is None:
            return False
        if not (yield self._has_buildset(change["sourcestamp"]["ssid"])):
            log.msg(f"{self.name}: change {change['changeid']} has no buildset: announced again")
            self.master.data.rtypes.change.produceEvent(change, "new")
        return True

    def _has_buildset(self, ssid: int) -> defer.Deferred:
        """Whether a buildset was made from the sourcestamp ``ssid`` (one indexed query)."""

        def thd(conn: Any) -> bool:
            table = self.master.db.model.buildset_sourcestamps
            query = sa.select(table.c.buildsetid).where(table.c.sourcestampid == ssid).limit(1)
            return conn.execute(query).first() is not None

        return self.master.db.pool.do(thd)
