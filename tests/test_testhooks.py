"""gating.testhooks: a pause point stops only when its file is there, and says so."""

from __future__ import annotations

from gating.testhooks import TEST_HOOKS_ENV, pause_requested


def test_no_hooks_directory_no_pause(monkeypatch, tmp_path):
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    (tmp_path / "pause-x").write_text("")
    assert not pause_requested("pause-x", "me")
    assert not (tmp_path / "paused-x").exists()


def test_a_pause_file_stops_there_and_writes_who_paused(monkeypatch, tmp_path):
    monkeypatch.setenv(TEST_HOOKS_ENV, str(tmp_path))
    assert not pause_requested("pause-x", "me")
    assert not (tmp_path / "paused-x").exists()
    (tmp_path / "pause-x").write_text("")
    assert pause_requested("pause-x", "forge")
    assert (tmp_path / "paused-x").read_text() == "forge"
