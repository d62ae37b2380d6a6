"""The ``gating`` command.

* ``gating check PATH``: exit 0 when the configuration directory (or pipeline file) is
  valid, 1 with every error as ``FILE:LINE:COLUMN: message`` otherwise.
* ``gating plan PATH [--json]``: the per-architecture stages of every pipeline and the
  builders they become.
* ``gating approve PROJECT CHANGE``: put a change of the embedded forge in the gate.
* ``gating dequeue PROJECT CHANGE [--reason TEXT]``: take a change out of the gate.
* ``gating queue [--json]``: every gate queue with its items in order and their states.
* ``gating demo``: create and run the embedded demo master with its workers.
* ``gating compose-check LOCATION [--previous LOCATION] [--expected SUBVARIANT:TYPE:ARCH]...
  [--json]``: the compose check report of a compose (http(s) URL, ``file://`` URL or path):
  the images added and removed since the previous compose and the expected images it lacks;
  exit 0 when no expected image is missing, 1 when some are, 2 when a compose cannot be read.
* ``gating notify PROJECT BRANCH REVISION --author TEXT [...]``: post a change to the
  master's ``gating`` change hook, signed with the hook's secret (from ``--secret-file PATH``
  or ``$GATING_HOOK_SECRET``, never the command line): what a forge's post-receive hook
  runs. Exit 0 when the master recorded the change, 1 otherwise.

``approve``, ``dequeue`` and ``queue`` talk to the master's HTTP API (``--url``, default
``$GATING_URL`` or http://127.0.0.1:8010/). On a master with a web login (``web: auth`` in
its ``gating.yaml``) only admins may approve or dequeue: ``--user NAME`` (default
``$GATING_USER``) logs in first at Buildbot's ``auth/login`` (HTTP basic authentication;
the session cookie it sets goes with the request), with the password from
``$GATING_PASSWORD`` or ``--password-file PATH``, never from the command line.
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gating import inrepo
from gating.diagnostics import ConfigError
from gating.plan import Plan, sorted_builders
from gating.site import load_config


def _load(path: str) -> Plan | None:
    try:
        return load_config(path).plan
    except ConfigError as exc:
        _report(exc)
        return None


def _report(exc: ConfigError) -> None:
    for message in exc.messages:
        print(message, file=sys.stderr)
    n = len(exc.diagnostics)
    print(f"{n} error{'s' if n != 1 else ''} found", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    if args.in_repo:
        # As the worker's runner loads it: untrusted, relative to the repository's root.
        try:
            pipeline = inrepo.load(Path.cwd(), args.path)
        except ConfigError as exc:
            _report(exc)
            return 1
        arches = ", ".join(pipeline.arches()) or "none"
        print(f"OK: in-repo pipeline {args.path}: {len(pipeline.jobs)} job(s), on {arches}")
        return 0
    plan = _load(args.path)
    if plan is None:
        return 1
    jobs = sum(1 for b in plan.builders if b.kind == "job")
    print(f"OK: {len(plan.pipelines)} pipeline(s), {jobs} job builder(s)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _load(args.path)
    if plan is None:
        return 1
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for p in plan.pipelines:
        triggers = ", ".join(t.kind for t in p.triggers) or "manual"
        print(f"pipeline {p.name} ({p.file}; triggers: {triggers})")
        for lane in p.lanes():
            stages = " -> ".join(
                "[" + ", ".join(f"{job}[{index}]" for job, index in stage) + "]"
                for stage in p.stages_for(lane)
            )
            print(f"  {lane:<8} {stages}")
    print()
    print(f"{'builder':<48} {'arch':<8} workers")
    for b in sorted_builders(plan.builders):
        workers = ", ".join(b.workernames) or "-"
        if b.kind == "pipeline" and len(b.workernames) > 1:
            workers = f"{b.workernames[0]}..{len(b.workernames)} (master)"
        print(f"{b.name:<48} {b.arch or '-':<8} {workers}")
    return 0


PASSWORD_ENV = "GATING_PASSWORD"
USER_ENV = "GATING_USER"


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed: the login's (to the web UI's page, at the
    master's ``buildbotURL``) matters only for the session cookie it sets."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    """An HTTP client that keeps the cookies it is given (the web session)."""
    return urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _KeepRedirects()
    )


def _unreachable(url: str, exc: Exception) -> str:
    return f"cannot reach the master at {url}: {getattr(exc, 'reason', exc)}"


def _api(
    url: str,
    path: str,
    body: dict | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[int, dict]:
    """Call the master's gate API; (HTTP status, JSON answer)."""
    full = url.rstrip("/") + "/plugins/gating/api/" + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        full,
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code} from {full}"}
        finally:
            exc.close()
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"error": _unreachable(url, exc)}


