"""gating.runsdb: the UI's reads of Buildbot's database (a real SQLite database through
Buildbot's test master)."""

from __future__ import annotations

from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from twisted.internet import defer
from twisted.trial import unittest

from gating.runsdb import RunReader, UIPlanService
from tests.test_steps import silence_deprecations

MASTER = fakedb.FakeDBConnector.MASTER_ID


def build(buildid, brid, builderid, number, started, complete=None, results=None):
    return fakedb.Build(
        id=buildid,
        buildrequestid=brid,
        builderid=builderid,
        number=number,
        masterid=MASTER,
        workerid=1,
        started_at=started,
        complete_at=complete,
        results=results,
        state_string="done" if complete else "building",
    )


class RunReaderTests(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantDb=True)
        yield self.master.db.insert_test_data(
            [
                fakedb.Master(id=MASTER),
                fakedb.Worker(id=1, name="w"),
                fakedb.Builder(id=10, name="gate"),
                fakedb.Builder(id=11, name="gate/unit/x86_64"),
                fakedb.Builder(id=12, name="other"),
                # An older, unrelated buildset whose build triggered something too.
                fakedb.Buildset(id=1),
                fakedb.BuildRequest(id=1, buildsetid=1, builderid=12),
                build(1, 1, 12, 1, 10, 20, 0),
                # The gate attempt: buildset 5, pipeline build 50, which triggered 6 and 7.
                fakedb.Buildset(id=5),
                fakedb.BuildRequest(id=5, buildsetid=5, builderid=10),
                build(50, 5, 10, 1, 100),
                fakedb.Buildset(id=6, parent_buildid=50),
                fakedb.BuildRequest(id=6, buildsetid=6, builderid=11, complete=1, results=0),
                build(60, 6, 11, 1, 101, 111, 0),
                fakedb.Buildset(id=7, parent_buildid=50),
                fakedb.BuildRequest(id=7, buildsetid=7, builderid=11),
                fakedb.Buildset(id=8, parent_buildid=1),
                fakedb.BuildRequest(id=8, buildsetid=8, builderid=11),
                # Earlier builds of the unit builder, for its estimate.
                fakedb.Buildset(id=9),
                fakedb.BuildRequest(id=9, buildsetid=9, builderid=11),
                build(70, 9, 11, 2, 200, 230, 0),
                build(71, 9, 11, 3, 300, 390, 2),  # failed: not a sample
            ]
        )
        self.reader = RunReader(self.master)

    @defer.inlineCallbacks
    def test_rows_follow_a_run_to_the_jobs_its_pipeline_build_triggered(self):
        requests, builds, children = yield self.reader.rows([5])
        self.assertEqual(sorted(r["brid"] for r in requests), [5, 6, 7])
        self.assertEqual(sorted(b["buildid"] for b in builds), [50, 60])
        self.assertEqual(
            sorted((c["bsid"], c["parent_buildid"]) for c in children), [(6, 50), (7, 50)]
        )
        done = next(b for b in builds if b["buildid"] == 60)
        self.assertEqual((done["started_at"], done["complete_at"], done["results"]), (101, 111, 0))

    @defer.inlineCallbacks
    def test_no_runs_read_nothing(self):
        self.assertEqual((yield self.reader.rows([])), ([], [], []))

    @defer.inlineCallbacks
    def test_run_rows_of_one_pipeline_build(self):
        build_row, request, child_requests, child_builds = yield self.reader.run_rows(50)
        self.assertEqual((build_row["buildid"], request["bsid"]), (50, 5))
        self.assertEqual(sorted(r["brid"] for r in child_requests), [6, 7])
        self.assertEqual([b["buildid"] for b in child_builds], [60])
        self.assertIsNone((yield self.reader.run_rows(999)))

    @defer.inlineCallbacks
    def test_estimates_are_the_median_of_successful_builds(self):
        estimates = yield self.reader.estimates([11, 10])
        # Builder 11 passed in 10 s (build 60) and 30 s (build 70); the failure is ignored.
        self.assertEqual(estimates, {11: 20.0, 10: None})

    @defer.inlineCallbacks
    def test_builder_names_and_recent_runs(self):
        names = yield self.reader.builder_names([10, 11])
        self.assertEqual((names[10], names[11]), ("gate", "gate/unit/x86_64"))
        runs = yield self.reader.recent_runs(["gate", "missing"])
        self.assertEqual([(r["buildid"], r["pipeline"]) for r in runs], [(50, "gate")])


class UIPlanServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_keeps_the_plan_it_is_configured_with(self):
        svc = UIPlanService(plan={"pipelines": {}, "builders": {}})
        yield svc.reconfigServiceWithSibling(UIPlanService(plan={"pipelines": {"p": {}}}))
        self.assertEqual(svc.plan, {"pipelines": {"p": {}}})
