"""The whole test session: the secret-leak search's HTTP recorder and its last word.

tests/support/secretscan.py searches each site the integration tests run (see
tests/integration/conftest.py, which fails the test whose site leaked, at teardown). Here:
the recorder of the HTTP answers the test process fetches is installed for the session, and
a leak found by any search fails the session even if its test's error got lost, and is
listed in the summary.
"""

from __future__ import annotations

import pytest

from tests.support import secretscan


def pytest_configure(config: pytest.Config) -> None:
    secretscan.RECORDER.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    secretscan.RECORDER.uninstall()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if secretscan.LEAKS and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
