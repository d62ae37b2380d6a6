"""gating.localsite: creating a master and its workers as an admin would."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys

import pytest
import yaml

from gating import inrepo, localsite
from gating.localsite import (
    REPO_ROOT,
    TAC_PASSWORD_PLACEHOLDER,
    LocalSite,
    free_port,
    set_tac_password,
)


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_create_sets_ports_secrets_and_workers(tmp_path):
    shutil.copytree(REPO_ROOT / "examples" / "demo", tmp_path / "config")
    site = LocalSite(tmp_path, www_port=18010, pb_port=19989)
    site.create()
    config = yaml.safe_load((tmp_path / "config" / "gating.yaml").read_text())
    assert config["www-port"] == 18010
    assert config["pb-port"] == "tcp:19989:interface=127.0.0.1"
    assert config["buildbot-url"] == "http://127.0.0.1:18010/"
    secrets = tmp_path / "master" / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for name in ("local-x86_64", "local-aarch64"):
        secret = secrets / f"worker-{name}"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_text()) >= 24
        tac = (tmp_path / "workers" / name / "buildbot.tac").read_text()
        assert f"workername = '{name}'" in tac
        assert "port = 19989" in tac
        assert f"passwd = {secret.read_text()!r}" in tac
        assert TAC_PASSWORD_PLACEHOLDER not in tac
        # The in-repo pipeline runner's Python, as on deployed workers: this one.
        link = tmp_path / "workers" / name / inrepo.VENV_LINK
        assert os.readlink(link) == sys.prefix
        assert (link / inrepo.RUNNER_PYTHON).exists()
    assert (tmp_path / "master" / "state.sqlite").is_file()
    assert (tmp_path / "master" / "master.cfg").read_text() == (
        REPO_ROOT / "master.cfg"
    ).read_text()
    # A second create keeps the secrets.
    before = (secrets / "worker-local-x86_64").read_text()
    site.create()
    assert (secrets / "worker-local-x86_64").read_text() == before


def test_worker_passwords_never_reach_a_command_line(tmp_path, monkeypatch):
    """Every user of the host reads every process's argv (ps): create-worker gets a
    placeholder, and the password is written into buildbot.tac afterwards."""
    shutil.copytree(REPO_ROOT / "examples" / "demo", tmp_path / "config")
    argvs: list[list[str]] = []
    real = localsite.run_checked

    def recording(cmd, **kwargs):
        argvs.append(list(cmd))
        return real(cmd, **kwargs)

    monkeypatch.setattr(localsite, "run_checked", recording)
    LocalSite(tmp_path, www_port=18010, pb_port=19989).create()
    passwords = [p.read_text() for p in (tmp_path / "master" / "secrets").glob("worker-*")]
    assert len(passwords) == 2 and any("create-worker" in argv for argv in argvs)
    assert not [a for argv in argvs for a in argv for pw in passwords if pw in a]


def test_set_tac_password_replaces_exactly_the_placeholder_line():
    tac = f"workername = 'w'\npasswd = {TAC_PASSWORD_PLACEHOLDER!r}\nkeepalive = 600\n"
    assert (
        set_tac_password(tac, "p'\\q")
        == "workername = 'w'\npasswd = \"p'\\\\q\"\nkeepalive = 600\n"
    )
    with pytest.raises(RuntimeError, match="passwd"):
        set_tac_password("passwd = 'other'\n", "x")


def test_start_gives_buildbot_the_sites_own_start_timeout(tmp_path, monkeypatch):
    """``buildbot start`` gives up after 10 s by default, which a loaded host (or a master
    recovering its gate after a SIGKILL) can exceed: the site's timeout is passed on."""
    import subprocess

    import gating.localsite

    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "took more than 120 seconds")

    monkeypatch.setattr(gating.localsite.subprocess, "run", run)
    site = LocalSite(tmp_path, www_port=18010, pb_port=19989)
    try:
        site.start(timeout=120)
    except RuntimeError as exc:
        assert "the master did not start" in str(exc)
    else:
        raise AssertionError("a failed 'buildbot start' must raise")
    assert calls[0][1:3] == ["start", "--start_timeout=120"]
