#!/usr/bin/env bash
# Usage: ci/share_base_venv.sh VENV
# Lets an engine venv see the project venv's packages (torch, triton, pytest, numpy) through a
# .pth file, so torch and triton (1.8 GB installed) are on disk once, not once per venv; CI's
# disk ran out with three copies. What the engine installs itself lands in its own
# site-packages, which comes first on sys.path, and pip never uninstalls from outside its venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$1"
# ci/test.sh has built .venv already; standalone runs (ci/test_vllm.sh, ci/demo_vllm.sh) may not.
"$ROOT/.venv/bin/python" -c "import torch, triton" 2>/dev/null \
  || VENV="$ROOT/.venv" bash "$ROOT/ci/setup.sh" >/dev/null
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
base_site=$("$ROOT/.venv/bin/python" -c "$purelib")
venv_site=$("$VENV/bin/python" -c "$purelib")
echo "$base_site" >"$venv_site/anyattn-base-venv.pth"
