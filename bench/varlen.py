"""Varlen prefill and extend-with-prefix against one sequence of the same token count.

Targets: within 10% of the single sequence's TFLOP/s (issue 6), anyattn ``auto`` >= 0.98x
FlashAttention-3 on the same batches (issue 11). GQA 32/8, d 128, bf16, page 16 in random
order; FLOPs count only the visible (causal) part of each sequence.
"""
from __future__ import annotations

import torch

from anyattn.core.semantics.params import AttnParams

from common import ANYATTN_IMPLS, anyattn_call, emit_timed, markdown, paged_cache
from peers import FA3, fa3_call, fa3_or_skip

HQ, HK, D, PAGE = 32, 8, 128, 16


def causal_flops(q_len: int, k_len: int) -> float:
    # Query i (0-based, last q_len of k_len keys) sees k_len - q_len + i + 1 keys.
    visible = q_len * (k_len - q_len) + q_len * (q_len + 1) / 2
    return 4 * visible * HQ * D


def run(rows, fa, name, q_lens, k_lens):
    k_cache, v_cache, table = paged_cache(k_lens, HK, D, PAGE)
    q = torch.randn(sum(q_lens), HQ, D, device="cuda", dtype=torch.bfloat16)
    params = AttnParams(softmax_scale=D ** -0.5)
    out = torch.empty_like(q)
    flops = sum(causal_flops(a, b) for a, b in zip(q_lens, k_lens))
    row = dict(bench="varlen", shape=name, tokens=sum(q_lens))
    for choice, impl in ANYATTN_IMPLS.items():
        fn, provider, _ = anyattn_call(choice, q, k_cache, v_cache, q_lens, k_lens, table,
                                       params, out)
        emit_timed(rows, lambda: fn, "tflops", flops, **row, impl=impl, provider=provider)
    if fa is not None:
        emit_timed(rows, lambda: fa3_call(fa, q, k_cache, v_cache, table, q_lens, k_lens,
                                          D ** -0.5, out), "tflops", flops, **row, impl=FA3)


def main() -> None:
    rows: list[dict] = []
    fa = fa3_or_skip("varlen")
    run(rows, fa, "1 x 16384", [16384], [16384])
    mixed = [8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 32, 16, 16, 8, 8, 4, 4]
    run(rows, fa, f"{len(mixed)} mixed, {sum(mixed)} tokens", mixed, mixed)
    run(rows, fa, "4 x (2048 new + 6144 prefix)", [2048] * 4, [8192] * 4)
    run(rows, fa, "1 x 8192", [8192], [8192])
    run(rows, fa, "1 x (8192 new + 8192 prefix)", [8192], [16384])
    markdown(rows, "tflops", "TFLOP/s")


if __name__ == "__main__":
    main()
