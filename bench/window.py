"""Sliding-window prefill: anyattn vs FA3 and vLLM's Triton kernel on the same paged tensors,
one run (device). TFLOP/s count the window's visible pairs (a span's extra pairs as no work).

Prefill 4x4K and 1x16K, GQA 32/8, d 128, bf16, page 16 in random order, a 1,024-token window
(Gemma-2/3's sliding layers: ``window_left = 1023``), alone and with one 1,024-token
bidirectional span per request (a Gemma-3 image on a sliding layer, span overriding the
window as in vLLM's TRITON_ATTN). anyattn twice: ``auto`` (FA3 for the window alone; spans
always run anyattn's Triton kernel) and ``triton``.
"""
from __future__ import annotations

import torch

from anyattn.core.semantics.params import AttnParams
from common import ANYATTN_IMPLS, anyattn_call, emit_timed, markdown, middle_span, paged_cache
from peers import FA3, VLLM_UNIFIED, fa3_call, fa3_or_skip, vllm_unified_call, vllm_unified_or_skip

HQ, HK, D, PAGE, WINDOW, SPAN = 32, 8, 128, 16, 1024, 1024
SHAPES = ((4, 4096), (1, 16384))  # (batch, prompt length)


def visible_pairs(seq: int) -> int:
    """Causal (query, key) pairs inside a ``WINDOW``-token window, per sequence and head."""
    return sum(min(p + 1, WINDOW) for p in range(seq))


def main() -> None:
    rows: list[dict] = []
    vllm_kernel = vllm_unified_or_skip("window")
    fa = fa3_or_skip("window")
    params = AttnParams(softmax_scale=D ** -0.5, window_left=WINDOW - 1)
    for batch, seq in SHAPES:
        lens = [seq] * batch
        flops = 4 * batch * visible_pairs(seq) * HQ * D
        k_cache, v_cache, table = paged_cache(lens, HK, D, PAGE)
        q = torch.randn(batch * seq, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        for variant, (plan_kw, vllm_kw) in ((f"window {WINDOW}", ({}, {})),
                                            (f"window {WINDOW} + span {SPAN}",
                                             middle_span(batch, seq, SPAN))):
            row = dict(bench="window", shape=f"prefill {batch}x{seq}, {variant}", variant=variant)
            for choice, name in ANYATTN_IMPLS.items():
                run, provider, _ = anyattn_call(choice, q, k_cache, v_cache, lens, lens, table,
                                                params, out, **plan_kw)
                emit_timed(rows, lambda: run, "tflops", flops, **row, impl=name, provider=provider)
            if fa is not None and not plan_kw:
                emit_timed(rows, lambda: fa3_call(fa, q, k_cache, v_cache, table, lens, lens,
                                                  D ** -0.5, out, window_left=WINDOW - 1),
                           "tflops", flops, **row, impl=FA3)
            if vllm_kernel is not None:
                emit_timed(rows, lambda: vllm_unified_call(
                    vllm_kernel, q, k_cache, v_cache, table, lens, lens, D ** -0.5, out,
                    window_size=(WINDOW - 1, 0), **vllm_kw), "tflops", flops, **row,
                    impl=VLLM_UNIFIED)
        del k_cache, v_cache, q, out
        torch.cuda.empty_cache()
    markdown(rows, "tflops", "TFLOP/s")


if __name__ == "__main__":
    main()
