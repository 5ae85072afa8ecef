#!/usr/bin/env bash
# Sets everything up, test tools included (idempotent), and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh" --test
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
