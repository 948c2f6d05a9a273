"""Causal prefill throughput (TFLOP/s): anyattn on a paged cache vs peers, one run.

GQA 32/8, head dim 128, bf16, page 16 with pages in random order. anyattn twice: ``auto``
(the provider its plan picks: FA3 where installed; the ``provider`` field names the one that
ran) and ``triton`` (its own kernels). Peers on the same paged cache: FlashAttention-3 (vLLM's
``vllm_flash_attn``), FlashAttention-4 (plain causal, as anyattn's FA4 provider calls it: the
figure behind keeping FA3 ahead of it) and vLLM's Triton unified attention; on dense
contiguous tensors: cuDNN SDPA, torch flash (FA2), FlexAttention. ALiBi and span rows, with
FA4 as their peer: ``bench/spans_alibi.py``.
Usage: python bench/prefill.py [--shapes 16x1024,4x4096] [--no-flex]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from anyattn.core.semantics.params import AttnParams

from common import ANYATTN_IMPLS, anyattn_call, emit_timed, gather_dense, markdown, paged_cache
from peers import (FA3, FA4, VLLM_UNIFIED, fa3_call, fa3_or_skip, fa4_call, fa4_or_skip,
                   vllm_unified_call, vllm_unified_or_skip)

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
    fa = fa3_or_skip("prefill")
    fa4 = fa4_or_skip("prefill")
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        flops = 4 * batch * seq * seq * HQ * D / 2
        k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
        q = torch.randn(batch * seq, HQ, D, device="cuda", dtype=torch.bfloat16)
        params = AttnParams(softmax_scale=D ** -0.5)
        out = torch.empty_like(q)
        row = dict(bench="prefill", shape=shape)
        for choice, name in ANYATTN_IMPLS.items():
            run, provider, _ = anyattn_call(choice, q, k_cache, v_cache, [seq] * batch,
                                            [seq] * batch, table, params, out)
            emit_timed(rows, lambda: run, "tflops", flops, **row, impl=name, provider=provider)
        if fa is not None:
            emit_timed(rows, lambda: fa3_call(fa, q, k_cache, v_cache, table, [seq] * batch,
                                              [seq] * batch, D ** -0.5, out),
                       "tflops", flops, **row, impl=FA3)
        if fa4 is not None:
            emit_timed(rows, lambda: fa4_call(fa4, q, k_cache, v_cache, table, [seq] * batch,
                                              [seq] * batch, D ** -0.5, out),
                       "tflops", flops, **row, impl=FA4)
        if vllm_kernel is not None:
            emit_timed(rows, lambda: vllm_unified_call(vllm_kernel, q, k_cache, v_cache, table,
                                                       [seq] * batch, [seq] * batch, D ** -0.5,
                                                       out),
                       "tflops", flops, **row, impl=VLLM_UNIFIED)
        qd = q.view(batch, seq, HQ, D).transpose(1, 2).contiguous()
        kd, vd = gather_dense(k_cache, table, seq), gather_dense(v_cache, table, seq)
        kx, vx = (t.repeat_interleave(HQ // HK, 1) for t in (kd, vd))
        peers = [("cudnn sdpa (dense)", sdpa_peer(SDPBackend.CUDNN_ATTENTION), kx, vx),
                 ("torch flash FA2 (dense)", sdpa_peer(SDPBackend.FLASH_ATTENTION), kx, vx)]
        if not args.no_flex:
            peers.append(("flexattention (dense)", flex_peer(seq), kd, vd))
        for name, fn, kk, vv in peers:
            emit_timed(rows, lambda: (lambda: fn(qd, kk, vv)), "tflops", flops, **row, impl=name)
        del kx, vx, kd, vd, qd, k_cache, v_cache
        torch.cuda.empty_cache()
    markdown(rows, "tflops", "TFLOP/s")


if __name__ == "__main__":
    main()
