"""Tests of gating.cli: `gating check` and `gating plan`, run as a user runs them, and the
gate's control commands against a small HTTP server that logs in as Buildbot does."""

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from gating.cli import main, parser

FIXTURES = Path(__file__).parent / "fixtures"
LAUNCHPAD = sorted(p.parent.name for p in (FIXTURES / "launchpad").glob("*/.launchpad.yaml"))
BROKEN = sorted(p.name for p in (FIXTURES / "broken").glob("*.yaml"))

SEED_001_STAGES = {
    "x86_64": [[["build-snap", 0]], [["test-snap", 0], ["test-snap", 1], ["test-snap", 2]]],
    "aarch64": [[["build-snap", 0]], [["test-snap", 1], ["test-snap", 2]]],
}


@pytest.fixture
def in_fixtures(monkeypatch):
    """Run from tests/fixtures, so paths print as a user in that folder would see them."""
    monkeypatch.chdir(FIXTURES)


def expected_messages() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (FIXTURES / "broken" / "EXPECTED").read_text().splitlines():
        if line and not line.startswith("#"):
            out.setdefault(line.split(":", 1)[0], []).append(line)
    return out


def assert_json_shape(data):
    """The shape README documents for `gating plan --json`."""
    assert set(data) == {"pipelines", "builders"}
    for p in data["pipelines"]:
        assert {"name", "file", "stages"} <= set(p)
        for lane, stages in p["stages"].items():
            assert isinstance(lane, str)
            for stage in stages:
                assert all(isinstance(j, str) and isinstance(i, int) for j, i in stage)
    for b in data["builders"]:
        assert {"name", "arch", "workernames"} <= set(b)
        assert isinstance(b["workernames"], list)


# -- gating plan ------------------------------------------------------------------


