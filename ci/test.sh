#!/usr/bin/env bash
# The README's test command: installs everything from nothing, then runs every CPU test.
# Core kernels run through Triton's interpreter; engine adapters run real vLLM / SGLang engines
# in their own venvs (their scripts are called when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/core
for engine in vllm vllm_releases sglang sglang_releases; do
  if [ -f "ci/test_${engine}.sh" ]; then
    bash "ci/test_${engine}.sh"
  fi
done
