"""gating.webhooks: the site's change hooks served by Buildbot's own ChangeHookResource,
with the secrets read by Buildbot's SecretInAFile, driven with Buildbot's fake requests
(as buildbot's test_hooks_github does). The pure checks: tests/test_changehooks.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import tempfile
from pathlib import Path

from buildbot.secrets.manager import SecretManager
from buildbot.secrets.providers.file import SecretInAFile
from buildbot.test.fake.web import FakeRequest, fakeMasterForHooks
from buildbot.test.reactor import TestReactorMixin
from buildbot.www.change_hook import ChangeHookResource
from twisted.internet import defer
from twisted.trial import unittest

from gating.changehooks import MAX_BODY, ChangeHook, notification, sign
from gating.diagnostics import Collector, ConfigError, Mark
from gating.webhooks import GatingHookHandler, change_hook_dialects, check_secrets
from tests.test_steps import silence_deprecations

GATING_SECRET = "gating-hook-secret-0123456789"
GITHUB_SECRET = "github-hook-secret-9876543210"
OTHER_SECRET = "not-the-hook-secret-000000000"
REV = "3" * 40
PROJECTS = [("nova-distgit", "https://example.org/nova-distgit.git")]
HOOKS = (ChangeHook("gating", "hook-gating"), ChangeHook("github", "hook-github"))
CHANGE = {
    "project": "nova-distgit",
    "branch": "refs/heads/rdo-liberty",
    "revision": REV,
    "author": "A U Thor <a@example.org>",
    "repository": "https://example.org/nova-distgit.git",
    "comments": "Update to 12.0.1",
    "files": ["nova.spec"],
    "properties": {"pusher": "alice"},
}
GITHUB_PUSH = {
    "ref": "refs/heads/rdo-liberty",
    "repository": {
        "name": "nova-distgit",
        "full_name": "rdo/nova-distgit",
        "html_url": "https://github.com/rdo/nova-distgit",
    },
    "head_commit": {"message": "Update"},
    "commits": [
        {
            "id": REV,
            "url": f"https://github.com/rdo/nova-distgit/commit/{REV}",
            "author": {"name": "A U Thor", "email": "a@example.org"},
            "committer": {"name": "A U Thor", "email": "a@example.org"},
            "message": "Update",
            "timestamp": "2026-01-02T03:04:05+00:00",
            "modified": ["nova.spec"],
        }
    ],
}


def write_secrets(folder: Path, secrets: dict[str, str]) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    for name, value in secrets.items():
        path = folder / name
        path.write_text(value + "\n")  # SecretInAFile strips the newline
        path.chmod(0o600)
    return folder


def hook_errors(tmp_path: Path, secrets: dict[str, str]) -> list[str]:
    folder = write_secrets(tmp_path / "secrets", secrets)
    errors = Collector()
    check_secrets(HOOKS, folder, errors)
    return [str(d).replace(str(folder), "SECRETS") for d in errors.diagnostics]


class ChangeHookTests(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        silence_deprecations(self)
        self.setup_test_reactor()
        folder = write_secrets(
            self.tmpdir(), {"hook-gating": GATING_SECRET, "hook-github": GITHUB_SECRET}
        )
        self.dialects = change_hook_dialects(HOOKS, PROJECTS, folder)
        self.master = yield fakeMasterForHooks(self)
        provider = SecretInAFile(dirname=str(folder))  # the master's provider
        yield provider.reconfigService(dirname=str(folder))
        secrets = SecretManager()
        secrets.services = [provider]
        yield secrets.setServiceParent(self.master)
        self.resource = ChangeHookResource(dialects=self.dialects, master=self.master)

    def tmpdir(self) -> Path:
        """A fresh folder (trial's mktemp would write into the current directory)."""
        path = Path(tempfile.mkdtemp(prefix="gating-hooks-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path / "secrets"

    @property
    def changes(self) -> list[dict]:
        return self.master.data.updates.changesAdded

    @defer.inlineCallbacks
    def call(self, dialect: bytes, body: bytes, headers: dict, method: bytes = b"POST"):
        request = FakeRequest(content=body)
        request.uri = b"/change_hook/" + dialect
        request.method = method
        request.received_headers = headers
        yield request.test_render(self.resource)
        return request

    def post(self, body: bytes, signature: str | None = None, **kwargs):
        headers = {b"Content-Type": b"application/json"}
        if signature is not None:
            headers[b"X-Gating-Signature"] = signature.encode()
        return self.call(b"gating", body, headers, **kwargs)

    def assert_refused(self, request, message: bytes) -> None:
        self.assertEqual(self.changes, [])
        code, reason = request.setResponseCode.call_args.args
        self.assertEqual((code, reason), (400, request.written))
        self.assertIn(message, request.written)
        for secret in (GATING_SECRET, GITHUB_SECRET):
            self.assertNotIn(secret.encode(), request.written)

    # -- gating --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_signed_change_is_recorded(self):
        body = notification(CHANGE)
        request = yield self.post(body, sign(GATING_SECRET, body))
        request.setResponseCode.assert_called_once_with(202)
        self.assertEqual(request.written, b"1 change found")
        self.assertEqual(
            self.changes,
            [
                {
                    "author": "A U Thor <a@example.org>",
                    "branch": "rdo-liberty",
                    "category": None,
                    "codebase": None,
                    "comments": "Update to 12.0.1",
                    "committer": None,
                    "files": ["nova.spec"],
                    "project": "nova-distgit",
                    "properties": {"pusher": "alice"},
                    "repository": "https://example.org/nova-distgit.git",
                    "revision": REV,
                    "revlink": "",
                    "src": "git",
                    "when_timestamp": None,
                }
            ],
        )

    @defer.inlineCallbacks
    def test_an_unsigned_change_is_refused(self):
        request = yield self.post(notification(CHANGE))
        self.assert_refused(request, b"unsigned call refused: no X-Gating-Signature header")

    @defer.inlineCallbacks
    def test_a_wrongly_signed_change_is_refused(self):
        body = notification(CHANGE)
        request = yield self.post(body, "sha256=" + "f" * 64)
        self.assert_refused(request, b"wrong X-Gating-Signature")

    @defer.inlineCallbacks
    def test_a_change_signed_with_another_secret_is_refused(self):
        body = notification(CHANGE)
        for secret in (OTHER_SECRET, GITHUB_SECRET):  # the github hook's secret is not it
            request = yield self.post(body, sign(secret, body))
            self.assert_refused(request, b"wrong X-Gating-Signature")

    @defer.inlineCallbacks
    def test_a_truncated_signature_is_refused(self):
        body = notification(CHANGE)
        request = yield self.post(body, sign(GATING_SECRET, body)[:-2])
        self.assert_refused(request, b"malformed X-Gating-Signature header")

    @defer.inlineCallbacks
    def test_a_body_changed_after_signing_is_refused(self):
        body = notification(CHANGE)
        changed = body.replace(b"rdo-liberty", b"rdo-mitaka!")
        request = yield self.post(changed, sign(GATING_SECRET, body))
        self.assert_refused(request, b"wrong X-Gating-Signature")

    @defer.inlineCallbacks
    def test_a_signed_but_invalid_change_is_refused_with_its_problems(self):
        body = notification({**CHANGE, "project": "keystone", "branch": "a..b"})
        request = yield self.post(body, sign(GATING_SECRET, body))
        self.assert_refused(
            request,
            b"invalid change notification: 'project': 'keystone' is not a project of this "
            b"master; 'branch': 'a..b' is not a git branch name",
        )

    @defer.inlineCallbacks
    def test_only_post_is_taken(self):
        body = notification(CHANGE)
        request = yield self.post(body, sign(GATING_SECRET, body), method=b"GET")
        self.assert_refused(request, b"the gating change hook takes POST requests only")

    @defer.inlineCallbacks
    def test_a_body_over_the_limit_is_refused_before_anything_else(self):
        body = b" " * (MAX_BODY + 1)
        request = yield self.post(body, sign(GATING_SECRET, body))
        self.assert_refused(request, f"the body is larger than {MAX_BODY} bytes".encode())

    @defer.inlineCallbacks
    def test_a_secret_the_master_lost_is_its_error_not_the_callers(self):
        provider = self.master.namedServices["secrets"].services[0]
        yield provider.reconfigService(dirname=str(write_secrets(self.tmpdir(), {})))
        body = notification(CHANGE)
        request = yield self.post(body, sign(GATING_SECRET, body))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        request.setResponseCode.assert_called_once_with(500, b"Error processing changes.")
        self.assertEqual(self.changes, [])

    @defer.inlineCallbacks
    def test_unsigned_dialects_are_never_enabled(self):
        for dialect in (b"", b"base", b"poller"):
            request = yield self.call(dialect, b"", {})
            self.assert_refused(request, b"wasn't whitelisted in change_hook")

    @defer.inlineCallbacks
    def test_the_secret_in_use_is_the_one_of_the_current_configuration(self):
        """Buildbot keeps a dialect's first handler across reconfigs; the handler reads
        its options from the master's configuration."""
        body = notification(CHANGE)
        yield self.post(body, sign(GATING_SECRET, body))
        self.assertEqual(len(self.changes), 1)
        self.changes.clear()
        other = write_secrets(self.tmpdir(), {"hook-rotated": OTHER_SECRET})
        provider = self.master.namedServices["secrets"].services[0]
        yield provider.reconfigService(dirname=str(other))
        www = dict(self.master.config.www)
        www["change_hook_dialects"] = change_hook_dialects(
            [ChangeHook("gating", "hook-rotated")], PROJECTS, other
        )
        self.master.config.www = www
        self.resource.reconfigResource(self.master.config)
        request = yield self.post(body, sign(GATING_SECRET, body))
        self.assert_refused(request, b"wrong X-Gating-Signature")
        request = yield self.post(body, sign(OTHER_SECRET, body))
        request.setResponseCode.assert_called_once_with(202)

    # -- github (Buildbot's own dialect, strict) ----------------------------------------

    def github(self, body: bytes, signature: str | None):
        headers = {b"X-GitHub-Event": b"push", b"Content-Type": b"application/json"}
        if signature is not None:
            headers[b"X-Hub-Signature"] = signature.encode()
        return self.call(b"github", body, headers)

    @defer.inlineCallbacks
    def test_github_refuses_an_unsigned_push(self):
        request = yield self.github(json.dumps(GITHUB_PUSH).encode(), None)
        self.assert_refused(request, b"Request has no required signature")

    @defer.inlineCallbacks
    def test_github_refuses_a_push_signed_with_another_secret(self):
        body = json.dumps(GITHUB_PUSH).encode()
        digest = hmac.new(GATING_SECRET.encode(), body, hashlib.sha1).hexdigest()
        request = yield self.github(body, f"sha1={digest}")
        self.assert_refused(request, b"Hash mismatch")

    @defer.inlineCallbacks
    def test_github_records_a_signed_push(self):
        body = json.dumps(GITHUB_PUSH).encode()
        digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha1).hexdigest()
        request = yield self.github(body, f"sha1={digest}")
        request.setResponseCode.assert_called_once_with(202)
        (change,) = self.changes
        self.assertEqual(
            (change["project"], change["branch"], change["revision"], change["files"]),
            ("rdo/nova-distgit", "rdo-liberty", REV, ["nova.spec"]),
        )


# -- the dialects and their secrets ------------------------------------------------------


def test_the_dialects_name_secrets_and_never_hold_them(tmp_path):
    folder = write_secrets(
        tmp_path / "secrets", {"hook-gating": GATING_SECRET, "hook-github": GITHUB_SECRET}
    )
    dialects = change_hook_dialects(HOOKS, [("a", "/git/a.git"), ("b", "/git/b.git")], folder)
    assert set(dialects) == {"gating", "github"}
    assert dialects["github"]["strict"] is True
    assert dialects["github"]["secret"].secret_name == "hook-github"
    gating = dialects["gating"]
    assert gating["custom_class"] is GatingHookHandler
    assert gating["secret"].secret_name == "hook-gating"
    assert gating["projects"] == (("a", "/git/a.git"), ("b", "/git/b.git"))
    assert GATING_SECRET not in repr(dialects) and GITHUB_SECRET not in repr(dialects)
    assert change_hook_dialects((), [("a", "/git/a.git")], folder) == {}


def test_good_secrets_pass(tmp_path):
    assert hook_errors(tmp_path, {"hook-gating": "x" * 16, "hook-github": GITHUB_SECRET}) == []


def test_missing_empty_and_short_secrets_are_errors_naming_hook_and_secret(tmp_path):
    HOOKS_AT = (
        ChangeHook("gating", "hook-gating", Mark("gating.yaml", 2, 19)),
        ChangeHook("github", "hook-github", Mark("gating.yaml", 3, 19)),
    )
    folder = write_secrets(tmp_path / "secrets", {"hook-gating": "\n"})
    with_short = write_secrets(tmp_path / "short", {"hook-gating": "s3cret", "hook-github": ""})
    messages = []
    for where in (folder, with_short):
        try:
            change_hook_dialects(HOOKS_AT, [], where)
        except ConfigError as exc:
            messages.extend(m.replace(str(tmp_path), "TMP") for m in exc.messages)
    assert messages == [
        "gating.yaml:2:19: change hook 'gating': secret 'hook-gating' is empty",
        "gating.yaml:3:19: change hook 'github': no secret 'hook-github' (no file "
        "TMP/secrets/hook-github)",
        "gating.yaml:2:19: change hook 'gating': secret 'hook-gating' is shorter than 16 "
        "characters (make one with: openssl rand -hex 32)",
        "gating.yaml:3:19: change hook 'github': secret 'hook-github' is empty",
    ]
    assert not any("s3cret" in m for m in messages)
