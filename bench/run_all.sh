#!/usr/bin/env bash
# Every device benchmark in one go. One JSON line per figure on stdout; Markdown tables after
# each script. The JSON lines also go to $OUT/bench.jsonl (bench/out/ without $OUT) and
# bench/chart.py draws one PNG per bench next to it. With vLLM importable (on the H200: the
# carried 0.26 site on PYTHONPATH) FA3 and vLLM's Triton kernel join as peers; without it,
# vLLM's Triton kernel comes from .peers (bench/fetch_peers.sh).
# Usage: bash bench/run_all.sh [--no-flex]
set -euo pipefail
OUTDIR=$(realpath -m "${OUT:-$(dirname "$0")/out}")
cd "$(dirname "$0")"
mkdir -p "$OUTDIR"
JSONL=$OUTDIR/bench.jsonl
: > "$JSONL"

run() {  # python3 SCRIPT ARGS..., its JSON lines appended to $JSONL as they come
  python3 "$@" | awk -v jsonl="$JSONL" '/^\{/ { print >> jsonl; fflush(jsonl) } { print; fflush() }'
}

run decode.py --graph --shapes 1x1024,1x4096,8x1024,8x4096,64x4096,128x8192,16x32768,1x131072
run decode.py --graph --q-len 4 --shapes 64x4096,16x32768
run decode.py --graph --q-len 8 --shapes 64x4096,16x32768
run prefill.py "$@"
run varlen.py
run masks.py
run spans_alibi.py
run window.py
run overhead.py
if [ -n "${ANYATTN_BENCH_LONG:-}" ]; then run long_context.py; fi
python3 chart.py "$JSONL" --out "$OUTDIR"
