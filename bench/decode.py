"""Decode bandwidth (TB/s of K+V read): anyattn on a paged cache vs peers, one run.

GQA 32/8, head dim 128, bf16, page 16 in random order; one query per sequence (or
``--q-len`` > 1 for speculative verify). anyattn ``auto`` (its plan's provider) and
``triton`` (its split-KV kernel); peers on the same paged cache: FlashAttention-3 (vLLM's
``vllm_flash_attn``) and vLLM's Triton unified attention (split-KV below its batch threshold,
as in vLLM); cuDNN SDPA and torch flash on dense tensors.
``--splits 8,16,...`` also times anyattn's Triton kernel at those key-split counts (a sweep
for the split policy, ``core/plan/schedule.py``'s ``choose_num_splits``).
Usage: python bench/decode.py [--shapes 64x4096,...] [--q-len 1] [--graph] [--splits 8,16]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from anyattn.core.semantics.params import AttnParams

from common import (ANYATTN_IMPLS, anyattn_call, emit, emit_timed, gather_dense, graphed,
                    markdown, paged_cache, time_ms)
from peers import FA3, VLLM_UNIFIED, fa3_call, fa3_or_skip, vllm_unified_call, vllm_unified_or_skip

HQ, HK, D, PAGE = 32, 8, 128, 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="64x4096,128x8192,16x32768,1x131072")
    ap.add_argument("--q-len", type=int, default=1)
    ap.add_argument("--graph", action="store_true", help="time every impl as CUDA-graph replays")
    ap.add_argument("--splits", default="", help="key-split counts to sweep on anyattn triton")
    args = ap.parse_args()
    wrap = graphed if args.graph else (lambda fn: fn)
    mode = " [graph]" if args.graph else ""
    rows: list[dict] = []
    ql = args.q_len
    tag = "decode" if ql == 1 else f"verify{ql}"
    vllm_kernel = vllm_unified_or_skip(tag + mode)
    fa = fa3_or_skip(tag + mode)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    emit(rows, bench="copy", shape="1GiB", impl="device copy (read+write)", ms=ms,
         tbps=2 * src.numel() / ms / 1e9)
    del src, dst
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        kv_bytes = 2 * batch * seq * HK * D * 2
        k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
        q = torch.randn(batch * ql, HQ, D, device="cuda", dtype=torch.bfloat16)
        params = AttnParams(softmax_scale=D ** -0.5)
        out = torch.empty_like(q)
        row = dict(bench=tag + mode, shape=shape)
        runs = [(choice, name, None) for choice, name in ANYATTN_IMPLS.items()]
        runs += [("triton", f"{ANYATTN_IMPLS['triton']}, {n} splits", int(n))
                 for n in args.splits.split(",") if n]
        for choice, name, splits in runs:
            # Replays run what an engine's CUDA-graph plans run (GraphPlans: for_graphs).
            run, provider, plan = anyattn_call(choice, q, k_cache, v_cache, [ql] * batch,
                                               [seq] * batch, table, params, out,
                                               for_graphs=args.graph, num_splits=splits)
            emit_timed(rows, lambda: wrap(run), "tbps", kv_bytes, **row, impl=name,
                       splits=plan.num_splits, provider=provider)
        if fa is not None:
            emit_timed(rows, lambda: wrap(fa3_call(fa, q, k_cache, v_cache, table, [ql] * batch,
                                                   [seq] * batch, D ** -0.5, out)),
                       "tbps", kv_bytes, **row, impl=FA3)
        if vllm_kernel is not None:
            emit_timed(rows, lambda: wrap(vllm_unified_call(vllm_kernel, q, k_cache, v_cache,
                                                            table, [ql] * batch, [seq] * batch,
                                                            D ** -0.5, out)),
                       "tbps", kv_bytes, **row, impl=VLLM_UNIFIED)
        qd = q.view(batch, ql, HQ, D).transpose(1, 2)
        kd, vd = gather_dense(k_cache, table, seq), gather_dense(v_cache, table, seq)
        del k_cache, v_cache
        for name, backend in (("cudnn sdpa (dense)", SDPBackend.CUDNN_ATTENTION),
                              ("torch flash FA2 (dense)", SDPBackend.FLASH_ATTENTION)):
            def run(backend=backend):
                with sdpa_kernel(backend):
                    # Causal with q_len > 1 would be top-left aligned in SDPA: verify uses a
                    # full mask for the peer, which reads the same bytes.
                    return F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)
            emit_timed(rows, lambda: wrap(run), "tbps", kv_bytes, **row, impl=name)
        del kd, vd
        torch.cuda.empty_cache()
    markdown(rows, "tbps", "TB/s")


if __name__ == "__main__":
    main()
