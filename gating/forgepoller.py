"""Buildbot change source for the embedded forge: every new patchset of a proposed change
becomes a Buildbot change (category ``patchset-created``, branch ``refs/changes/N/P``),
which ``trigger: check`` pipelines run on, as Gerrit's change sources do for Gerrit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from buildbot.changes.base import ReconfigurablePollingChangeSource
from buildbot.util.state import StateMixin
from twisted.internet import defer, threads

from gating.forge import ChangeInfo, LocalForge

CATEGORY = "patchset-created"


def new_patchsets(changes: list[ChangeInfo], seen: set[str]) -> list[ChangeInfo]:
    """The changes whose current patchset has not been reported yet (pure)."""
    return [c for c in changes if f"{c.key}/{c.patchset}" not in seen and c.status != "merged"]


class ForgeChangeSource(ReconfigurablePollingChangeSource, StateMixin):
    compare_attrs = (*ReconfigurablePollingChangeSource.compare_attrs, "root", "projects")

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
        seen = set(json.loads((yield self.getState("seen", "[]"))))
        first_poll = not seen and not (yield self.getState("polled", False))
        changes: list[ChangeInfo] = []
        for project in self.projects:
            if self.forge.repo_path(project).exists():
                changes.extend((yield threads.deferToThread(self.forge.changes, project)))
        for change in new_patchsets(changes, seen):
            seen.add(f"{change.key}/{change.patchset}")
            if first_poll:
                continue  # changes made before the master ever polled are not news
            yield self.master.data.updates.addChange(
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
        yield self.setState("seen", json.dumps(sorted(seen)))
        yield self.setState("polled", True)
