"""Integration tests: a real master and real workers over PB, as processes on loopback."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gating.localsite import LocalSite, free_port
from tests.support.rabbitmq import RabbitMQServer

SITES = Path(__file__).parent / "sites"

SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED = range(7)


class Site(LocalSite):
    """LocalSite with the REST queries the tests share."""

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
            (site.master_dir / "secrets").mkdir(mode=0o700, parents=True, exist_ok=True)
            path = site.master_dir / "secrets" / secret
            path.write_text(value + "\n")
            path.chmod(0o600)
        site.create()
        if start:
            site.start()
        started.append(site)
        return site

    yield make
    for site in started:
        site.stop()


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """A private RabbitMQ broker on loopback (``.amqp_url``; publish with
    tests.support.rabbitmq.publish)."""
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server
