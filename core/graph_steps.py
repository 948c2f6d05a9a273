"""CUDA-graph storage for every kind of step an engine captures, each one or more plans.

A step kind (decode, verify, ...) has one plan per role (a single pass, or a cascade's
prefix and draft plans, see ``core.cascade``). At capture the plans of each role get a
``GraphPlanBuffers`` sized for the largest batch; every replay copies its plans into the
same storage, and must have the roles and query widths the capture had: a captured graph's
kernels are fixed, so a replay that needs other plans is refused rather than run.
"""
from __future__ import annotations

import torch

from .checks import expect
from .graph import GraphPlanBuffers
from .plan import AttnPlan


class GraphStepPlans:
    def __init__(self, *, max_batch: int, num_kv_heads: int, device: torch.device | str,
                 deterministic: bool = False) -> None:
        self.max_batch = max_batch
        self.num_kv_heads = num_kv_heads
        self.device = torch.device(device)
        self.deterministic = deterministic
        self.buffers: dict[tuple[str, str], GraphPlanBuffers] = {}
        self.roles: dict[str, set[str]] = {}

    def fill(self, step: str, plans: dict[str, AttnPlan], batch_size: int, *,
             in_capture: bool) -> dict[str, AttnPlan]:
        """Copy one ``step``'s plans (for ``batch_size`` requests) into its storage and
        return the storage's plans; ``in_capture`` creates the storage (outside any capture
        stream: engines call this before capturing)."""
        if in_capture:
            self.roles[step] = set(plans)
        expect(self.roles.get(step) == set(plans),
               lambda: f"plans: this {step} step needs {sorted(plans)}, but its CUDA graph was "
               f"captured with {sorted(self.roles.get(step, ()))} (another speculative topology)")
        return {role: self._copy((step, role), plan, batch_size, in_capture)
                for role, plan in plans.items()}

    def _copy(self, key: tuple[str, str], plan: AttnPlan, batch_size: int,
              in_capture: bool) -> AttnPlan:
        buffers = self.buffers.get(key)
        if buffers is None and in_capture:
            expect(plan.page_size is not None and plan.paged,
                   lambda: f"plans: {'.'.join(key)} must be paged with its page_size set")
            buffers = GraphPlanBuffers(
                self.max_batch * (plan.batch_size // batch_size), plan.page_table.shape[1],
                max_seqlen_q=plan.max_seqlen_q, page_size=plan.page_size,
                num_kv_heads=self.num_kv_heads, device=self.device,
                deterministic=self.deterministic)
            self.buffers[key] = buffers
        expect(buffers is not None and buffers.max_seqlen_q == plan.max_seqlen_q,
               lambda: f"plans: {'.'.join(key)} has {plan.max_seqlen_q} queries per row, but its "
               f"CUDA graph was captured with {getattr(buffers, 'max_seqlen_q', None)}")
        return buffers.update(plan.batch_size, cu_seqlens_q=plan.cu_seqlens_q,
                              seqused_k=plan.seqused_k, page_table=plan.page_table)
