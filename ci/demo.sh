#!/usr/bin/env bash
# The README's main-job command: install from nothing, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh >/dev/null
exec .venv/bin/python ci/demo_core.py
