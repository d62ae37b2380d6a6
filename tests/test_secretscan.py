"""tests/support/secretscan.py: the secret-leak search finds a planted secret in each place
it covers (a log, a compressed log chunk of a real Buildbot database, a property, an HTTP
answer), in each encoding, and nothing in a clean site."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from buildbot.db.compression import GZipCompressor
from buildbot.db.model import Model

from tests.support import secretscan
from tests.support.secretscan import (
    Report,
    ResponseRecorder,
    SecretLeak,
    SecretRegistry,
    check_site,
    encodings,
    fail_on,
)

WORKER_PW = "Zq3-worker-password-xYz"  # as LocalSite writes it: secrets/worker-w1
OTHER_PW = "other-worker-pw-4711"
ADMIN_PW = "s3cret admin/pw&x"  # a space, a slash, an ampersand: URL-encoding differs


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A LocalSite layout: its secrets, a worker's buildbot.tac, a clean log and state file."""
    base = tmp_path / "site"
    (base / "config").mkdir(parents=True)
    (base / "config" / "gating.yaml").write_text(
        "secrets-dir: secrets\nwww-port: 8010\nweb: {auth: {users: {admin: admin-password}}}\n"
    )
    secrets = base / "master" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "worker-w1").write_text(WORKER_PW)
    (secrets / "worker-w2").write_text(OTHER_PW)
    (secrets / "admin-password").write_text(ADMIN_PW + "\n")
    (base / "master" / "twistd.log").write_text("2026-01-01 master started\n" * 50)
    (base / "master" / "gate-events.jsonl").write_text('{"event": "enqueued"}\n')
    for name, password in (("w1", WORKER_PW), ("w2", OTHER_PW)):
        wdir = base / "workers" / name
        wdir.mkdir(parents=True)
        (wdir / "buildbot.tac").write_text(
            f"buildmaster_host = '127.0.0.1'\nworkername = '{name}'\npasswd = '{password}'\n"
        )
    return base


def search(site: Path, responses=()) -> Report:
    return check_site(site, SecretRegistry(), responses)


def only_finding(report: Report) -> secretscan.Finding:
    assert not report.problems
    assert len(report.findings) == 1, [str(f) for f in report.findings]
    return report.findings[0]


def test_a_clean_site_is_clean_and_its_secrets_dir_and_worker_tacs_are_not_leaks(site):
    report = search(site)
    assert report.clean, report.message("site")
    assert report.files == 5  # config, twistd.log, gate-events.jsonl, two buildbot.tac
    assert sorted(a.split(" in ")[1].split(":")[0] for a in report.accepted) == [
        f"{site}/workers/w1/buildbot.tac",
        f"{site}/workers/w2/buildbot.tac",
    ]
    assert any("secrets" in e for e in report.excluded)


def test_a_worker_password_in_twistd_log_is_found_with_label_file_and_offset(site):
    log = site / "master" / "twistd.log"
    before = log.read_bytes()
    log.write_bytes(before + f"connecting with {WORKER_PW}\n".encode())
    finding = only_finding(search(site))
    assert finding.label == "secrets/worker-w1"
    assert finding.encoding == "raw"
    assert finding.where == f"{site}/master/twistd.log"
    assert finding.offset == len(before) + len("connecting with ")
    assert WORKER_PW not in str(finding)  # the message names the secret, never shows it


def test_another_workers_password_in_a_buildbot_tac_is_a_leak(site):
    tac = site / "workers" / "w1" / "buildbot.tac"
    tac.write_text(tac.read_text() + f"# {OTHER_PW}\n")
    finding = only_finding(search(site))
    assert (finding.label, finding.where) == ("secrets/worker-w2", f"{tac}")


def test_htpasswd_passwords_are_searched_and_their_file_is_accepted(site):
    conf = site / "config" / "gating.yaml"
    conf.write_text(conf.read_text().replace("{users: {admin: admin-password}}", "{htpasswd: web}"))
    (site / "config" / "web").write_text("# users\nbob:bobs-htpasswd-pw\n")
    report = search(site)
    assert report.clean
    assert any(
        a.endswith("the web login's htpasswd file (web: auth: htpasswd)") for a in report.accepted
    )
    (site / "master" / "twistd.log").write_text("login bob:bobs-htpasswd-pw\n")
    finding = only_finding(search(site))
    assert (finding.label, finding.offset) == ("web user bob password (htpasswd)", 10)


