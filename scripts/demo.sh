#!/usr/bin/env bash
# Run the demo: a master under .gating-demo/ plus workers, in the foreground,
# web UI on http://127.0.0.1:8010. Extra args go to `gating demo`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

scripts/bootstrap.sh
exec .venv/bin/gating demo "$@"
