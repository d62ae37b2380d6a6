"""Fixes to Buildbot 4.3 for masters with thousands of builders (``python -m bench
config-scale``: 1,000 pipelines make ~7,900 builders).

Buildbot registers each builder one after the other at start-up, and some of that work
grows with the number of builders already there, so start-up and ``buildbot reconfig``
were quadratic. :func:`install` (called by :func:`gating.master.buildmaster_config`, so
only where a master configuration is loaded) replaces three methods; each gives the
same answers as Buildbot's own:

* ``BuildersConnectorComponent.getBuilders(_builderid=ID)`` read the tags of *every*
  builder to return one, and the master asks for one after registering each builder
  (its "update" event): 7,900 builders with 3 tags each read ~90 million rows. It now
  reads that builder's tags only.
* ``Builder._find_builder_config_by_name`` scanned the list of builder configurations
  for each builder, at start-up and at each reconfig (31 million comparisons; half of a
  reconfig). It now looks the name up in an index made once per configuration.
* ``TagsConnectorComponent.findTagId`` and ``BuildersConnectorComponent.findBuilderId``
  ran a database transaction at each call: 3 per builder for its tags, 2 for its id.
  Buildbot never deletes tags or builders, so a name's id never changes: the ids found
  are remembered (per database connector).
* ``SimpleMQ.produce`` (the message queue of a master without ``multi-master``) called
  ``matchTuple`` for every consumer on every message; every scheduler consumes (2,500
  with 1,000 pipelines), so registering 7,900 builders made 23 million calls. Consumers
  whose filter cannot match (another length, another first element) are now skipped
  inline, in the same order, before ``matchTuple``.
* ``ComparableMixin`` collected a class's ``compare_attrs`` through its bases at each
  comparison (Buildbot compares workers each time a worker attaches to a builder: the
  20 coordinators attaching to 1,100 builders made 436,000 comparisons). It is now
  collected once per class.

And one correctness fix:

* ``V2RootResource._write_json_data`` (the REST API's ``GET`` answers) runs in a thread
  so that a large answer does not block the reactor, but it wrote the headers and the
  body from that thread too. Twisted's transports are not thread-safe: now and then a
  client got the headers (``Content-Length: N``) and then the connection closed with no
  body (``IncompleteRead``; buildbot/buildbot#9065, seen by the multi-master test while
  the reactor was busy with a gate takeover). The JSON is still encoded in the thread;
  the headers and the body are now written on the reactor thread, before the request
  finishes.

Each replacement checks the method it replaces still has the signature it was written
for; with another Buildbot it leaves that method alone. They belong upstream.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from buildbot.db.builders import BuilderModel, BuildersConnectorComponent
from buildbot.db.tags import TagsConnectorComponent
from buildbot.mq.simple import SimpleMQ
from buildbot.process.builder import Builder
from buildbot.util import ComparableMixin, tuplematch
from buildbot.www.rest import V2RootResource
from twisted.internet import defer
from twisted.python import reflect

_MARK = "_gating_fix"


def install() -> None:
    """Install the fixes (idempotent)."""
    _replace(BuildersConnectorComponent, "getBuilders", ("_builderid",), _get_builders)
    _replace(Builder, "_find_builder_config_by_name", ("new_config",), _find_builder_config)
    _replace(TagsConnectorComponent, "findTagId", ("name",), _remembered("tags"))
    _replace(
        BuildersConnectorComponent, "findBuilderId", ("name", "autoCreate"), _remembered("builders")
    )
    _replace(SimpleMQ, "produce", ("routingKey", "data"), _produce)
    _replace(ComparableMixin, "_cmp_common", ("them",), _cmp_common)
    _replace(ComparableMixin, "__hash__", ("self",), _hash)
    _replace(V2RootResource, "_write_json_data", ("request", "encoder", "data"), _write_json_data)


def _replace(
    cls: type, name: str, params: tuple[str, ...], make: Callable[[Callable[..., Any]], Any]
) -> None:
    original = getattr(cls, name)
    if getattr(original, _MARK, False):
        return
    if not set(params) <= set(inspect.signature(original).parameters):
        return  # another Buildbot: leave it alone
    replacement = functools.wraps(original)(make(original))
    setattr(replacement, _MARK, True)
    if isinstance(inspect.getattr_static(cls, name), staticmethod):
        replacement = staticmethod(replacement)
    setattr(cls, name, replacement)


def _get_builders(original: Callable[..., Any]) -> Callable[..., Any]:
    def getBuilders(  # noqa: N802 (Buildbot's name)
        self: BuildersConnectorComponent,
        masterid: int | None = None,
        projectid: int | None = None,
        workerid: int | None = None,
        _builderid: int | None = None,
    ) -> Any:
        if _builderid is not None and masterid is None and projectid is None and workerid is None:
            return _get_one_builder(self, _builderid)
        return original(
            self, masterid=masterid, projectid=projectid, workerid=workerid, _builderid=_builderid
        )

    return getBuilders


def _get_one_builder(component: BuildersConnectorComponent, builderid: int) -> Any:
    """``getBuilders(_builderid=ID)``, reading only that builder's tags."""

    def thd(conn: Any) -> list[BuilderModel]:
        model = component.db.model
        bldr, bm, bt, tags = model.builders, model.builder_masters, model.builders_tags, model.tags
        rows = conn.execute(
            sa.select(
                bldr.c.id,
                bldr.c.name,
                bldr.c.description,
                bldr.c.description_format,
                bldr.c.description_html,
                bldr.c.projectid,
                bm.c.masterid,
            )
            .select_from(bldr.outerjoin(bm))
            .where(bldr.c.id == builderid)
            .order_by(bm.c.masterid)
        ).fetchall()
        if not rows:
            return []
        names = conn.execute(
            sa.select(tags.c.name)
            .select_from(tags.join(bt))
            .where(bt.c.builderid == builderid)
            .order_by(bt.c.id)  # as written: Buildbot's full read gives them in that order
        ).fetchall()
        row = rows[0]
        return [
            BuilderModel(
                id=row.id,
                name=row.name,
                description=row.description,
                description_format=row.description_format,
                description_html=row.description_html,
                projectid=row.projectid,
                tags=[n.name for n in names],
                masterids=[r.masterid for r in rows if r.masterid],
            )
        ]

    return component.db.pool.do(thd)


