"""Input validation: every error names the argument and the shape/dtype it expected.

All checks run before a kernel launches or a cache is written. Checks that would read device
memory (page-table bounds) run only where that is free (CPU tensors) or in debug mode
(``ANYATTN_DEBUG=1``), because a host sync inside a captured CUDA graph is not allowed.
"""
from __future__ import annotations

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


def check_attention_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           plan: AttnPlan, params: AttnParams, *, sinks: torch.Tensor | None,
                           k_descale: torch.Tensor | None, v_descale: torch.Tensor | None,
                           out: torch.Tensor | None,
                           alibi_slopes: torch.Tensor | None = None) -> None:
    """Validate q/cache/plan agreement; raises ValueError before anything runs."""
    check_rank("q", q, 3, "[total_q, num_heads, head_dim]")
    expect(q.dtype in FLOAT_DTYPES, lambda: f"q: expected float16, bfloat16 or float32, got {q.dtype}")
    expect(params.softmax_scale > 0,
           lambda: f"softmax_scale: expected a positive float, got {params.softmax_scale}")
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
    else:
        check_int_tensor("cu_seqlens_k", plan.cu_seqlens_k, (batch + 1,), "[batch + 1]")
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
        check_lengths(plan, k_cache, params)


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


def check_lengths(plan: AttnPlan, k_cache: torch.Tensor, params: AttnParams) -> None:
    """Host-side checks that read the plan's tensors (CPU tensors, or debug mode)."""
    cu_q = plan.cu_seqlens_q.cpu()
    q_lens = cu_q[1:] - cu_q[:-1]
    k_lens = plan.seqused_k.cpu()
    if params.positional:
        bad = (q_lens > k_lens).nonzero()
        expect(bad.numel() == 0, lambda: "cu_seqlens_q/seqused_k: q_len > k_len for sequence "
               f"{bad[0].item() if bad.numel() else -1}: with causal or chunked masks the "
               "queries are the last q_len of k_len keys")
    expect(bool((k_lens >= 0).all()) and bool((q_lens >= 0).all()),
           "cu_seqlens_q/seqused_k: lengths must be non-negative")
    if plan.paged and k_lens.numel():
        page_size, num_pages = k_cache.shape[1], k_cache.shape[0]
        need = (k_lens + page_size - 1) // page_size
        expect(int(need.max()) <= plan.page_table.shape[1],
               lambda: f"page_table: {plan.page_table.shape[1]} columns, but seqused_k needs {int(need.max())}")
        cols = torch.arange(plan.page_table.shape[1])[None, :] < need[:, None]
        used = plan.page_table.cpu()[cols]
        expect(used.numel() == 0 or (int(used.min()) >= 0 and int(used.max()) < num_pages),
               lambda: f"page_table: entries must lie in [0, {num_pages}) (k_cache.shape[0]) for used pages")
    if plan.spans is not None:
        from .spans import check_span_values
        check_span_values(plan.spans, plan.span_counts, k_lens)


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
