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
``--profile``: instead, where the host time of an eager anyattn call goes: host µs to issue a
decode call at each layer from ``core.attention`` down to Triton's compiled launcher (JSON
lines), then cProfile over 2,000 decode and 2,000 q_len-64 calls (top functions by own time).
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

from common import anyattn_call, captured_call, emit, graphed, markdown, paged_cache
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


def issue_us(fn, calls: int = 200) -> float:
    """Host time to issue one call: ``calls`` back-to-back calls after a sync, timed without
    waiting for the GPU (fewer launches than the launch queue holds, so none blocks); the
    best of 5 repeats."""
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
        torch.cuda.synchronize()
    return best / calls * 1e6


class _Spy:
    """Records the arguments of the next call of ``fn`` and forwards it."""

    def __init__(self, fn) -> None:
        self.fn, self.args = fn, None

    def __call__(self, *args):
        self.args = args
        return self.fn(*args)


def _nop_launch():
    """A one-argument Triton kernel's compiled launch (the floor of any launch)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _nop(x):
        tl.store(x, 0)

    x = torch.zeros(1, device="cuda")
    nop = _nop[(1,)](x)
    stream = torch.cuda.current_stream().cuda_stream
    return lambda: nop.run(1, 1, 1, stream, nop.function, nop.packed_metadata, None, None, None, x)


def layers(rows: list[dict], fa) -> None:
    """Host µs to issue one eager anyattn call, layer by layer (8x1K). Decode on the Triton
    kernel: the whole call, the provider's run (the call already checked and routed), the
    signature's prepared launch (arguments fixed), the :class:`Launch` given the tensors, the
    compiled kernel's launcher as it gets them (every pointer an int) and as Triton's own launch
    passes them (tensors: Triton asks the driver about each), and a one-argument kernel's
    launch. q_len 64 on FA3: the whole call, the provider's run, FA3 with the same arguments."""
    from anyattn.core.providers.triton.attention import _MEMO_KEY

    batch, seq = 8, 1024
    k_cache, v_cache, table = paged_cache([seq] * batch, HK, D, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    q = torch.randn(batch, HQ, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    run, _, _ = anyattn_call("triton", q, k_cache, v_cache, [1] * batch, [seq] * batch,
                             table, params, out)
    provider, call, sched = captured_call(run)
    prepared = call.memo[_MEMO_KEY]
    launch, spy = prepared.launch, _Spy(prepared.launch)
    prepared.launch = spy
    run()
    prepared.launch = launch
    (tensors,) = spy.args
    binary = next(iter(launch._found.values()))
    stream = torch.cuda.current_stream().cuda_stream
    head = (*launch.grid, stream, binary.function, binary.packed_metadata, None, None, None)
    pointers = [t.data_ptr() for t in tensors]
    layouts = (call.plan.seqused_k,) * 6
    steps = {
        "core.attention (whole call)": run,
        "provider.run (checked, routed)": lambda: type(provider).run(provider, call, sched),
        "signature's launch (arguments fixed)": lambda: prepared(call, out, None, layouts),
        "Launch (given the tensors)": lambda: launch(tensors),
        "compiled launcher, pointers as ints": lambda: binary.run(*head, *pointers,
                                                                  *launch._tail),
        "compiled launcher, tensors": lambda: binary.run(*head, *launch._args(tensors)),
        "one-argument kernel, compiled launcher": _nop_launch(),
    }
    shape = f"{batch}x{seq} decode (triton)"
    for name, fn in steps.items():
        emit(rows, bench="overhead layers", shape=shape, impl=name, us=issue_us(fn))
    if fa is None:
        return
    q = torch.randn(batch * 64, HQ, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    run, name, _ = anyattn_call("auto", q, k_cache, v_cache, [64] * batch, [seq] * batch,
                                table, params, out)
    if name != "fa3":
        return
    provider, call, sched = captured_call(run)
    kwargs = call.memo["fa3 kwargs"]
    varlen = fa.flash_attn_varlen_func
    steps = {
        "core.attention (whole call)": run,
        "provider.run (checked, routed)": lambda: type(provider).run(provider, call, sched),
        "FA3 with the call's arguments": lambda: varlen(q, k_cache, v_cache, out=out,
                                                        s_aux=None, **kwargs),
    }
    for name, fn in steps.items():
        emit(rows, bench="overhead layers", shape=f"{batch}x{seq} q_len 64 (fa3)", impl=name,
             us=issue_us(fn))


def profile() -> None:
    rows: list[dict] = []
    layers(rows, fa3_or_skip("overhead layers"))
    markdown(rows, "us", "host µs per call")
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
