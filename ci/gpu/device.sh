#!/usr/bin/env bash
# Device-side steps of a GPU session on the lent H200 (the README's GPU section says how the sites are built):
#   bash ci/gpu/device.sh stash FILE...      copy carried site pieces to /tmp/stash
#   bash ci/gpu/device.sh stash_fa4 FILE...  the FlashAttention-4 site's pieces (.whl/fa4) to
#                                            /tmp/fa4stash (its names clash with vLLM's)
#   bash ci/gpu/device.sh start [STAGE ...]  install the site + anyattn, start pipeline.sh detached
#                                            (SITE=sglang: the SGLang 0.5.17 site of .whl/sglang0517)
#   bash ci/gpu/device.sh rerun STAGE ...    start pipeline.sh again on an installed machine
#   bash ci/gpu/device.sh both               install both sites (vLLM's, SGLang's) + anyattn and run
#                                            both pipelines detached in lanes: VLLM_FIRST alone
#                                            (timings), then VLLM_REST beside SGLANG (serving,
#                                            tests: correctness only), then SGLANG_LAST alone
#   bash ci/gpu/device.sh collect [WAIT_S]   wait up to WAIT_S for it to finish, pack results to $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
R=/tmp/anyattn-results
case $1 in
  stash) shift; mkdir -p /tmp/stash && cp "$@" /tmp/stash/ && ls -l /tmp/stash ;;
  stash_fa4) shift; mkdir -p /tmp/fa4stash && cp "$@" /tmp/fa4stash/ && ls -l /tmp/fa4stash ;;
  start) shift
    if [ "${SITE:-vllm}" = sglang ]; then
      bash .whl/sglang0517/install.sh /tmp/stash /tmp/ssite || exit 1
      # 0.5.17's EAGLE worker imports deep_gemm (via its DSA backend) at graph capture for every
      # attention backend; the site carries none, and no dense model calls it.
      mkdir -p /tmp/ssite/deep_gemm
      printf 'def __getattr__(name):\n    raise AttributeError(f"deep_gemm stub: {name}")\n' \
        > /tmp/ssite/deep_gemm/__init__.py
    else
      bash .whl/vllm026/install.sh /tmp/stash || exit 1
    fi
    if [ -d /tmp/fa4stash ] && [ ! -d /tmp/fa4site ]; then  # stage fa4's site
      cat /tmp/fa4stash/site.tar.xz.part* | xz -dc | tar -C /tmp -xf - && mv /tmp/site /tmp/fa4site || exit 1
    fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
    ;&
  rerun) [ "$1" = rerun ] && shift
    mkdir -p "$R"; rm -f "$R/stages.log"
    setsid nohup bash ci/gpu/pipeline.sh "$R" "$@" > "$R/pipeline.out" 2>&1 < /dev/null &
    sleep 5; cat "$R/stages.log" ;;
  both)
    bash .whl/vllm026/install.sh /tmp/stash || exit 1
    bash .whl/sglang0517/install.sh /tmp/stash /tmp/ssite || exit 1
    mkdir -p /tmp/ssite/deep_gemm  # as in start (SITE=sglang)
    printf 'def __getattr__(name):\n    raise AttributeError(f"deep_gemm stub: {name}")\n' \
      > /tmp/ssite/deep_gemm/__init__.py
    if [ -d /tmp/fa4stash ] && [ ! -d /tmp/fa4site ]; then
      cat /tmp/fa4stash/site.tar.xz.part* | xz -dc | tar -C /tmp -xf - && mv /tmp/site /tmp/fa4site || exit 1
    fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
    rm -rf "$R"; mkdir -p "$R"
    P=ci/gpu/pipeline.sh last=""  # SGLANG_LAST="" runs nothing after the lanes
    [ -n "${SGLANG_LAST-sglang_e2e}" ] && \
      last="ANYATTN_MODELS=/tmp/models-sglang SITE=sglang bash $P $R/sglang ${SGLANG_LAST-sglang_e2e}"
    setsid nohup bash -c "bash $P $R/vllm ${VLLM_FIRST:-env speed}
      bash $P $R/vllm ${VLLM_REST:-serving tests fa4} &
      ANYATTN_MODELS=/tmp/models-sglang SITE=sglang bash $P $R/sglang ${SGLANG:-sglang_fa3 sglang_serving sglang_server} &
      wait
      $last
      echo '== all done' >> $R/stages.log" > "$R/lanes.out" 2>&1 < /dev/null &
    sleep 5; cat "$R"/*/stages.log ;;
  collect)
    deadline=$(( $(date +%s) + ${2:-0} ))
    while ! grep -q "all done" "$R/stages.log" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
      sleep 10
    done
    cat "$R"/stages.log "$R"/*/stages.log 2>/dev/null
    tar -C /tmp -czf "$OUT/results.tgz" anyattn-results
    for f in "$R"/*.log "$R"/*/*.log; do
      [ -f "$f" ] && echo "--- ${f#$R/} (tail)" && tail -n 12 "$f"
    done | tail -c 9000 ;;
esac