def test_plan_json_of_seed_001_gives_exactly_launchpads_stages(in_fixtures, capsys):
    assert main(["plan", "seed001.yaml", "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    data = json.loads(out.out)
    assert_json_shape(data)
    (p,) = data["pipelines"]
    assert (p["name"], p["file"]) == ("seed001", "seed001.yaml")
    assert p["stages"] == SEED_001_STAGES
    assert [(b["name"], b["arch"], b["workernames"]) for b in data["builders"]] == [
        ("seed001", None, [f"gating-coordinator-{i}" for i in range(1, 21)]),
        ("seed001/build-snap/x86_64", "x86_64", []),
        ("seed001/build-snap/aarch64", "aarch64", []),
        ("seed001/test-snap#0/x86_64", "x86_64", []),
        ("seed001/test-snap#1/x86_64", "x86_64", []),
        ("seed001/test-snap#1/aarch64", "aarch64", []),
        ("seed001/test-snap#2/x86_64", "x86_64", []),
        ("seed001/test-snap#2/aarch64", "aarch64", []),
    ]


def test_installed_gating_command_prints_the_same_plan_json(in_fixtures):
    gating = Path(sys.executable).parent / "gating"
    assert gating.exists(), f"the gating console script is not installed next to {sys.executable}"
    result = subprocess.run(
        [str(gating), "plan", "seed001.yaml", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert_json_shape(data)
    assert data["pipelines"][0]["stages"] == SEED_001_STAGES


def test_plan_json_of_a_site_pins_builders_to_worker_pools(in_fixtures, capsys):
    assert main(["plan", "sites/multiarch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert_json_shape(data)
    assert [(p["name"], p["file"], p["triggers"]) for p in data["pipelines"]] == [
        ("nightly", "sites/multiarch/pipelines/nightly.yml", ["nightly"]),
        ("rdo", "sites/multiarch/pipelines/rdo.yaml", ["gate"]),
    ]
    workers = {b["name"]: b["workernames"] for b in data["builders"]}
    assert workers["rdo/rpmlint#1/x86_64"] == ["x86-el10"]
    assert workers["rdo/rpmlint#1/aarch64"] == ["arm-any"]
    assert workers["rdo/build/x86_64"] == ["x86-el9"]


def test_plan_text_shows_stages_per_lane_and_the_builder_table(in_fixtures, capsys):
    assert main(["plan", "seed001.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "pipeline seed001 (seed001.yaml; triggers: manual)",
        "  x86_64   [build-snap[0]] -> [test-snap[0], test-snap[1], test-snap[2]]",
        "  aarch64  [build-snap[0]] -> [test-snap[1], test-snap[2]]",
    ]
    assert lines[3] == ""
    assert lines[4].split() == ["builder", "arch", "workers"]
    assert lines[5].split() == ["seed001", "-", "gating-coordinator-1..20", "(master)"]
    assert lines[6].split() == ["seed001/build-snap/x86_64", "x86_64", "-"]
    assert lines[-1].split() == ["seed001/test-snap#2/aarch64", "aarch64", "-"]


def test_plan_text_names_the_triggers(in_fixtures, capsys):
    assert main(["plan", "sites/multiarch"]) == 0
    out = capsys.readouterr().out
    assert "pipeline rdo (sites/multiarch/pipelines/rdo.yaml; triggers: gate)\n" in out
    assert "  aarch64  [packstack[0], rpmlint[1]]\n" in out


def test_plan_of_a_broken_file_prints_the_errors_and_fails(in_fixtures, capsys):
    assert main(["plan", "broken/missing_job.yaml", "--json"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == expected_messages()["broken/missing_job.yaml"] + [
        "1 error found"
    ]


# -- gating check ------------------------------------------------------------------


@pytest.mark.parametrize("project", LAUNCHPAD)
def test_real_world_launchpad_yaml_passes_check(project, in_fixtures, capsys):
    assert main(["check", f"launchpad/{project}/.launchpad.yaml"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.startswith("OK: 1 pipeline(s), ")


def test_there_are_at_least_six_launchpad_yaml_fixtures():
    assert len(LAUNCHPAD) >= 6


def test_check_of_a_valid_site_says_what_it_found(in_fixtures, capsys):
    assert main(["check", "sites/multiarch"]) == 0
    assert capsys.readouterr().out == "OK: 2 pipeline(s), 7 job builder(s)\n"


@pytest.mark.parametrize("name", BROKEN)
def test_check_of_a_broken_file_prints_exactly_the_expected_errors(name, in_fixtures, capsys):
    expected = expected_messages()[f"broken/{name}"]
    assert main(["check", f"broken/{name}"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    count = f"{len(expected)} error{'s' if len(expected) != 1 else ''} found"
    assert out.err.splitlines() == expected + [count]


def test_check_in_repo_loads_a_repository_file_as_the_worker_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".gating.yaml").write_text(
        "pipeline: [unit]\njobs:\n  unit: {architectures: [x86_64, arm64], run: make check}\n"
    )
    assert main(["check", "--in-repo", ".gating.yaml"]) == 0
    assert capsys.readouterr().out == (
        "OK: in-repo pipeline .gating.yaml: 1 job(s), on x86_64, aarch64\n"
    )


def test_check_in_repo_refuses_what_only_the_site_may_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".gating.yaml").write_text(
        "trigger: gate\npipeline: [export]\njobs:\n  export: {uses: koji-export}\n"
    )
    assert main(["check", "--in-repo", ".gating.yaml"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(".gating.yaml:1:1: 'trigger': a pipeline file from a repository")
    assert err[1].startswith(".gating.yaml:4:18: job 'export': 'uses: koji-export'")
    assert err[2:] == ["2 errors found"]
    # The same file is a valid site pipeline.
    assert main(["check", ".gating.yaml"]) == 0


def test_every_broken_file_has_expected_messages():
    assert sorted(expected_messages()) == [f"broken/{n}" for n in BROKEN]


def test_check_reports_all_errors_of_a_file_at_once_sorted_by_line(in_fixtures, capsys):
    assert main(["check", "broken/many_errors.yaml"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "broken/many_errors.yaml:1:36: unknown key 'minutes' in trigger 'nightly'; "
        "did you mean 'minute'?",
        "broken/many_errors.yaml:5:5: stage 3 names job 'publish', which is not defined in "
        "'jobs'; did you mean 'Publish'?",
        "broken/many_errors.yaml:8:29: job 'build': unknown architecture 'ppc64'; "
        "did you mean 'ppc64le'?",
        "broken/many_errors.yaml:9:14: job 'build' 'timeout' (seconds): expected an integer of "
        "at least 1, got 0",
        "broken/many_errors.yaml:11:15: job 'build' output path '../secrets/*': must be relative "
        "to the build tree and must not contain '..'",
        "broken/many_errors.yaml:13:5: job 'test': missing required key 'architectures'",
        "broken/many_errors.yaml:14:48: job 'test' input 'target-directory': must be relative "
        "to the build tree and must not contain '..'",
        "broken/many_errors.yaml:19:5: duplicate key 'run' (first defined at line 18, column 5)",
        "broken/many_errors.yaml:20:3: job name 'Publish' must be at least two characters: "
        "lower-case ASCII letters, digits, '+', '.', '_' or '-', starting with a letter or digit",
        "9 errors found",
    ]
    numbers = [int(line.split(":")[1]) for line in lines[:-1]]
    assert numbers == sorted(numbers)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "bad_indent.yaml",
            "broken/bad_indent.yaml:6:4: YAML syntax error: expected <block end>, but found "
            "'<block mapping start>' (while parsing a block mapping that starts at line 4, "
            "column 3); check the indentation",
        ),
        (
            "wrong_types.yaml",
            "broken/wrong_types.yaml:6:20: job 'build' 'architectures': expected a string or a "
            "list of strings, got a mapping",
        ),
        (
            "wrong_types.yaml",
            "broken/wrong_types.yaml:11:7: job 'build' 'run': expected a string, got a list",
        ),
        (
            "wrong_types.yaml",
            "broken/wrong_types.yaml:5:13: job 'build' 'series': expected a string, "
            "got an integer (9)",
        ),
        (
            "unknown_key.yaml",
            "broken/unknown_key.yaml:6:5: unknown key 'enviroment' in job 'build'; "
            "did you mean 'environment'?",
        ),
        (
            "duplicate_key.yaml",
            "broken/duplicate_key.yaml:7:3: duplicate key 'build' (first defined at line 4, "
            "column 3)",
        ),
        (
            "missing_job.yaml",
            "broken/missing_job.yaml:3:12: stage 2 names job 'rpmlnt', which is not defined in "
            "'jobs'; did you mean 'rpmlint'?",
        ),
        (
            "input_later_stage.yaml",
            "broken/input_later_stage.yaml:8:17: job 'test' input names job 'build', which must "
            "run in an earlier stage",
        ),
        (
            "matrix_not_list.yaml",
            "broken/matrix_not_list.yaml:6:7: job 'test' 'matrix': expected a non-empty list of "
            "mappings, got a mapping",
        ),
        (
            "unknown_arch.yaml",
            "broken/unknown_arch.yaml:5:21: job 'build': unknown architecture 'x86-64'; "
            "did you mean 'x86_64'?",
        ),
        (
            "unknown_trigger.yaml",
            "broken/unknown_trigger.yaml:1:10: unknown trigger 'gating'; did you mean 'gate'? "
            "(known: check, compose, dist_git_commit, gate, koji_build, koji_tag, nightly)",
        ),
        (
            "empty.yaml",
            "broken/empty.yaml:1:1: empty pipeline file: expected a mapping with 'pipeline' "
            "and 'jobs'",
        ),
    ],
)
def test_check_names_each_kind_of_mistake_where_it_is(name, expected, in_fixtures, capsys):
    assert main(["check", f"broken/{name}"]) == 1
    assert expected in capsys.readouterr().err.splitlines()


def test_check_of_a_site_with_a_job_on_an_arch_without_a_pool(in_fixtures, capsys):
    assert main(["check", "sites/nopool"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "sites/nopool/pipelines/packstack.yaml:13:47: job 'packstack' (matrix entry 1) runs on "
        "architecture 'aarch64', but no worker pool has that architecture (pools: x86_64)",
        "1 error found",
    ]


def test_check_of_a_missing_path(in_fixtures, capsys):
    assert main(["check", "no/such/place"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "no/such/place:1:1: no such configuration directory or pipeline file",
        "1 error found",
    ]


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "gating" in capsys.readouterr().err


def test_parser_knows_check_plan_and_demo():
    ap = parser()
    assert ap.parse_args(["check", "x"]).path == "x"
    args = ap.parse_args(["plan", "x", "--json"])
    assert (args.path, args.json) == ("x", True)
    assert ap.parse_args(["demo"]).basedir == ".gating-demo"


# -- gating approve / dequeue: logging in -------------------------------------------

PASSWORDS = {"alice": "wonder land:1", "bob": "b0b"}  # a password may hold ' ' and ':'
ADMINS = {"alice"}
FORBIDDEN = "forbidden: you need to have role 'admins'"


class FakeMaster(http.server.BaseHTTPRequestHandler):
    """Buildbot's ``/auth/login`` (HTTP basic authentication, then a session cookie and a
    redirect to the web UI) and the gate's control API, which takes the user from the
    cookie and refuses anyone but an admin with Buildbot's authz message."""

    server: "FakeMasterServer"

    def log_message(self, *args):
        pass

    def answer(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/auth/login":
            self.answer(404, {"error": "no such page"})
            return
        user, _, password = "", "", None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        self.server.requests.append(("login", user, None))
        if PASSWORDS.get(user) != password:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="buildbot"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(302)
        self.send_header("Set-Cookie", f"TWISTED_SESSION=session-of-{user}; Path=/; HttpOnly")
        # Buildbot sends the browser to its buildbotURL: here, nowhere reachable.
        self.send_header("Location", "http://127.0.0.1:9/#/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        session = cookie["TWISTED_SESSION"].value if "TWISTED_SESSION" in cookie else ""
        user = session.removeprefix("session-of-") or None
        action = self.path.removeprefix("/plugins/gating/api/")
        self.server.requests.append((action, user, body))
        if user not in ADMINS:
            self.answer(403, {"error": FORBIDDEN})
        elif action == "approve":
            self.answer(200, {"change": f"{body['project']}~{body['change']}", "state": "queued"})
        elif action == "dequeue":
            self.answer(200, {"change": body["change"], "state": "dequeued"})
        else:
            self.answer(404, {"error": "no such page"})


class FakeMasterServer(http.server.ThreadingHTTPServer):
    requests: list


@pytest.fixture
def master(monkeypatch):
    """The fake master's URL in $GATING_URL; its requests in ``server.requests``."""
    for name in ("GATING_USER", "GATING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    server = FakeMasterServer(("127.0.0.1", 0), FakeMaster)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GATING_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_approve_logs_in_first_then_posts_with_the_session_cookie(master, monkeypatch, capsys):
    monkeypatch.setenv("GATING_PASSWORD", PASSWORDS["alice"])
    assert main(["approve", "nova-distgit", "3", "--user", "alice"]) == 0
    assert capsys.readouterr().out == "nova-distgit~3: queued\n"
    assert master.requests == [
        ("login", "alice", None),
        ("approve", "alice", {"project": "nova-distgit", "change": 3}),
    ]


def test_dequeue_takes_the_user_from_the_environment_and_the_password_from_a_file(
    master, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("GATING_USER", "alice")
    monkeypatch.setenv("GATING_PASSWORD", "not this one")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORDS["alice"] + "\n")
    argv = ["dequeue", "nova-distgit", "3", "--reason", "flaky", "--password-file"]
    assert main([*argv, str(password_file)]) == 0
    assert capsys.readouterr().out == "nova-distgit~3: dequeued\n"
    assert master.requests == [
        ("login", "alice", None),
        ("dequeue", "alice", {"change": "nova-distgit~3", "reason": "flaky"}),
    ]


def test_dequeue_without_a_reason_leaves_it_to_the_master(master, monkeypatch, capsys):
    monkeypatch.setenv("GATING_PASSWORD", PASSWORDS["alice"])
    assert main(["dequeue", "nova-distgit", "4", "--user", "alice"]) == 0
    assert master.requests[-1] == ("dequeue", "alice", {"change": "nova-distgit~4"})


def test_a_wrong_password_is_a_failed_login_and_nothing_is_posted(master, monkeypatch, capsys):
    monkeypatch.setenv("GATING_PASSWORD", "wrong-s3cret")
    assert main(["approve", "nova-distgit", "3", "--user", "alice"]) == 1
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "gating approve: login failed for alice\n")
    assert master.requests == [("login", "alice", None)]


def test_a_user_who_is_not_an_admin_gets_the_masters_refusal(master, monkeypatch, capsys):
    monkeypatch.setenv("GATING_PASSWORD", PASSWORDS["bob"])
    assert main(["dequeue", "nova-distgit", "3", "--user", "bob"]) == 1
    assert capsys.readouterr().err == f"gating dequeue: {FORBIDDEN}\n"
    assert [r[:2] for r in master.requests] == [("login", "bob"), ("dequeue", "bob")]


def test_without_a_user_the_request_is_anonymous_and_the_refusal_says_how_to_log_in(master, capsys):
    assert main(["approve", "nova-distgit", "3"]) == 1
    assert capsys.readouterr().err == (
        f"gating approve: {FORBIDDEN} (log in: --user NAME, the password in $GATING_PASSWORD "
        "or --password-file)\n"
    )
    assert master.requests == [("approve", None, {"project": "nova-distgit", "change": 3})]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--user", "alice"],
            "no password for alice: set $GATING_PASSWORD or use --password-file FILE",
        ),
        (
            ["--user", "alice", "--password-file", "/no/such/file"],
            "cannot read the password file /no/such/file: No such file or directory",
        ),
        (
            ["--password-file", "/no/such/file"],
            "--password-file needs --user NAME (or $GATING_USER)",
        ),
        (["--user", "a:b"], "'a:b' is not a user name (it contains ':')"),
    ],
)
def test_a_login_that_cannot_be_tried_sends_nothing(master, argv, message, capsys):
    assert main(["approve", "nova-distgit", "3", *argv]) == 1
    assert capsys.readouterr().err == f"gating approve: {message}\n"
    assert master.requests == []


@pytest.mark.parametrize("command", ["approve", "dequeue"])
def test_a_password_is_never_a_command_line_argument(command, capsys):
    # nor taken for an abbreviated --password-file
    with pytest.raises(SystemExit) as exc:
        main([command, "nova-distgit", "3", "--user", "alice", "--password", "pw"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --password pw" in capsys.readouterr().err


def test_an_unreachable_master_is_said_so(monkeypatch, capsys):
    monkeypatch.setenv("GATING_PASSWORD", "pw")
    url = "http://127.0.0.1:9/"  # the discard port: nothing listens there
    assert main(["approve", "nova-distgit", "3", "--user", "alice", "--url", url]) == 1
    assert capsys.readouterr().err.startswith(
        "gating approve: cannot reach the master at http://127.0.0.1:9/: "
    )


# -- gating notify: a signed change for the gating change hook ----------------------------

HOOK_SECRET = "the-hook-secret-0123456789abcdef"


class FakeHookMaster(http.server.BaseHTTPRequestHandler):
    """Buildbot's ``/change_hook/gating`` with gating.webhooks' checks: 202 and Buildbot's
    text when the change is recorded, 400 and the refusal otherwise."""

    server: "FakeMasterServer"

    def log_message(self, *args):
        pass

    def do_POST(self):
        from gating.changehooks import HookRefused, parse_change, verify

        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            if self.path != "/change_hook/gating":
                raise HookRefused(f"no dialect at {self.path}")
            verify(HOOK_SECRET, body, self.headers.get("X-Gating-Signature"))
            change = parse_change(body, {"nova-distgit": "/srv/git/nova-distgit.git"})
        except HookRefused as exc:
            code, text = 400, str(exc)
        else:
            self.server.requests.append(change)
            code, text = 202, "1 change found"
        self.send_response(code)
        self.send_header("Content-Length", str(len(text.encode())))
        self.end_headers()
        self.wfile.write(text.encode())


@pytest.fixture
def hook_master(monkeypatch):
    monkeypatch.delenv("GATING_HOOK_SECRET", raising=False)
    server = FakeMasterServer(("127.0.0.1", 0), FakeHookMaster)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GATING_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


NOTIFY = ["notify", "nova-distgit", "refs/heads/rdo-liberty", "c" * 40, "--author", "A <a@b>"]


def test_notify_signs_the_change_with_the_secret_from_the_environment(
    hook_master, monkeypatch, capsys
):
    monkeypatch.setenv("GATING_HOOK_SECRET", HOOK_SECRET)
    argv = [*NOTIFY, "--comments", "Update\n\nbody", "--file", "a.spec", "--file", "sources"]
    assert main([*argv, "--property", "pusher=alice", "--category", "push"]) == 0
    assert capsys.readouterr().out == "1 change found\n"
    assert hook_master.requests == [
        {
            "project": "nova-distgit",
            "branch": "rdo-liberty",
            "revision": "c" * 40,
            "author": "A <a@b>",
            "repository": "/srv/git/nova-distgit.git",
            "comments": "Update\n\nbody",
            "files": ["a.spec", "sources"],
            "category": "push",
            "properties": {"pusher": "alice"},
        }
    ]


def test_notify_reads_the_secret_file_as_buildbot_reads_it(hook_master, tmp_path, capsys):
    secret = tmp_path / "hook-gating"
    secret.write_text(HOOK_SECRET + "\n")
    assert main([*NOTIFY, "--secret-file", str(secret)]) == 0
    assert len(hook_master.requests) == 1


def test_notify_with_another_secret_prints_the_refusal(hook_master, monkeypatch, capsys):
    monkeypatch.setenv("GATING_HOOK_SECRET", "not-the-hook-secret-0000000000")
    assert main(NOTIFY) == 1
    err = capsys.readouterr().err
    assert err.startswith("gating notify: HTTP 400: wrong X-Gating-Signature")
    assert "not-the-hook-secret" not in err
    assert hook_master.requests == []


def test_notify_of_an_invalid_change_prints_the_masters_reasons(hook_master, monkeypatch, capsys):
    monkeypatch.setenv("GATING_HOOK_SECRET", HOOK_SECRET)
    assert main(["notify", "keystone", "main", "abc", "--author", "A"]) == 1
    assert capsys.readouterr().err == (
        "gating notify: HTTP 400: invalid change notification: 'project': 'keystone' is not a "
        "project of this master; 'revision': 'abc' is not a full commit id (40 or 64 "
        "lowercase hex digits)\n"
    )


def test_notify_needs_a_secret_and_never_takes_it_on_the_command_line(hook_master, capsys):
    assert main(NOTIFY) == 1
    assert capsys.readouterr().err == (
        "gating notify: no secret: set $GATING_HOOK_SECRET or use --secret-file FILE\n"
    )
    with pytest.raises(SystemExit):
        main([*NOTIFY, "--secret", HOOK_SECRET])  # nor an abbreviated --secret-file
    assert "unrecognized arguments: --secret" in capsys.readouterr().err
    assert hook_master.requests == []


def test_notify_to_an_unreachable_master_is_said_so(monkeypatch, capsys):
    monkeypatch.setenv("GATING_HOOK_SECRET", HOOK_SECRET)
    assert main([*NOTIFY, "--url", "http://127.0.0.1:9/"]) == 1
    assert capsys.readouterr().err.startswith(
        "gating notify: cannot reach the master at http://127.0.0.1:9/: "
    )
