"""Starting a scheduler's buildsets once, across a master killed while it starts them.

A scheduler that starts several buildsets for one thing (a koji event, a finished compose)
saves that it is starting it, then adds the buildsets, each with an ``external_idstring``
naming the thing and the pipeline (:func:`buildset_idstring`), then saves it as started.
A master killed in between leaves the mark; the next master asks the database which of those
idstrings already have a buildset (:func:`existing_buildsets`, one query) and starts only
the others. Used by :mod:`gating.kojipoller` and :mod:`gating.composepoller`.

:func:`pause_for_test` is the integration tests' way to kill the master at that point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from buildbot.data import resultspec
from buildbot.data.buildsets import buildset_field_mapping
from twisted.internet import defer

from gating.testhooks import pause_requested

IDSTRING_MAX = 256  # Buildbot's buildsets.external_idstring column


def buildset_idstring(kind: str, *parts: str) -> str:
    """``kind`` and ``parts`` joined by spaces, or ``kind`` and their digest when that does
    not fit Buildbot's ``external_idstring`` column."""
    ident = " ".join((kind, *parts))
    if len(ident) <= IDSTRING_MAX:
        return ident
    return f"{kind} sha256:" + hashlib.sha256(ident.encode()).hexdigest()


@defer.inlineCallbacks
def existing_buildsets(master: Any, idents: Iterable[str]) -> Any:
    """``{idstring: bsid}`` of the buildsets that carry one of ``idents`` (one SQL query on
    ``external_idstring``; the newest buildset when several do)."""
    idents = list(idents)
    if not idents:
        return {}
    spec = resultspec.ResultSpec(filters=[resultspec.Filter("external_idstring", "in", idents)])
    spec.fieldMapping = buildset_field_mapping
    buildsets = yield master.db.buildsets.getBuildsets(resultSpec=spec)
    found: dict[str, int] = {}
    for b in sorted(buildsets, key=lambda b: b.bsid):
        found[b.external_idstring] = b.bsid
    return found


def pause_for_test(point: str, who: str) -> defer.Deferred | None:
    """Integration tests only (:mod:`gating.testhooks`): a Deferred that never fires when the
    test asked to stop at ``point`` (a file ``pause-<point>``), else None."""
    if not pause_requested(f"pause-{point}", who):
        return None
    return defer.Deferred()  # never fires: the test kills the master here
