"""The site's ``change-hooks`` as Buildbot's ``c['www']['change_hook_dialects']``.

Only signed dialects are enabled (Buildbot's unsigned ``base`` and ``poller`` never are):

* ``github``: Buildbot's own, with ``secret`` and ``strict: True``, so a call without
  a valid ``X-Hub-Signature`` (HMAC-SHA1 of the body, which GitHub sends with every
  delivery when the webhook has a secret) is refused;
* ``gating``: :class:`GatingHookHandler`, one JSON change signed with HMAC-SHA256 in
  ``X-Gating-Signature`` (the format and every check: :mod:`gating.changehooks`).

Each secret is passed as ``util.Secret(NAME)``, rendered through the master's secrets
provider at each call: the value is never in the configuration, a log or a message. The
secret files are checked when the configuration loads (a missing, empty or short one is a
configuration error).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from buildbot.plugins import util
from buildbot.process.properties import Properties
from buildbot.www.hooks.base import BaseHookHandler
from twisted.internet import defer

from gating import changehooks
from gating.changehooks import MIN_SECRET_LENGTH, ChangeHook, HookRefused
from gating.diagnostics import Collector
from gating.webauth import read_secret

DIALECT = "gating"


class GatingHookHandler(BaseHookHandler):
    """``POST /change_hook/gating``: one signed JSON change (:mod:`gating.changehooks`).

    ``options``: ``secret`` (a renderable: ``util.Secret(NAME)``) and ``projects`` (the
    projects accepted: name -> repository URL, as their pollers and jobs reach them)."""

    def _options(self) -> dict[str, Any]:
        """The current options: Buildbot keeps a dialect's first handler across reconfigs,
        so they are read from the master's configuration when it has them."""
        www = getattr(getattr(self.master, "config", None), "www", None)
        dialects = www.get("change_hook_dialects") if isinstance(www, dict) else None
        current = dialects.get(DIALECT) if isinstance(dialects, dict) else None
        return current if isinstance(current, dict) else (self.options or {})

    @defer.inlineCallbacks
    def getChanges(self, request: Any) -> Any:
        if request.method != b"POST":
            raise HookRefused("the gating change hook takes POST requests only")
        request.content.seek(0)  # Twisted may have read a form body for request.args
        body = request.content.read(changehooks.MAX_BODY + 1)
        if len(body) > changehooks.MAX_BODY:
            raise HookRefused(f"the body is larger than {changehooks.MAX_BODY} bytes")
        header = request.getHeader(changehooks.SIGNATURE_HEADER.encode("ascii"))
        options = self._options()
        props = Properties()
        props.master = self.master
        secret = yield props.render(options["secret"])
        changehooks.verify(secret, body, header)
        change = changehooks.parse_change(body, dict(options["projects"]))
        return [change], "git"


def check_secrets(hooks: Iterable[ChangeHook], secrets_dir: Path, errors: Collector) -> None:
    """Each hook's secret file exists and is long enough; never puts a value in a message."""
    for hook in hooks:
        what = f"change hook '{hook.dialect}'"
        path = secrets_dir / hook.secret
        try:
            secret = read_secret(secrets_dir, hook.secret)
        except FileNotFoundError:
            errors.error(hook.mark, f"{what}: no secret '{hook.secret}' (no file {path})")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            errors.error(
                hook.mark, f"{what}: cannot read secret '{hook.secret}' ({path}): {reason}"
            )
            continue
        if not secret:
            errors.error(hook.mark, f"{what}: secret '{hook.secret}' is empty")
        elif len(secret) < MIN_SECRET_LENGTH:
            errors.error(
                hook.mark,
                f"{what}: secret '{hook.secret}' is shorter than {MIN_SECRET_LENGTH} "
                "characters (make one with: openssl rand -hex 32)",
            )


def change_hook_dialects(
    hooks: Iterable[ChangeHook], projects: Iterable[tuple[str, str]], secrets_dir: Path
) -> dict[str, Any]:
    """``c['www']['change_hook_dialects']``: ``{}`` without hooks. ``projects``: (name,
    repository URL) of the projects the ``gating`` hook accepts. Raises
    :class:`~gating.diagnostics.ConfigError` for a missing, empty or short secret."""
    hooks = tuple(hooks)
    errors = Collector()
    check_secrets(hooks, secrets_dir, errors)
    errors.check()
    dialects: dict[str, Any] = {}
    for hook in hooks:
        if hook.dialect == "github":
            dialects["github"] = {"secret": util.Secret(hook.secret), "strict": True}
        else:
            dialects[DIALECT] = {
                "custom_class": GatingHookHandler,
                "secret": util.Secret(hook.secret),
                "projects": tuple(projects),  # a tuple of pairs: hashable, comparable
            }
    return dialects
