"""Speculative-decoding key expansion: which draft tokens each draft token may attend.

A speculative step attends in two parts whose results are merged by log-sum-exp
(:func:`anyattn.core.run.merge_state`):

1. the committed prefix, read through the engine's ordinary page table, and
2. the draft tokens, which form a tree (EAGLE topk > 1) or per-branch chains (multi-step draft
   decode). Each draft token sees its own list of draft keys.

The lists of part 2 are expressed as a *token table*: a page table whose "pages" hold one token
each, so the entries are cache token slots and the plan has page size 1 (the cache is read
through a ``[num_slots, 1, Hk, D]`` view, :func:`anyattn.core.plan.views.cache_view`). Nothing is
copied, and the same plan works whatever page size the engine's cache uses. Every row has
exactly one query (the draft token) and the keys of the row are the first ``seqused_k[row]``
slots of its table row; attention over them is non-causal (the visibility is already in the
list). :func:`anyattn.core.cascade.cascade_attention` runs both parts and the merge.

All functions are pure and sync-free: shapes come from host ints the caller holds, so they
serve eager steps and CUDA-graph replays alike.
"""
from __future__ import annotations

import torch

from ..semantics.checks import expect
from .build import build_plan
from .indices import uniform_cu_seqlens
from .plan import AttnPlan


def per_token_rows(x: torch.Tensor, tokens_per_seq: int) -> torch.Tensor:
    """Repeat each sequence's row (a length, slots, a page-table row) once per draft token."""
    return x.repeat_interleave(tokens_per_seq, dim=0)


def draft_visibility(custom_mask: torch.Tensor, prefix_lens: torch.Tensor,
                     num_draft: int) -> torch.Tensor:
    """Extract the draft-to-draft block of a flattened per-request tree mask.

    ``custom_mask`` is the layout SGLang (and FlashInfer) use: for request ``b`` a row-major
    boolean block of ``num_draft x (prefix_lens[b] + num_draft)`` starting at
    ``sum_{c<b} num_draft * (prefix_lens[c] + num_draft)``; row ``i`` says which keys draft
    token ``i`` sees. The prefix columns are all visible in an EAGLE tree, so only the last
    ``num_draft`` columns of each row matter.

    Returns ``[B * num_draft, num_draft]`` bool: row ``b * num_draft + i`` column ``j`` is
    True when draft token ``i`` of request ``b`` attends draft token ``j``.
    """
    if custom_mask.dim() != 1:
        raise ValueError("custom_mask: expected a flattened 1-D mask, got shape "
                         f"{tuple(custom_mask.shape)}")
    if prefix_lens.dim() != 1:
        raise ValueError(f"prefix_lens: expected [batch], got shape {tuple(prefix_lens.shape)}")
    if num_draft <= 0:
        raise ValueError(f"num_draft: expected a positive number of draft tokens, got {num_draft}")
    prefix = prefix_lens.to(torch.int64)
    row_len = prefix + num_draft                          # [B]
    block = num_draft * row_len                           # [B]
    start = torch.cumsum(block, 0) - block                # [B] exclusive prefix sums
    rows = torch.arange(num_draft, device=prefix.device)
    cols = torch.arange(num_draft, device=prefix.device)
    index = (start[:, None, None] + rows[None, :, None] * row_len[:, None, None]
             + prefix[:, None, None] + cols[None, None, :])
    return custom_mask[index.reshape(-1, num_draft)].to(torch.bool)


