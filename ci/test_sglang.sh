#!/usr/bin/env bash
# SGLang adapter tests on the CPU: builds .venv-sglang if needed (ci/setup_sglang.sh), then
# runs tests/sglang (backend level against SGLang's torch_native / triton backends, the
# CUDA-graph metadata path, and sglang.Engine / launch_server with a tiny random Llama).
# Two pytest-xdist workers (CI_WORKERS; passing -n 0 runs one process); --dist loadfile keeps
# a file on one worker, so test_sglang_engine.py's module-wide torch_native engine run happens once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/ci/setup_sglang.sh"
cd "$ROOT"
# Import stubs (torchvision, sgl_kernel) exist only in the test environment.
export PYTHONPATH="$ROOT/tests/sglang:$ROOT/tests/sglang/stubs${PYTHONPATH:+:$PYTHONPATH}"
export SGLANG_USE_CPU_ENGINE=1 TRITON_INTERPRET=1
# Two cores: keep torch from oversubscribing them inside the engine's processes.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${SGLANG_VENV:-$ROOT/.venv-sglang}/bin/python" -m pytest -q -p no:cacheprovider \
    -n "${CI_WORKERS:-2}" --dist loadfile tests/sglang "$@"
