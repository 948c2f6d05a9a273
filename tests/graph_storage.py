"""One CUDA-graph step kind on :class:`anyattn.core.GraphPlans`, driven from raw step fields
(offsets, key counts, a page table) as an engine's builder would: build the step's plan,
fill the storage, get the storage's plan back."""
from __future__ import annotations

import torch

from anyattn.core import AttnPlan, GraphPlans, build_plan

STEP = "step"


class GraphStorage:
    def __init__(self, max_batch: int, max_pages: int, *, max_seqlen_q: int, page_size: int,
                 num_kv_heads: int, device, workload=None, max_spans: int = 0,
                 deterministic: bool = False) -> None:
        self.graphs = GraphPlans(max_batch, num_kv_heads=num_kv_heads, device=device,
                                 deterministic=deterministic, workload=workload)
        self.graphs.reserve(STEP, max_pages=max_pages, max_seqlen_q=max_seqlen_q,
                            page_size=page_size, max_spans=max_spans)
        self.max_seqlen_q, self.page_size = max_seqlen_q, page_size

    def plan(self, batch_size: int) -> AttnPlan:
        return self.graphs.plan(STEP, batch_size)

    def update(self, batch_size: int, *, cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor,
               page_table: torch.Tensor, spans=None) -> AttnPlan:
        step = build_plan(cu_seqlens_q, seqused_k, max_seqlen_q=self.max_seqlen_q,
                          max_seqlen_k=page_table.shape[1] * self.page_size,
                          page_table=page_table, page_size=self.page_size, spans=spans)
        return self.graphs.fill(STEP, {"main": step}, batch_size)["main"]