def visible_key_table(visible: torch.Tensor, key_slots: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact each row's visible draft keys to the front of a token table.

    ``visible`` is ``[T, n]`` bool (from :func:`draft_visibility`); ``key_slots`` is ``[T, n]``
    cache token slots of the ``n`` draft keys each row may choose from. Returns
    ``(seqused_k [T] int32, table [T, n] int32)``: row ``t`` reads ``table[t, :seqused_k[t]]``,
    the visible slots in their original (tree) order. Entries past ``seqused_k`` are valid
    slots too, so a kernel that over-reads stays in bounds.
    """
    if visible.shape != key_slots.shape or visible.dim() != 2:
        raise ValueError(f"visible/key_slots: expected two [tokens, num_draft] tensors, got "
                         f"{tuple(visible.shape)} and {tuple(key_slots.shape)}")
    n = visible.shape[1]
    cols = torch.arange(n, device=visible.device).expand_as(visible)
    # Visible columns sort before hidden ones; the column index keeps the order stable.
    order = torch.argsort(torch.where(visible, cols, cols + n), dim=1)
    table = key_slots.gather(1, order).to(torch.int32)
    return visible.sum(dim=1, dtype=torch.int32), table


def build_token_table_plan(seqused_k: torch.Tensor, table: torch.Tensor, *,
                           num_kv_heads: int, deterministic: bool = False) -> AttnPlan:
    """One query per row over a token table (page size 1): the draft part of a spec step."""
    cu_q = uniform_cu_seqlens(seqused_k.shape[0], 1, seqused_k.device)
    return build_plan(cu_q, seqused_k, max_seqlen_q=1, max_seqlen_k=table.shape[1],
                      page_table=table, num_kv_heads=num_kv_heads,
                      deterministic=deterministic, page_size=1, total_q=seqused_k.shape[0])


def tree_token_table(custom_mask: torch.Tensor, prefix_lens: torch.Tensor,
                     draft_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target verify of a draft tree: per draft token, its visible draft-key slots.

    ``draft_slots`` is ``[B, n]``: the cache slots of each request's ``n`` draft tokens in
    mask column order. Returns ``(seqused_k [B*n], table [B*n, n])`` for
    :func:`build_token_table_plan`.
    """
    if draft_slots.dim() != 2 or draft_slots.shape[0] != prefix_lens.shape[0]:
        raise ValueError(f"draft_slots: expected [batch={prefix_lens.shape[0]}, num_draft], "
                         f"got {tuple(draft_slots.shape)}")
    n = draft_slots.shape[1]
    visible = draft_visibility(custom_mask, prefix_lens, n)
    return visible_key_table(visible, per_token_rows(draft_slots, n))


def chain_token_table(branch_slots: torch.Tensor, depth: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft decode step ``depth - 1``: every branch sees its own first ``depth`` tokens.

    ``branch_slots`` is ``[B * topk, num_steps]``, the cache slots each branch writes its draft
    tokens to, step by step. Returns ``(seqused_k [B*topk], table [B*topk, depth])``.
    """
    if branch_slots.dim() != 2 or not 0 < depth <= branch_slots.shape[1]:
        raise ValueError(f"branch_slots/depth: expected [branches, num_steps >= {depth}] and "
                         f"depth >= 1, got {tuple(branch_slots.shape)} and {depth}")
    rows = branch_slots.shape[0]
    seqused = torch.full((rows,), depth, dtype=torch.int32, device=branch_slots.device)
    return seqused, branch_slots[:, :depth].to(torch.int32)


def check_chain(custom_mask: torch.Tensor, prefix_lens: torch.Tensor, num_draft: int) -> None:
    """Refuse a draft mask that is not a causal chain (token ``i`` sees exactly ``0..i``).

    For a step the engine declares a chain (EAGLE topk 1), which is then run as one causal
    pass: a tree there would otherwise be computed as a chain without a word. Reads the mask
    back to the host, so callers run it where that is free (CPU) or in debug mode.
    """
    visible = draft_visibility(custom_mask, prefix_lens, num_draft)
    chain = torch.ones(num_draft, num_draft, dtype=torch.bool, device=visible.device).tril()
    bad = (visible.view(-1, num_draft, num_draft) != chain).flatten(1).any(1).nonzero()
    expect(bad.numel() == 0, lambda: f"custom_mask: the step is declared a chain (topk 1) but the "
           f"draft mask of request {int(bad[0])} is a tree; pass its topk (> 1) with the tree")
