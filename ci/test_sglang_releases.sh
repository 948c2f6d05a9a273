#!/usr/bin/env bash
# The SGLang adapter against SGLang 0.5.17's Python code (the release the lent H200 runs; its
# torch pin is 2.11), beside ci/test_sglang.sh's 0.5.23, on the CPU: registration, the adapter
# against SGLang's own backends, its CUDA-graph metadata path, EAGLE draft steps and SGLang's
# attention kit.
#
# 0.5.17's wheel (its Python files; its three small compiled helpers are not imported by these
# tests) and the pins where 0.5.17 differs from 0.5.23 in what these tests import
# (transformers 5.12.1, tokenizers 0.22.2, xgrammar 0.2.1, openai 2.6.1) sit in front of
# .venv-sglang's environment on PYTHONPATH (ci/setup_sglang_releases.sh builds that site).
# Left out: the kit's split-op extend runner (test_split_op_extend): 0.5.17 registers
# `sglang::unified_attention_with_output` for CUDA and Meta only, so it cannot run on a CPU in
# that release (0.5.23 runs it, in ci/test_sglang.sh).
# Two pytest-xdist workers (CI_WORKERS; passing -n 0 runs one process).
# Usage: bash ci/test_sglang_releases.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash ci/setup_sglang_releases.sh
VERSION=0.5.17
site=.venv-sglang-${VERSION//./}
echo "== SGLang $VERSION (Python files) on .venv-sglang's environment"
export PYTHONPATH="$ROOT/$site:$ROOT/tests/sglang:$ROOT/tests/sglang/stubs${PYTHONPATH:+:$PYTHONPATH}"
export SGLANG_USE_CPU_ENGINE=1 TRITON_INTERPRET=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv-sglang/bin/python -m pytest -q -p no:cacheprovider -n "${CI_WORKERS:-2}" \
  --dist worksteal \
  tests/sglang/test_register.py tests/sglang/test_graph.py tests/sglang/test_draft.py \
  tests/sglang/test_kit.py --deselect tests/sglang/test_kit.py::test_split_op_extend "$@"
