"""The per-step attention plan: built once per forward step, shared by every layer."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..providers import Workload
from .schedule import Schedule, make_schedule
from .validate import check_plan_tensors


@dataclass(frozen=True, eq=False)
class AttnPlan:
    """Device-side batch description plus the host facts every call of the step reads.

    Sequence ``b`` owns query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` and ``seqused_k[b]``
    keys (cached + new). Keys live either in a paged cache addressed through ``page_table``
    (``[B, max_pages]``, page ids counted in pages of ``page_size`` tokens) or, when
    ``page_table`` is None, contiguously from row ``cu_seqlens_k[b]`` of a ``[total_k, Hk, D]``
    tensor (``page_size`` is then None: there are no pages).

    Every tensor is int32 on the compute device. ``max_seqlen_q`` / ``max_seqlen_k`` are
    upper bounds (a CUDA graph captures them once), and ``num_splits`` is the static number
    of key splits the Triton kernels launch with: none of them is read back from the device.
    ``keys_span_rows`` (contiguous keys) says ``seqused_k[b]`` is the whole span
    ``cu_seqlens_k[b+1] - cu_seqlens_k[b]``.

    ``page_size`` is the page size ``page_table`` counts in. A plan whose table holds cache
    token slots (a speculative key list, see ``core.plan.spec_tree``) has page size 1 over a
    cache of any page size: every call views the cache it is given in the plan's pages
    (:func:`anyattn.core.plan.views.cache_view`).

    ``spans`` (``[B, S, 2]``) and ``span_counts`` (``[B]``) are the step's bidirectional spans
    (:mod:`core.semantics.spans`), both present or both None.

    ``total_q`` / ``total_k``: ``cu_seqlens_q[-1]`` / ``cu_seqlens_k[-1]`` when the builder knows
    them on the host (built from host lengths), else None. Every call checks q's rows (and
    contiguous keys' rows) against them without a device read; ``cu_seqlens_q[0]`` is 0 for
    every plan anyattn's builders make. A plan copied with new offsets
    (``dataclasses.replace``) takes new totals too.

    ``pad_rows``: q may hold rows past ``cu_seqlens_q[-1]``, an engine's padding tokens
    (CUDA-graph plans, :class:`anyattn.core.plan.graph.GraphPlans`, whose padding sequences
    own no rows); those output rows are not written. Otherwise q's rows must be exactly
    ``cu_seqlens_q[-1]``.

    ``for_graphs``: the plan is captured in CUDA graphs and replayed (GraphPlans' plans), so
    its calls' cost is GPU time; an eager plan's is mostly host time. Kernel choices that
    trade one for the other read it (the Triton split merge: a second kernel for replays,
    fused into the first for eager calls, :mod:`core.providers.triton.attention`).

    Derived when the plan is built, read by every call (never re-derived per layer):
    ``batch_size``, ``paged``, ``has_spans``; the kernel schedule per :class:`Workload`
    (:meth:`schedule`: provider, Triton tile and splits), chosen once; ``key_starts``, where
    each sequence's keys start in key-side masks (made on first use, one prefix sum).
    """

    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    page_table: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    page_size: int | None = None
    num_splits: int = 1
    deterministic: bool = False
    keys_span_rows: bool = False
    spans: torch.Tensor | None = None
    span_counts: torch.Tensor | None = None
    total_q: int | None = None
    total_k: int | None = None
    pad_rows: bool = False
    for_graphs: bool = False
    batch_size: int = field(init=False)
    paged: bool = field(init=False)
    has_spans: bool = field(init=False)
    schedules: dict[Workload, Schedule] = field(init=False, repr=False)
    _memo: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_plan_tensors(self)
        derived = dict(batch_size=self.seqused_k.shape[0], paged=self.page_table is not None,
                       has_spans=self.spans is not None, schedules={}, _memo={})
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def device(self) -> torch.device:
        return self.seqused_k.device

    def schedule(self, w: Workload) -> Schedule:
        """The kernels this plan's calls of workload ``w`` launch, chosen on first use."""
        found = self.schedules.get(w)
        if found is None:
            found = self.schedules[w] = make_schedule(self, w)
        return found

    def safe_page_table(self, num_pages: int) -> torch.Tensor:
        """``page_table`` with every id clamped into ``[0, num_pages)``: the table anyattn's
        kernels read, so a bad id never sends a load outside a cache of ``num_pages`` pages
        (one clamp per plan and cache size, not one per tile; :class:`~anyattn.core.plan.
        graph.GraphPlans` refreshes it in place)."""
        key = ("safe_page_table", num_pages)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self.page_table.clamp(0, max(num_pages - 1, 0))
        return found

    @property
    def key_starts(self) -> torch.Tensor:
        """``[B+1]`` int32: where sequence ``b``'s keys start in key-side layouts
        (``cu_seqlens_k``, or the prefix sums of ``seqused_k`` for paged keys; on device, no
        sync). :class:`~anyattn.core.plan.graph.GraphPlans` refreshes it in place."""
        if self.cu_seqlens_k is not None:
            return self.cu_seqlens_k
        starts = self._memo.get("key_starts")
        if starts is None:
            starts = self._memo["key_starts"] = torch.zeros(
                self.batch_size + 1, dtype=torch.int32, device=self.device)
            torch.cumsum(self.seqused_k, 0, out=starts[1:])
        return starts
