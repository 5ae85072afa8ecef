#!/usr/bin/env bash
# Sets everything up (idempotent) and deduplicates a folder: `scripts/dedup.sh [DIR ...]`.
# With no folder, it builds and uses a small demo folder of real photos with edited copies.
# Report only: no file is moved or deleted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/setup.sh"
if [ $# -eq 0 ]; then
  (cd "$ROOT" && .venv/bin/python scripts/make_demo.py .cache/photos .cache/demo)
  set -- "$ROOT/.cache/demo"
fi
exec "$ROOT/.venv/bin/imgsim" dedup "$@"
