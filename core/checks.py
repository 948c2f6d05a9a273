"""Input validation: every error names the argument and the shape/dtype it expected.

All checks run before a kernel launches or a cache is written. Host facts (shapes, strides,
python ints, a plan's host fields ``total_q`` / ``total_k``) are checked on every call. Checks
that would read device memory (offsets, lengths, page ids, scales held in tensors) run only
where that is free (CPU tensors) or in debug mode (``ANYATTN_DEBUG=1``), because a host sync
inside a captured CUDA graph is not allowed: on CUDA without it the caller guarantees them,
and the kernels stay inside the tensors they are given whatever the values say.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import torch

from .plan import AttnPlan
from .params import AttnParams

# Head dims up to this run (others pad to the next power of two); any page size >= 1 works,
# since pages are addressed per key.
MAX_HEAD_DIM = 256
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def debug_mode() -> bool:
    return os.environ.get("ANYATTN_DEBUG", "0") == "1"


def expect(cond: bool, message: str | Callable[[], str]) -> None:
    """Raise ``ValueError(message)`` unless ``cond``. A message that formats shapes is passed as
    a callable, formatted only on failure: the checks run on every call of every layer."""
    if not cond:
        raise ValueError(message() if callable(message) else message)


def check_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    expect(t.dim() == rank, lambda: f"{name}: expected a {rank}-D tensor {layout}, got shape {tuple(t.shape)}")


def check_device(name: str, t: torch.Tensor | None, device: torch.device) -> None:
    if t is not None:
        expect(t.device == device, lambda: f"{name}: expected a tensor on {device} (like q), got {t.device}")


def check_int_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], layout: str) -> None:
    expect(t.dtype in (torch.int32, torch.int64),
           lambda: f"{name}: expected int32 {layout}, got dtype {t.dtype}")
    expect(tuple(t.shape) == shape, lambda: f"{name}: expected shape {shape} {layout}, got {tuple(t.shape)}")
    check_unit_stride(name, t)


def check_unit_stride(name: str, t: torch.Tensor) -> None:
    """The kernels index plan tensors' last dim as contiguous (``ptr + i``)."""
    expect(t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1,
           lambda: f"{name}: expected a contiguous last dim, got strides {t.stride()}")


def check_params(params: AttnParams) -> None:
    """Per-layer settings a kernel would otherwise turn into NaN or silently ignore."""
    scale, cap = params.softmax_scale, params.softcap
    expect(math.isfinite(scale) and scale > 0,
           lambda: f"softmax_scale: expected a positive finite float, got {scale}")
    expect(math.isfinite(cap) and cap >= 0,
           lambda: f"softcap: expected a finite float >= 0 (0 = off), got {cap}")
    expect(params.chunk_size >= 0,
           lambda: f"chunk_size: expected an int >= 0 (0 = off), got {params.chunk_size}")
    for name in ("window_left", "window_right"):
        expect(getattr(params, name) >= -1,
               lambda: f"{name}: expected an int >= -1 (-1 = unbounded), got {getattr(params, name)}")


def check_scale(name: str, scale: torch.Tensor | float | None) -> None:
    """An FP8 (de)quantisation scale: finite and positive (0, a negative or a NaN scale would
    store or return NaN). A python number always; a tensor where reading it is free (CPU) or
    in debug mode."""
    if scale is None:
        return
    if isinstance(scale, torch.Tensor):
        if scale.device.type != "cpu" and not debug_mode():
            return
        vals = scale.detach().float().cpu().flatten()
        ok = bool(torch.isfinite(vals).all()) and bool((vals > 0).all())
        shown = vals[:4].tolist()
    else:
        ok, shown = math.isfinite(float(scale)) and float(scale) > 0, scale
    expect(ok, lambda: f"{name}: expected finite positive scale(s), got {shown}")


def check_rows(q: torch.Tensor, k_cache: torch.Tensor, plan: AttnPlan) -> None:
    """q's rows (and contiguous keys' rows) against the plan's host totals, when it has them."""
    if plan.total_q is not None:
        expect(q.shape[0] == plan.total_q,
               lambda: f"q: expected {plan.total_q} rows (cu_seqlens_q[-1]), got {q.shape[0]}")
    if not plan.paged and plan.total_k is not None:
        expect(plan.total_k <= k_cache.shape[0],
               lambda: f"cu_seqlens_k: last entry {plan.total_k} runs past k's {k_cache.shape[0]} "
               "rows [total_k, num_kv_heads, head_dim]")


