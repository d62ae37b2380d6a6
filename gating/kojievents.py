"""Koji events that start pipelines: a build completed (``trigger: koji_build``) and a build
tagged into a tag (``trigger: koji_tag``).

This module is pure: it says which calls one poll cycle makes, turns their answers into
events and a new :class:`Cursor`, matches events to triggers and gives the properties a
pipeline run gets. The Buildbot glue (:mod:`gating.kojipoller`) runs the calls, keeps the
cursor in the master's database and adds the build requests.

One poll cycle is one HTTP request: a ``multicall`` of ``getLastEvent``, one
``queryHistory(tables=['tag_listing'], tag=T, afterEvent=E)`` per watched tag and one
``listBuilds(state=COMPLETE, completeAfter=...)``. A cycle that finds events makes one more
multicall to read their builds (owner, task) and, for a ``target`` filter, the build tasks'
requests. Tag events are exact (koji event ids); completed builds are found by completion
time, with an overlap window and the ids already reported, so a clock step or a build
committed in the same second is neither missed nor reported twice.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gating.kojiclient import KojiCall

KOJI_BUILD = "koji_build"
KOJI_TAG = "koji_tag"
KINDS = (KOJI_BUILD, KOJI_TAG)
BUILD_COMPLETE = 1  # koji.BUILD_STATES['COMPLETE']
# Builds completing this many seconds before the newest one seen are asked for again (and
# filtered by id): a build whose row commits late, with an older completion time, is not lost.
OVERLAP = 300.0

# The properties a pipeline run started by a koji event gets (and their environment names).
EVENT_PROPERTIES = (
    "event",
    "nvr",
    "name",
    "version",
    "release",
    "build_id",
    "task_id",
    "tag",
    "owner",
    "target",
    "koji_event",
)


@dataclass(frozen=True)
class KojiBuildEvent:
    """A build completed (``kind`` koji_build) or was tagged into ``tag`` (koji_tag)."""

    kind: str
    build_id: int
    nvr: str
    name: str
    version: str
    release: str
    task_id: int | None = None
    owner: str | None = None
    tag: str | None = None
    target: str | None = None
    event_id: int | None = None
    tagged_by: str | None = None
    message_id: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Identifies the event across restarts and redeliveries: a build completes once; a
        tagging is its koji event (polled) or its message (the bus carries no event id)."""
        if self.kind == KOJI_TAG:
            if self.event_id is None and self.message_id:
                return f"{KOJI_TAG}:{self.tag}:{self.build_id}:msg:{self.message_id}"
            return f"{KOJI_TAG}:{self.tag}:{self.build_id}:{self.event_id}"
        return f"{KOJI_BUILD}:{self.build_id}"

    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "event": self.kind,
            "nvr": self.nvr,
            "name": self.name,
            "version": self.version,
            "release": self.release,
            "build_id": self.build_id,
            "task_id": self.task_id,
            "owner": self.owner,
            "tag": self.tag,
            "target": self.target,
            "koji_event": self.event_id,
        }
        return {k: v for k, v in props.items() if v is not None}

    def describe(self) -> str:
        if self.kind == KOJI_TAG:
            return f"koji build {self.nvr} tagged into {self.tag}"
        return f"koji build {self.nvr} completed"


@dataclass(frozen=True)
class Watch:
    """One pipeline trigger on koji events: ``kind`` and its filters (``None``: any)."""

    pipeline: str
    kind: str
    packages: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None

    def matches(self, event: KojiBuildEvent) -> bool:
        if event.kind != self.kind:
            return False
        if self.packages is not None and not _any_glob(event.name, self.packages):
            return False
        if self.kind == KOJI_TAG and self.tags is not None and event.tag not in self.tags:
            return False
        if self.kind == KOJI_BUILD and self.targets is not None:
            return event.target is not None and _any_glob(event.target, self.targets)
        return True


