"""Index builders: offsets and page tables from an engine's lengths and token tables.

Pure tensor functions (no host reads of device values), shared by every adapter.
"""
from __future__ import annotations

import torch


def cu_seqlens(lengths: torch.Tensor) -> torch.Tensor:
    """``[B]`` lengths -> ``[B+1]`` int32 exclusive prefix sums (starting at 0)."""
    out = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


def uniform_cu_seqlens(batch: int, per_seq: int, device: torch.device | str) -> torch.Tensor:
    """Query offsets ``[batch + 1]`` (int32) for ``per_seq`` queries in every sequence: a
    decode step (1), a speculative verify step (the draft token count), one query per row."""
    if per_seq <= 0:
        raise ValueError(f"per_seq: expected a positive query count per sequence, got {per_seq}")
    return torch.arange(0, (batch + 1) * per_seq, per_seq, dtype=torch.int32, device=device)


def page_table_from_token_table(token_table: torch.Tensor, page_size: int) -> torch.Tensor:
    """Token-granular slot table (SGLang's ``req_to_token`` rows) -> page ids.

    Slots of one page are consecutive, so every ``page_size``-th column divided by the page
    size names the page.
    """
    if page_size == 1:
        return token_table.to(torch.int32)
    return (token_table[:, ::page_size] // page_size).to(torch.int32)


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
