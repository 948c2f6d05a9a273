"""Shared benchmark plumbing: paged inputs, timing, and one JSON line per figure."""
from __future__ import annotations

import json
import os
import sys

import torch
import triton

from anyattn.core import build_plan, cu_seqlens


def paged_cache(k_lens: list[int], hk: int, d: int, page: int, dtype=torch.bfloat16, seed: int = 0):
    """Random K/V in a paged cache whose pages are in random order, plus its page table."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    pages = [(k + page - 1) // page for k in k_lens]
    total = sum(pages)
    perm = torch.randperm(total, device="cuda", generator=gen).to(torch.int32)
    table = torch.zeros(len(k_lens), max(pages), dtype=torch.int32, device="cuda")
    start = 0
    for b, n in enumerate(pages):
        table[b, :n] = perm[start:start + n]
        start += n
    k = torch.randn(total, page, hk, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(total, page, hk, d, device="cuda", dtype=dtype, generator=gen)
    return k, v, table


def plan_for(q_lens: list[int], k_lens: list[int], table: torch.Tensor, hk: int, page: int,
             **kw):
    return build_plan(cu_seqlens(torch.tensor(q_lens, device="cuda")),
                      torch.tensor(k_lens, dtype=torch.int32, device="cuda"),
                      max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens), page_table=table,
                      page_size=page, num_kv_heads=hk, **kw)


ANYATTN_IMPLS = {"auto": "anyattn auto (paged)", "triton": "anyattn triton (paged)"}


def anyattn_call(choice: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 q_lens: list[int], k_lens: list[int], table: torch.Tensor, params, out,
                 call_kw: dict | None = None, **plan_kw):
    """``(run, provider, plan)``: anyattn on its own plan with ``ANYATTN_KERNELS=choice``; the
    plan picks its kernels on the first call, made here, which also tells the provider that
    ran it. ``call_kw`` go to every ``core.attention`` call (``alibi_slopes``), ``plan_kw`` to
    ``build_plan`` (``spans``)."""
    from anyattn import core

    previous = os.environ.get("ANYATTN_KERNELS")
    os.environ["ANYATTN_KERNELS"] = choice
    try:
        plan = plan_for(q_lens, k_lens, table, k_cache.shape[2], k_cache.shape[1], **plan_kw)
        run = lambda: core.attention(q, k_cache, v_cache, plan, params, out=out,  # noqa: E731
                                    **(call_kw or {}))
        provider = provider_that_runs(run)
    finally:
        if previous is None:
            del os.environ["ANYATTN_KERNELS"]
        else:
            os.environ["ANYATTN_KERNELS"] = previous
    return run, provider, plan


def provider_that_runs(run) -> str:
    """Call ``run`` (one anyattn call) once and name the provider that computed it: a plan's
    schedule holds a chain of providers, and the call's features pick one of them."""
    return captured_call(run)[0].name


def captured_call(run):
    """Call ``run`` (one anyattn call) once: ``(provider, call, schedule)`` of the provider
    run it made (the call checked and routed, as the provider got it)."""
    from anyattn.core.providers import PROVIDERS

    ran: list[tuple] = []

    def recording(provider):
        return lambda call, sched: ran.append((provider, call, sched)) or type(provider).run(
            provider, call, sched)

    for provider in PROVIDERS:
        provider.run = recording(provider)  # an instance attribute shadows the method
    try:
        run()
    finally:
        for provider in PROVIDERS:
            del provider.run
    return ran[-1]


def middle_span(batch: int, seq: int, span: int) -> tuple[dict, dict]:
    """One ``span``-token bidirectional span in the middle of each of ``batch`` prompts of
    ``seq`` tokens: anyattn's plan kwargs (``spans``) and vLLM's Triton kernel kwargs
    (``mm_prefix_range``: ``[B, max_ranges, 2]`` int32, end inclusive, as
    ``compute_mm_prefix_range_tensor`` builds it)."""
    from anyattn.core.semantics.spans import span_table

    start = seq // 2 - span // 2
    spans = span_table([[(start, start + span)]] * batch, "cuda")
    mm_range = torch.tensor([[[start, start + span - 1]]] * batch, dtype=torch.int32,
                            device="cuda")
    return dict(spans=spans), dict(mm_prefix_range=mm_range)


def gather_dense(cache: torch.Tensor, table: torch.Tensor, k_len: int) -> torch.Tensor:
    """Paged [pages, page, Hk, D] -> dense [B, Hk, k_len, D] for the dense peers."""
    page = cache.shape[1]
    pos = torch.arange(k_len, device=cache.device)
    return cache[table[:, pos // page].long(), pos % page].permute(0, 2, 1, 3).contiguous()


def time_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graphed(fn):
    """Capture ``fn`` in a CUDA graph (after a warm-up on a side stream); return its replay.

    Serving engines run decode steps as graphs, so host launch overhead drops out.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def emit_timed(rows: list[dict], make, metric: str, amount: float,
               baseline_ms: float | None = None, **row) -> None:
    """Time the callable ``make()`` returns and emit ``ms`` and ``metric = amount / ms / 1e9``
    (and ``overhead_pct`` over ``baseline_ms`` when given); a peer or provider that fails on
    this shape becomes an error row, not a crash."""
    try:
        ms = time_ms(make())
    except Exception as e:
        emit(rows, **row, error=f"{type(e).__name__}: {e}"[:200])
        return
    extra = {} if baseline_ms is None else dict(overhead_pct=100 * (ms / baseline_ms - 1))
    emit(rows, **row, ms=ms, **{metric: amount / ms / 1e9}, **extra)


def markdown(rows: list[dict], metric: str, unit: str) -> None:
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    print("\n| impl | " + " | ".join(shapes) + f" |  ({unit})", file=sys.stdout)
    print("|---|" + "---|" * len(shapes))
    for impl in impls:
        vals = {r["shape"]: r.get(metric) for r in rows if r["impl"] == impl}
        cells = [f"{vals[s]:.2f}" if isinstance(vals.get(s), float) else str(vals.get(s, "-")) for s in shapes]
        print(f"| {impl} | " + " | ".join(cells) + " |")
