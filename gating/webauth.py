"""The web UI's login and the admin role: the site's ``web`` stanza as Buildbot's
``c['www']['auth']`` and ``c['www']['authz']``.

Everyone, logged in or not, reads everything. With ``web: auth``, users log in at
Buildbot's ``/auth/login`` (HTTP basic or digest authentication; it sets the session
cookie), and only the role ``admins`` may use a control endpoint: Buildbot's own (force,
stop, rebuild, ...) and the gate's (``approve``, ``dequeue``: :mod:`gating.www`), through
one :class:`~buildbot.www.authz.endpointmatchers.AnyControlEndpointMatcher` rule.

The passwords of ``users`` are Buildbot secrets: files of the master's secrets directory,
read here when the configuration loads (a missing one is a configuration error) and given
to Buildbot's ``UserPasswordAuth`` only: never logged, never in a property. A ``htpasswd``
file is read by Buildbot at each login; it is checked here, as Buildbot's
``HTPasswdAuth`` compares plain-text passwords only (hashed entries could never log in).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from buildbot.plugins import util
from buildbot.www.authz.roles import RolesFromBase

from gating.diagnostics import Collector, Mark
from gating.site import ADMIN_ROLE, WebConfig

# What htpasswd(1) writes for MD5 (apr1), bcrypt, SHA-1 and crypt(3)'s SHA-2 hashes.
HASH_PREFIXES = ("$apr1$", "$2y$", "$2a$", "$2b$", "{SHA}", "$1$", "$5$", "$6$")


class RolesFromListedGroups(RolesFromBase):
    """``role`` for a user in any of ``groups`` (from the login's user info).

    Buildbot's ``RolesFromGroups`` turns every group into a role of the same name; this
    gives one role to the listed groups only."""

    def __init__(self, role: str, groups: Iterable[str]) -> None:
        super().__init__()
        self.role = role
        self.groups = frozenset(groups)

    def getRolesFromUser(self, userDetails: dict[str, Any]) -> list[str]:
        groups = userDetails.get("groups") or ()
        return [self.role] if any(g in self.groups for g in groups) else []


def web_authz(web: WebConfig) -> Any:
    """Anyone may read; a control action needs the role ``admins``."""
    matchers: list[Any] = []
    if web.admins:
        matchers.append(util.RolesFromUsername(roles=[ADMIN_ROLE], usernames=list(web.admins)))
    if web.admin_groups:
        matchers.append(RolesFromListedGroups(ADMIN_ROLE, web.admin_groups))
    return util.Authz(
        allowRules=[util.AnyControlEndpointMatcher(role=ADMIN_ROLE)], roleMatchers=matchers
    )


def read_secret(secrets_dir: Path, name: str) -> str:
    """A Buildbot secret as ``SecretInAFile`` reads it (a trailing newline stripped)."""
    return (secrets_dir / name).read_text(encoding="utf-8").rstrip("\r\n")


def check_htpasswd(path: Path, mark: Mark, errors: Collector) -> None:
    """What would make Buildbot's ``HTPasswdAuth`` refuse a right password, or leak them.

    Never puts a password in a message."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        errors.error(mark, f"web auth 'htpasswd': cannot read {path}: {exc.strerror}")
        return
    if mode & 0o007:
        errors.error(
            mark,
            f"web auth 'htpasswd': {path} is readable by others (mode {oct(mode)}); it holds "
            "passwords: chmod o-rwx (as Buildbot requires of its secret files)",
        )
    users = 0
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip()  # as Twisted's FilePasswordDB reads it
        if not line or line.startswith(b"#") or b":" not in line:
            continue
        user, password = line.split(b":", 1)
        where = Mark(str(path), number)
        name = user.decode(errors="replace")
        users += 1
        if not user:
            errors.error(where, "htpasswd entry without a user name")
        elif not password:
            errors.error(where, f"htpasswd user '{name}' has an empty password")
        elif password.startswith(tuple(p.encode() for p in HASH_PREFIXES)):
            errors.error(
                where,
                f"htpasswd user '{name}' has a hashed password; Buildbot's HTPasswdAuth "
                "compares plain-text passwords only (buildbot issue #3126), so this user "
                "could never log in: write the password itself, or use web auth 'users' "
                "(secrets)",
            )
        elif b":" in password:
            errors.error(
                where,
                f"htpasswd user '{name}': the password contains ':', where Buildbot's "
                "htpasswd reader cuts it",
            )
    if not users:
        errors.error(mark, f"web auth 'htpasswd': {path} has no 'user:password' line")


def web_auth(web: WebConfig | None, config_dir: str | Path, secrets_dir: Path) -> dict[str, Any]:
    """``{"auth", "authz"}`` to add to ``c['www']``; ``{}`` without ``web: auth`` (no login:
    Buildbot lets everyone do everything). Raises :class:`~gating.diagnostics.ConfigError`
    for a missing or unreadable secret or htpasswd file."""
    if web is None or not web.has_auth:
        return {}
    errors = Collector()
    htpasswd = web.htpasswd_path(Path(config_dir).absolute())
    if htpasswd is not None:
        check_htpasswd(htpasswd, web.mark, errors)
        auth = util.HTPasswdAuth(str(htpasswd))
    else:
        passwords: dict[str, str] = {}
        for user in web.users:
            path = secrets_dir / user.secret
            try:
                password = read_secret(secrets_dir, user.secret)
            except FileNotFoundError:
                errors.error(
                    user.mark,
                    f"web user '{user.name}': no secret '{user.secret}' (no file {path})",
                )
                continue
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                errors.error(
                    user.mark,
                    f"web user '{user.name}': cannot read secret '{user.secret}' "
                    f"({path}): {reason}",
                )
                continue
            if not password:
                errors.error(user.mark, f"web user '{user.name}': secret '{user.secret}' is empty")
                continue
            passwords[user.name] = password
        auth = util.UserPasswordAuth(passwords)
    errors.check()
    return {"auth": auth, "authz": web_authz(web)}