def test_a_url_encoded_password_is_found(site):
    url = f"GET /auth/login?user=admin&password={quote(ADMIN_PW, safe='')} 200\n"
    (site / "master" / "http.log").write_text(url)
    finding = only_finding(search(site))
    assert (finding.label, finding.encoding) == ("secrets/admin-password", "URL-encoded")
    assert finding.offset == url.index("password=") + len("password=")


def test_base64_of_user_and_password_in_a_copied_authorization_header_is_found(site):
    for user in ("admin", "ab", "a", "gating-bot"):  # every alignment of the password
        token = base64.b64encode(f"{user}:{ADMIN_PW}".encode()).decode()
        (site / "master" / "request.txt").write_text(f"Authorization: Basic {token}\r\n")
        finding = only_finding(search(site))
        assert finding.label == "secrets/admin-password"
        assert finding.encoding == "base64"


def test_a_gzip_file_is_searched_decompressed(site):
    with gzip.open(site / "master" / "twistd.log.1.gz", "wt") as fh:
        fh.write(f"old log line {WORKER_PW}\n")
    finding = only_finding(search(site))
    assert finding.where.endswith("twistd.log.1.gz (decompressed)")


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database with Buildbot's real schema (made by its SQLAlchemy model)."""
    path = tmp_path_factory.mktemp("buildbot-db") / "state.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    Model.metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture
def database(site: Path, empty_database: Path) -> Iterator[sa.engine.Engine]:
    """The site's master database: Buildbot's schema, no rows."""
    path = site / "master" / "state.sqlite"
    shutil.copy(empty_database, path)
    engine = sa.create_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def test_a_secret_in_a_gzip_compressed_logchunk_of_a_buildbot_database_is_found(site, database):
    engine = database
    line = f"+ curl -u admin:{ADMIN_PW} http://127.0.0.1/\n".encode()
    compressed = GZipCompressor.dumps(b"first line\n" + line)
    assert ADMIN_PW.encode() not in compressed  # only a decoding search sees it
    with engine.begin() as conn:
        conn.execute(
            Model.logchunks.insert().values(
                logid=7, first_line=0, last_line=1, content=compressed, compressed=1
            )
        )
    engine.dispose()
    finding = only_finding(search(site))
    assert finding.label == "secrets/admin-password"
    assert "table logchunks.content (logid 7, lines 0-1, decoded, compressed=1)" in finding.where
    assert finding.offset == len(b"first line\n+ curl -u admin:")
    # The same through a database URL (as a multi-master site's PostgreSQL is read).
    url = f"sqlite:///{site / 'master' / 'state.sqlite'}"
    finding = only_finding(secretscan.check_site_database(site, SecretRegistry(), url))
    assert finding.label == "secrets/admin-password"
    assert finding.where == (
        f"{site}'s database {url} table logchunks.content (logid 7, lines 0-1, decoded, "
        "compressed=1)"
    )


def test_a_log_chunk_it_cannot_decode_fails_the_search(site, database):
    engine = database
    with engine.begin() as conn:
        conn.execute(
            Model.logchunks.insert().values(
                logid=1, first_line=0, last_line=0, content=b"\x00\x01", compressed=99
            )
        )
    engine.dispose()
    report = search(site)
    assert not report.clean
    assert not report.findings
    assert "compressed with an unknown codec (99)" in report.problems[0]


def test_secrets_in_build_and_buildset_properties_are_found(site, database):
    engine = database
    tricky = 'koji "pass" \\ word'  # JSON escapes its quotes and backslash
    (site / "master" / "secrets" / "koji-password").write_text(tricky)
    with engine.begin() as conn:
        conn.execute(
            Model.build_properties.insert().values(
                buildid=1, name="koji_password", value=json.dumps(tricky), source="test"
            )
        )
        conn.execute(
            Model.buildset_properties.insert().values(
                buildsetid=2, property_name="worker", property_value=json.dumps([OTHER_PW, "x"])
            )
        )
    engine.dispose()
    report = search(site)
    rows = {
        (f.label, f.encoding, f.where.split(" table ")[-1])
        for f in report.findings
        if " table " in f.where
    }
    assert rows == {
        ("secrets/koji-password", "JSON-escaped", "build_properties.value (rowid 1)"),
        ("secrets/worker-w2", "raw", "buildset_properties.property_value (rowid 1)"),
    }
    # The raw database file holds the (uncompressed) JSON too.
    assert {f.label for f in report.findings if f.where.endswith("state.sqlite")} == {
        "secrets/koji-password",
        "secrets/worker-w2",
    }


