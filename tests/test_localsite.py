"""gating.localsite: creating a master and its workers as an admin would."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys

import yaml

from gating import inrepo
from gating.localsite import REPO_ROOT, LocalSite, free_port


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
