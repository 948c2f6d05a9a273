"""Eager per-call host cost of ``anyattn.core.attention`` (µs per call), against the peers called
directly on the same tensors, and against graph replays.

Host cost: a small batch (8 x 1K, GQA 32/8, d 128, bf16, page 16) whose GPU time is a few
µs, so an eager call's wall time is host time: checks, the plan's schedule, the launch. Decode
(q_len 1, anyattn's split-KV Triton) and verify/extend (q_len 64, FA3 under ``auto``), timed
as the mean of 500 back-to-back calls after a sync, next to FA3 and vLLM's Triton kernel
called directly (where vLLM is installed) and to the same call captured in a CUDA graph (the
GPU time alone); ``host_us`` is eager minus replay.

Single-call prefill (16 x 1K): one call after a sync, the GPU otherwise idle (how an engine's
eager prefill step issues each layer), anyattn ``auto`` and FA3 direct interleaved, the
median of 30 alternating repeats: ``ratio`` is FA3's time over anyattn's.
``--profile``: instead, where the host time of an eager anyattn call goes (cProfile over
2,000 decode and 2,000 q_len-64 calls, the top functions by own time, as text lines).
Usage: python bench/overhead.py [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from anyattn.core.semantics.params import AttnParams

from common import anyattn_call, emit, graphed, markdown, paged_cache
from peers import FA3, VLLM_UNIFIED, fa3_call, fa3_or_skip, vllm_unified_call, vllm_unified_or_skip

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


def single_call_us(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e6


def host_cost(rows: list[dict], fa, vllm_kernel) -> None:
    batch, seq = 8, 1024
    k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    for q_len, choices in ((1, ("auto", "triton")), (64, ("auto", "triton"))):
        q = torch.randn(batch * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        shape = f"{batch}x{seq} q_len {q_len}"
        calls = {}
        for choice in choices:
            run, provider, _ = anyattn_call(choice, q, k_cache, v_cache, [q_len] * batch,
                                            [seq] * batch, table, params, out)
            calls[f"anyattn {choice} ({provider})"] = run
        if fa is not None:
            calls[FA3] = fa3_call(fa, q, k_cache, v_cache, table, [q_len] * batch,
                                  [seq] * batch, D ** -0.5, out)
        if vllm_kernel is not None:
            calls[VLLM_UNIFIED] = vllm_unified_call(vllm_kernel, q, k_cache, v_cache, table,
                                                    [q_len] * batch, [seq] * batch, D ** -0.5,
                                                    out)
        for name, run in calls.items():
            eager = per_call_us(run)
            replay = per_call_us(graphed(run))
            emit(rows, bench="overhead", shape=shape, impl=f"{name} eager", us=eager,
                 host_us=eager - replay)
            emit(rows, bench="overhead", shape=shape, impl=f"{name} graph replay", us=replay)


def single_prefill(rows: list[dict], fa) -> None:
    batch, seq = 16, 1024
    k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    q = torch.randn(batch * seq, HQ, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    ours, provider, _ = anyattn_call("auto", q, k_cache, v_cache, [seq] * batch,
                                     [seq] * batch, table, params, out)
    direct = fa3_call(fa, q, k_cache, v_cache, table, [seq] * batch, [seq] * batch,
                      D ** -0.5, out)
    for fn in (ours, direct):
        for _ in range(5):
            fn()
    times = {"ours": [], "fa3": []}
    for _ in range(30):
        times["ours"].append(single_call_us(ours))
        times["fa3"].append(single_call_us(direct))
    mine, theirs = statistics.median(times["ours"]), statistics.median(times["fa3"])
    shape = f"{batch}x{seq} prefill, one call"
    emit(rows, bench="overhead", shape=shape, impl=f"anyattn auto ({provider})", us=mine,
         ratio=theirs / mine)
    emit(rows, bench="overhead", shape=shape, impl=FA3, us=theirs)


def profile() -> None:
    batch, seq = 8, 1024
    k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    for q_len in (1, 64):
        q = torch.randn(batch * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        run, provider, _ = anyattn_call("auto", q, k_cache, v_cache, [q_len] * batch,
                                        [seq] * batch, table, params, out)
        per_call_us(run)  # warm
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            run()
        prof.disable()
        torch.cuda.synchronize()
        print(f"== anyattn auto ({provider}), 8x1024 q_len {q_len}: 2,000 eager calls")
        pstats.Stats(prof).sort_stats("tottime").print_stats(16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    if ap.parse_args().profile:
        profile()
        return
    rows: list[dict] = []
    fa = fa3_or_skip("overhead")
    host_cost(rows, fa, vllm_unified_or_skip("overhead"))
    if fa is not None:
        single_prefill(rows, fa)
    markdown(rows, "us", "µs per call")


if __name__ == "__main__":
    main()