def test_a_secret_across_a_chunk_boundary_is_found_once(site, monkeypatch):
    monkeypatch.setattr(secretscan, "CHUNK", 64)
    data = b"x" * 60 + WORKER_PW.encode() + b"y" * 200 + WORKER_PW.encode()
    (site / "master" / "big.log").write_bytes(data)
    finding = only_finding(search(site))
    assert (finding.offset, finding.count) == (60, 2)


def test_short_values_are_not_searched_and_are_listed(site):
    (site / "master" / "secrets" / "pin").write_text("12345\n")
    (site / "master" / "twistd.log").write_text("pin 12345\n")
    report = search(site)
    assert report.clean
    assert report.skipped == {"secrets/pin": "5 characters, fewer than 6"}


def test_encodings_cover_url_json_and_every_base64_alignment():
    forms = dict((data, name) for name, data in encodings("a b/c\"d'e", user="u"))
    assert forms[b"a%20b%2Fc%22d%27e"] == "URL-encoded"
    assert forms[b"a%20b%2fc%22d%27e"] == "URL-encoded"
    assert forms[b"a+b%2Fc%22d%27e"] == "URL-encoded"
    assert forms[b"a b/c\\\"d'e"] == "JSON-escaped"
    assert forms[base64.b64encode(b"u:a b/c\"d'e")] == "base64 of user:password"
    cores = [data for data, name in forms.items() if name == "base64"]
    for prefix in ("", "x", "xy", "xyz:"):
        encoded = base64.b64encode(f"{prefix}a b/c\"d'e!".encode())
        assert any(core in encoded for core in cores), prefix


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"path": self.path, "leak": WORKER_PW}).encode()
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def recorder() -> Iterator[ResponseRecorder]:
    rec = ResponseRecorder()
    rec.install()
    yield rec
    rec.uninstall()


def test_http_answers_read_by_the_tests_are_recorded_and_searched(site, server, recorder):
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(url + "/before", timeout=10) as resp:
        resp.read()  # no window open: not recorded
    window = recorder.open_window()
    for _ in range(3):  # identical answers are kept once
        with urllib.request.urlopen(url + "/api/v2/workers", timeout=10) as resp:
            json.load(resp)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/missing", timeout=10)
    err.value.read()
    err.value.close()
    responses = recorder.close_window(window)
    assert [(r.method, r.url, r.status) for r in responses] == [
        ("GET", "/api/v2/workers", 200),
        ("GET", "/missing", 404),
    ]
    report = search(site, responses)
    assert report.responses == 2
    assert sorted(f.where for f in report.findings) == [
        f"the HTTP answer to GET {url}/api/v2/workers (200), body",
        f"the HTTP answer to GET {url}/missing (404), body",
    ]
    assert all(f.label == "secrets/worker-w1" for f in report.findings)
    assert recorder.close_window(recorder.open_window()) == []  # nothing kept after


def test_the_session_recorder_is_installed():
    assert secretscan.RECORDER.installed


def test_a_leak_raises_naming_the_secret_never_showing_it(site, monkeypatch):
    for name in ("LEAKS", "SEARCHES", "SKIPPED"):
        monkeypatch.setattr(secretscan, name, type(getattr(secretscan, name))())
    (site / "master" / "twistd.log").write_text(f"password={WORKER_PW}\n")
    with pytest.raises(SecretLeak) as err:
        fail_on(search(site), "the test site")
    message = str(err.value)
    assert "secrets/worker-w1" in message and "twistd.log at byte 9" in message
    assert WORKER_PW not in message
    assert secretscan.LEAKS == [message]
    fail_on(search(site.parent / "nothing-here"), "an empty directory")  # clean: no raise


LEAKY_TEST = """
from tests.support import secretscan


def test_swallows_the_leak():
    try:
        secretscan.fail_on(secretscan.check_site({site!r}, secretscan.SecretRegistry()), "a site")
    except AssertionError:
        pass
"""


