#!/usr/bin/env bash
# The README's main-job command, from nothing: (1) the anyattn kernels on a generated paged
# batch against the reference, (2) a tiny random Llama generated through a real vLLM engine
# with anyattn, next to vLLM's own CPU_ATTN backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh >/dev/null
.venv/bin/python ci/demo_core.py
bash ci/demo_vllm.sh
