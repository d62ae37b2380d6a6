"""gating.composepoller: stored reports and the mail generator (the scheduler itself runs in
tests/integration/test_composes.py with a real master)."""

from __future__ import annotations

import json

import pytest
from buildbot.process.results import FAILURE, SUCCESS

from gating.compose import Compose, Image, check
from gating.composepoller import ComposeReportGenerator, list_reports, report_path


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
