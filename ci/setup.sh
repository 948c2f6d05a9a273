#!/usr/bin/env bash
# Create the project venv (.venv) from nothing: torch 2.13.0 CPU build, triton 3.9, pytest
# (with pytest-xdist: ci/test*.sh spread tests over two workers), and anyattn itself
# (editable). Idempotent: a second run only re-checks. The engine venvs see these packages
# through ci/share_base_venv.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==2.13.0" "triton==3.9.0" pytest pytest-xdist numpy setuptools wheel 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
  2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import torch, triton, xdist, anyattn.core; print('setup ok: torch', torch.__version__, 'triton', triton.__version__)"
