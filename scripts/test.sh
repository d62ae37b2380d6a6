#!/usr/bin/env bash
# Run the whole test suite: bootstrap, ruff, pytest. Extra args go to pytest.
#
# pytest runs the test modules in GATING_TEST_PROCESSES processes (pytest-xdist, default 4,
# even on 2 cores: the integration tests mostly wait for their masters, workers and servers),
# a whole module per process (--dist loadfile: its module-scoped sites stay in one process),
# in collection order (tests/integration/ first: the longest modules start first).
#   scripts/test.sh -n 0                       # serially, in this process
#   GATING_TEST_PROCESSES=2 scripts/test.sh    # two processes
#   scripts/test.sh tests/test_gate.py -x      # what pytest takes
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

summary() { printf 'test: %s\n' "$*" >&2; }

scripts/bootstrap.sh

rc=0
.venv/bin/ruff check . || rc=$?
if ((rc != 0)); then
    summary "FAILED (ruff check exited $rc)"
    exit "$rc"
fi

processes="${GATING_TEST_PROCESSES:-4}"
if ! [[ "$processes" =~ ^[0-9]+$ ]]; then
    summary "FAILED: GATING_TEST_PROCESSES must be a number of processes, got '$processes'"
    exit 2
fi

rc=0
.venv/bin/python -m pytest -p no:cacheprovider \
    -n "$processes" --dist loadfile --no-loadscope-reorder --durations=25 "$@" || rc=$?
case "$rc" in
    0) summary "PASSED (ruff ok, pytest ok)" ;;
    5) summary "FAILED: no test ran (pytest exit 5)"; exit 1 ;;
    *) summary "FAILED (pytest exited $rc)"; exit "$rc" ;;
esac
