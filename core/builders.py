"""Pure functions that turn an engine's batch description into an :class:`AttnPlan`.

Nothing here reads a device tensor back to the host: every size that shapes a launch comes
from an argument the caller already holds on the host, so the same code serves eager steps
and CUDA-graph replays.
"""
from __future__ import annotations

import functools

import torch

from . import providers
from .plan import AttnPlan
from .providers import Workload

# Below this many keys per split, splitting costs more in the merge than it gains.
MIN_SPLIT_TOKENS = 128  # one BLOCK_N key tile
MAX_SPLITS = 64


def cu_seqlens(lengths: torch.Tensor) -> torch.Tensor:
    """``[B]`` lengths -> ``[B+1]`` int32 exclusive prefix sums (starting at 0)."""
    out = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


def page_table_from_token_table(token_table: torch.Tensor, page_size: int) -> torch.Tensor:
    """Token-granular slot table (SGLang's ``req_to_token`` rows) -> page ids.

    Slots of one page are consecutive, so every ``page_size``-th column divided by the page
    size names the page.
    """
    if page_size == 1:
        return token_table.to(torch.int32)
    return (token_table[:, ::page_size] // page_size).to(torch.int32)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a nominal 8 elsewhere (CPU, interpreter)."""
    if device.type != "cuda":
        return 8
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _nearest_power_of_two(x: int) -> int:
    """The power of two nearest to ``x >= 1`` on a log scale."""
    low = 1 << (x.bit_length() - 1)
    return 2 * low if x * x > 2 * low * low else low


def choose_num_splits(batch_size: int, num_kv_heads: int, max_seqlen_q: int,
                      max_seqlen_k: int, num_sms: int, *, deterministic: bool = False,
                      q_rows_per_tile: int = 64) -> int:
    """How many key splits a launch uses, from static sizes only.

    Enough (batch x kv-head x query-tile) programs fill the GPU without splitting; otherwise
    keys are split until about two waves of programs exist (the split count rounded to the
    nearest power of two, which measured best on the H100: 16x32K reads at 2.97 TB/s with 4
    splits and 2.83 with 3), never below MIN_SPLIT_TOKENS keys per split. Deterministic mode never
    splits: each row then reduces over its keys in the same fixed tiles whatever else is in
    the batch (bitwise-stable, slower at small batch).
    """
    if batch_size <= 0 or max_seqlen_k <= 0 or deterministic:
        return 1
    q_tiles = max(1, -(-max_seqlen_q // q_rows_per_tile))
    programs = batch_size * num_kv_heads * q_tiles
    if programs >= num_sms:
        return 1
    want = _nearest_power_of_two(-(-2 * num_sms // programs))
    by_length = max(1, max_seqlen_k // MIN_SPLIT_TOKENS)
    return max(1, min(want, by_length, MAX_SPLITS))


def build_plan(cu_seqlens_q: torch.Tensor, seqused_k: torch.Tensor | None, *, max_seqlen_q: int,
               max_seqlen_k: int, page_table: torch.Tensor | None = None,
               cu_seqlens_k: torch.Tensor | None = None, num_kv_heads: int = 1,
               num_splits: int | None = None, deterministic: bool = False,
               page_size: int | None = None, workload: Workload | None = None,
               spans: tuple[torch.Tensor, torch.Tensor] | None = None,
               total_q: int | None = None, total_k: int | None = None) -> AttnPlan:
    """Assemble a plan; ``num_splits=None`` picks the split count from static sizes.

    With contiguous keys, ``seqused_k=None`` means every sequence uses its whole
    ``cu_seqlens_k`` span. ``page_size`` is the page size ``page_table`` counts in (None: the
    cache's own). ``workload`` (the layers' tensor facts, when the caller knows them) makes
    the kernel choice now rather than at the first call (:mod:`core.providers`).
    ``spans``: the step's bidirectional spans as ``(spans, span_counts)`` from
    :func:`anyattn.core.spans.span_table`. ``total_q`` / ``total_k``: ``cu_seqlens_q[-1]`` /
    ``cu_seqlens_k[-1]`` when the caller holds them on the host (every call then checks q's and
    k's rows against them, see :class:`AttnPlan`).

    ``max_seqlen_q`` must bound every sequence's query count (it sizes the launch grid: rows
    past it would not be computed); ``ANYATTN_DEBUG=1`` (or CPU tensors) checks it.
    """
    if (page_table is None) == (cu_seqlens_k is None):
        raise ValueError("build_plan: pass exactly one of page_table [B, max_pages] "
                         "(paged keys) or cu_seqlens_k [B+1] (contiguous keys)")
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
    )
    if workload is not None:
        providers.schedule(plan, workload)
    return plan


def uniform_cu_seqlens(batch: int, per_seq: int, device: torch.device | str) -> torch.Tensor:
    """Query offsets ``[batch + 1]`` (int32) for ``per_seq`` queries in every sequence: a
    decode step (1), a speculative verify step (the draft token count), one query per row."""
    if per_seq <= 0:
        raise ValueError(f"per_seq: expected a positive query count per sequence, got {per_seq}")
    return torch.arange(0, (batch + 1) * per_seq, per_seq, dtype=torch.int32, device=device)


def token_table_rows(token_table: torch.Tensor, rows: torch.Tensor, width: int,
                     offset: torch.Tensor | None = None) -> torch.Tensor:
    """Columns ``offset[b] .. offset[b] + width`` (or from 0) of rows ``rows`` of a token
    table (SGLang's ``req_to_token``: one cache slot per token position), ``[B, width]``.

    Columns past the table's end are clamped to its last column: they lie beyond every key
    count and are never read, but must still hold valid slots.
    """
    rows = rows.long()
    if offset is None and width <= token_table.shape[1]:
        return token_table[rows, :width]
    cols = torch.arange(width, device=rows.device)[None, :]
    if offset is not None:
        cols = cols + offset.long()[:, None]
    return token_table[rows[:, None], cols.clamp_max(token_table.shape[1] - 1)]
