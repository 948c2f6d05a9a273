"""Per-step metadata for the SGLang backend: which keys each query row reads.

Each SGLang forward mode is described as one or two *layouts*: raw int32 tensors (query
offsets, key counts, a page table) plus static bounds. The same layout functions feed the
eager path (turned into plans by ``core.builders``) and the CUDA-graph path (copied into
``core.graph.GraphPlanBuffers`` in place), so capture, replay and eager steps cannot drift.

Key facts from SGLang 0.5.23 these functions rely on:

- ``req_to_token[req, pos]`` is the cache slot of token ``pos`` of a request (token
  granular); slots of one page are consecutive, so every ``page_size``-th column names a page.
- In EXTEND / MIXED / DRAFT_EXTEND_V2, ``seq_lens`` counts cached + new tokens.
- In TARGET_VERIFY, ``seq_lens`` EXCLUDES the draft tokens, which sit at positions
  ``seq_lens .. seq_lens + num_draft - 1`` of ``req_to_token``.
- In multi-step draft decode, ``seq_lens`` excludes the draft tokens and ``out_cache_loc``
  holds every step's write slots laid out ``[batch, topk, num_steps]``.
- Encoder-decoder models keep the encoder tokens at the start of each ``req_to_token`` row
  and the decoder tokens after them (at offset ``encoder_lens[b]``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from anyattn.core import spec_tree
from anyattn.core.builders import build_plan, cu_seqlens, page_table_from_token_table
from anyattn.core.graph import GraphPlanBuffers
from anyattn.core.plan import AttnPlan


@dataclass
class Layout:
    """One attention pass before it becomes a plan.

    ``token_table`` marks a page table whose entries are cache token slots (the cache is then
    read with page size 1) rather than page ids.
    """

    cu_seqlens_q: torch.Tensor
    seqused_k: torch.Tensor
    page_table: torch.Tensor
    max_seqlen_q: int
    token_table: bool = False


@dataclass
class Pass:
    plan: AttnPlan
    token_table: bool


@dataclass
class StepMetadata:
    """What every layer of one forward step reads.

    ``main`` is the pass over the request's cache; it is causal unless ``draft`` is set, in
    which case it is the prefix half of a cascade (each request's draft tokens, non-causal) and
    ``draft`` holds the draft keys each draft token sees, merged by log-sum-exp. ``cross``
    reads the encoder tokens (cross-attention layers of encoder-decoder models).
    """

    main: Pass
    draft: Pass | None = None
    cross: Pass | None = None


def _arange_q(rows: int, per_row: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, (rows + 1) * per_row, per_row, dtype=torch.int32, device=device)


def _cu_q(q_per_row: torch.Tensor | int, rows: int, device: torch.device) -> torch.Tensor:
    """Query offsets from per-row query counts (a tensor) or one count for every row."""
    if isinstance(q_per_row, int):
        return _arange_q(rows, q_per_row, device)
    return cu_seqlens(q_per_row)


def token_rows(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, width: int,
               offset: torch.Tensor | None = None) -> torch.Tensor:
    """Token slots ``[B, width]`` of each request, starting at column ``offset[b]`` (or 0).

    Columns past the end of ``req_to_token`` are clamped to its last column: they lie beyond
    every ``seqused_k`` and are never read, but must still be valid slots.
    """
    rows = req_pool_indices.long()
    if offset is None and width <= req_to_token.shape[1]:
        return req_to_token[rows, :width]
    cols = torch.arange(width, device=rows.device)[None, :]
    if offset is not None:
        cols = cols + offset.long()[:, None]
    cols = cols.clamp_max(req_to_token.shape[1] - 1)
    return req_to_token[rows[:, None], cols]


class LayoutBuilder:
    """Turns a ForwardBatch into layouts; holds the engine constants the modes need."""

    def __init__(self, *, req_to_token: torch.Tensor, page_size: int, max_context_len: int,
                 topk: int, num_draft_tokens: int, speculative_num_steps: int,
                 speculative_step_id: int) -> None:
        self.req_to_token = req_to_token
        self.page_size = page_size
        self.max_context_len = max_context_len
        self.topk = topk
        self.num_draft_tokens = num_draft_tokens
        self.speculative_num_steps = speculative_num_steps
        self.speculative_step_id = speculative_step_id

    # -- shared pieces -------------------------------------------------------------------
    def pages(self, req_pool_indices: torch.Tensor, max_tokens: int) -> torch.Tensor:
        """Page ids covering the first ``max_tokens`` tokens of each request."""
        num_pages = max(1, -(-max_tokens // self.page_size))
        slots = token_rows(self.req_to_token, req_pool_indices, num_pages * self.page_size)
        return page_table_from_token_table(slots, self.page_size)

    def _paged(self, fb, q_per_row: torch.Tensor | int, seqused_k: torch.Tensor,
               max_q: int, max_k: int) -> Layout:
        bs = seqused_k.shape[0]
        return Layout(_cu_q(q_per_row, bs, seqused_k.device), seqused_k.to(torch.int32),
                      self.pages(fb.req_pool_indices[:bs], max_k), max_q)

    def _decoder_tokens(self, fb, q_per_row: torch.Tensor | int, seqused_k: torch.Tensor,
                        max_q: int, max_k: int) -> Layout:
        """Self-attention of an encoder-decoder model: decoder tokens follow the encoder's."""
        bs = seqused_k.shape[0]
        table = token_rows(self.req_to_token, fb.req_pool_indices[:bs], max(1, max_k),
                           offset=fb.encoder_lens[:bs])
        return Layout(_cu_q(q_per_row, bs, seqused_k.device), seqused_k.to(torch.int32),
                      table.to(torch.int32), max_q, token_table=True)

    # -- modes ---------------------------------------------------------------------------
    def plain(self, fb, q_lens: torch.Tensor | int, max_q: int, max_k: int, *,
              clamp_k: bool = False) -> Layout:
        """DECODE, EXTEND, MIXED, DRAFT_EXTEND_V2: queries are the last tokens of each row.

        ``clamp_k`` raises each key count to at least its query count: graph replays pad
        rows with a seq_len fill value but a fixed query width, and those rows' output is
        discarded.
        """
        bs = fb.batch_size
        seq_lens = fb.seq_lens[:bs]
        if clamp_k and isinstance(q_lens, torch.Tensor):
            seq_lens = torch.maximum(seq_lens, q_lens.to(seq_lens.dtype))
        if getattr(fb, "encoder_lens", None) is not None:
            return self._decoder_tokens(fb, q_lens, seq_lens, max_q, max_k)
        return self._paged(fb, q_lens, seq_lens, max_q, max_k)

    def verify_chain(self, fb, max_k: int) -> Layout:
        """TARGET_VERIFY, topk = 1: an extend of ``num_draft`` causal tokens."""
        n = self.num_draft_tokens
        seq_lens = fb.seq_lens[: fb.batch_size] + n
        return self._paged(fb, n, seq_lens, n, max_k + n)

    def draft_chain(self, fb, max_k: int) -> Layout:
        """Draft decode, topk = 1: the step's token follows ``step + 1`` draft tokens."""
        depth = self.speculative_step_id + 1
        seq_lens = fb.seq_lens[: fb.batch_size] + depth
        return self._paged(fb, 1, seq_lens, 1, max_k + depth)

    def prefix_shared(self, fb, tokens_per_seq: int, max_k: int) -> Layout:
        """Cascade prefix half: a request's draft tokens all read its whole prefix, once.

        Non-causal, so a request may have more draft tokens than prefix tokens.
        """
        bs = fb.batch_size
        return Layout(_arange_q(bs, tokens_per_seq, fb.seq_lens.device),
                      fb.seq_lens[:bs].to(torch.int32),
                      self.pages(fb.req_pool_indices[:bs], max_k), tokens_per_seq)

    def verify_tree(self, fb) -> Layout:
        """Cascade draft half of a tree verify: visible draft slots from the custom mask."""
        bs, n = fb.batch_size, self.num_draft_tokens
        custom_mask = getattr(fb.spec_info, "custom_mask", None)
        if custom_mask is None:
            raise ValueError("TARGET_VERIFY with topk > 1: spec_info.custom_mask is required "
                             "(the draft tree), got None")
        seq_lens = fb.seq_lens[:bs]
        draft_slots = token_rows(self.req_to_token, fb.req_pool_indices[:bs], n,
                                 offset=seq_lens)
        seqused, table = spec_tree.tree_token_table(custom_mask, seq_lens, draft_slots)
        return Layout(_arange_q(bs * n, 1, seqused.device), seqused, table, 1, token_table=True)

    def draft_tree(self, fb) -> Layout:
        """Cascade draft half of draft decode, topk > 1: each branch sees its own chain."""
        bs = fb.batch_size
        branches = self.speculative_num_steps
        expected = bs * self.topk * branches
        loc = fb.out_cache_loc
        if loc is None or loc.shape[0] < expected:
            raise ValueError(f"draft decode: out_cache_loc must hold batch x topk x num_steps = "
                             f"{expected} slots, got {None if loc is None else tuple(loc.shape)}")
        slots = loc[:expected].view(bs * self.topk, branches)
        seqused, table = spec_tree.chain_token_table(slots, self.speculative_step_id + 1)
        return Layout(_arange_q(bs * self.topk, 1, seqused.device), seqused, table, 1,
                      token_table=True)

    def cross(self, fb, q_per_row: torch.Tensor | int, max_q: int, max_enc: int) -> Layout:
        """Cross-attention: every decoder token sees all of its request's encoder tokens."""
        bs = fb.batch_size
        enc = fb.encoder_lens[:bs].to(torch.int32)
        table = token_rows(self.req_to_token, fb.req_pool_indices[:bs], max(1, max_enc))
        return Layout(_cu_q(q_per_row, bs, enc.device), enc, table.to(torch.int32), max_q,
                      token_table=True)


def eager_pass(layout: Layout, *, num_kv_heads: int, max_seqlen_k: int,
               deterministic: bool) -> Pass:
    """Plan a layout for one eager step; ``max_seqlen_k`` is the host-side bound."""
    if layout.token_table:
        max_seqlen_k = layout.page_table.shape[1]
    plan = build_plan(layout.cu_seqlens_q, layout.seqused_k, max_seqlen_q=layout.max_seqlen_q,
                      max_seqlen_k=max_seqlen_k, page_table=layout.page_table,
                      num_kv_heads=num_kv_heads, deterministic=deterministic)
    return Pass(plan, layout.token_table)


class GraphPasses:
    """CUDA-graph plan storage: one ``GraphPlanBuffers`` per (mode, pass), at the largest batch.

    Buffers are created on first use (outside any capture: SGLang calls
    ``init_forward_metadata_out_graph`` before capturing), then every capture and replay of
    that pass copies into the same storage.
    """

    def __init__(self, *, max_bs: int, max_context_len: int, page_size: int,
                 num_kv_heads: int, device: torch.device, deterministic: bool) -> None:
        self.max_bs = max_bs
        self.max_context_len = max_context_len
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads
        self.device = device
        self.deterministic = deterministic
        self.buffers: dict[str, GraphPlanBuffers] = {}

    def fill(self, key: str, layout: Layout, *, rows_per_seq: int = 1,
             max_tokens: int | None = None) -> Pass:
        """Copy ``layout`` into the buffers named ``key`` and return the static plan view.

        ``rows_per_seq`` sizes buffers whose rows are per draft token; ``max_tokens`` is the
        key-table width of token-table passes (paged passes cover the whole context).
        """
        buffers = self.buffers.get(key)
        if buffers is None:
            if layout.token_table:
                width, page_size = max_tokens, 1
            else:
                width, page_size = -(-self.max_context_len // self.page_size), self.page_size
            buffers = GraphPlanBuffers(self.max_bs * rows_per_seq, width,
                                       max_seqlen_q=layout.max_seqlen_q, page_size=page_size,
                                       num_kv_heads=self.num_kv_heads, device=self.device,
                                       deterministic=self.deterministic)
            self.buffers[key] = buffers
        rows = layout.seqused_k.shape[0]
        plan = buffers.update(rows, cu_seqlens_q=layout.cu_seqlens_q,
                              seqused_k=layout.seqused_k, page_table=layout.page_table)
        return Pass(plan, layout.token_table)