def _find_builder_config(original: Callable[..., Any]) -> Callable[..., Any]:
    def find(self: Builder, new_config: Any) -> Any:
        index = getattr(new_config, "_gating_builders_by_name", None)
        if index is None:
            index = {}
            for builder_config in new_config.builders:
                index.setdefault(builder_config.name, builder_config)
            new_config._gating_builders_by_name = index
        found = index.get(self.name)
        return found if found is not None else original(self, new_config)

    return find


def _remembered(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    attribute = f"_gating_{kind}_ids"

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def find(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            known: dict[str, int] = self.__dict__.setdefault(attribute, {})
            if name in known:
                return defer.succeed(known[name])
            d = original(self, name, *args, **kwargs)

            def remember(found: Any) -> Any:
                if found is not None:
                    known[name] = found
                return found

            return d.addCallback(remember)

        return find

    return make


def _produce(original: Callable[..., Any]) -> Callable[..., Any]:
    match = tuplematch.matchTuple

    def produce(self: SimpleMQ, routingKey: tuple[Any, ...], data: Any) -> Any:  # noqa: N803
        if self.debug or not routingKey:
            return original(self, routingKey, data)
        size, first = len(routingKey), routingKey[0]
        for qref in self.qrefs:  # the live list, as Buildbot iterates it
            wanted = qref.filter
            if len(wanted) != size or (wanted[0] is not None and wanted[0] != first):
                continue
            if match(routingKey, wanted):
                self.invokeQref(qref, routingKey, data)
        return None

    return produce


_COMPARE_ATTRS: dict[type, list[str]] = {}


def _compare_attrs(cls: type) -> list[str]:
    found = _COMPARE_ATTRS.get(cls)
    if found is None:
        found = []
        reflect.accumulateClassList(cls, "compare_attrs", found)
        _COMPARE_ATTRS[cls] = found
    return found


def _cmp_common(original: Callable[..., Any]) -> Callable[..., Any]:
    def cmp_common(self: Any, them: Any) -> tuple[bool, list[Any] | None, list[Any] | None]:
        if type(self) != type(them) or self.__class__ != them.__class__:  # noqa: E721 (as Buildbot)
            return (False, None, None)
        names = _compare_attrs(self.__class__)
        none = self._None
        return (
            True,
            [getattr(self, name, none) for name in names],
            [getattr(them, name, none) for name in names],
        )

    return cmp_common


def _hash(original: Callable[..., Any]) -> Callable[..., Any]:
    def hash_(self: Any) -> int:
        names = _compare_attrs(self.__class__)
        values = [self.__class__] + [getattr(self, name, self._None) for name in names]
        return hash(tuple(map(str, values)))

    return hash_


def _write_json_data(original: Callable[..., Any]) -> Callable[..., Any]:
    def write_json_data(request: Any, encoder: Any, data: Any) -> None:
        # In the thread (deferToThread): encode, giving up if the client went away.
        body: list[bytes] = []
        for chunk in encoder.iterencode(data):
            if _request_finished(request):
                return
            body.append(chunk.encode("utf-8"))
        written = threading.Event()
        failure: list[BaseException] = []

        def write() -> None:  # on the reactor thread
            try:
                if _request_finished(request):
                    return
                request.setHeader(b"content-length", str(sum(map(len, body))).encode())
                if request.method != b"HEAD":
                    request.write(b"".join(body))
            except BaseException as error:  # handed to the caller, as Buildbot's raised
                failure.append(error)
            finally:
                written.set()

        from twisted.internet import reactor

        reactor.callFromThread(write)  # type: ignore[attr-defined]
        # The caller finishes the request once this returns: wait for the write, unless
        # the reactor stopped (then the write never runs, and nobody reads the answer).
        while not written.wait(0.5):
            if not reactor.running:  # type: ignore[attr-defined]
                return
        if failure:
            raise failure[0]

    return write_json_data


def _request_finished(request: Any) -> bool:
    """Buildbot's ``_is_request_finished``: finished, or its connection lost."""
    return bool(request.finished) or request.channel is None