def login(url: str, user: str, password: str, opener: urllib.request.OpenerDirector) -> str | None:
    """Log in at Buildbot's ``auth/login`` with HTTP basic authentication; ``opener`` keeps
    the session cookie. None when logged in, else what went wrong (never the password)."""
    full = url.rstrip("/") + "/auth/login"
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request = urllib.request.Request(full, headers={"Authorization": f"Basic {token}"})
    try:
        with opener.open(request, timeout=60) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        return _unreachable(url, exc)
    if status == 401:
        return f"login failed for {user}"
    if status >= 400:
        return (
            f"cannot log in at {full}: HTTP {status} (a master without 'web: auth' in its "
            "gating.yaml has no login: leave --user and $GATING_USER unset)"
        )
    return None


def _password(args: argparse.Namespace) -> str:
    """The password: ``--password-file``'s text (a trailing newline stripped, as Buildbot
    reads its secrets: the same file may serve), else ``$GATING_PASSWORD``.
    Raises ValueError with the message to print."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            message = f"cannot read the password file {args.password_file}: {reason}"
            raise ValueError(message) from None
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise ValueError(
            f"no password for {args.user}: set ${PASSWORD_ENV} or use --password-file FILE"
        )
    return password


def _session(args: argparse.Namespace) -> urllib.request.OpenerDirector:
    """An HTTP client for a control action, logged in when a user is given.
    Raises ValueError with the message to print."""
    opener = _opener()
    if not args.user:
        if args.password_file:
            raise ValueError(f"--password-file needs --user NAME (or ${USER_ENV})")
        return opener
    if ":" in args.user:
        raise ValueError(f"'{args.user}' is not a user name (it contains ':')")
    error = login(args.url, args.user, _password(args), opener)
    if error is not None:
        raise ValueError(error)
    return opener


def _control(args: argparse.Namespace, action: str, body: dict) -> int:
    """POST a control action (approve, dequeue) to the gate API and print its verdict."""
    try:
        opener = _session(args)
    except ValueError as exc:
        print(f"gating {action}: {exc}", file=sys.stderr)
        return 1
    status, answer = _api(args.url, action, body, opener)
    if status != 200:
        message = str(answer.get("error", answer))
        if status == 403 and not args.user:
            message += f" (log in: --user NAME, the password in ${PASSWORD_ENV} or --password-file)"
        print(f"gating {action}: {message}", file=sys.stderr)
        return 1
    print(f"{answer['change']}: {answer['state']}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    return _control(args, "approve", {"project": args.project, "change": args.change})


def cmd_dequeue(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"change": f"{args.project}~{args.change}"}
    if args.reason:
        body["reason"] = args.reason
    return _control(args, "dequeue", body)


def cmd_queue(args: argparse.Namespace) -> int:
    status, answer = _api(args.url, "queue")
    if status != 200:
        print(f"gating queue: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(answer, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    for note in answer.get("notes") or []:
        print(f"note: {note.get('text', note)}")
    for queue in answer["queues"]:
        print(f"queue {queue['name']} (window {queue['window']}; {', '.join(queue['projects'])})")
        if not queue["items"]:
            print("  (empty)")
        for item in queue["items"]:
            state = item["state"] + (" (passed)" if item["passed"] else "")
            ahead = ", ".join(item["ahead"]) or "branch tip"
            reason = f"  [{item['reason']}]" if item["reason"] else ""
            print(f"  {item['change']:<24} {state:<18} on {ahead}{reason}")
    if answer["waiting"]:
        print("waiting for dependencies:")
        for item in answer["waiting"]:
            print(f"  {item['change']:<24} needs {', '.join(item['depends_on'])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gating import demo

    return demo.run(args.basedir, port=args.port, pb_port=args.pb_port)


def _expected_arg(text: str) -> dict[str, str]:
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not SUBVARIANT:TYPE:ARCH")
    return dict(zip(("subvariant", "type", "arch"), parts, strict=True))


def cmd_compose_check(args: argparse.Namespace) -> int:
    from gating import compose

    try:
        expected = compose.parse_expected(args.expected)
        current = compose.read_location(args.location, timeout=args.timeout)
        previous = None
        if args.previous:
            previous = compose.read_location(args.previous, timeout=args.timeout)
    except (compose.ComposeError, ValueError) as exc:
        print(f"gating compose-check: {exc}", file=sys.stderr)
        return 2
    report = compose.check(current, previous, expected, ())
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(compose.subject(report))
        print()
        sys.stdout.write(compose.render_text(report))
    return 1 if report.missing_expected else 0


HOOK_SECRET_ENV = "GATING_HOOK_SECRET"


def _hook_secret(args: argparse.Namespace) -> str:
    """The hook's secret: ``--secret-file``'s text (a trailing newline stripped, as Buildbot
    reads the master's copy), else ``$GATING_HOOK_SECRET``. Raises ValueError."""
    if args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as f:
                secret = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ValueError(f"cannot read the secret file {args.secret_file}: {reason}") from None
    else:
        secret = os.environ.get(HOOK_SECRET_ENV, "")
    if not secret:
        raise ValueError(f"no secret: set ${HOOK_SECRET_ENV} or use --secret-file FILE")
    return secret


def cmd_notify(args: argparse.Namespace) -> int:
    from gating import changehooks

    change: dict[str, Any] = {
        "project": args.project,
        "branch": args.branch,
        "revision": args.revision,
        "author": args.author,
    }
    for key in ("repository", "comments", "category"):
        if getattr(args, key) is not None:
            change[key] = getattr(args, key)
    if args.file:
        change["files"] = args.file
    properties = {}
    for text in args.property:
        name, sep, value = text.partition("=")
        if not sep:
            print(f"gating notify: --property {text!r} is not NAME=VALUE", file=sys.stderr)
            return 1
        properties[name] = value
    if properties:
        change["properties"] = properties
    try:
        secret = _hook_secret(args)
    except ValueError as exc:
        print(f"gating notify: {exc}", file=sys.stderr)
        return 1
    status, answer = changehooks.post_change(args.url, secret, change, timeout=args.timeout)
    if status != 202:
        where = f"HTTP {status}: " if status else ""
        print(f"gating notify: {where}{answer.strip()}", file=sys.stderr)
        return 1
    print(answer.strip() or "change recorded")
    return 0


def _control_options(p: argparse.ArgumentParser, default_url: str) -> None:
    p.add_argument("--url", default=default_url, help="the master's web URL")
    p.add_argument(
        "--user",
        metavar="NAME",
        default=os.environ.get(USER_ENV) or None,
        help=f"log in as this web UI user first (default ${USER_ENV}); the password is "
        f"${PASSWORD_ENV} or --password-file",
    )
    p.add_argument(
        "--password-file",
        metavar="PATH",
        help="a file holding the password (instead of "
        f"${PASSWORD_ENV}; a trailing newline is ignored)",
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gating", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a configuration directory or pipeline file")
    check.add_argument("path")
    check.add_argument(
        "--in-repo",
        action="store_true",
        help="PATH is a repository's own pipeline file (uses: in-repo-pipeline), relative to "
        "the repository's root (the current directory): check it as the worker does, untrusted",
    )
    check.set_defaults(func=cmd_check)
    plan = sub.add_parser("plan", help="show the stages and builders a configuration makes")
    plan.add_argument("path")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=cmd_plan)
    default_url = os.environ.get("GATING_URL", "http://127.0.0.1:8010/")
    # No abbreviated options: '--password SECRET' must not pass for '--password-file'.
    approve = sub.add_parser("approve", help="put a change in the gate", allow_abbrev=False)
    approve.add_argument("project")
    approve.add_argument("change", type=int)
    _control_options(approve, default_url)
    approve.set_defaults(func=cmd_approve)
    dequeue = sub.add_parser("dequeue", help="take a change out of the gate", allow_abbrev=False)
    dequeue.add_argument("project")
    dequeue.add_argument("change", type=int)
    dequeue.add_argument("--reason", metavar="TEXT", help="why (recorded on the change)")
    _control_options(dequeue, default_url)
    dequeue.set_defaults(func=cmd_dequeue)
    queue = sub.add_parser("queue", help="show the gate's queues")
    queue.add_argument("--json", action="store_true", help="print JSON")
    queue.add_argument("--url", default=default_url, help="the master's web URL")
    queue.set_defaults(func=cmd_queue)
    demo = sub.add_parser("demo", help="run the embedded demo master, workers and web UI")
    demo.add_argument("--basedir", default=".gating-demo")
    demo.add_argument("--port", type=int, default=8010, help="web UI port")
    demo.add_argument("--pb-port", type=int, default=9989, help="port workers connect to")
    demo.set_defaults(func=cmd_demo)
    ccheck = sub.add_parser(
        "compose-check",
        help="report on a compose: images added/removed, missing expected images",
        description="Exit 0 when no expected image is missing, 1 when some are, "
        "2 when a compose cannot be read.",
    )
    ccheck.add_argument("location", help="compose URL (http, https, file) or path")
    ccheck.add_argument("--previous", metavar="LOCATION", help="the compose to compare with")
    ccheck.add_argument(
        "--expected",
        metavar="SUBVARIANT:TYPE:ARCH",
        action="append",
        type=_expected_arg,
        default=[],
        help="an image the compose must have (repeatable)",
    )
    ccheck.add_argument("--json", action="store_true", help="print the report as JSON")
    ccheck.add_argument(
        "--timeout", type=float, default=30, help="seconds per HTTP request (default 30)"
    )
    ccheck.set_defaults(func=cmd_compose_check)
    notify = sub.add_parser(
        "notify",
        help="post a signed change to the master's gating change hook",
        description="The secret is read from --secret-file or $GATING_HOOK_SECRET, "
        "never from the command line. Exit 0 when the master recorded the change.",
        allow_abbrev=False,
    )
    notify.add_argument("project")
    notify.add_argument("branch", help="a branch name or refs/heads/NAME")
    notify.add_argument("revision", help="the full commit id")
    notify.add_argument("--author", required=True, help="e.g. 'A U Thor <a@example.org>'")
    notify.add_argument("--repository", metavar="URL")
    notify.add_argument("--comments", metavar="TEXT", help="the commit message")
    notify.add_argument("--category", metavar="TEXT")
    notify.add_argument(
        "--file", metavar="PATH", action="append", default=[], help="a changed file (repeatable)"
    )
    notify.add_argument(
        "--property",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a change property (repeatable)",
    )
    notify.add_argument("--url", default=default_url, help="the master's web URL")
    notify.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"a file holding the hook's secret (instead of ${HOOK_SECRET_ENV})",
    )
    notify.add_argument("--timeout", type=float, default=30, help="seconds (default 30)")
    notify.set_defaults(func=cmd_notify)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
