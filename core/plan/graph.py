"""CUDA-graph plans: storage preallocated at the largest captured batch, filled in place.

A captured graph bakes in tensor addresses and launch grids. An engine builds each step's
plans as usual (:func:`~anyattn.core.plan.build.build_plan`) and hands them to
:meth:`GraphPlans.fill`, which copies them into storage and returns the storage's plans:
views of the same memory for every step of one batch size (addresses stay put), with a
split count and a kernel schedule that depend only on the batch size and static bounds. The
copies use ``copy_``/``fill_`` and never sync.

Storage is kept per (step kind, role): a step kind (decode, verify, ...) has one plan per
role (a single pass ``main``, or a cascade's ``main`` and ``draft`` plans, see
``core.cascade``). It is reserved explicitly (:meth:`GraphPlans.reserve`, when the engine
knows its bounds up front) or from the plans of the first capture (``capture=True``). A
replay must bring the roles and query widths its capture had: a captured graph's kernels
are fixed, so a step that needs other plans is refused rather than run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..providers import Workload
from ..semantics.checks import expect
from .plan import AttnPlan
from .schedule import choose_num_splits, device_sm_count


@dataclass
class _Storage:
    """One (step, role)'s buffers, at ``rows`` sequences (``rows_per_request`` per request)
    of at most ``max_seqlen_q`` queries and ``max_pages`` pages; ``max_spans > 0`` adds
    bidirectional-span storage (every plan then carries a span table, empty on steps without
    spans)."""

    rows: int
    rows_per_request: int
    max_pages: int
    max_seqlen_q: int
    page_size: int
    max_spans: int
    device: torch.device
    cu_seqlens_q: torch.Tensor = field(init=False)
    seqused_k: torch.Tensor = field(init=False)
    page_table: torch.Tensor = field(init=False)
    spans: torch.Tensor | None = field(init=False)
    span_counts: torch.Tensor | None = field(init=False)
    plans: dict[int, AttnPlan] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.int32, device=self.device)

        self.cu_seqlens_q = zeros(self.rows + 1)
        self.seqused_k = zeros(self.rows)
        self.page_table = zeros(self.rows, self.max_pages)
        self.spans = zeros(self.rows, self.max_spans, 2) if self.max_spans else None
        self.span_counts = zeros(self.rows) if self.max_spans else None

    @property
    def max_seqlen_k(self) -> int:
        return self.max_pages * self.page_size


class GraphPlans:
    """Plan storage of one engine's CUDA graphs (``max_batch``: the largest captured batch;
    ``workload``: the layers' tensor facts, so each batch size picks its kernels once)."""

    def __init__(self, max_batch: int, *, num_kv_heads: int, device: torch.device | str,
                 deterministic: bool = False, workload: Workload | None = None) -> None:
        self.max_batch = max_batch
        self.num_kv_heads = num_kv_heads
        self.device = torch.device(device)
        self.deterministic = deterministic
        self.workload = workload
        self._storage: dict[tuple[str, str], _Storage] = {}
        self._roles: dict[str, set[str]] = {}

    def reserve(self, step: str, role: str = "main", *, max_pages: int, max_seqlen_q: int,
                page_size: int, rows_per_request: int = 1, max_spans: int = 0) -> None:
        """Storage for ``step``'s ``role`` plans up to ``max_batch`` requests (outside any
        capture stream: engines call this before capturing)."""
        self._storage[(step, role)] = _Storage(
            self.max_batch * rows_per_request, rows_per_request, max_pages, max_seqlen_q, page_size, max_spans,
            self.device)
        self._roles.setdefault(step, set()).add(role)

    def fits(self, step: str, batch_size: int, max_seqlen_q: int, role: str = "main") -> bool:
        """Whether ``step``'s storage holds a plan of ``batch_size`` requests."""
        storage = self._storage.get((step, role))
        return (storage is not None and max_seqlen_q <= storage.max_seqlen_q
                and batch_size <= self.max_batch)

    def fill(self, step: str, plans: dict[str, AttnPlan], batch_size: int, *,
             capture: bool = False) -> dict[str, AttnPlan]:
        """Copy one ``step``'s plans (for ``batch_size`` requests) into its storage and
        return the storage's plans; ``capture`` reserves storage from these plans where none
        is reserved yet."""
        if capture and step not in self._roles:
            for role, plan in plans.items():
                expect(plan.paged, lambda: f"plans: {step}.{role} must be paged")
                self.reserve(step, role, max_pages=plan.page_table.shape[1],
                             max_seqlen_q=plan.max_seqlen_q, page_size=plan.page_size,
                             rows_per_request=plan.batch_size // batch_size,
                             max_spans=plan.spans.shape[1] if plan.has_spans else 0)
        expect(self._roles.get(step) == set(plans),
               lambda: f"plans: this {step} step needs {sorted(plans)}, but its CUDA graph was "
               f"captured with {sorted(self._roles.get(step, ()))} (another speculative topology)")
        expect(0 < batch_size <= self.max_batch,
               lambda: f"batch_size: expected 1..{self.max_batch}, got {batch_size}")
        return {role: self._copy(self._storage[(step, role)], f"{step}.{role}", plan, batch_size)
                for role, plan in plans.items()}

    def plan(self, step: str, batch_size: int, role: str = "main") -> AttnPlan:
        """The storage plan ``fill`` returns for ``batch_size`` requests (capture and replays)."""
        storage = self._storage[(step, role)]
        return self._plan(storage, batch_size * storage.rows_per_request)

    def _plan(self, storage: _Storage, rows: int) -> AttnPlan:
        """The plan a graph of ``rows`` sequences captures and every replay reuses (one
        object per row count, so its kernel schedule is chosen once)."""
        plan = storage.plans.get(rows)
        if plan is None:
            splits = choose_num_splits(rows, self.num_kv_heads, storage.max_seqlen_q,
                                       storage.max_seqlen_k, device_sm_count(self.device),
                                       deterministic=self.deterministic)
            spans = storage.spans is not None
            plan = storage.plans[rows] = AttnPlan(
                cu_seqlens_q=storage.cu_seqlens_q[: rows + 1], seqused_k=storage.seqused_k[:rows],
                max_seqlen_q=storage.max_seqlen_q, max_seqlen_k=storage.max_seqlen_k,
                page_table=storage.page_table[:rows], page_size=storage.page_size,
                num_splits=splits, deterministic=self.deterministic, pad_rows=True,
                for_graphs=True,
                spans=storage.spans[:rows] if spans else None,
                span_counts=storage.span_counts[:rows] if spans else None)
            if self.workload is not None:
                plan.schedule(self.workload)
        return plan

    def _copy(self, storage: _Storage, name: str, src: AttnPlan, batch_size: int) -> AttnPlan:
        """Copy ``src`` into the plan of ``batch_size`` requests, in place; rows past its
        sequences become empty sequences (no queries, no keys)."""
        rows = batch_size * storage.rows_per_request
        n, pages = src.batch_size, src.page_table.shape[1] if src.paged else 0
        expect(src.paged and src.page_size == storage.page_size,
               lambda: f"plans: {name} must be paged in pages of {storage.page_size} like its "
               f"storage, got page_size {src.page_size}")
        expect(src.max_seqlen_q <= storage.max_seqlen_q,
               lambda: f"plans: {name} has {src.max_seqlen_q} queries per row, but its CUDA "
               f"graph was captured with {storage.max_seqlen_q}")
        expect(n <= rows and pages <= storage.max_pages,
               lambda: f"plans: {name}: {n} sequences / {pages} pages exceed the graph's "
               f"{rows} / {storage.max_pages}")
        expect(not src.has_spans or src.spans.shape[1] <= storage.max_spans,
               lambda: f"plans: {name}: {src.spans.shape[1]} spans per sequence exceed the "
               f"graph storage's {storage.max_spans}")
        plan = self._plan(storage, rows)
        plan.cu_seqlens_q[: n + 1].copy_(src.cu_seqlens_q, non_blocking=True)
        plan.cu_seqlens_q[n + 1:].copy_(src.cu_seqlens_q[n:].expand(rows - n), non_blocking=True)
        plan.seqused_k[:n].copy_(src.seqused_k, non_blocking=True)
        plan.seqused_k[n:].fill_(0)
        plan.page_table[:n, :pages].copy_(src.page_table, non_blocking=True)
        if src.has_spans:
            plan.spans[:n, : src.spans.shape[1]].copy_(src.spans, non_blocking=True)
            plan.span_counts[:n].copy_(src.span_counts, non_blocking=True)
            plan.span_counts[n:].fill_(0)
        elif plan.has_spans:
            plan.span_counts.fill_(0)
        if "key_starts" in plan._memo:
            torch.cumsum(plan.seqused_k, 0, out=plan.key_starts[1:])
        for key, table in plan._memo.items():
            if isinstance(key, tuple) and key[0] == "safe_page_table":
                torch.clamp(plan.page_table, 0, max(key[1] - 1, 0), out=table)
        return plan
