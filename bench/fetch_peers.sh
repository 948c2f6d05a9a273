#!/usr/bin/env bash
# Fetch peer kernels into the git-ignored .peers/ (peer code is never committed).
#
# Needs PyPI (run it here, not on the device); the device run then carries .peers.
# Downloads the published vllm wheel (no dependencies), unzips only its Triton unified
# attention kernel and the helper module it includes, and writes the few import shims that
# file needs (vllm.envs, logger, platforms, triton_utils, kv_cache_interface) so it imports
# without vLLM installed. Usage: bash bench/fetch_peers.sh   (VLLM_VERSION=0.33.0 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VLLM_VERSION:-0.33.0}
PEERS=.peers
OPS=vllm/v1/attention/ops
KERNEL_FILES=("$OPS/triton_unified_attention.py" "$OPS/triton_attention_helpers.py")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps "vllm==$VERSION" -d "$tmp"
wheel=$(ls "$tmp"/vllm-"$VERSION"-*.whl)

rm -rf "$PEERS/vllm"
mkdir -p "$PEERS/$OPS"
for f in "${KERNEL_FILES[@]}"; do
  unzip -q -o "$wheel" "$f" -d "$PEERS"
done

# Import shims: only the names the two kernel files touch.
for pkg in vllm vllm/v1 vllm/v1/attention "$OPS"; do
  echo '"""Shim package for the vendored-at-fetch-time vLLM kernel (bench/fetch_peers.sh)."""' \
    > "$PEERS/$pkg/__init__.py"
done
cat > "$PEERS/vllm/envs.py" <<'EOF'
"""Shim: the one vLLM env flag the unified attention kernel reads."""
VLLM_BATCH_INVARIANT = False
EOF
cat > "$PEERS/vllm/logger.py" <<'EOF'
"""Shim: vLLM's logger factory (``debug_once`` included)."""
import logging


class _Logger(logging.LoggerAdapter):
    def debug_once(self, msg: str, *args: object) -> None:
        self.debug(msg, *args)


def init_logger(name: str) -> _Logger:
    return _Logger(logging.getLogger(name), {})
EOF
mkdir -p "$PEERS/vllm/platforms" "$PEERS/vllm/triton_utils"
cat > "$PEERS/vllm/platforms/__init__.py" <<'EOF'
"""Shim: the CUDA platform queries the unified attention launcher makes."""
import torch


class _CudaPlatform:
    @staticmethod
    def fp8_dtype() -> torch.dtype:
        return torch.float8_e4m3fn

    @staticmethod
    def is_device_capability_family(family: int) -> bool:
        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability()
        return major == family // 10  # vLLM: <major><minor> // 10 == family // 10


current_platform = _CudaPlatform()
EOF
cat > "$PEERS/vllm/triton_utils/__init__.py" <<'EOF'
"""Shim: vLLM re-exports triton and triton.language from here."""
import triton
import triton.language as tl

__all__ = ["triton", "tl"]
EOF
cat > "$PEERS/vllm/v1/kv_cache_interface.py" <<'EOF'
"""Shim: the KV-cache quantisation modes the unified attention launcher names."""
from enum import IntEnum


class KVQuantMode(IntEnum):
    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4
EOF
echo "vllm==$VERSION $(basename "$wheel"): ${KERNEL_FILES[*]}" > "$PEERS/SOURCE"
echo "fetched into $PEERS: $(cat "$PEERS/SOURCE")"
