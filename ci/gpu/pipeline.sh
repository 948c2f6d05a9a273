#!/usr/bin/env bash
# Every GPU check and figure of a device session, in one unattended run (started detached by
# ci/gpu/device.sh start, so later device calls only collect its results):
#   env     versions, devices
#   serving tests/gpu/test_vllm_serving.py (vLLM + anyattn vs FLASH_ATTN / TRITON_ATTN)
#   tests   tests/core + tests/gpu on CUDA (bf16 sweep, FA3 provider, CUDA graphs)
#   bench   bench/run_all.sh (kernels: anyattn auto / triton vs FA3, vLLM Triton, cuDNN)
#   speed   bench/overhead.py, a decode subset and prefill.py (host cost and speed, same peers)
#   profile bench/overhead.py --profile (where an eager call's host time goes, cProfile)
#   splits  bench/decode.py --splits: small-batch decode at forced key-split counts vs cuDNN
#   e2e     ci/gpu/throughput.py (Llama-3-8B-shaped, anyattn vs FLASH_ATTN vs TRITON_ATTN)
#   fa4     with the FlashAttention-4 site (/tmp/fa4site, device.sh stash_fa4) alone on the path:
#           tests/gpu/test_fa4_provider.py (FA4 vs the reference, CUDA graphs) and
#           bench/spans_alibi.py (ALiBi and span prefill: anyattn auto / triton, FA4 direct)
#   sglang_env, sglang_fa3, sglang_serving, sglang_server, sglang_e2e   with SITE=sglang (the
#           SGLang 0.5.17 site): versions; tests/gpu/test_fa3_provider.py with sgl_kernel's FA3
#           (no vLLM on the path); tests/gpu/test_sglang_serving.py (SGLang + anyattn vs fa3 /
#           triton, EAGLE); tests/gpu/test_sglang_server.py (launch_server with anyattn,
#           /v1/completions equal to sglang.Engine's tokens); ci/gpu/sglang_throughput.py
#           (Llama-3-8B-shaped, anyattn vs fa3 vs triton, 3 alternating runs; at most 6 min)
# Usage: bash ci/gpu/pipeline.sh RESULTS_DIR [STAGE ...]   (default: every stage, in order)
set -uo pipefail
cd "$(dirname "$0")/../.."
R=$(realpath -m "$1"); shift
mkdir -p "$R"
if [ "${SITE:-vllm}" = sglang ]; then export PYTHONPATH=/tmp/ssite; fi
export PYTHONPATH=${PYTHONPATH:-/tmp/vsite} PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1
# The carried vLLM site has no FlashInfer; its sampler probe would import it.
export VLLM_USE_FLASHINFER_SAMPLER=0
export ANYATTN_MODELS=${ANYATTN_MODELS:-/tmp/anyattn-models}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(env serving tests bench e2e e2e_full)

run_stage() {
  case $1 in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c "import torch, triton, vllm; from anyattn.core.providers import fa3, fa4; \
print('torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, \
'fa3', fa3.source(), fa3.unavailable(torch.device('cuda')), \
'fa4', fa4.source() and fa4.source().name, fa4.unavailable(torch.device('cuda')))" ;;
    serving) ANYATTN_SERVING_OUT="$R/serving" python3 -m pytest -q -rs tests/gpu/test_vllm_serving.py ;;
    tests) python3 -m pytest -q -rs -n 8 tests/core tests/gpu --deselect tests/gpu/test_vllm_serving.py ;;
    bench) OUT="$R/bench" bash bench/run_all.sh --no-flex ;;
    speed) (cd bench && python3 overhead.py && python3 decode.py --graph \
              --shapes 1x4096,8x4096,64x4096,16x32768 && python3 prefill.py --no-flex) ;;
    profile) (cd bench && python3 overhead.py --profile) ;;
    splits) (cd bench && python3 decode.py --graph --shapes 1x1024,1x4096,8x4096,16x4096 \
              --splits 4,8,16,32,64) ;;
    e2e) python3 ci/gpu/throughput.py "$R/throughput.jsonl" ;;
    fa4) (export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages
          python3 -m pytest -q -rs -n 4 tests/gpu/test_fa4_provider.py tests/core/test_fa4_selection.py
          cd bench && python3 spans_alibi.py) ;;
    e2e_full) python3 ci/gpu/throughput.py "$R/throughput.jsonl" --backends FLASH_ATTN:FULL ;;
    sglang_env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c "import torch, triton, sglang, sgl_kernel; from anyattn.core.providers import fa3; \
print('torch', torch.__version__, 'triton', triton.__version__, 'sglang', sglang.__version__, \
'sgl_kernel', sgl_kernel.__version__, 'fa3', fa3.source(), fa3.unavailable(torch.device('cuda')))" ;;
    sglang_fa3) python3 -m pytest -q -rs tests/gpu/test_fa3_provider.py ;;
    sglang_serving) ANYATTN_SERVING_OUT="$R/sglang" python3 -m pytest -q -rs \
         tests/gpu/test_sglang_serving.py ${PYTEST_K:+-k "$PYTEST_K"} ;;
    sglang_server) ANYATTN_SERVING_OUT="$R/sglang_server" python3 -m pytest -q -rs -s \
         tests/gpu/test_sglang_server.py ;;
    sglang_e2e) python3 ci/gpu/sglang_throughput.py "$R/sglang_throughput.jsonl" ${SGLANG_E2E_ARGS:-} ;;
    *) echo "unknown stage $1"; return 2 ;;
  esac
}

for s in "${stages[@]}"; do
  echo "== $s start $(date +%T)" >> "$R/stages.log"
  run_stage "$s" > "$R/$s.log" 2>&1
  echo "== $s rc=$? end $(date +%T)" >> "$R/stages.log"
done
echo "== all done $(date +%T)" >> "$R/stages.log"
