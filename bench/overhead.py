"""Eager per-call host overhead of ``ops.attention`` (µs per call), against graph replays.

A small decode (8 x 1K, GQA 32/8, d 128, bf16, page 16) whose GPU time is a few µs, so an eager
call's wall time is host time: Python checks, the plan's memoised kernel schedule, the
launch. Timed as the mean of 500 back-to-back calls after a sync, for each provider, next
to the same call captured in a CUDA graph (the GPU time alone), and to the argument checks
alone. Usage: python bench/overhead.py
"""
from __future__ import annotations

import time

import torch

from anyattn.core.semantics import checks
from anyattn.core.semantics.params import AttnParams

from common import anyattn_call, emit, graphed, markdown, paged_cache

HQ, HK, D, PAGE = 32, 8, 128, 16
CALLS = 500


def per_call_us(fn) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / CALLS * 1e6


def main() -> None:
    rows: list[dict] = []
    batch, seq = 8, 1024
    k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    for q_len, choices in ((1, ("triton", "fa3")), (64, ("fa3", "triton"))):
        q = torch.randn(batch * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        shape = f"{batch}x{seq} q_len {q_len}"
        for choice in choices:
            run, provider, plan = anyattn_call(choice, q, k_cache, v_cache, [q_len] * batch,
                                               [seq] * batch, table, params, out)
            eager = per_call_us(run)
            replay = per_call_us(graphed(run))
            emit(rows, bench="overhead", shape=shape, impl=f"anyattn {provider} eager",
                 us=eager, host_us=eager - replay)
            emit(rows, bench="overhead", shape=shape, impl=f"anyattn {provider} graph replay",
                 us=replay)
        emit(rows, bench="overhead", shape=shape, impl="checks.check_attention_inputs",
             us=per_call_us(lambda: checks.check_attention_inputs(
                 q, k_cache, v_cache, plan, params, sinks=None, k_descale=None,
                 v_descale=None, out=out)))
    markdown(rows, "us", "µs per call")


if __name__ == "__main__":
    main()
