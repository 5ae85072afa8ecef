#!/usr/bin/env bash
# Rebuilds the native extension in place (development loop). A lock keeps concurrent builds apart.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/imgsim-build.lock .venv/bin/python setup.py -q build_ext --inplace -j 2
