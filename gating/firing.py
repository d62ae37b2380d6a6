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
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from buildbot.data import resultspec
from buildbot.data.buildsets import buildset_field_mapping
from twisted.internet import defer

IDSTRING_MAX = 256  # Buildbot's buildsets.external_idstring column
# Integration tests only: with a file ``pause-<point>`` in this directory, the scheduler stops
# (for good) at that point and writes ``paused-<point>``, so that a test can kill the master
# there. Unset in production: nothing is looked up.
TEST_HOOKS_ENV = "GATING_TEST_HOOKS_DIR"


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
    """Integration tests only: a Deferred that never fires when ``$GATING_TEST_HOOKS_DIR``
    holds ``pause-<point>`` (``paused-<point>`` is written, with ``who``), else None."""
    folder = os.environ.get(TEST_HOOKS_ENV)
    if not folder or not (Path(folder) / f"pause-{point}").exists():
        return None
    (Path(folder) / f"paused-{point}").write_text(who)
    return defer.Deferred()  # never fires: the test kills the master here
