#!/usr/bin/env bash
# The sites of the other vLLM releases ci/test_vllm_releases.sh runs against: each release's
# CUDA wheel's Python files (no compiled kernels) in .venv-vllm-<release>, marked "+cpu" so
# that vLLM picks its CPU platform, to sit in front of .venv-vllm (ci/setup_vllm.sh) on
# PYTHONPATH. A finished site is recognised by its .complete stamp and left alone.
# Usage: bash ci/setup_vllm_releases.sh   (VLLM_RELEASES="0.26.0 0.33.0")
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup_vllm.sh >/dev/null
for version in ${VLLM_RELEASES:-0.26.0 0.33.0}; do
  site=.venv-vllm-${version//./}
  if [ ! -f "$site/.complete" ]; then
    rm -rf "$site"; mkdir -p "$site"
    wheels=$(mktemp -d)
    .venv-vllm/bin/python -m pip download -q --disable-pip-version-check --no-deps \
      --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$wheels" \
      "vllm==$version" 2>&1 | { grep -v "is ignored" || true; }
    unzip -q "$wheels"/vllm-"$version"-*.whl -x '*.so' -d "$site"
    rm -rf "$wheels"
    mv "$site/vllm-$version.dist-info" "$site/vllm-$version+cpu.dist-info"
    sed -i "s/^Version: $version\$/Version: $version+cpu/" "$site/vllm-$version+cpu.dist-info/METADATA"
    touch "$site/.complete"
  fi
done
