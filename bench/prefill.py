"""Causal prefill throughput (TFLOP/s): anyattn on a paged cache vs dense peers, one run.

GQA 32/8, head dim 128, bf16, page 16 with pages in random order. Peers: vLLM's Triton
unified attention on the same paged cache (when bench/fetch_peers.sh filled .peers), cuDNN
SDPA and torch flash (FA2) through SDPA on dense contiguous tensors, FlexAttention (compiled).
Usage: python bench/prefill.py [--shapes 16x1024,4x4096] [--no-flex]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from anyattn.core import ops
from anyattn.core.params import AttnParams

from common import emit, gather_dense, markdown, paged_cache, plan_for, time_ms
from peers import VLLM_UNIFIED, vllm_unified_call, vllm_unified_or_skip

HQ, HK, D, PAGE = 32, 8, 128, 16


def sdpa_peer(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def flex_peer(seq: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, seq, seq, device="cuda")
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask, enable_gqa=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="16x1024,4x4096,1x16384,1x65536")
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    rows: list[dict] = []
    vllm_kernel = vllm_unified_or_skip("prefill")
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        flops = 4 * batch * seq * seq * HQ * D / 2
        k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
        q = torch.randn(batch * seq, HQ, D, device="cuda", dtype=torch.bfloat16)
        plan = plan_for([seq] * batch, [seq] * batch, table, HK)
        params = AttnParams(softmax_scale=D ** -0.5)
        out = torch.empty_like(q)
        ms = time_ms(lambda: ops.attention(q, k_cache, v_cache, plan, params, out=out))
        emit(rows, bench="prefill", shape=shape, impl="anyattn (paged)", ms=ms,
             tflops=flops / ms / 1e9)
        if vllm_kernel is not None:
            try:
                ms = time_ms(vllm_unified_call(vllm_kernel, q, k_cache, v_cache, table,
                                               [seq] * batch, [seq] * batch, D ** -0.5, out))
                emit(rows, bench="prefill", shape=shape, impl=VLLM_UNIFIED, ms=ms,
                     tflops=flops / ms / 1e9)
            except Exception as e:
                emit(rows, bench="prefill", shape=shape, impl=VLLM_UNIFIED, error=str(e)[:120])
        qd = q.view(batch, seq, HQ, D).transpose(1, 2).contiguous()
        kd, vd = gather_dense(k_cache, table, seq), gather_dense(v_cache, table, seq)
        kx, vx = (t.repeat_interleave(HQ // HK, 1) for t in (kd, vd))
        peers = [("cudnn sdpa (dense)", sdpa_peer(SDPBackend.CUDNN_ATTENTION), kx, vx),
                 ("torch flash FA2 (dense)", sdpa_peer(SDPBackend.FLASH_ATTENTION), kx, vx)]
        if not args.no_flex:
            peers.append(("flexattention (dense)", flex_peer(seq), kd, vd))
        for name, fn, kk, vv in peers:
            try:
                ms = time_ms(lambda: fn(qd, kk, vv))
                emit(rows, bench="prefill", shape=shape, impl=name, ms=ms, tflops=flops / ms / 1e9)
            except Exception as e:  # a peer that cannot run this shape is reported, not fatal
                emit(rows, bench="prefill", shape=shape, impl=name, error=str(e)[:120])
        del kx, vx, kd, vd, qd, k_cache, v_cache
        torch.cuda.empty_cache()
    markdown(rows, "tflops", "TFLOP/s")


if __name__ == "__main__":
    main()
