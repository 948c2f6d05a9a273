#!/usr/bin/env bash
# Every device benchmark in one go (H100: about 7 minutes). One JSON line per figure on
# stdout; Markdown tables after each script. Usage: bash bench/run_all.sh [--no-flex]
set -euo pipefail
cd "$(dirname "$0")"
python3 decode.py
python3 decode.py --q-len 4 --shapes 64x4096,16x32768
python3 decode.py --q-len 8 --shapes 64x4096,16x32768
python3 decode.py --shapes 1x1024,1x4096,8x1024,8x4096
python3 decode.py --graph --shapes 1x1024,1x4096,8x1024,8x4096,64x4096,1x131072
python3 prefill.py "$@"
python3 masks.py
python3 long_context.py
python3 varlen.py
