"""Integration tests: a real master and real workers over PB, as processes on loopback.

Every site a test runs is searched for leaked secrets when its module ends (after its
fixtures stopped it, before pytest's temporary directory goes): its files, its database and
the HTTP answers the tests fetched from it (tests/support/secretscan.py). A leak fails the
module's last test at teardown, and the session.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gating.localsite import LocalSite, free_port
from tests.support import secretscan
from tests.support.rabbitmq import RabbitMQServer

SITES = Path(__file__).parent / "sites"

SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)


# Every Site created in this session, in order: the leak search of a module takes those
# created since the module began.
SITES_CREATED: list[Site] = []


class Site(LocalSite):
    """LocalSite with the REST queries the tests share."""

    def create(self, config_source: Path | None = None) -> None:
        if not any(site is self for site in SITES_CREATED):
            SITES_CREATED.append(self)
        super().create(config_source)

    def stop(self) -> None:
        # The leak search reads the API's answers too: those the tests fetched, and these.
        if self.master_pid() is not None:
            secretscan.fetch_api(self.url)
        super().stop()

    def builder_ids(self) -> dict[str, int]:
        return {b["name"]: b["builderid"] for b in self.api("builders")["builders"]}

    def builds_of(self, builder: str) -> list[dict[str, Any]]:
        builderid = self.builder_ids()[builder]
        return self.api(f"builders/{builderid}/builds")["builds"]

    def wait_for_build(self, builder: str, number: int = 1, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for build in self.builds_of(builder):
                if build["number"] == number and build["complete"]:
                    return build
            time.sleep(0.5)
        raise TimeoutError(f"{builder} build {number} did not finish within {timeout}s")

    def properties(self, buildid: int) -> dict[str, Any]:
        props = self.api(f"builds/{buildid}/properties")["properties"][0]
        return {k: v[0] for k, v in props.items()}

    def step_log(self, buildid: int, step: str, log: str = "stdio") -> str:
        steps = self.api(f"builds/{buildid}/steps")["steps"]
        stepid = next(s["stepid"] for s in steps if s["name"] == step)
        chunks = self.api(f"steps/{stepid}/logs/{log}/contents")["logchunks"]
        lines = "".join(c["content"] for c in chunks).splitlines()
        return "\n".join(line[1:] for line in lines)


@pytest.fixture(scope="module")
def make_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[Site] = []

    def make(
        name: str,
        *,
        source: Path | None = None,
        start: bool = True,
        secrets: dict[str, str] | None = None,
    ) -> Site:
        base = tmp_path_factory.mktemp(name)
        shutil.copytree(source or SITES / name, base / "config")
        site = Site(base, www_port=free_port(), pb_port=free_port())
        # Secrets the configuration needs to load (never in the site's files in git).
        for secret, value in (secrets or {}).items():
            secretscan.REGISTRY.add(f"make_site({name!r}) secret {secret}", value)
            (site.master_dir / "secrets").mkdir(mode=0o700, parents=True, exist_ok=True)
            path = site.master_dir / "secrets" / secret
            path.write_text(value + "\n")
            path.chmod(0o600)
        site.create()
        # Stopped at the module's end even if it fails to start (a master that took too
        # long to answer, or its workers, would be left running otherwise).
        started.append(site)
        if start:
            site.start()
        return site

    yield make
    stop_all(started)


def stop_all(sites: list[Site]) -> None:
    """Stop the sites at once: each waits for its daemons to exit (seconds each, a minute or
    two for a module's half-dozen sites in a row). All are stopped even if one fails; its
    error is raised then."""
    if not sites:
        return
    with ThreadPoolExecutor(max_workers=len(sites), thread_name_prefix="site-stop") as pool:
        futures = [pool.submit(site.stop) for site in sites]
    for future in futures:
        future.result()


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """A private RabbitMQ broker on loopback (``.amqp_url``; publish with
    tests.support.rabbitmq.publish)."""
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        secretscan.REGISTRY.add("RabbitMQ test broker password", server.password, user=server.user)
        yield server


def _register_test_server_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """The passwords of the koji test hub's users and of the Gerrit test server's account
    go to the leak search's registry as the tests set them."""
    try:
        from tests.support.koji_hub import KojiTestHub
    except ImportError:  # no koji library: no koji test hub either
        KojiTestHub = None  # noqa: N806
    if KojiTestHub is not None:
        add_user = KojiTestHub.add_user

        def add_user_registered(self, name, password=None, perms=()):
            if password:
                secretscan.REGISTRY.add(f"koji test hub user {name} password", password, user=name)
            return add_user(self, name, password, perms)

        monkeypatch.setattr(KojiTestHub, "add_user", add_user_registered)
    from tests.support.gerrit_server import GerritTestServer

    init = GerritTestServer.__init__

    def init_registered(self, *args, **kwargs):
        init(self, *args, **kwargs)
        secretscan.REGISTRY.add("Gerrit test server password", self.password, user=self.user)

    monkeypatch.setattr(GerritTestServer, "__init__", init_registered)


# The searches of sites' databases on a PostgreSQL test server, made before the server
# stops (by then the sites are stopped), by site base directory: the module's search
# reports them with the site's files.
DATABASE_REPORTS: dict[Path, secretscan.Report] = {}


def _search_databases_before_postgres_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.postgres import PostgresServer

    stop = PostgresServer.stop

    def stop_searched(self):
        if self.root is not None:
            for site in SITES_CREATED:
                if secretscan.site_database(site.basedir) == self.url:
                    DATABASE_REPORTS[site.basedir] = secretscan.check_site_database(
                        site.basedir, secretscan.REGISTRY, self.url
                    )
        return stop(self)

    monkeypatch.setattr(PostgresServer, "stop", stop_searched)


@pytest.fixture(scope="session", autouse=True)
def secret_registry() -> Iterator[secretscan.SecretRegistry]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _register_test_server_passwords(monkeypatch)
        _search_databases_before_postgres_stops(monkeypatch)
        yield secretscan.REGISTRY


def _search(sites: list[tuple[Path, int | None]], responses: list[Any], what: str) -> None:
    report = secretscan.Report()
    for basedir, port in sites:
        mine = [r for r in responses if port is not None and r.port == port]
        report.extend(secretscan.check_site(basedir, secretscan.REGISTRY, mine))
        if secretscan.site_database(basedir) is not None:
            database = DATABASE_REPORTS.pop(basedir, None)
            if database is None:
                database = secretscan.Report()
                database.problems.append(f"{basedir}: its database server's data was not searched")
            report.extend(database)
    secretscan.fail_on(report, what)


@pytest.fixture(scope="module", autouse=True)
def secret_leak_search(request: pytest.FixtureRequest, secret_registry: Any) -> Iterator[None]:
    """After the module's fixtures stopped its sites: the leak search of every Site the
    module created (files, database, the answers of its web port)."""
    window = secretscan.RECORDER.open_window()
    first = len(SITES_CREATED)
    try:
        yield
    finally:
        responses = secretscan.RECORDER.close_window(window)
        sites = [(site.basedir, site.www_port) for site in SITES_CREATED[first:]]
        if sites:
            _search(sites, responses, f"the sites of {request.node.nodeid}")


@pytest.fixture(autouse=True)
def secret_leak_search_tmp_path(
    request: pytest.FixtureRequest, secret_registry: Any, tmp_path: Path
) -> Iterator[None]:
    """A site a test made in its own tmp_path without Site (the demo, by scripts/demo.sh):
    searched when the test's fixtures stopped it (and before tmp_path's teardown)."""
    window = secretscan.RECORDER.open_window()
    try:
        yield
    finally:
        responses = secretscan.RECORDER.close_window(window)
        known = {site.basedir.resolve() for site in SITES_CREATED}
        found = [p for p in secretscan.find_sites(tmp_path) if p.resolve() not in known]
        if found:
            sites = [(p, secretscan.site_www_port(p)) for p in found]
            _search(sites, responses, f"the sites of {request.node.nodeid}")
