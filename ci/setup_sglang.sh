#!/usr/bin/env bash
# Build .venv-sglang: SGLang 0.5.23 on a CPU machine, with anyattn installed editable.
# Idempotent: a finished environment is recognised by a stamp and left alone.
# SGLang pins a CUDA torch, so it is installed with --no-deps and its pure-Python
# dependencies come from ci/requirements-sglang-cpu.txt, constrained to the CPU torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SGLANG_VENV:-$ROOT/.venv-sglang}"
TORCH_VERSION=2.13.0
SGLANG_VERSION=0.5.23
REQS="$ROOT/ci/requirements-sglang-cpu.txt"
STAMP="$VENV/.anyattn-setup-$(cat "$REQS" "$0" | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" ]]; then
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
bash "$ROOT/ci/share_base_venv.sh" "$VENV"  # torch 2.13.0 + triton 3.9.0 come from .venv
PIP=("$VENV/bin/python" -m pip install --quiet)
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

"${PIP[@]}" --no-deps "sglang==$SGLANG_VERSION"
"${PIP[@]}" -c "$CONSTRAINTS" -r "$REQS" pytest
"${PIP[@]}" --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import torch, sglang, importlib.metadata as md
assert not torch.version.cuda, f"a CUDA torch slipped in: {torch.__version__}"
print("sglang", md.version("sglang"), "torch", torch.__version__)
PY
touch "$STAMP"
