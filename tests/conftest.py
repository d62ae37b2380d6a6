"""The whole test session: the secret-leak search's HTTP recorder and its last word.

tests/support/secretscan.py searches each site the integration tests run (see
tests/integration/conftest.py, which fails the test whose site leaked, at teardown). Here:
the recorder of the HTTP answers the test process fetches is installed for the session, and
a leak found by any search fails the session even if its test's error got lost, and is
listed in the summary.

Under pytest-xdist (scripts/test.sh runs test modules in several processes) the searches run
in the worker processes: each worker sends what its searches found to the controller when it
finishes, and the controller's summary and exit status carry them as a single process would.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.support import secretscan

# How long `buildbot start` waits for a master to say it runs before it fails (and leaves it
# running): Buildbot's default, 10 s, is less than a master can take on a loaded machine.
# For the tests' own `buildbot start`s (gating.localsite passes its own timeout).
BUILDBOT_START_TIMEOUT = "120"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("START_TIMEOUT", BUILDBOT_START_TIMEOUT)
    secretscan.RECORDER.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    secretscan.RECORDER.uninstall()


# The key of the leak search's results in an xdist worker's output to the controller.
WORKER_OUTPUT_KEY = "gating_secretscan"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports and decides
        workeroutput[WORKER_OUTPUT_KEY] = {
            "searches": list(secretscan.SEARCHES),
            "leaks": list(secretscan.LEAKS),
            "skipped": dict(secretscan.SKIPPED),
        }
    if secretscan.LEAKS and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist, in the controller: a worker finished; keep its searches' results (a
    worker that crashed sends none, and xdist fails the run for it)."""
    found = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
    if found:
        secretscan.SEARCHES.extend(found["searches"])
        secretscan.LEAKS.extend(found["leaks"])
        secretscan.SKIPPED.update(found["skipped"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if secretscan.SEARCHES:
        terminalreporter.section("secret-leak search")
        for line in secretscan.SEARCHES:
            terminalreporter.line(line)
    if secretscan.LEAKS:
        terminalreporter.section("secret-leak search: LEAKS", red=True, bold=True)
        for message in secretscan.LEAKS:
            terminalreporter.line(message)
    if secretscan.SKIPPED:
        terminalreporter.section("secret-leak search: values too short to search")
        for label, why in sorted(secretscan.SKIPPED.items()):
            terminalreporter.line(f"{label}: {why}")