def check_attention_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           plan: AttnPlan, params: AttnParams, *, sinks: torch.Tensor | None,
                           k_descale: torch.Tensor | None, v_descale: torch.Tensor | None,
                           out: torch.Tensor | None,
                           alibi_slopes: torch.Tensor | None = None) -> None:
    """Validate q/cache/plan agreement; raises ValueError before anything runs."""
    check_rank("q", q, 3, "[total_q, num_heads, head_dim]")
    expect(q.dtype in FLOAT_DTYPES, lambda: f"q: expected float16, bfloat16 or float32, got {q.dtype}")
    check_params(params)
    if alibi_slopes is not None:
        check_alibi_slopes(alibi_slopes, q.shape[1], q.device)
    cache_rank, layout = (4, "[num_pages, page_size, num_kv_heads, head_dim]") if plan.paged \
        else (3, "[total_k, num_kv_heads, head_dim]")
    check_rank("k_cache", k_cache, cache_rank, layout)
    check_rank("v_cache", v_cache, cache_rank, layout)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out), ("sinks", sinks),
                    ("k_descale", k_descale), ("v_descale", v_descale),
                    ("cu_seqlens_q", plan.cu_seqlens_q), ("seqused_k", plan.seqused_k),
                    ("page_table", plan.page_table), ("cu_seqlens_k", plan.cu_seqlens_k)):
        check_device(name, t, q.device)
    total_q, hq, d = q.shape
    hk = k_cache.shape[-2]
    expect(hk > 0 and hq % hk == 0,
           lambda: f"k_cache: num_kv_heads ({hk}) must divide q's num_heads ({hq}) (GQA/MQA)")
    expect(0 < d <= MAX_HEAD_DIM and v_cache.shape[-1] <= MAX_HEAD_DIM,
           lambda: f"q/v_cache: head dims up to {MAX_HEAD_DIM} are supported, got {d}/{v_cache.shape[-1]}")
    expect(k_cache.shape[-1] == d,
           lambda: f"k_cache: head_dim {k_cache.shape[-1]} differs from q's head_dim {d}")
    expect(tuple(v_cache.shape[:-1]) == tuple(k_cache.shape[:-1]),
           lambda: f"v_cache: expected shape {tuple(k_cache.shape[:-1])} + (head_dim_v,) like k_cache, "
           f"got {tuple(v_cache.shape)}")
    fp8 = k_cache.dtype in FP8_DTYPES
    expect(k_cache.dtype == v_cache.dtype, lambda: f"v_cache: dtype {v_cache.dtype} != k_cache dtype {k_cache.dtype}")
    expect(fp8 or k_cache.dtype == q.dtype,
           lambda: f"k_cache: expected dtype {q.dtype} (like q) or an fp8 dtype, got {k_cache.dtype}")
    batch = plan.batch_size
    check_int_tensor("cu_seqlens_q", plan.cu_seqlens_q, (batch + 1,), "[batch + 1]")
    check_int_tensor("seqused_k", plan.seqused_k, (batch,), "[batch]")
    if plan.paged:
        expect(plan.page_table.dim() == 2 and plan.page_table.shape[0] == batch,
               lambda: f"page_table: expected [batch={batch}, max_pages], got {tuple(plan.page_table.shape)}")
        check_unit_stride("page_table", plan.page_table)
    else:
        check_int_tensor("cu_seqlens_k", plan.cu_seqlens_k, (batch + 1,), "[batch + 1]")
    check_rows(q, k_cache, plan)
    dv = v_cache.shape[-1]
    if out is not None:
        expect(tuple(out.shape) == (total_q, hq, dv) and out.dtype == q.dtype,
               lambda: f"out: expected shape {(total_q, hq, dv)} dtype {q.dtype}, got "
               f"{tuple(out.shape)} {out.dtype}")
    if sinks is not None:
        expect(tuple(sinks.shape) == (hq,), lambda: f"sinks: expected shape ({hq},) [num_heads], got {tuple(sinks.shape)}")
    for name, t in (("k_descale", k_descale), ("v_descale", v_descale)):
        if t is not None:
            expect(tuple(t.shape) == (batch, hk),
                   lambda: f"{name}: expected shape {(batch, hk)} [batch, num_kv_heads], got {tuple(t.shape)}")
    if (plan.spans is None) != (plan.span_counts is None):
        raise ValueError("spans/span_counts: a plan carries both or neither")
    if plan.spans is not None:
        from .spans import check_span_tensors
        check_span_tensors(plan.spans, plan.span_counts, batch, q.device)
    if q.device.type == "cpu" or debug_mode():
        check_lengths(plan, q, k_cache, params)
        check_scale("k_descale", k_descale)
        check_scale("v_descale", v_descale)


