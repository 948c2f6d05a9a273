"""A call's tensors checked against its plan, before any kernel runs.

The plan checked its own tensors when it was built (:mod:`core.plan.validate`); here only
what changes per call: q, the caches (already viewed in the plan's pages), ``out``, sinks,
descales and ALiBi slopes, against the plan and each other. Host attributes on every call;
the plan's device values where reading them is free (CPU tensors) or under
``ANYATTN_DEBUG=1`` (:mod:`core.semantics.checks` says why).
"""
from __future__ import annotations

import torch

from .plan.plan import AttnPlan
from .plan.validate import check_plan_values
from .semantics.checks import (FLOAT_DTYPES, FP8_DTYPES, MAX_HEAD_DIM, check_alibi_slopes,
                               check_device, check_rank, check_scale, expect)
from .semantics.params import AttnParams

_CACHE_LAYOUT = {True: "[num_pages, page_size, num_kv_heads, head_dim]",
                 False: "[total_k, num_kv_heads, head_dim]"}


def check_call(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttnPlan,
               *, sinks: torch.Tensor | None, k_descale: torch.Tensor | None,
               v_descale: torch.Tensor | None, out: torch.Tensor | None,
               alibi_slopes: torch.Tensor | None = None) -> None:
    """Raise ValueError (naming the argument) unless the call's tensors fit the plan.

    These checks read only the tensors' shapes, dtypes and devices (host facts): a plan
    remembers the signatures that passed (:func:`anyattn.core.run.attention`), so a step's
    layers pay them once."""
    if alibi_slopes is not None and not isinstance(alibi_slopes, torch.Tensor):
        check_alibi_slopes(alibi_slopes, q.shape[-2])
    _check_host(q, k_cache, v_cache, plan, sinks=sinks, k_descale=k_descale,
                v_descale=v_descale, out=out, alibi_slopes=alibi_slopes)


def check_values(q: torch.Tensor, k_cache: torch.Tensor, plan: AttnPlan, params: AttnParams,
                 *, k_descale: torch.Tensor | None, v_descale: torch.Tensor | None) -> None:
    """The checks that read device values: every call with CPU tensors, and under
    ``ANYATTN_DEBUG=1`` (:mod:`core.semantics.checks` says why not otherwise)."""
    check_lengths(plan, q, k_cache, params)
    check_scale("k_descale", k_descale)
    check_scale("v_descale", v_descale)


def _check_host(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttnPlan,
                *, sinks: torch.Tensor | None, k_descale: torch.Tensor | None,
                v_descale: torch.Tensor | None, out: torch.Tensor | None,
                alibi_slopes: torch.Tensor | None) -> None:
    check_rank("q", q, 3, "[total_q, num_heads, head_dim]")
    expect(q.dtype in FLOAT_DTYPES, lambda: f"q: expected float16, bfloat16 or float32, got {q.dtype}")
    device = q.device
    expect(plan.device == device,
           lambda: f"plan: its tensors are on {plan.device}, q on {device} (build the plan "
           "on q's device)")
    if alibi_slopes is not None:
        check_alibi_slopes(alibi_slopes, q.shape[1], device)
    rank = 4 if plan.paged else 3
    check_rank("k_cache", k_cache, rank, _CACHE_LAYOUT[plan.paged])
    check_rank("v_cache", v_cache, rank, _CACHE_LAYOUT[plan.paged])
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out), ("sinks", sinks),
                    ("k_descale", k_descale), ("v_descale", v_descale)):
        check_device(name, t, device)
    total_q, hq, d = q.shape
    hk, dv = k_cache.shape[-2], v_cache.shape[-1]
    expect(hk > 0 and hq % hk == 0,
           lambda: f"k_cache: num_kv_heads ({hk}) must divide q's num_heads ({hq}) (GQA/MQA)")
    expect(0 < d <= MAX_HEAD_DIM and dv <= MAX_HEAD_DIM,
           lambda: f"q/v_cache: head dims up to {MAX_HEAD_DIM} are supported, got {d}/{dv}")
    expect(k_cache.shape[-1] == d,
           lambda: f"k_cache: head_dim {k_cache.shape[-1]} differs from q's head_dim {d}")
    expect(v_cache.shape[:-1] == k_cache.shape[:-1],
           lambda: f"v_cache: expected shape {tuple(k_cache.shape[:-1])} + (head_dim_v,) like "
           f"k_cache, got {tuple(v_cache.shape)}")
    expect(k_cache.dtype == v_cache.dtype,
           lambda: f"v_cache: dtype {v_cache.dtype} != k_cache dtype {k_cache.dtype}")
    expect(k_cache.dtype == q.dtype or k_cache.dtype in FP8_DTYPES,
           lambda: f"k_cache: expected dtype {q.dtype} (like q) or an fp8 dtype, got {k_cache.dtype}")
    check_rows(q, k_cache, plan)
    if out is not None:
        expect(out.shape == (total_q, hq, dv) and out.dtype == q.dtype,
               lambda: f"out: expected shape {(total_q, hq, dv)} dtype {q.dtype}, got "
               f"{tuple(out.shape)} {out.dtype}")
    if sinks is not None:
        expect(sinks.shape == (hq,),
               lambda: f"sinks: expected shape ({hq},) [num_heads], got {tuple(sinks.shape)}")


def check_rows(q: torch.Tensor, k_cache: torch.Tensor, plan: AttnPlan) -> None:
    """q's rows (and contiguous keys' rows) against the plan's host totals, when it has them."""
    if plan.total_q is not None:
        expect(q.shape[0] == plan.total_q,
               lambda: f"q: expected {plan.total_q} rows (cu_seqlens_q[-1]), got {q.shape[0]}")
    if not plan.paged and plan.total_k is not None:
        expect(plan.total_k <= k_cache.shape[0],
               lambda: f"cu_seqlens_k: last entry {plan.total_k} runs past k's {k_cache.shape[0]} "
               "rows [total_k, num_kv_heads, head_dim]")


def check_lengths(plan: AttnPlan, q: torch.Tensor, k_cache: torch.Tensor,
                  params: AttnParams) -> None:
    """Checks that read the plan's tensors (CPU tensors, or debug mode)."""
    check_plan_values(plan, positional=params.positional,
                      num_pages=k_cache.shape[0] if plan.paged else None)
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
