"""gating.webauth: the site's ``web`` stanza as Buildbot's auth and authz (the wiring into
``c['www']`` is tested in tests/test_master.py)."""

from __future__ import annotations

from pathlib import Path

from gating.diagnostics import Collector, Mark
from gating.site import WebConfig, WebUser
from gating.webauth import RolesFromListedGroups, check_htpasswd, read_secret, web_auth

MARK = Mark("gating.yaml", 3, 20)


def htpasswd_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "htpasswd"
    path.write_text(text)
    path.chmod(0o600)
    errors = Collector()
    check_htpasswd(path, MARK, errors)
    return [str(d).replace(str(tmp_path), "TMP") for d in errors.diagnostics]


def test_only_the_listed_groups_give_the_role():
    roles = RolesFromListedGroups("admins", ["gating-admins", "ops"])
    assert roles.getRolesFromUser({"username": "a", "groups": ["devs", "ops"]}) == ["admins"]
    assert roles.getRolesFromUser({"username": "a", "groups": ["devs", "admins"]}) == []
    assert roles.getRolesFromUser({"username": "a"}) == []
    assert roles.getRolesFromUser({"anonymous": True}) == []


def test_a_plain_htpasswd_file_with_comments_passes(tmp_path):
    assert htpasswd_errors(tmp_path, "# users\n\nalice:wonderland\nbob:b0b  \n") == []


def test_htpasswd_entries_buildbot_would_never_accept_are_named_by_line(tmp_path):
    assert htpasswd_errors(
        tmp_path, "alice:a:b\nbob:$2y$05$ViR/HoRR.8rHXxtGqhAO6uHVBAN\n:nobody\n"
    ) == [
        "TMP/htpasswd:1:1: htpasswd user 'alice': the password contains ':', where "
        "Buildbot's htpasswd reader cuts it",
        "TMP/htpasswd:2:1: htpasswd user 'bob' has a hashed password; Buildbot's HTPasswdAuth "
        "compares plain-text passwords only (buildbot issue #3126), so this user could never "
        "log in: write the password itself, or use web auth 'users' (secrets)",
        "TMP/htpasswd:3:1: htpasswd entry without a user name",
    ]
    assert htpasswd_errors(tmp_path, "# nobody yet\n") == [
        "gating.yaml:3:20: web auth 'htpasswd': TMP/htpasswd has no 'user:password' line"
    ]


def test_secrets_are_read_as_buildbot_reads_them(tmp_path):
    (tmp_path / "pw").write_text("a b c\r\n")
    assert read_secret(tmp_path, "pw") == "a b c"


def test_no_auth_adds_nothing_to_www(tmp_path):
    assert web_auth(None, tmp_path, tmp_path) == {}
    assert web_auth(WebConfig(), tmp_path, tmp_path) == {}
    (tmp_path / "web-a").write_text("pw\n")
    www = web_auth(WebConfig(users=(WebUser("a", "web-a"),), admins=("a",)), tmp_path, tmp_path)
    assert set(www) == {"auth", "authz"}
