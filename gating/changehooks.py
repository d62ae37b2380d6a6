"""Signed change notifications: the site's ``change-hooks`` model and the pure half of the
``gating`` change hook dialect (its Buildbot glue is :mod:`gating.webhooks`).

A change hook is a URL of the master's web server, ``/change_hook/DIALECT``, where a forge
(a post-receive hook, GitHub, ...) posts a change; Buildbot records it and the schedulers
see it as they see a polled one. Every hook the site enables is signed with a shared
secret, a Buildbot secret (a file of ``secrets-dir``); an unsigned call is refused.

The ``gating`` dialect takes one change as a JSON object, signed with HMAC-SHA256 of the
raw body::

    POST /change_hook/gating
    Content-Type: application/json
    X-Gating-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the secret>

    {"project": "nova-distgit", "branch": "rdo-liberty", "revision": "<40 or 64 hex>",
     "author": "A U Thor <a@example.org>", "comments": "the message",
     "files": ["nova.spec"], "category": "push", "properties": {"key": "value"}}

``project``, ``branch``, ``revision`` and ``author`` are required; ``branch`` may be a full
``refs/heads/NAME`` (it becomes ``NAME``, as Buildbot's GitPoller names branches); the
repository is the project's as the master knows it (``repository``, if given, must be
it: jobs check out from the change's repository). A call with a missing, malformed or
wrong signature, or an invalid change, is refused with one line saying why
(:class:`HookRefused`, a ``ValueError``: Buildbot answers 400 with it) and records
nothing. No Twisted here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gating.diagnostics import Mark

DIALECTS = ("gating", "github")  # what the site may enable: each verifies a signature
SIGNATURE_HEADER = "X-Gating-Signature"
SIGNATURE_PREFIX = "sha256="
MIN_SECRET_LENGTH = 16

MAX_BODY = 1 << 20  # bytes
MAX_FILES = 10_000
MAX_PATH = 4096
MAX_COMMENTS = 64 * 1024
MAX_LINE = 255  # project, author, category
MAX_REPOSITORY = 2048
MAX_PROPERTIES = 64
MAX_PROPERTY_VALUE = 4096
MAX_REPORTED = 10  # errors named in one refusal

REQUIRED = ("project", "branch", "revision", "author")
OPTIONAL = ("repository", "comments", "files", "category", "properties")
REVISION_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
PROPERTY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
COMMENT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newlines allowed
HEADS = "refs/heads/"


@dataclass(frozen=True)
class ChangeHook:
    """An enabled change hook: its dialect and the name of the Buildbot secret (a file in
    ``secrets-dir``) it is signed with; never the secret itself."""

    dialect: str
    secret: str
    mark: Mark = field(default=Mark("<none>"), compare=False)


class HookRefused(ValueError):
    """A change hook call refused; the message says why and never holds the secret.
    A ``ValueError``: Buildbot's change hook resource answers ``400`` with its message."""


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Gating-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    digest = hmac.new(_secret_bytes(secret), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(secret: str | bytes, body: bytes, header: str | bytes | None) -> None:
    """Raise :class:`HookRefused` unless ``header`` is ``body``'s signature with ``secret``.

    Compared in constant time (``hmac.compare_digest``); an empty secret verifies nothing."""
    if not secret:  # the master's fault, not the caller's: not a HookRefused
        raise RuntimeError("the change hook's secret is empty: nothing can be verified")
    if header is None or not header.strip():
        raise HookRefused(
            f"unsigned call refused: no {SIGNATURE_HEADER} header (the gating change hook "
            f"takes only calls signed with its secret: {SIGNATURE_PREFIX}<hex HMAC-SHA256 "
            "of the body>)"
        )
    if isinstance(header, bytes):
        header = header.decode("ascii", errors="replace")
    value = header.strip()
    if not value.startswith(SIGNATURE_PREFIX) or not SIGNATURE_RE.match(
        value[len(SIGNATURE_PREFIX) :].lower()
    ):
        raise HookRefused(
            f"malformed {SIGNATURE_HEADER} header: expected {SIGNATURE_PREFIX} and 64 hex "
            "digits (HMAC-SHA256 of the body)"
        )
    expected = sign(secret, body).encode("ascii")
    if not hmac.compare_digest(expected, value.lower().encode("ascii")):
        raise HookRefused(
            f"wrong {SIGNATURE_HEADER}: the body is not signed with this hook's secret "
            "(or was changed after signing)"
        )


def _show(value: object, limit: int = 60) -> str:
    """A value from the caller, safe to put in a one-line message (no raw control chars)."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def branch_error(name: str) -> str | None:
    """Why ``name`` is not a branch name by ``git check-ref-format --branch``, or None."""
    if not name:
        return "empty"
    if name == "@":
        return "'@' alone"
    if name.startswith("-"):
        return "starts with '-'"
    if name == "HEAD":
        return "HEAD is not a branch"
    if CONTROL_RE.search(name) or any(c in name for c in " ~^:?*[\\"):
        return "contains a space, a control character or one of ~ ^ : ? * [ \\"
    if ".." in name or "@{" in name:
        return "contains '..' or '@{'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "starts or ends with '/', or contains '//'"
    if name.endswith("."):
        return "ends with '.'"
    for part in name.split("/"):
        if part.startswith("."):
            return "a component starts with '.'"
        if part.endswith(".lock"):
            return "a component ends with '.lock'"
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise HookRefused(f"invalid change notification: key {_show(key)} is given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise HookRefused(f"invalid change notification: {name} is not a JSON number")


def _line(value: object, key: str, limit: int, errors: list[str]) -> str | None:
    """A one-line string of at most ``limit`` characters."""
    if not isinstance(value, str):
        errors.append(f"'{key}': expected a string, got {type(value).__name__}")
        return None
    if not value.strip():
        errors.append(f"'{key}': expected a non-empty string")
        return None
    if len(value) > limit:
        errors.append(f"'{key}': longer than {limit} characters")
        return None
    if CONTROL_RE.search(value):
        errors.append(f"'{key}': contains a control character (e.g. a newline)")
        return None
    return value


def _files(value: object, errors: list[str]) -> list[str] | None:
    if not isinstance(value, list):
        errors.append(f"'files': expected a list of paths, got {type(value).__name__}")
        return None
    if len(value) > MAX_FILES:
        errors.append(f"'files': more than {MAX_FILES} paths")
        return None
    out = []
    for index, path in enumerate(value):
        if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path:
            errors.append(
                f"'files' entry {index}: expected a path (a non-empty string of at most "
                f"{MAX_PATH} characters)"
            )
            return None
        out.append(path)
    return out


def _properties(value: object, errors: list[str]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        errors.append(f"'properties': expected an object, got {type(value).__name__}")
        return None
    if len(value) > MAX_PROPERTIES:
        errors.append(f"'properties': more than {MAX_PROPERTIES} properties")
        return None
    out: dict[str, Any] = {}
    for name, prop in value.items():
        if not PROPERTY_RE.match(name):
            errors.append(
                f"'properties': {_show(name)} is not a property name (letters, digits, "
                "'_', '.', '-'; a letter or '_' first)"
            )
        elif isinstance(prop, str) and len(prop) > MAX_PROPERTY_VALUE:
            errors.append(f"property '{name}': longer than {MAX_PROPERTY_VALUE} characters")
        elif prop is not None and not isinstance(prop, str | int | float | bool):
            errors.append(
                f"property '{name}': expected a string, number, boolean or null, "
                f"got {type(prop).__name__}"
            )
        else:
            out[name] = prop
    return out


def parse_change(body: bytes, projects: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Buildbot change (``addChange`` keyword arguments) of a notification's body.

    ``projects``: the projects accepted, each with its repository as the master knows it
    (where its poller polls and its jobs check out from): the change's ``repository`` is
    that one (given, it must be the same). None: any project, any repository. Raises
    :class:`HookRefused` naming every problem (up to :data:`MAX_REPORTED`)."""
    if len(body) > MAX_BODY:
        raise HookRefused(f"invalid change notification: larger than {MAX_BODY} bytes")
    try:
        data = json.loads(
            body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except HookRefused:
        raise
    except UnicodeDecodeError:
        raise HookRefused("invalid change notification: the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HookRefused(
            f"invalid change notification: not JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5000 digits
        raise HookRefused(f"invalid change notification: not usable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HookRefused(
            f"invalid change notification: expected a JSON object, got {type(data).__name__}"
        )
    errors: list[str] = []
    for key in data:
        if key not in REQUIRED and key not in OPTIONAL:
            known = ", ".join((*REQUIRED, *OPTIONAL))
            errors.append(f"unknown key {_show(key)} (known: {known})")
    for key in REQUIRED:
        if key not in data:
            errors.append(f"missing required key '{key}'")
    change: dict[str, Any] = {
        "repository": "",
        "comments": "",
        "files": [],
        "category": None,
        "properties": {},
    }
    if "project" in data:
        project = _line(data["project"], "project", MAX_LINE, errors)
        if project is not None and projects is not None and project not in projects:
            errors.append(f"'project': {_show(project)} is not a project of this master")
        change["project"] = project
    if "branch" in data:
        branch = _line(data["branch"], "branch", MAX_PATH, errors)
        if branch is not None:
            short = branch[len(HEADS) :] if branch.startswith(HEADS) else branch
            reason = branch_error(short)
            if reason is not None:
                errors.append(f"'branch': {_show(branch)} is not a git branch name ({reason})")
            change["branch"] = short
    if "revision" in data:
        revision = data["revision"]
        if not isinstance(revision, str) or not REVISION_RE.match(revision):
            errors.append(
                f"'revision': {_show(revision)} is not a full commit id (40 or 64 lowercase "
                "hex digits)"
            )
        change["revision"] = revision
    if "author" in data:
        change["author"] = _line(data["author"], "author", MAX_LINE, errors)
    if "repository" in data:
        change["repository"] = _line(data["repository"], "repository", MAX_REPOSITORY, errors)
    known = projects.get(change.get("project") or "") if projects is not None else None
    if known is not None:
        given = change["repository"]
        if "repository" in data and given is not None and given != known:
            errors.append(
                f"'repository': {_show(given)} is not the repository of project "
                f"'{change['project']}' ({_show(known, 200)}); leave it out"
            )
        change["repository"] = known
    if "category" in data and data["category"] is not None:
        change["category"] = _line(data["category"], "category", MAX_LINE, errors)
    if "comments" in data:
        comments = data["comments"]
        if not isinstance(comments, str):
            errors.append(f"'comments': expected a string, got {type(comments).__name__}")
        elif len(comments) > MAX_COMMENTS:
            errors.append(f"'comments': longer than {MAX_COMMENTS} characters")
        elif COMMENT_CONTROL_RE.search(comments):
            errors.append("'comments': contains a control character other than tab or newline")
        else:
            change["comments"] = comments
    if "files" in data:
        change["files"] = _files(data["files"], errors)
    if "properties" in data:
        change["properties"] = _properties(data["properties"], errors)
    if errors:
        more = len(errors) - MAX_REPORTED
        shown = "; ".join(errors[:MAX_REPORTED]) + (f"; and {more} more" if more > 0 else "")
        raise HookRefused(f"invalid change notification: {shown}")
    return change


def notification(change: dict[str, Any]) -> bytes:
    """The body a client posts: ``change`` as compact JSON (what is signed is these bytes)."""
    return json.dumps(change, sort_keys=True, separators=(",", ":")).encode("utf-8")


def hook_url(master_url: str) -> str:
    return master_url.rstrip("/") + "/change_hook/gating"


def post_change(
    master_url: str, secret: str | bytes, change: dict[str, Any], timeout: float = 30
) -> tuple[int, str]:
    """Sign and POST ``change`` to the master's ``gating`` change hook (what a forge's
    post-receive hook calls). ``(HTTP status, the master's answer)``; status 0 when the
    master cannot be reached. Buildbot answers 202 when the change was recorded."""
    body = notification(change)
    request = urllib.request.Request(
        hook_url(master_url),
        data=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read().decode("utf-8", errors="replace")
        finally:
            exc.close()
    except (urllib.error.URLError, OSError) as exc:
        return 0, f"cannot reach the master at {master_url}: {getattr(exc, 'reason', exc)}"
