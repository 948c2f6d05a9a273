"""``build_plan``: an engine's batch description as an :class:`AttnPlan`.

Nothing here reads a device tensor back to the host: every size that shapes a launch comes
from an argument the caller already holds on the host, so the same code serves eager steps
and CUDA-graph replays.
"""
from __future__ import annotations

import torch

from ..providers import Workload
from .plan import AttnPlan
from .schedule import choose_num_splits, device_sm_count


def build_plan(cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor | None, *, max_seqlen_q: int,
               max_seqlen_k: int, page_table: torch.Tensor | None = None,
               cu_seqlens_k: torch.Tensor | None = None, num_kv_heads: int = 1,
               num_splits: int | None = None, deterministic: bool = False,
               page_size: int | None = None, workload: Workload | None = None,
               spans: tuple[torch.Tensor, torch.Tensor] | None = None,
               total_q: int | None = None, total_k: int | None = None,
               for_graphs: bool = False) -> AttnPlan:
    """Assemble a plan; ``num_splits=None`` picks the split count from static sizes.

    With contiguous keys, ``seqused_k=None`` means every sequence uses its whole
    ``cu_seqlens_k`` span. ``page_size`` is the page size ``page_table`` counts in (required
    with a page table: the engine's page size, or 1 for a table of token slots).
    ``workload`` (the layers' tensor facts, when the caller knows them) makes the kernel
    choice now rather than at the first call (:mod:`core.plan.schedule`).
    ``spans``: the step's bidirectional spans as ``(spans, span_counts)`` from
    :func:`anyattn.core.semantics.spans.span_table`. ``total_q`` / ``total_k``: ``cu_seqlens_q[-1]`` /
    ``cu_seqlens_k[-1]`` when the caller holds them on the host (every call then checks q's and
    k's rows against them, see :class:`AttnPlan`). ``for_graphs``: the plan will be captured in
    a CUDA graph and replayed (:class:`AttnPlan` says what it changes).

    ``max_seqlen_q`` must bound every sequence's query count (it sizes the launch grid: rows
    past it would not be computed); ``ANYATTN_DEBUG=1`` (or CPU tensors) checks it.
    """
    if (page_table is None) == (cu_seqlens_k is None):
        raise ValueError("build_plan: pass exactly one of page_table [B, max_pages] "
                         "(paged keys) or cu_seqlens_k [B+1] (contiguous keys)")
    if page_table is not None and page_size is None:
        raise ValueError("page_size: required with page_table (the tokens per page its ids "
                         "count in; 1 for a table of token slots)")
    whole_rows = seqused_k is None
    if whole_rows:
        if cu_seqlens_k is None:
            raise ValueError("seqused_k: required int32 [batch] with a paged cache")
        seqused_k = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
    batch = seqused_k.shape[0]
    if num_splits is None or num_splits <= 0 or deterministic:
        num_splits = choose_num_splits(batch, num_kv_heads, max_seqlen_q, max_seqlen_k,
                                       device_sm_count(seqused_k.device),
                                       deterministic=deterministic)
    plan = AttnPlan(
        cu_seqlens_q=cu_seqlens_q.to(torch.int32),
        seqused_k=seqused_k.to(torch.int32),
        max_seqlen_q=int(max_seqlen_q),
        max_seqlen_k=int(max_seqlen_k),
        page_table=None if page_table is None else page_table.to(torch.int32),
        cu_seqlens_k=None if cu_seqlens_k is None else cu_seqlens_k.to(torch.int32),
        num_splits=int(num_splits),
        deterministic=deterministic,
        keys_span_rows=whole_rows,
        page_size=page_size,
        spans=None if spans is None else spans[0],
        span_counts=None if spans is None else spans[1],
        total_q=None if total_q is None else int(total_q),
        total_k=None if total_k is None else int(total_k),
        for_graphs=for_graphs,
    )
    if workload is not None:
        plan.schedule(workload)
    return plan
