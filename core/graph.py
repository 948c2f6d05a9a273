"""CUDA-graph plan buffers: preallocated at the largest captured batch, updated in place.

A captured graph bakes in tensor addresses and launch grids. ``GraphPlanBuffers.plan(bs)``
returns views of the same storage for every step at batch size ``bs`` (so addresses stay
put), with a split count that depends only on ``bs`` and the static bounds; ``update`` copies
the new step's metadata into those views with ``copy_``/``fill_`` and never syncs.
"""
from __future__ import annotations

import torch

from . import providers
from .builders import choose_num_splits, device_sm_count
from .plan import AttnPlan
from .providers import Workload


class GraphPlanBuffers:
    """``max_spans > 0`` adds bidirectional-span storage (:mod:`core.spans`): every plan then
    carries a span table (kernels compiled with spans, empty steps have no spans), and a
    replay copies up to ``max_spans`` spans per sequence in place."""

    def __init__(self, max_batch: int, max_pages: int, *, max_seqlen_q: int,
                 page_size: int, num_kv_heads: int, device: torch.device | str,
                 deterministic: bool = False, workload: Workload | None = None,
                 max_spans: int = 0) -> None:
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.max_seqlen_q = max_seqlen_q
        self.max_seqlen_k = max_pages * page_size
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads
        self.deterministic = deterministic
        self.workload = workload
        self.cu_seqlens_q = torch.zeros(max_batch + 1, dtype=torch.int32, device=self.device)
        self.seqused_k = torch.zeros(max_batch, dtype=torch.int32, device=self.device)
        self.page_table = torch.zeros(max_batch, max_pages, dtype=torch.int32, device=self.device)
        self.max_spans = max_spans
        self.spans = (torch.zeros(max_batch, max_spans, 2, dtype=torch.int32, device=self.device)
                      if max_spans else None)
        self.span_counts = (torch.zeros(max_batch, dtype=torch.int32, device=self.device)
                            if max_spans else None)
        self._plans: dict[int, AttnPlan] = {}

    def num_splits(self, batch_size: int) -> int:
        return choose_num_splits(batch_size, self.num_kv_heads, self.max_seqlen_q,
                                 self.max_seqlen_k, device_sm_count(self.device),
                                 deterministic=self.deterministic)

    def plan(self, batch_size: int) -> AttnPlan:
        """The plan a graph of this batch size captures and every replay reuses (one object
        per batch size, so its kernel schedule is chosen once)."""
        if not 0 < batch_size <= self.max_batch:
            raise ValueError(f"batch_size: expected 1..{self.max_batch}, got {batch_size}")
        plan = self._plans.get(batch_size)
        if plan is None:
            plan = self._plans[batch_size] = AttnPlan(
                cu_seqlens_q=self.cu_seqlens_q[: batch_size + 1],
                seqused_k=self.seqused_k[:batch_size], max_seqlen_q=self.max_seqlen_q,
                max_seqlen_k=self.max_seqlen_k, page_table=self.page_table[:batch_size],
                num_splits=self.num_splits(batch_size), deterministic=self.deterministic,
                page_size=self.page_size, pad_rows=True,
                spans=None if self.spans is None else self.spans[:batch_size],
                span_counts=None if self.spans is None else self.span_counts[:batch_size])
            if self.workload is not None:
                providers.schedule(plan, self.workload)
        return plan

    def update(self, batch_size: int, *, cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor,
               page_table: torch.Tensor,
               spans: tuple[torch.Tensor, torch.Tensor] | None = None) -> AttnPlan:
        """Copy one step's metadata in place; rows past the real batch become empty sequences.

        ``cu_seqlens_q`` is ``[n + 1]`` and ``seqused_k`` ``[n]`` for the ``n <= batch_size``
        real sequences; ``page_table`` is ``[n, pages]`` with ``pages <= max_pages``;
        ``spans`` is ``(spans [n, S, 2], span_counts [n])`` with ``S <= max_spans``.
        """
        plan = self.plan(batch_size)
        n = seqused_k.shape[0]
        if n > batch_size or page_table.shape[1] > self.page_table.shape[1]:
            raise ValueError(f"update: {n} sequences / {page_table.shape[1]} pages exceed the "
                             f"captured batch {batch_size} / {self.page_table.shape[1]} pages")
        if spans is not None and spans[0].shape[1] > self.max_spans:
            raise ValueError(f"update: {spans[0].shape[1]} spans per sequence exceed the graph "
                             f"buffers' {self.max_spans}")
        plan.cu_seqlens_q[: n + 1].copy_(cu_seqlens_q, non_blocking=True)
        # Padding sequences own no queries and no keys.
        plan.cu_seqlens_q[n + 1:].copy_(cu_seqlens_q[n:].expand(batch_size - n), non_blocking=True)
        plan.seqused_k[:n].copy_(seqused_k, non_blocking=True)
        plan.seqused_k[n:].fill_(0)
        plan.page_table[:n, : page_table.shape[1]].copy_(page_table, non_blocking=True)
        if spans is not None:
            table, counts = spans
            plan.spans[:n, : table.shape[1]].copy_(table, non_blocking=True)
            plan.span_counts[:n].copy_(counts, non_blocking=True)
            plan.span_counts[n:].fill_(0)
        elif plan.span_counts is not None:
            plan.span_counts.fill_(0)
        return plan
