"""gating.composepoller: stored reports, the mail generator, and the scheduler finishing a
compose a killed master was starting, on a fake database (the scheduler itself runs in
tests/integration/test_composes.py with a real master, and is killed in
tests/integration/test_master_faults.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.scheduler import SchedulerMixin
from twisted.internet import defer
from twisted.trial import unittest

from gating.compose import Compose, Image, check
from gating.composepoller import (
    ComposeLocation,
    ComposeReportGenerator,
    ComposeScheduler,
    ComposeSettings,
    compose_idstring,
    entry_complete,
    list_reports,
    report_path,
)
from gating.firing import IDSTRING_MAX
from tests.test_steps import silence_deprecations


def report_data(result: str = "failed") -> dict:
    image = Image("Server", "Server", "dvd", "iso", "x86_64", "Server/x86_64/iso/a.iso")
    previous = Compose("Fedora-Rawhide-20261101.n.0", "/c/a", "FINISHED", (image,))
    current = Compose("Fedora-Rawhide-20261102.n.0", "/c/b", "FINISHED", ())
    data = check(current, previous, [], []).to_json()
    data.update(result=result, finished_at=2.0, name="rawhide")
    return data


def test_report_paths_refuse_ids_that_are_not_file_names(tmp_path):
    assert (
        report_path(tmp_path, "Fedora-41-20261101.n.0") == tmp_path / "Fedora-41-20261101.n.0.json"
    )
    # "x\n": regression, the id check ended in '$', which matches before a final newline
    for bad in ("../etc/passwd", "a/b", "", ".hidden", "Fedora-41\n", "-x"):
        with pytest.raises(ValueError, match="not a compose id"):
            report_path(tmp_path, bad)


def test_stored_reports_are_listed_newest_first_and_broken_files_skipped(tmp_path):
    old = {
        **report_data(),
        "finished_at": 1.0,
        "compose": {"id": "A", "location": "", "status": None},
    }
    new = {
        **report_data(),
        "finished_at": 5.0,
        "compose": {"id": "B", "location": "", "status": None},
    }
    (tmp_path / "A.json").write_text(json.dumps(old))
    (tmp_path / "B.json").write_text(json.dumps(new))
    (tmp_path / "C.json").write_text("{broken")
    assert [r["compose"]["id"] for r in list_reports(tmp_path)] == ["B", "A"]
    assert list_reports(tmp_path / "missing") == []


def test_the_mail_generator_makes_one_plain_mail_per_report():
    gen = ComposeReportGenerator()
    assert gen.wanted_event_keys == [("gating", "compose-reports", None, "new")]
    mail = gen.generate(None, None, ("gating", "compose-reports", "rawhide", "new"), report_data())
    result = mail.result
    assert result["subject"] == "Compose check report: Fedora-Rawhide-20261102.n.0 (FINISHED)"
    assert "Images in Fedora-Rawhide-20261101.n.0 but not this compose" in result["body"]
    assert "Server/x86_64/iso/a.iso" in result["body"]
    assert (result["type"], result["results"]) == ("plain", FAILURE)
    passed = gen.generate(None, None, (), report_data("passed")).result
    assert passed["results"] == SUCCESS


def test_a_compose_buildset_idstring_names_location_compose_and_pipeline():
    assert (
        compose_idstring("rawhide", "Fedora-Rawhide-20261102.n.0", "compose-tests")
        == "compose rawhide Fedora-Rawhide-20261102.n.0 compose-tests"
    )
    ident = compose_idstring("rawhide", "Fedora-Rawhide-20261102.n.0", "p" * 250)
    assert len(ident) <= IDSTRING_MAX and ident.startswith("compose sha256:")


def test_a_compose_being_started_is_never_complete_even_with_no_buildset_yet():
    assert entry_complete({"bsids": [1, 2], "done": {"1": [], "2": []}})
    assert not entry_complete({"bsids": [1, 2], "done": {"1": []}})
    assert entry_complete({"bsids": [], "done": {}})  # DOOMED, or no pipeline: at once
    assert not entry_complete({"bsids": [], "done": {}, "firing": True})
    assert not entry_complete({"bsids": [1], "done": {"1": []}, "firing": True})


class FinishingAComposeAfterAKillTests(SchedulerMixin, TestReactorMixin, unittest.TestCase):
    """A master killed while it started a compose's pipelines: the entry is saved as being
    started (``firing``); on activation the next master adopts the buildsets that exist and
    starts only the others, with the compose's properties."""

    OBJECTID = 42
    SCHEDULERID = 15
    COMPOSE = Compose(
        "Fedora-Rawhide-20261102.n.0",
        "http://c/rawhide/Fedora-Rawhide-20261102.n.0",
        "FINISHED_INCOMPLETE",
        (Image("Server", "Server", "dvd", "iso", "x86_64", "Server/x86_64/iso/a.iso"),),
    )
    LOCATION = ComposeLocation(
        name="rawhide",
        location="http://c/rawhide/latest",
        poll_interval=60,
        pipelines=("compose-tests", "compose-upgrade"),
    )

    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        yield self.setUpScheduler()
        self.reports = Path(tempfile.mkdtemp(prefix="compose-reports-"))
        self.addCleanup(shutil.rmtree, self.reports)
        settings = ComposeSettings(locations=(self.LOCATION,), reports_dir=str(self.reports))
        builders = list(self.LOCATION.pipelines)
        self.sched = yield self.attachScheduler(
            ComposeScheduler(name="composes", builderNames=builders, settings=settings),
            self.OBJECTID,
            self.SCHEDULERID,
            createBuilderDB=True,
        )
        # Configured as the scheduler manager does, not started (no polling).
        yield self.sched.reconfigService(builderNames=builders, settings=settings)

    def firing_state(self):
        entry = {
            "compose": self.COMPOSE.to_json(),
            "state": "finished",
            "bsids": [],
            "done": {},
            "firing": True,
        }
        return {"fired": [self.COMPOSE.id], "pending": {self.COMPOSE.id: entry}, "previous": None}

    @defer.inlineCallbacks
    def buildsets(self):
        rows = yield self.master.db.buildsets.getBuildsets()
        return {b.external_idstring: b.bsid for b in rows}

    @defer.inlineCallbacks
    def test_the_started_pipeline_is_adopted_and_only_the_other_one_is_started(self):
        # The killed master started compose-tests (still running), then died.
        tests_ident = compose_idstring("rawhide", self.COMPOSE.id, "compose-tests")
        yield self.master.db.insert_test_data(
            [fakedb.Buildset(id=501, external_idstring=tests_ident, complete=0)]
        )
        yield self.sched.setState("compose:rawhide", self.firing_state())

        yield self.sched._recheck_pending(self.LOCATION)  # noqa: SLF001

        upgrade_ident = compose_idstring("rawhide", self.COMPOSE.id, "compose-upgrade")
        found = yield self.buildsets()
        assert set(found) == {tests_ident, upgrade_ident}
        state = yield self.sched.getState("compose:rawhide")
        entry = state["pending"][self.COMPOSE.id]  # not reported: both runs go on
        assert entry["bsids"] == [501, found[upgrade_ident]] and "firing" not in entry
        assert state["fired"] == [self.COMPOSE.id]
        assert self.sched._waiting == {  # noqa: SLF001
            501: ("rawhide", self.COMPOSE.id),
            found[upgrade_ident]: ("rawhide", self.COMPOSE.id),
        }
        # the new run has the compose's properties, rebuilt from the saved entry
        props = yield self.master.db.buildsets.getBuildsetProperties(found[upgrade_ident])
        assert props["compose_id"] == (self.COMPOSE.id, "compose")
        assert props["compose_status"] == ("FINISHED_INCOMPLETE", "compose")
        assert props["compose_location"] == (self.COMPOSE.location, "compose")
        assert props["compose_images"][0] == [i.to_json() for i in self.COMPOSE.images]
        assert list(self.reports.iterdir()) == []

    @defer.inlineCallbacks
    def test_a_compose_killed_before_its_first_buildset_starts_every_pipeline(self):
        yield self.sched.setState("compose:rawhide", self.firing_state())
        yield self.sched._recheck_pending(self.LOCATION)  # noqa: SLF001
        found = yield self.buildsets()
        assert sorted(found) == [
            compose_idstring("rawhide", self.COMPOSE.id, p) for p in self.LOCATION.pipelines
        ]
        state = yield self.sched.getState("compose:rawhide")
        assert state["pending"][self.COMPOSE.id]["bsids"] == sorted(found.values())
        assert list(self.reports.iterdir()) == []  # an entry with no buildset is not done