def check_alibi_slopes(slopes: torch.Tensor, num_heads: int,
                       device: torch.device | None = None) -> None:
    """ALiBi slopes: one float per query head (``[num_heads]``), on ``device`` when given
    (q's: adapters call this before they write the KV cache)."""
    expect(isinstance(slopes, torch.Tensor) and tuple(slopes.shape) == (num_heads,)
           and slopes.dtype in FLOAT_DTYPES,
           lambda: f"alibi_slopes: expected a float32 (or float16/bfloat16) tensor of shape "
           f"({num_heads},) [num_heads], got "
           + (f"{slopes.dtype} {tuple(slopes.shape)}" if isinstance(slopes, torch.Tensor)
              else type(slopes).__name__))
    if device is not None:
        check_device("alibi_slopes", slopes, device)


def check_lengths(plan: AttnPlan, q: torch.Tensor, k_cache: torch.Tensor,
                  params: AttnParams) -> None:
    """Host-side checks that read the plan's tensors (CPU tensors, or debug mode)."""
    num_pages = k_cache.shape[0] if plan.paged else None
    check_plan_values(plan, positional=params.positional, num_pages=num_pages,
                      page_size=k_cache.shape[1] if plan.paged else 1)
    total_q = int(plan.cu_seqlens_q[-1])
    expect(q.shape[0] == total_q or (plan.pad_rows and q.shape[0] > total_q),
           lambda: f"q: expected {total_q} rows (cu_seqlens_q[-1])"
           f"{' or more (padding rows)' if plan.pad_rows else ''}, got {q.shape[0]}")
    if not plan.paged:
        starts = plan.cu_seqlens_k.cpu()[:-1].long()
        k_lens = plan.seqused_k.cpu().long()
        used = k_lens > 0
        ends = starts + k_lens
        expect(bool((starts[used] >= 0).all()) and bool((ends[used] <= k_cache.shape[0]).all()),
               lambda: f"cu_seqlens_k/seqused_k: keys cu_seqlens_k[b] .. cu_seqlens_k[b] + "
               f"seqused_k[b] must lie in k's {k_cache.shape[0]} rows, got ends "
               f"{ends.tolist()[:8]}")


def check_plan_values(plan: AttnPlan, *, positional: bool, num_pages: int | None,
                      page_size: int | None = None) -> None:
    """A plan's offsets, lengths, page ids and spans, read on the host.

    ``positional``: causal or chunked layers (q_len <= k_len); ``num_pages``: the cache's page
    count when known (page ids of used pages must lie below it); ``page_size``: the table's
    page size (default ``plan.page_size``; needed for paged plans).
    """
    cu_q = plan.cu_seqlens_q.cpu()
    q_lens = cu_q[1:] - cu_q[:-1]
    k_lens = plan.seqused_k.cpu()
    expect(int(cu_q[0]) == 0, lambda: f"cu_seqlens_q: expected first entry 0, got {int(cu_q[0])}")
    expect(bool((k_lens >= 0).all()) and bool((q_lens >= 0).all()),
           "cu_seqlens_q/seqused_k: lengths must be non-negative")
    expect(plan.total_q is None or plan.total_q == int(cu_q[-1]),
           lambda: f"cu_seqlens_q: last entry {int(cu_q[-1])} differs from the plan's host "
           f"total_q {plan.total_q}")
    longest = int(q_lens.max()) if q_lens.numel() else 0
    expect(longest <= plan.max_seqlen_q,
           lambda: f"max_seqlen_q: {plan.max_seqlen_q} is below the longest query "
           f"({longest} rows, sequence {int(q_lens.argmax())}): it must bound every q_len")
    if positional:
        bad = (q_lens > k_lens).nonzero()
        expect(bad.numel() == 0, lambda: "cu_seqlens_q/seqused_k: q_len > k_len for sequence "
               f"{bad[0].item() if bad.numel() else -1}: with causal or chunked masks the "
               "queries are the last q_len of k_len keys")
    if plan.paged and k_lens.numel():
        check_page_values(plan, k_lens, num_pages, page_size or plan.page_size)
    if plan.spans is not None:
        from .spans import check_span_values
        check_span_values(plan.spans, plan.span_counts, k_lens)


