"""The per-step attention plan: built once per forward step, shared by every layer."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttnPlan:
    """Device-side batch description plus the host ints a launch needs.

    Sequence ``b`` owns query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` and ``seqused_k[b]``
    keys (cached + new). Keys live either in a paged cache addressed through ``page_table``
    (``[B, max_pages]``, page ids) or, when ``page_table`` is None, contiguously from row
    ``cu_seqlens_k[b]`` of a ``[total_k, Hk, D]`` tensor.

    Every tensor is int32 on the compute device. ``max_seqlen_q`` / ``max_seqlen_k`` are
    upper bounds (a CUDA graph captures them once), and ``num_splits`` is the static number
    of key splits the kernels launch with: none of them is read back from the device.
    ``keys_span_rows`` (contiguous keys) says ``seqused_k[b]`` is the whole span
    ``cu_seqlens_k[b+1] - cu_seqlens_k[b]``. ``schedules`` holds the kernel choice per
    workload (:mod:`core.providers`), made on first use and reused by every layer.

    ``page_size`` is the page size ``page_table`` counts in; None means the cache's own
    (``k_cache.shape[1]``). A plan whose table holds cache token slots (a speculative
    key list, see ``core.spec_tree``) has page size 1 over a cache of any page size;
    :func:`anyattn.core.views.cache_view` gives the view of the cache a plan addresses.

    ``spans`` (``[B, S, 2]``) and ``span_counts`` (``[B]``) are the step's bidirectional spans
    (:mod:`core.spans`), both present or both None.

    ``total_q`` / ``total_k``: ``cu_seqlens_q[-1]`` / ``cu_seqlens_k[-1]`` when the builder knows
    them on the host (built from host lengths), else None. Every call checks q's rows (and
    contiguous keys' rows) against them without a device read; ``cu_seqlens_q[0]`` is 0 for
    every plan anyattn's builders make. A plan copied with new offsets
    (``dataclasses.replace``) takes new totals too.

    ``pad_rows``: q may hold rows past ``cu_seqlens_q[-1]``, an engine's padding tokens
    (CUDA-graph plans, :class:`anyattn.core.graph.GraphPlanBuffers`, whose padding sequences
    own no rows); those output rows are not written. Otherwise q's rows must be exactly
    ``cu_seqlens_q[-1]``.
    """

    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    page_table: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    num_splits: int = 1
    deterministic: bool = False
    keys_span_rows: bool = False
    page_size: int | None = None
    spans: torch.Tensor | None = None
    span_counts: torch.Tensor | None = None
    total_q: int | None = None
    total_k: int | None = None
    pad_rows: bool = False
    schedules: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.seqused_k.shape[0]

    @property
    def paged(self) -> bool:
        return self.page_table is not None