def _any_glob(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def watch_of(pipeline: str, kind: str, options: Mapping[str, Any]) -> Watch:
    """A :class:`Watch` from a pipeline's trigger options (``package``, ``tag``, ``target``)."""
    return Watch(
        pipeline=pipeline,
        kind=kind,
        packages=_names(options.get("package")),
        tags=_names(options.get("tag")) if kind == KOJI_TAG else None,
        targets=_names(options.get("target")) if kind == KOJI_BUILD else None,
    )


@dataclass(frozen=True)
class WatchSet:
    """Every koji trigger of the configuration; derives what a poll cycle asks for.

    ``all_builds``: every completed build is an event, whether a trigger matches it or
    not (the task repositories run on the builds of any package)."""

    watches: tuple[Watch, ...]
    all_builds: bool = False

    @property
    def tags(self) -> tuple[str, ...] | None:
        """The watched tags, sorted; ``None`` when some trigger watches every tag."""
        tag_watches = [w for w in self.watches if w.kind == KOJI_TAG]
        if any(w.tags is None for w in tag_watches):
            return None
        return tuple(sorted({t for w in tag_watches for t in w.tags or ()}))

    @property
    def watches_tags(self) -> bool:
        return any(w.kind == KOJI_TAG for w in self.watches)

    @property
    def watches_builds(self) -> bool:
        return self.all_builds or any(w.kind == KOJI_BUILD for w in self.watches)

    @property
    def needs_targets(self) -> bool:
        return any(w.kind == KOJI_BUILD and w.targets is not None for w in self.watches)

    def pipelines_for(self, event: KojiBuildEvent) -> list[str]:
        """The pipelines an event starts, each once, in configuration order."""
        out: list[str] = []
        for w in self.watches:
            if w.pipeline not in out and w.matches(event):
                out.append(w.pipeline)
        return out


@dataclass(frozen=True)
class Cursor:
    """Where the last poll cycle stopped: the hub's last event, the newest build completion
    time seen and the builds reported within :data:`OVERLAP` of it."""

    event_id: int | None = None
    complete_ts: float | None = None
    recent_builds: tuple[tuple[int, float], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "complete_ts": self.complete_ts,
            "recent_builds": [list(x) for x in self.recent_builds],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Cursor:
        if not data:
            return cls()
        return cls(
            event_id=data.get("event_id"),
            complete_ts=data.get("complete_ts"),
            recent_builds=tuple((int(b), float(t)) for b, t in data.get("recent_builds", ())),
        )

    @property
    def started(self) -> bool:
        return self.event_id is not None


def poll_calls(cursor: Cursor, watches: WatchSet, now: float | None = None) -> list[KojiCall]:
    """The calls of one poll cycle, for one multicall. The first is always ``getLastEvent``;
    then one ``queryHistory`` per watched tag (one for all tags when a trigger names none),
    then ``listBuilds`` of completed builds when a pipeline watches builds. Events before
    the first poll are history: a cursor that has not started asks for the last event and
    the builds completed in the overlap before ``now`` (the local time), to know them."""
    calls = [KojiCall.of("getLastEvent")]
    if not cursor.started:
        if watches.watches_builds and now is not None:
            calls.append(_list_builds(now - 2 * OVERLAP))
        return calls
    if watches.watches_tags:
        query: dict[str, Any] = {"tables": ["tag_listing"], "afterEvent": cursor.event_id}
        tags = watches.tags
        if tags is None:
            calls.append(KojiCall("queryHistory", (), query))
        else:
            calls.extend(KojiCall("queryHistory", (), {**query, "tag": t}) for t in tags)
    if watches.watches_builds:
        calls.append(_list_builds((cursor.complete_ts or 0.0) - OVERLAP))
    return calls


def _list_builds(after: float) -> KojiCall:
    return KojiCall(
        "listBuilds",
        (),
        {"state": BUILD_COMPLETE, "completeAfter": after, "queryOpts": {"order": "build_id"}},
    )


def advance(
    cursor: Cursor, watches: WatchSet, results: Sequence[Any]
) -> tuple[Cursor, list[KojiBuildEvent]]:
    """The new cursor and the events, oldest first, from the answers to :func:`poll_calls`.
    Events up to the hub's last event (read in the same request) are reported; later rows
    are left for the next cycle, so an event is reported exactly once."""
    last = results[0]
    last_id = int(last["id"])
    last_ts = float(last["ts"])
    if not cursor.started:
        known = [
            (int(b["build_id"]), float(b["completion_ts"]))
            for b in (results[1] if len(results) > 1 else [])
            if b.get("completion_ts") is not None
        ]
        newest = max([last_ts, *(t for _, t in known)])
        kept = tuple(sorted((b, t) for b, t in known if t > newest - OVERLAP))
        return Cursor(event_id=last_id, complete_ts=newest, recent_builds=kept), []
    rest = list(results[1:])
    events: list[KojiBuildEvent] = []
    seen_tag_rows: set[tuple[int, int, int]] = set()
    if watches.watches_tags:
        n = 1 if watches.tags is None else len(watches.tags)
        histories, rest = rest[:n], rest[n:]
        after = cursor.event_id if cursor.event_id is not None else -1
        for history in histories:
            for row in history.get("tag_listing", ()):
                created = int(row["create_event"])
                key = (created, int(row["tag_id"]), int(row["build_id"]))
                if not (after < created <= last_id) or key in seen_tag_rows:
                    continue
                seen_tag_rows.add(key)
                events.append(
                    KojiBuildEvent(
                        kind=KOJI_TAG,
                        build_id=int(row["build_id"]),
                        nvr=f"{row['name']}-{row['version']}-{row['release']}",
                        name=row["name"],
                        version=row["version"],
                        release=row["release"],
                        tag=row["tag.name"],
                        event_id=created,
                        tagged_by=row.get("creator_name"),
                    )
                )
    recent = dict(cursor.recent_builds)
    complete_ts = cursor.complete_ts if cursor.complete_ts is not None else last_ts
    if watches.watches_builds:
        builds = rest[0] if rest else []
        for build in sorted(builds, key=lambda b: (b.get("completion_ts") or 0, b["build_id"])):
            done = build.get("completion_ts")
            bid = int(build["build_id"])
            if done is None or bid in recent:
                continue
            if cursor.complete_ts is not None and done <= cursor.complete_ts - OVERLAP:
                continue
            recent[bid] = float(done)
            complete_ts = max(complete_ts, float(done))
            events.append(build_event(build))
    horizon = complete_ts - OVERLAP
    kept = tuple(sorted((b, t) for b, t in recent.items() if t > horizon))
    events.sort(key=lambda e: (e.event_id or 0, e.kind, e.build_id, e.tag or ""))
    return Cursor(event_id=last_id, complete_ts=complete_ts, recent_builds=kept), events


def build_event(build: Mapping[str, Any], kind: str = KOJI_BUILD, **extra: Any) -> KojiBuildEvent:
    """An event from a koji build info (``getBuild``/``listBuilds`` row)."""
    return KojiBuildEvent(
        kind=kind,
        build_id=int(build["build_id"] if "build_id" in build else build["id"]),
        nvr=build["nvr"],
        name=build["name"],
        version=build["version"],
        release=build["release"],
        task_id=build.get("task_id"),
        owner=build.get("owner_name"),
        **extra,
    )


def detail_calls(events: Sequence[KojiBuildEvent], watches: WatchSet) -> list[KojiCall]:
    """The follow-up calls for a cycle that found events: ``getBuild`` of each tagged build
    (its owner and task) and, for ``target`` filters, ``getTaskInfo`` of each build task."""
    calls: list[KojiCall] = []
    for e in events:
        if e.kind == KOJI_TAG:
            calls.append(KojiCall.of("getBuild", e.build_id))
        elif watches.needs_targets and e.task_id is not None:
            calls.append(KojiCall("getTaskInfo", (e.task_id,), {"request": True}))
    return calls


def with_details(
    events: Sequence[KojiBuildEvent], watches: WatchSet, results: Sequence[Any]
) -> list[KojiBuildEvent]:
    """The events completed with the answers to :func:`detail_calls` (same order)."""
    answers = iter(results)
    out: list[KojiBuildEvent] = []
    for e in events:
        if e.kind == KOJI_TAG:
            build = next(answers) or {}
            out.append(_replace(e, task_id=build.get("task_id"), owner=build.get("owner_name")))
        elif watches.needs_targets and e.task_id is not None:
            out.append(_replace(e, target=build_target(next(answers))))
        else:
            out.append(e)
    return out


def build_target(task: Mapping[str, Any] | None) -> str | None:
    """The build target of a ``build`` task (its request is ``[source, target, opts]``)."""
    if not task or task.get("method") != "build":
        return None
    request = task.get("request") or ()
    if len(request) >= 2 and isinstance(request[1], str):
        return request[1]
    return None


def _replace(event: KojiBuildEvent, **changes: Any) -> KojiBuildEvent:
    from dataclasses import replace

    return replace(event, **changes)


def event_from_message(topic: str, body: Mapping[str, Any]) -> KojiBuildEvent | None:
    """An event from a fedora-messaging message of koji's fedmsg plugin, or ``None`` when the
    message is not one (another state change, another topic). ``buildsys.build.state.change``
    with ``new`` = 1 (COMPLETE) is a completed build; ``buildsys.tag`` is a tagged build."""
    suffix = topic.rsplit("buildsys.", 1)[-1] if "buildsys." in topic else ""
    try:
        if suffix == "build.state.change":
            if body.get("new") != BUILD_COMPLETE:
                return None
            return KojiBuildEvent(
                kind=KOJI_BUILD,
                build_id=int(body["build_id"]),
                nvr=f"{body['name']}-{body['version']}-{body['release']}",
                name=str(body["name"]),
                version=str(body["version"]),
                release=str(body["release"]),
                task_id=body.get("task_id"),
                owner=body.get("owner"),
            )
        if suffix == "tag":
            return KojiBuildEvent(
                kind=KOJI_TAG,
                build_id=int(body["build_id"]),
                nvr=f"{body['name']}-{body['version']}-{body['release']}",
                name=str(body["name"]),
                version=str(body["version"]),
                release=str(body["release"]),
                owner=body.get("owner"),
                tag=str(body["tag"]),
                tagged_by=body.get("user"),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"koji message on {topic}: missing or bad field ({exc})") from None
    return None