def test_a_leak_fails_the_session_even_if_its_error_is_swallowed(site, tmp_path):
    """Run as the suite runs (tests/conftest.py's hooks), in a child pytest."""
    (site / "master" / "twistd.log").write_text(f"password={WORKER_PW}\n")
    tests = tmp_path / "leaky"
    tests.mkdir()
    (tests / "test_leaky.py").write_text(LEAKY_TEST.format(site=str(site)))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
        + ["-q", str(tests)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout
    assert "1 passed" in proc.stdout, proc.stdout
    assert "secret-leak search: LEAKS" in proc.stdout
    assert "LEAK: secret 'secrets/worker-w1' (raw) in " in proc.stdout
    assert WORKER_PW not in proc.stdout + proc.stderr


PLUMBING_TESTS = """
import http.server
import threading

from tests.integration.conftest import SITES_CREATED, Site
from tests.support import secretscan

PASSWORD = {password!r}


def layout(base, leak_in_log):
    (base / "config").mkdir(parents=True)
    (base / "master" / "secrets").mkdir(parents=True)
    (base / "master" / "buildbot.tac").write_text("")
    (base / "master" / "secrets" / "worker-w1").write_text(PASSWORD)
    (base / "master" / "twistd.log").write_text(PASSWORD if leak_in_log else "clean")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('{{"workers": [{{"name": "w1", "password": "%s"}}]}}' % PASSWORD).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_site_whose_api_answer_leaks(tmp_path_factory):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    site = Site(tmp_path_factory.mktemp("fake"), www_port=httpd.server_address[1])
    layout(site.basedir, leak_in_log=False)
    SITES_CREATED.append(site)  # as Site.create does
    try:
        assert site.api("workers")["workers"][0]["name"] == "w1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_site_in_tmp_path_whose_log_leaks(tmp_path):
    layout(tmp_path / "demo", leak_in_log=True)
"""


def test_the_integration_fixtures_search_each_site_and_fail_at_teardown(tmp_path):
    """tests/integration/conftest.py's searches, with sites that run no master: a module's
    Site (its API answer leaks) and a site in a test's tmp_path (its log leaks)."""
    tests = tmp_path / "plumbing"
    tests.mkdir()
    (tests / "test_plumbing.py").write_text(PLUMBING_TESTS.format(password=WORKER_PW))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "tests.integration.conftest",
            "-p",
            "no:cacheprovider",
            "-q",
            str(tests),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    # Both teardowns (the test's, the module's) fail after the module's last test.
    assert "2 passed, 1 error" in out, out
    assert WORKER_PW not in out + proc.stderr
    api = re.search(
        r"LEAK: secret 'secrets/worker-w1' \(raw\) in the HTTP answer to GET (\S+)", out
    )
    assert api and api.group(1).endswith("/api/v2/workers"), out
    assert re.search(r"LEAK: secret 'secrets/worker-w1' \(raw\) in \S+/demo/master/twistd.log", out)
    assert "ERROR at teardown of test_a_site_in_tmp_path_whose_log_leaks" in out
    assert "secret-leak search: LEAKS" in out


def test_rows_still_in_the_write_ahead_log_are_searched(site, database):
    path = site / "master" / "state.sqlite"
    database.dispose()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute(
        "INSERT INTO build_properties (buildid, name, value, source) VALUES (3, 'p', ?, 't')",
        (json.dumps(OTHER_PW),),
    )
    con.commit()
    try:
        assert path.with_name("state.sqlite-wal").stat().st_size > 0
        report = search(site)
    finally:
        con.close()
    places = sorted(f.where.removeprefix(str(site)) for f in report.findings)
    assert places == [
        "/master/state.sqlite table build_properties.value (rowid 1)",
        "/master/state.sqlite-wal",
    ]


def test_a_secret_committed_to_a_git_repository_is_found(site):
    repo = site / "git" / "nova.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    blob = subprocess.run(
        ["git", "--git-dir", str(repo), "hash-object", "-w", "--stdin"],
        input=f"token: {OTHER_PW}\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    finding = only_finding(search(site))
    assert finding.where == f"{repo}/objects/{blob[:2]}/{blob[2:]} (inflated git object)"
    assert finding.label == "secrets/worker-w2"


def test_fetch_api_gets_each_path_and_the_recorder_keeps_the_answers(site, server, recorder):
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    window = recorder.open_window()
    assert secretscan.fetch_api(url, ["api/v2/builds?property=*", "missing"]) == 2
    responses = recorder.close_window(window)
    assert [(r.url, r.status) for r in responses] == [
        ("/api/v2/builds?property=*", 200),
        ("/missing", 404),
    ]
    assert len(search(site, responses).findings) == 2
