"""Bidirectional spans and ALiBi: their cost over unmasked prefill on the same path (device).

Prefill 4x4K and 1x16K, GQA 32/8, d 128, bf16, page 16 in random order. Per request one
image-sized span of 1,024 tokens in the middle of the prompt (``plan.spans``; vLLM's
``mm_prefix_range``), or ALiBi with the ALiBi paper's slopes for 32 heads. anyattn runs as
``triton`` (its own kernel for all three calls) and ``auto`` (the provider each call picks:
FA3 for the unmasked call; FA4 for spans and ALiBi where it is installed, once
``fa4.ROUTED_UNDER_AUTO`` is set; the ``provider`` field names it), and ``fa4``
(``ANYATTN_KERNELS=fa4``) where FA4 is installed. Peers on the same tensors
(``bench/peers.py``): FA3 unmasked (the target's baseline) and vLLM's Triton unified attention
(TRITON_ATTN's kernel) when vLLM is importable, and FA4 called directly with the same
``mask_mod`` / ``score_mod`` anyattn's FA4 provider passes (its "none" row is plain causal
FA4), for ALiBi also with the slopes read from a tensor per score (FA4's generic aux-tensor
path) beside the slopes compiled in.
Targets: spans and ALiBi cost <= 10% over unmasked on the same path, and reach >= 0.9x FA3's
unmasked prefill on the same shape (the last table, where FA3 is in the same run).
``tflops`` counts the causal FLOPs of every call (a span adds span^2 / 2 visible pairs per
request, 3% at 4K, about 0.2% at 16K); ``overhead_pct`` is against the same impl unmasked.
"""
from __future__ import annotations

import torch

from anyattn.core.semantics.params import AttnParams
from common import ANYATTN_IMPLS, anyattn_call, emit_timed, markdown, middle_span, paged_cache
from peers import (FA3, FA4, VLLM_UNIFIED, fa3_call, fa3_or_skip, fa4_call, fa4_or_skip,
                   vllm_unified_call, vllm_unified_or_skip)

ANYATTN_FA4 = "anyattn fa4 (paged)"  # ANYATTN_KERNELS=fa4: the FA4 route before auto takes it
FA4_AUX = "fa4 (paged), slopes read per score"

HQ, HK, D, PAGE, SPAN = 32, 8, 128, 16, 1024
SHAPES = ((4, 4096), (1, 16384))  # (batch, prompt length)
DEVICE = "cuda"


def alibi_slopes() -> torch.Tensor:
    return 2.0 ** (-8.0 * torch.arange(1, HQ + 1, device=DEVICE) / HQ)


def variants(seq: int, batch: int) -> dict[str, tuple[dict, dict, dict]]:
    """name -> (anyattn plan kwargs, anyattn call kwargs, vLLM kernel kwargs); FA4 takes
    anyattn's plan and call kwargs."""
    span_plan_kw, span_vllm_kw = middle_span(batch, seq, SPAN)
    slopes = alibi_slopes()
    return {"none": ({}, {}, {}),
            f"span {SPAN}": (span_plan_kw, {}, span_vllm_kw),
            "alibi": ({}, dict(alibi_slopes=slopes), dict(alibi_slopes=slopes))}


def main() -> None:
    rows: list[dict] = []
    vllm_kernel = vllm_unified_or_skip("spans_alibi")
    fa4 = fa4_or_skip("spans_alibi")
    fa3 = fa3_or_skip("spans_alibi")
    impls = dict(ANYATTN_IMPLS, **({"fa4": ANYATTN_FA4} if fa4 is not None else {}))
    params = AttnParams(softmax_scale=D ** -0.5)
    for batch, seq in SHAPES:
        lens = [seq] * batch
        flops = 4 * batch * seq * seq * HQ * D / 2
        k_cache, v_cache, table = paged_cache(lens, HK, D, PAGE)
        q = torch.randn(batch * seq, HQ, D, device=DEVICE, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        base: dict[str, float] = {}  # impl -> its unmasked ms
        for name, (plan_kw, call_kw, vllm_kw) in variants(seq, batch).items():
            timed = []
            for choice, impl in impls.items():
                run, provider, _ = anyattn_call(choice, q, k_cache, v_cache, lens, lens, table,
                                                params, out, call_kw=call_kw, **plan_kw)
                timed.append((impl, lambda run=run: run, dict(provider=provider)))
            if fa4 is not None:
                timed.append((FA4, lambda: fa4_call(fa4, q, k_cache, v_cache, table, lens, lens,
                                                    D ** -0.5, out, **plan_kw, **call_kw), {}))
            if fa4 is not None and "alibi_slopes" in call_kw:
                timed.append((FA4_AUX, lambda: fa4_call(
                    fa4, q, k_cache, v_cache, table, lens, lens, D ** -0.5, out,
                    slopes_in_aux=True, **call_kw), {}))
            if fa3 is not None and name == "none":
                timed.append((FA3, lambda: fa3_call(fa3, q, k_cache, v_cache, table, lens, lens,
                                                    D ** -0.5, out), {}))
            if vllm_kernel is not None:
                timed.append((VLLM_UNIFIED, lambda: vllm_unified_call(
                    vllm_kernel, q, k_cache, v_cache, table, lens, lens, D ** -0.5, out,
                    **vllm_kw), {}))
            for impl, make, extra in timed:
                emit_timed(rows, make, "tflops", flops, baseline_ms=base.get(impl),
                           bench="spans_alibi", shape=f"prefill {batch}x{seq}",
                           impl=f"{impl} / {name}", variant=name, **extra)
                if name == "none" and "ms" in rows[-1]:
                    base[impl] = rows[-1]["ms"]
        del k_cache, v_cache, q, out
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    markdown(rows, "tflops", "TFLOP/s")
    markdown(rows, "overhead_pct", "% over the same impl unmasked")
    fa3_tflops = {r["shape"]: r["tflops"] for r in rows if r["impl"] == f"{FA3} / none"
                  and "tflops" in r}
    if fa3_tflops:
        ratios = [dict(r, vs_fa3=r["tflops"] / fa3_tflops[r["shape"]]) for r in rows
                  if "tflops" in r and r["shape"] in fa3_tflops]
        markdown(ratios, "vs_fa3", "x FA3 unmasked")


if __name__ == "__main__":
    main()
