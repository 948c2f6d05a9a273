#!/usr/bin/env bash
# The site of SGLang 0.5.17 that ci/test_sglang_releases.sh runs against: 0.5.17's wheel (its
# Python files) and the pins where 0.5.17 differs from 0.5.23 in what those tests import
# (transformers 5.12.1, tokenizers 0.22.2, xgrammar 0.2.1, openai 2.6.1) in .venv-sglang-0517,
# to sit in front of .venv-sglang (ci/setup_sglang.sh) on PYTHONPATH. A finished site is
# recognised by its .complete stamp and left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash ci/setup_sglang.sh
VERSION=0.5.17
site=.venv-sglang-${VERSION//./}
if [ ! -f "$site/.complete" ]; then
  rm -rf "$site"; mkdir -p "$site"
  wheels=$(mktemp -d)
  .venv-sglang/bin/python -m pip download -q --disable-pip-version-check --no-deps \
    -d "$wheels" "sglang==$VERSION" 2>&1 | { grep -v "is ignored" || true; }
  unzip -q "$wheels"/sglang-"$VERSION"-*.whl -d "$site"
  rm -rf "$wheels"
  .venv-sglang/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$site" \
    transformers==5.12.1 tokenizers==0.22.2 xgrammar==0.2.1 openai==2.6.1 2>&1 \
    | { grep -v "is ignored" || true; }
  touch "$site/.complete"
fi