def check_page_values(plan: AttnPlan, k_lens: torch.Tensor, num_pages: int | None,
                      page_size: int) -> None:
    """Enough page-table columns for every ``seqused_k``, and used page ids in range."""
    need = (k_lens + page_size - 1) // page_size
    expect(int(need.max()) <= plan.page_table.shape[1],
           lambda: f"page_table: {plan.page_table.shape[1]} columns, but seqused_k needs {int(need.max())}")
    cols = torch.arange(plan.page_table.shape[1])[None, :] < need[:, None]
    used = plan.page_table.cpu()[cols]
    high = num_pages if num_pages is not None else torch.iinfo(torch.int32).max
    expect(used.numel() == 0 or (int(used.min()) >= 0 and int(used.max()) < high),
           lambda: f"page_table: entries must lie in [0, {num_pages}) (k_cache.shape[0]) for used pages"
           if num_pages is not None else "page_table: entries must be >= 0 for used pages")


def validate_plan(plan: AttnPlan, *, positional: bool, num_pages: int | None = None,
                  page_size: int | None = None) -> None:
    """An engine's step plan, checked by its builder before any layer writes the cache: the
    tensors' values where reading them is free (CPU) or under ``ANYATTN_DEBUG=1``.
    ``page_size``: the table's page size when the plan does not carry it."""
    if plan.seqused_k.device.type == "cpu" or debug_mode():
        check_plan_values(plan, positional=positional, num_pages=num_pages,
                          page_size=page_size)


def check_kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    check_rank("k", k, 3, "[num_tokens, num_kv_heads, head_dim]")
    check_rank("v", v, 3, "[num_tokens, num_kv_heads, head_dim_v]")
    check_rank("k_cache", k_cache, 4, "[num_pages, page_size, num_kv_heads, head_dim]")
    check_rank("v_cache", v_cache, 4, "[num_pages, page_size, num_kv_heads, head_dim_v]")
    for name, t in (("v", v), ("k_cache", k_cache), ("v_cache", v_cache), ("slot_mapping", slot_mapping)):
        check_device(name, t, k.device)
    n = k.shape[0]
    expect(v.shape[0] == n and slot_mapping.shape[0] >= n,
           lambda: f"v/slot_mapping: expected {n} tokens like k, got v {tuple(v.shape)}, "
           f"slot_mapping {tuple(slot_mapping.shape)}")
    expect(slot_mapping.dim() == 1 and slot_mapping.dtype in (torch.int32, torch.int64),
           lambda: f"slot_mapping: expected int32/int64 [num_tokens], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    expect(tuple(k.shape[1:]) == tuple(k_cache.shape[2:]),
           lambda: f"k: expected [num_tokens, {k_cache.shape[2]}, {k_cache.shape[3]}] to match k_cache, got {tuple(k.shape)}")
    expect(tuple(v.shape[1:]) == tuple(v_cache.shape[2:]),
           lambda: f"v: expected [num_tokens, {v_cache.shape[2]}, {v_cache.shape[3]}] to match v_cache, got {tuple(v.shape)}")
    expect(k_cache.dtype == v_cache.dtype and (k_cache.dtype == k.dtype or k_cache.dtype in FP8_DTYPES),
           lambda: f"k_cache/v_cache: expected dtype {k.dtype} (like k) or fp8, got {k_cache.dtype}/{v_cache.dtype}")
    if k.device.type == "cpu" or debug_mode():
        slots = slot_mapping[:n]
        cap = k_cache.shape[0] * k_cache.shape[1]
        expect(slots.numel() == 0 or (int(slots.min()) >= -1 and int(slots.max()) < cap),
               lambda: f"slot_mapping: entries must be -1 (padding) or in [0, {cap})")
