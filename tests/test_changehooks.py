"""gating.changehooks: the signature of the gating change hook and the change it carries
(the Buildbot glue is tested in tests/test_webhooks.py, the stanza in tests/test_site.py)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from gating.changehooks import (
    MAX_BODY,
    HookRefused,
    branch_error,
    notification,
    parse_change,
    sign,
    verify,
)

SECRET = "0123456789abcdef-the-hook-secret"
URL = "https://example.org/nova-distgit.git"
PROJECTS = {"nova-distgit": URL}
REV = "a" * 40
CHANGE = {
    "project": "nova-distgit",
    "branch": "rdo-liberty",
    "revision": REV,
    "author": "A U Thor <a@example.org>",
}


def refusal(body: bytes, projects=PROJECTS) -> str:
    with pytest.raises(HookRefused) as exc:
        parse_change(body, projects)
    return str(exc.value)


def body_of(**fields) -> bytes:
    return json.dumps({**CHANGE, **fields}).encode()


# -- the signature ---------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_the_body_as_openssl_makes_it():
    body = notification(CHANGE)
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == f"sha256={digest}"
    assert sign(SECRET.encode(), body) == sign(SECRET, body)
    verify(SECRET, body, sign(SECRET, body))
    verify(SECRET, body, sign(SECRET, body).encode())  # as Twisted gives a header
    verify(SECRET, body, sign(SECRET, body).upper().replace("SHA256=", "sha256="))


def test_an_unsigned_call_is_refused():
    for header in (None, "", b"", "  "):
        with pytest.raises(HookRefused, match="unsigned call refused: no X-Gating-Signature"):
            verify(SECRET, b"{}", header)


@pytest.mark.parametrize(
    "header",
    [
        "sha256=" + "0" * 64,  # well formed, wrong
        "sha256=" + hmac.new(b"another secret 123", b"{}", hashlib.sha256).hexdigest(),
    ],
    ids=["zeros", "another-secret"],
)
def test_a_wrong_signature_is_refused(header):
    with pytest.raises(HookRefused, match="wrong X-Gating-Signature: the body is not signed"):
        verify(SECRET, b"{}", header)


@pytest.mark.parametrize(
    "header",
    [
        sign(SECRET, b"{}")[:-1],  # truncated
        sign(SECRET, b"{}")[:20],
        "sha256=",
        sign(SECRET, b"{}") + "0",  # too long
        "sha1=" + hmac.new(SECRET.encode(), b"{}", hashlib.sha1).hexdigest(),
        hmac.new(SECRET.encode(), b"{}", hashlib.sha256).hexdigest(),  # no prefix
        "sha256=" + "g" * 64,
    ],
    ids=["truncated", "short", "empty", "long", "sha1", "no-prefix", "not-hex"],
)
def test_a_malformed_or_truncated_signature_is_refused(header):
    with pytest.raises(HookRefused, match="malformed X-Gating-Signature header"):
        verify(SECRET, b"{}", header)


def test_a_body_changed_after_signing_is_refused():
    body = notification(CHANGE)
    header = sign(SECRET, body)
    for changed in (
        body.replace(b"rdo-liberty", b"rdo-mitaka!"),
        body + b" ",
        body[:-1],
        b"",
    ):
        with pytest.raises(HookRefused, match="wrong X-Gating-Signature"):
            verify(SECRET, changed, header)


def test_an_empty_secret_verifies_nothing_and_is_the_masters_fault():
    with pytest.raises(RuntimeError, match="secret is empty") as exc:
        verify("", b"{}", sign("", b"{}"))
    assert not isinstance(exc.value, ValueError)  # Buildbot: 500, not the caller's 400


def test_refusals_never_hold_the_secret():
    messages = []
    for header in (None, "sha256=xyz", "sha256=" + "0" * 64, sign(SECRET, b"x")):
        with pytest.raises(HookRefused) as exc:
            verify(SECRET, b"{}", header)
        messages.append(str(exc.value))
    assert len(set(messages)) == 3 and not any(SECRET in m for m in messages)


# -- the change ------------------------------------------------------------------------


def test_a_change_becomes_buildbots_addchange_arguments():
    body = body_of(
        branch="refs/heads/rdo-liberty",
        repository="https://example.org/nova-distgit.git",
        comments="Update to 12.0.1\n\nDepends-On: I123\n",
        files=["nova.spec", "sources"],
        category="push",
        properties={"pusher": "alice", "forced": False, "count": 2, "none": None},
    )
    assert parse_change(body, {**PROJECTS, "other": "/srv/git/other.git"}) == {
        "project": "nova-distgit",
        "branch": "rdo-liberty",  # as Buildbot's GitPoller names it
        "revision": REV,
        "author": "A U Thor <a@example.org>",
        "repository": "https://example.org/nova-distgit.git",
        "comments": "Update to 12.0.1\n\nDepends-On: I123\n",
        "files": ["nova.spec", "sources"],
        "category": "push",
        "properties": {"pusher": "alice", "forced": False, "count": 2, "none": None},
    }


def test_the_repository_is_the_projects_as_the_master_knows_it():
    assert parse_change(body_of(), PROJECTS)["repository"] == URL
    assert parse_change(body_of(repository=URL), PROJECTS)["repository"] == URL
    assert refusal(body_of(repository="https://evil.example.org/nova.git")) == (
        "invalid change notification: 'repository': 'https://evil.example.org/nova.git' is "
        "not the repository of project 'nova-distgit' ('https://example.org/nova-distgit.git'"
        "); leave it out"
    )


def test_only_the_required_keys_give_the_defaults():
    assert parse_change(body_of(revision="b" * 64), None) == {
        **CHANGE,
        "revision": "b" * 64,  # a SHA-256 repository
        "repository": "",
        "comments": "",
        "files": [],
        "category": None,
        "properties": {},
    }


def test_every_problem_of_a_change_is_named_at_once():
    body = json.dumps(
        {"project": "nova", "branch": "a..b", "revision": "abc", "colour": "red", "files": "x"}
    ).encode()
    assert refusal(body) == (
        "invalid change notification: unknown key 'colour' (known: project, branch, revision, "
        "author, repository, comments, files, category, properties); missing required key "
        "'author'; 'project': 'nova' is not a project of this master; 'branch': 'a..b' is not "
        "a git branch name (contains '..' or '@{'); 'revision': 'abc' is not a full commit id "
        "(40 or 64 lowercase hex digits); 'files': expected a list of paths, got str"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"project": 3}, "'project': expected a string, got int"),
        ({"project": ""}, "'project': expected a non-empty string"),
        ({"author": "x" * 256}, "'author': longer than 255 characters"),
        ({"author": "eve\r\nX-Injected: 1"}, "'author': contains a control character"),
        ({"revision": "A" * 40}, f"'revision': '{'A' * 40}' is not a full commit id"),
        ({"revision": None}, "'revision': None is not a full commit id"),
        ({"comments": ["x"]}, "'comments': expected a string, got list"),
        ({"comments": "x" * 65537}, "'comments': longer than 65536 characters"),
        ({"comments": "bell\x07"}, "'comments': contains a control character other than tab"),
        ({"files": ["ok", ""]}, "'files' entry 1: expected a path"),
        ({"files": ["a"] * 10_001}, "'files': more than 10000 paths"),
        ({"category": {"a": 1}}, "'category': expected a string, got dict"),
        ({"properties": []}, "'properties': expected an object, got list"),
        ({"properties": {"1st": "x"}}, "'properties': '1st' is not a property name"),
        ({"properties": {"p": {"x": 1}}}, "property 'p': expected a string, number, boolean"),
        ({"properties": {f"p{i}": i for i in range(65)}}, "more than 64 properties"),
        ({"repository": "r" * 2049}, "'repository': longer than 2048 characters"),
    ],
)
def test_types_and_sizes_are_checked(fields, message):
    assert message in refusal(body_of(**fields))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON (Expecting value at line 1, column 1)"),
        (b"\xff\xfe", "the body is not UTF-8"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"project": "a", "project": "b"}', "key 'project' is given twice"),
        (b'{"properties": {"x": NaN}}', "NaN is not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "not usable JSON"),
        (b" " * (MAX_BODY + 1), f"larger than {MAX_BODY} bytes"),
    ],
    ids=["empty", "not-utf8", "list", "duplicate", "nan", "deep", "large"],
)
def test_a_body_that_is_not_one_json_object_is_refused(body, message):
    assert message in refusal(body)


def test_values_from_the_caller_are_shown_escaped_and_short():
    message = refusal(body_of(project="nova\r\n" + "x" * 200))
    assert "\r" not in message and "\n" not in message
    assert "'project': contains a control character" in message
    message = refusal(body_of(branch="é" * 100 + ".."))
    assert "'branch': '\\xe9\\xe9" in message and "\\xe9... is not a git branch name" in message


@pytest.mark.parametrize(
    "name",
    ["main", "rdo-liberty", "f41", "feature/x.y", "refs/changes/1/2", "a@b", "ü-utf8"],
)
def test_branch_names_git_accepts(name):
    assert branch_error(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("@", "'@' alone"),
        ("-x", "starts with '-'"),
        ("HEAD", "HEAD is not a branch"),
        ("a b", "contains a space"),
        ("a~1", "contains a space"),
        ("a^", "contains a space"),
        ("a:b", "contains a space"),
        ("a?", "contains a space"),
        ("a*", "contains a space"),
        ("a[", "contains a space"),
        ("a\\b", "contains a space"),
        ("a\tb", "contains a space"),
        ("a..b", "contains '..'"),
        ("a@{1}", "contains '..' or '@{'"),
        ("/a", "starts or ends with '/'"),
        ("a/", "starts or ends with '/'"),
        ("a//b", "contains '//'"),
        ("a.", "ends with '.'"),
        (".a", "a component starts with '.'"),
        ("a/.b", "a component starts with '.'"),
        ("a.lock", "ends with '.lock'"),
        ("a.lock/b", "ends with '.lock'"),
    ],
)
def test_branch_names_git_refuses(name, reason):
    assert reason in (branch_error(name) or "")


def test_a_full_branch_ref_is_checked_after_refs_heads():
    assert parse_change(body_of(branch="refs/heads/a/b"), None)["branch"] == "a/b"
    assert "is not a git branch name (empty)" in refusal(body_of(branch="refs/heads/"))


def test_the_client_body_is_compact_sorted_json():
    assert notification({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'
