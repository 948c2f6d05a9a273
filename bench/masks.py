"""Mask / bias overhead and layout memory (device).

1. Key-side mask, key-side bias, and both, versus no mask: prefill 4x4K and decode 64x4K
   (GQA 32/8, d 128, bf16, page 16). Target: overhead <= 10%. Masked calls run anyattn's
   Triton kernel whatever provider a plan picks, so the unmasked baseline is that kernel too
   (``ANYATTN_KERNELS=triton``). Decode is timed as CUDA-graph replays, as engines serve it.
2. Decode with 1-8 queries per sequence over thousands of keys: memory of the key-side layout
   [total_k, 1] versus the query-side layout [total_q, 1, max_k], and time with each.
"""
from __future__ import annotations

import os

import torch

from anyattn import core
from anyattn.core.semantics.params import AttnParams

from common import emit, graphed, markdown, paged_cache, plan_for, time_ms

HQ, HK, D, PAGE = 32, 8, 128, 16


def overhead(rows: list[dict]) -> None:
    os.environ["ANYATTN_KERNELS"] = "triton"
    for tag, batch, q_len, k_len in (("prefill", 4, 4096, 4096), ("decode", 64, 1, 4096)):
        k_cache, v_cache, table = paged_cache([k_len] * batch, HK, D, PAGE)
        q = torch.randn(batch * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
        plan = plan_for([q_len] * batch, [k_len] * batch, table, HK, PAGE)
        params = AttnParams(softmax_scale=D ** -0.5)
        total_k = batch * k_len
        mask = torch.rand(total_k, 1, device="cuda") < 0.95
        bias = torch.randn(total_k, 1, device="cuda") * 0.1
        out = torch.empty_like(q)
        base = None
        for name, kw in (("none", {}), ("key-side mask", dict(attn_mask=mask)),
                         ("key-side bias", dict(attn_bias=bias)),
                         ("key-side mask+bias", dict(attn_mask=mask, attn_bias=bias))):
            run = lambda: core.attention(q, k_cache, v_cache, plan, params, out=out, **kw)
            ms = time_ms(graphed(run) if tag == "decode" else run)
            base = base or ms
            shape = f"{tag} {batch}x{k_len}" + (" [graph]" if tag == "decode" else "")
            emit(rows, bench="mask_overhead", shape=shape, impl=name, ms=ms,
                 overhead_pct=100 * (ms / base - 1))


def layout_memory(rows: list[dict]) -> None:
    batch, k_len = 64, 8192
    k_cache, v_cache, table = paged_cache([k_len] * batch, HK, D, PAGE)
    for q_len in (1, 4, 8):
        q = torch.randn(batch * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
        plan = plan_for([q_len] * batch, [k_len] * batch, table, HK, PAGE)
        params = AttnParams(softmax_scale=D ** -0.5)
        key_side = torch.rand(batch * k_len, 1, device="cuda") < 0.95
        query_side = key_side.view(batch, 1, k_len).repeat_interleave(q_len, 0).contiguous()
        for name, m in (("key-side [total_k,1]", key_side), ("query-side [total_q,1,max_k]", query_side)):
            ms = time_ms(lambda: core.attention(q, k_cache, v_cache, plan, params, attn_mask=m))
            emit(rows, bench="mask_layout", shape=f"{batch}x{k_len} q_len {q_len}", impl=name,
                 ms=ms, mask_bytes=m.numel() * m.element_size())


def main() -> None:
    rows: list[dict] = []
    overhead(rows)
    markdown(rows, "overhead_pct", "% over no mask")
    rows2: list[dict] = []
    layout_memory(rows2)
    markdown(rows2, "mask_bytes", "mask bytes")
    markdown(rows2, "ms", "ms")


if __name__ == "__main__":
    main()
