"""A plan's own consistency: its tensors' dtypes, shapes and devices when it is built (host
attributes, once per plan), and their values where reading them is free (CPU tensors) or
under ``ANYATTN_DEBUG=1``, so an engine's builder refuses a bad step before any layer writes
its cache."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..semantics.checks import check_int_tensor, check_unit_stride, debug_mode, expect
from ..semantics.spans import check_span_tensors, check_span_values

if TYPE_CHECKING:
    from .plan import AttnPlan


def check_plan_tensors(plan: AttnPlan) -> None:
    """Host attributes: int32 offsets and lengths of matching batch, a 2-D page table with a
    page size, tensors on one device (no device read)."""
    batch = plan.seqused_k.shape[0]
    check_int_tensor("cu_seqlens_q", plan.cu_seqlens_q, (batch + 1,), "[batch + 1]")
    check_int_tensor("seqused_k", plan.seqused_k, (batch,), "[batch]")
    if plan.page_table is not None:
        expect(plan.page_table.dim() == 2 and plan.page_table.shape[0] == batch,
               lambda: f"page_table: expected [batch={batch}, max_pages], got "
               f"{tuple(plan.page_table.shape)}")
        check_unit_stride("page_table", plan.page_table)
        expect(isinstance(plan.page_size, int) and plan.page_size > 0,
               lambda: "page_size: required with page_table (the tokens per page its ids count "
               f"in; 1 for a table of token slots), got {plan.page_size!r}")
    else:
        expect(plan.cu_seqlens_k is not None, "build_plan: pass exactly one of page_table "
               "[B, max_pages] (paged keys) or cu_seqlens_k [B+1] (contiguous keys)")
        check_int_tensor("cu_seqlens_k", plan.cu_seqlens_k, (batch + 1,), "[batch + 1]")
    if (plan.spans is None) != (plan.span_counts is None):
        raise ValueError("spans/span_counts: a plan carries both or neither")
    device = plan.seqused_k.device
    if plan.spans is not None:
        check_span_tensors(plan.spans, plan.span_counts, batch, device)
    for name in ("cu_seqlens_q", "page_table", "cu_seqlens_k"):
        t = getattr(plan, name)
        expect(t is None or t.device == device,
               lambda: f"{name}: expected a tensor on {device} (like seqused_k), got {t.device}")


def check_plan_values(plan: AttnPlan, *, positional: bool, num_pages: int | None) -> None:
    """A plan's offsets, lengths, page ids and spans, read on the host.

    ``positional``: causal or chunked layers (q_len <= k_len); ``num_pages``: the cache's page
    count in the plan's pages when known (page ids of used pages must lie below it).
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
        check_page_values(plan, k_lens, num_pages)
    if plan.spans is not None:
        check_span_values(plan.spans, plan.span_counts, k_lens)


def check_page_values(plan: AttnPlan, k_lens: torch.Tensor, num_pages: int | None) -> None:
    """Enough page-table columns for every ``seqused_k``, and used page ids in range."""
    need = (k_lens + plan.page_size - 1) // plan.page_size
    expect(int(need.max()) <= plan.page_table.shape[1],
           lambda: f"page_table: {plan.page_table.shape[1]} columns, but seqused_k needs {int(need.max())}")
    cols = torch.arange(plan.page_table.shape[1])[None, :] < need[:, None]
    used = plan.page_table.cpu()[cols]
    high = num_pages if num_pages is not None else torch.iinfo(torch.int32).max
    expect(used.numel() == 0 or (int(used.min()) >= 0 and int(used.max()) < high),
           lambda: f"page_table: entries must lie in [0, {num_pages}) (k_cache.shape[0]) for used pages"
           if num_pages is not None else "page_table: entries must be >= 0 for used pages")


def validate_plan(plan: AttnPlan, *, positional: bool, num_pages: int | None = None) -> None:
    """An engine's step plan, checked by its builder before any layer writes the cache: the
    tensors' values where reading them is free (CPU) or under ``ANYATTN_DEBUG=1``.
    ``num_pages``: the cache's page count in the plan's pages, when known."""
    if plan.seqused_k.device.type == "cpu" or debug_mode():
        check_plan_values(plan, positional=positional, num_pages=num_pages)
