"""The scale fixes: gating.bbfixes (Buildbot's own answers, found faster) and the master's
database settings and builder prioritization (gating.master)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import sqlalchemy as sa
from buildbot.data import connector
from buildbot.db import enginestrategy
from buildbot.db.builders import BuildersConnectorComponent
from buildbot.db.tags import TagsConnectorComponent
from buildbot.mq.simple import SimpleMQ
from buildbot.process.builder import Builder
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.util import ComparableMixin
from buildbot.worker import Worker
from twisted.internet import defer
from twisted.trial import unittest

from gating import bbfixes
from gating.master import SQLiteConnection, db_config, prioritize_builders
from tests.test_steps import silence_deprecations

MASTER = fakedb.FakeDBConnector.MASTER_ID


def test_install_is_idempotent_and_marks_what_it_replaced():
    bbfixes.install()
    first = BuildersConnectorComponent.getBuilders
    bbfixes.install()
    assert BuildersConnectorComponent.getBuilders is first
    for method in (
        BuildersConnectorComponent.getBuilders,
        BuildersConnectorComponent.findBuilderId,
        TagsConnectorComponent.findTagId,
        Builder._find_builder_config_by_name,
        SimpleMQ.produce,
        ComparableMixin._cmp_common,
    ):
        assert getattr(method, "_gating_fix", False), method
        assert method.__wrapped__ is not None


class DatabaseFixTests(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        bbfixes.install()
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantDb=True)
        self.master.data = connector.DataConnector()  # the real one, on the real database
        yield self.master.data.setServiceParent(self.master)
        rows = [fakedb.Master(id=MASTER), fakedb.Master(id=2, name="other")]
        for tagid, name in enumerate(["job", "pipe", "x86_64", "aarch64", "other"], start=1):
            rows.append(fakedb.Tag(id=tagid, name=name))
        for builderid, name, tags, masters in (
            (1, "pipe/build/x86_64", [1, 2, 3], [MASTER]),
            (2, "pipe/build/aarch64", [1, 4, 2], [MASTER, 2]),  # tags not in id order
            (3, "pipe", [], []),
            (4, "other/x/x86_64", [5, 3], [2]),
        ):
            rows.append(fakedb.Builder(id=builderid, name=name, description=f"d{builderid}"))
            rows += [fakedb.BuildersTags(builderid=builderid, tagid=t) for t in tags]
            rows += [fakedb.BuilderMaster(builderid=builderid, masterid=m) for m in masters]
        yield self.master.db.insert_test_data(rows)

    @defer.inlineCallbacks
    def test_one_builder_is_what_buildbot_answers(self):
        db = self.master.db.builders
        original = BuildersConnectorComponent.getBuilders.__wrapped__
        for builderid in (1, 2, 3, 4, 99):
            fixed = yield db.getBuilders(_builderid=builderid)
            buildbot = yield original(db, _builderid=builderid)
            assert fixed == buildbot, builderid
        one = yield db.getBuilder(2)
        assert one.tags == ["job", "aarch64", "pipe"] and one.masterids == sorted([MASTER, 2])
        everything = yield db.getBuilders()
        assert [b.id for b in everything] == [1, 2, 3, 4]  # other calls: Buildbot's own

    @defer.inlineCallbacks
    def test_ids_are_remembered_and_still_right(self):
        tags = self.master.db.tags
        first = yield tags.findTagId("new-tag")
        again = yield tags.findTagId("new-tag")
        known = yield tags.findTagId("pipe")
        assert first == again and known == 2
        builders = self.master.db.builders
        assert (yield builders.findBuilderId("pipe")) == 3
        assert (yield builders.findBuilderId("nope", autoCreate=False)) is None
        created = yield builders.findBuilderId("nope")
        assert created is not None and (yield builders.findBuilderId("nope")) == created

    @defer.inlineCallbacks
    def test_prioritize_builders_one_query_buildbot_order(self):
        def at(minutes):
            return 1_700_000_000 + 60 * minutes  # epoch seconds, as the database keeps them

        yield self.master.db.insert_test_data(
            [
                fakedb.Buildset(id=1),
                fakedb.SourceStamp(id=1),
                fakedb.BuildsetSourceStamp(buildsetid=1, sourcestampid=1),
                # builder 1: an old request of priority 0
                fakedb.BuildRequest(id=1, buildsetid=1, builderid=1, submitted_at=at(1)),
                # builder 2: a newer one, but priority 5 wins
                fakedb.BuildRequest(
                    id=2, buildsetid=1, builderid=2, priority=5, submitted_at=at(9)
                ),
                # builder 4: an even older one of priority 0
                fakedb.BuildRequest(id=3, buildsetid=1, builderid=4, submitted_at=at(0)),
                # builder 3: only a claimed request: nothing to start
                fakedb.BuildRequest(id=4, buildsetid=1, builderid=3, submitted_at=at(0)),
                fakedb.BuildRequestClaim(brid=4, masterid=MASTER, claimed_at=at(2)),
            ]
        )

        def builder(builderid, name):
            return SimpleNamespace(name=name, getBuilderId=lambda: defer.succeed(builderid))

        builders = [builder(i, f"b{i}") for i in (1, 2, 3, 4, 5)]
        ordered = yield prioritize_builders(self.master, builders)
        assert [b.name for b in ordered] == ["b2", "b4", "b1"]


def test_find_builder_config_uses_an_index_with_buildbot_answers():
    bbfixes.install()
    configs = [SimpleNamespace(name=f"b{i}") for i in range(5)]
    new_config = SimpleNamespace(builders=configs)
    builder = Builder("b3")
    assert builder._find_builder_config_by_name(new_config) is configs[3]
    assert Builder("b0")._find_builder_config_by_name(new_config) is configs[0]
    try:
        Builder("missing")._find_builder_config_by_name(new_config)
    except AssertionError as exc:
        assert "missing" in str(exc)
    else:
        raise AssertionError("a missing builder must fail as in Buildbot")


def test_produce_delivers_what_buildbot_delivers_in_order():
    bbfixes.install()
    filters = [
        ("builders", None, "started"),
        ("schedulers", "3", "updated"),
        (None, None, "started"),
        ("builders", "7", None),
        ("builders", None),
        ("builders", "7", "started", "x"),
    ]
    keys = [
        ("builders", "7", "started"),
        ("builders", "8", "started"),
        ("schedulers", "3", "updated"),
        ("workers", "1", "started"),
        ("builders", "7"),
        (),
    ]
    got: dict[str, list] = {}
    for kind, produce in (("fixed", SimpleMQ.produce), ("buildbot", SimpleMQ.produce.__wrapped__)):
        mq = SimpleMQ()
        seen: list = []
        for n, f in enumerate(filters):
            mq.startConsuming(lambda key, data, n=n, seen=seen: seen.append((n, key)), f)
        for key in keys:
            produce(mq, key, {})
        got[kind] = seen
    assert got["fixed"] == got["buildbot"]
    assert got["fixed"][:4] == [
        (0, ("builders", "7", "started")),
        (2, ("builders", "7", "started")),
        (3, ("builders", "7", "started")),
        (0, ("builders", "8", "started")),
    ]


def test_comparisons_are_buildbot_s():
    bbfixes.install()
    one, same, other = Worker("w", "p"), Worker("w", "p"), Worker("x", "p")
    assert one == same and one != other and hash(one) == hash(same)
    assert ComparableMixin._cmp_common(one, same) == ComparableMixin._cmp_common.__wrapped__(
        one, same
    )
    assert ComparableMixin._cmp_common(one, object())[0] is False


# A Twisted web server answering as Buildbot's REST API does (``renderRest``: the JSON
# written by ``V2RootResource._write_json_data`` in a thread, then ``request.finish()``),
# with a reactor kept busy, and clients in threads. It prints how many writes were made
# off the reactor thread and how many answers came back whole.
REST_SERVER = textwrap.dedent(
    """
    import json, sys, threading, time, urllib.request
    from http.client import HTTPException
    from buildbot.www.rest import V2RootResource
    from twisted.internet import reactor, task, threads
    from twisted.web import resource, server
    from gating import bbfixes

    if sys.argv[1] == "fixed":
        bbfixes.install()
    DATA = {"schedulers": [{"name": "s%d" % i, "master": None} for i in range(500)]}
    BODY = json.dumps(DATA, sort_keys=True).encode()
    reactor_thread = threading.get_ident()
    off_reactor = []

    class Answer(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            for name in ("write", "setHeader"):
                original = getattr(request, name)

                def record(*args, _original=original, _name=name):
                    if threading.get_ident() != reactor_thread:
                        off_reactor.append(_name)
                    return _original(*args)

                setattr(request, name, record)
            encoder = json.JSONEncoder(sort_keys=True)
            d = threads.deferToThread(V2RootResource._write_json_data, request, encoder, DATA)
            d.addCallback(lambda _: request.finish())
            return server.NOT_DONE_YET

    port = reactor.listenTCP(0, server.Site(Answer()), interface="127.0.0.1")
    url = "http://127.0.0.1:%d/" % port.getHost().port
    task.LoopingCall(time.sleep, 0.002).start(0.001)  # a busy reactor
    results = {"whole": 0, "broken": 0}

    def client():
        for _ in range(15):
            try:
                with urllib.request.urlopen(url, timeout=30) as answer:
                    whole = answer.read() == BODY
            except HTTPException:
                whole = False
            results["whole" if whole else "broken"] += 1

    def clients():
        runs = [threading.Thread(target=client) for _ in range(4)]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(lambda: threading.Thread(target=clients).start())
    reactor.run()
    results["off_reactor"] = len(off_reactor)
    print(json.dumps(results))
    """
)


def rest_answers(mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", REST_SERVER, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_rest_answers_are_written_on_the_reactor_thread_and_arrive_whole():
    # Buildbot 4.3 writes from the encoding thread (buildbot/buildbot#9065) ...
    assert rest_answers("buildbot")["off_reactor"] > 0
    # ... the fix on the reactor thread, and every answer arrives whole.
    assert rest_answers("fixed") == {"whole": 60, "broken": 0, "off_reactor": 0}


def test_write_json_data_stays_a_static_method_marked_as_fixed():
    from buildbot.www.rest import V2RootResource

    bbfixes.install()
    found = V2RootResource.__dict__["_write_json_data"]
    assert isinstance(found, staticmethod)
    assert getattr(found.__func__, "_gating_fix", False)


def test_db_config_sqlite_file_pooled_and_synchronous_normal(tmp_path):
    for url in ("sqlite://", "postgresql://gating@db/gating", "mysql://x@y/z"):
        assert db_config(url) == {"db_url": url}
    config = db_config("sqlite:///state.sqlite")
    kwargs = config["engine_kwargs"]
    assert kwargs["poolclass"] is sa.pool.QueuePool
    assert kwargs["connect_args"]["factory"] is SQLiteConnection
    assert db_config("sqlite:///state.sqlite") == config  # Buildbot refuses a changed c['db']
    engine = enginestrategy.create_engine(config["db_url"], basedir=str(tmp_path), **kwargs)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("pragma synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("pragma journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
