#!/usr/bin/env bash
# The engine demo: build .venv-vllm if needed, then generate through vLLM with anyattn and
# with vLLM's own CPU_ATTN, printing the tokens and whether they match.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup_vllm.sh >/dev/null
exec .venv-vllm/bin/python -W ignore ci/demo_vllm.py
