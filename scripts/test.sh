#!/usr/bin/env bash
# Run the whole test suite: bootstrap, ruff, pytest. Extra args go to pytest.
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

rc=0
.venv/bin/python -m pytest -p no:cacheprovider "$@" || rc=$?
case "$rc" in
    0) summary "PASSED (ruff ok, pytest ok)" ;;
    5) summary "FAILED: no test ran (pytest exit 5)"; exit 1 ;;
    *) summary "FAILED (pytest exited $rc)"; exit "$rc" ;;
esac
