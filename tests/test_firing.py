"""gating.firing: the idstrings that name a scheduler's buildsets, and the test hook (the
lookup of existing buildsets runs with a fake database in tests/test_kojipoller.py and
tests/test_composepoller.py, and with a killed master in
tests/integration/test_master_faults.py)."""

from __future__ import annotations

from gating.firing import IDSTRING_MAX, buildset_idstring, pause_for_test
from gating.testhooks import TEST_HOOKS_ENV


def test_an_idstring_joins_its_parts_and_fits_buildbots_column_as_a_digest():
    assert buildset_idstring("compose", "rawhide", "F-1", "tests") == "compose rawhide F-1 tests"
    long = "x" * 300
    ident = buildset_idstring("compose", "rawhide", long, "tests")
    assert len(ident) <= IDSTRING_MAX and ident.startswith("compose sha256:")
    assert ident != buildset_idstring("compose", "rawhide", long, "other")
    assert ident == buildset_idstring("compose", "rawhide", long, "tests")  # stable
    # exactly the column's size is kept as it is
    exact = buildset_idstring("k", "y" * (IDSTRING_MAX - 2))
    assert len(exact) == IDSTRING_MAX and "sha256" not in exact


def test_the_test_hook_pauses_only_when_its_file_is_there(tmp_path, monkeypatch):
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    assert pause_for_test("compose-fire-after-buildsets", "composes") is None
    monkeypatch.setenv(TEST_HOOKS_ENV, str(tmp_path))
    assert pause_for_test("compose-fire-after-buildsets", "composes") is None
    assert not list(tmp_path.iterdir())
    (tmp_path / "pause-compose-fire-after-buildsets").write_text("")
    waiting = pause_for_test("compose-fire-after-buildsets", "composes")
    assert waiting is not None and not waiting.called  # never fires: the test kills the master
    assert (tmp_path / "paused-compose-fire-after-buildsets").read_text() == "composes"
