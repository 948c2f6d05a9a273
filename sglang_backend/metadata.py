"""Per-step metadata: an SGLang ForwardBatch translated into anyattn plans.

Each forward mode becomes one plan (``main``), or two for a speculative cascade (``main``
over the prefix, ``draft`` over each draft token's draft keys; ``core.cascade``), plus
``cross`` for the encoder tokens of encoder-decoder models. Plans over SGLang's pages carry
its page size; plans over token slots carry page size 1. The same functions serve eager
steps (host bounds from ``seq_lens_cpu``) and CUDA graphs (static bounds).

Key facts from SGLang 0.5.23 these functions rely on:

- ``req_to_token[req, pos]`` is the cache slot of token ``pos`` of a request (token
  granular); slots of one page are consecutive, so every ``page_size``-th column names a page.
- In EXTEND / MIXED / DRAFT_EXTEND_V2, ``seq_lens`` counts cached + new tokens.
- In TARGET_VERIFY, ``seq_lens`` EXCLUDES the draft tokens, which sit at positions
  ``seq_lens .. seq_lens + num_draft - 1`` of ``req_to_token`` (``topology.py``).
- In multi-step draft decode, ``seq_lens`` excludes the draft tokens and ``out_cache_loc``
  holds every step's write slots laid out ``[batch, topk, num_steps]``.
- Encoder-decoder models keep the encoder tokens at the start of each ``req_to_token`` row
  and the decoder tokens after them (at offset ``encoder_lens[b]``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from anyattn.core import (AttnPlan, build_plan, cu_seqlens, debug_mode, expect,
                          page_table_from_token_table, spec_tree, token_table_rows,
                          uniform_cu_seqlens, validate_plan)

from .topology import VerifyShape, verify_shape


@dataclass
class StepMetadata:
    """What every layer of one forward step reads (see the module docstring)."""

    main: AttnPlan
    draft: AttnPlan | None = None
    cross: AttnPlan | None = None


@dataclass(frozen=True)
class EngineShape:
    """The engine constants the plans need (``topk`` / ``num_draft_tokens``: the server's
    EAGLE settings, 0 when unset; ``step_id``: the draft step this backend runs;
    ``num_slots``: the KV pool's token slots, padding page included, when known)."""

    req_to_token: torch.Tensor
    page_size: int
    max_context_len: int
    num_kv_heads: int
    deterministic: bool
    topk: int
    num_draft_tokens: int
    num_steps: int
    step_id: int
    num_slots: int | None = None


class StepPlanner:
    """Builds the plans of one step (``plans``), mode by mode."""

    def __init__(self, engine: EngineShape) -> None:
        self.engine = engine

    def is_draft_step(self, fb) -> bool:
        return (fb.forward_mode.is_decode_or_idle() and fb.spec_info is not None
                and self.engine.num_steps > 0)

    def plans(self, fb, *, graph: bool) -> dict[str, AttnPlan]:
        mode, engine = fb.forward_mode, self.engine
        q_lens: torch.Tensor | int = 1
        max_q = 1
        if self.is_draft_step(fb):
            plans = (self._draft_tree(fb, graph) if engine.topk > 1
                     else {"main": self._draft_chain(fb, graph)})
        elif mode.is_decode_or_idle():
            plans = {"main": self._plain(fb, 1, 1, graph)}
        elif mode.is_target_verify():
            if getattr(fb.spec_info, "ragged_verify_layout", None) is not None:
                raise NotImplementedError("anyattn: ragged target verify is not supported")
            shape = verify_shape(fb.spec_info, topk_setting=engine.topk,
                                 draft_setting=engine.num_draft_tokens)
            plans = self._verify_tree(fb, shape, graph) if shape.tree else \
                {"main": self._verify_chain(fb, shape, graph)}
        elif mode.is_extend(include_draft_extend_v2=True):
            q_lens, max_q = self._extend_q_lens(fb, graph)
            plans = {"main": self._plain(fb, q_lens, max_q, graph)}
        else:
            raise NotImplementedError(f"anyattn: forward mode {mode.name} is not supported")
        if getattr(fb, "encoder_lens", None) is not None:
            if "draft" in plans:
                raise NotImplementedError("anyattn: speculative decoding of encoder-decoder models")
            plans["cross"] = self._cross(fb, q_lens, max_q, graph)
        self._validate(plans)
        return plans

    def _validate(self, plans: dict[str, AttnPlan]) -> None:
        """Refuse a bad batch before any layer writes the pool: each plan's lengths, table
        width and slots (or pages) against the pool, where reading them is free (CPU tensors)
        or under ``ANYATTN_DEBUG=1`` (:func:`anyattn.core.validate_plan`). The main
        plan's queries are the last of its keys, except a cascade's prefix rows."""
        slots = self.engine.num_slots
        for role, plan in plans.items():
            validate_plan(
                plan, positional=role == "main" and "draft" not in plans,
                num_pages=None if slots is None else slots // plan.page_size)

    # -- building blocks -----------------------------------------------------------------
    def _key_bound(self, fb, graph: bool, extra: int = 0) -> int:
        """Host bound on a row's keys: ``seq_lens`` plus the ``extra`` keys a mode reads past
        it; a CUDA graph captures the whole context."""
        host = getattr(fb, "seq_lens_cpu", None)
        if graph or host is None or host.numel() == 0:
            return self.engine.max_context_len
        return max(1, int(host[: fb.batch_size].max())) + extra

    def _plan(self, q_lens: torch.Tensor | int, seqused_k: torch.Tensor, table: torch.Tensor,
              max_q: int, max_k: int, page_size: int) -> AttnPlan:
        rows = seqused_k.shape[0]
        uniform = isinstance(q_lens, int)
        cu_q = uniform_cu_seqlens(rows, q_lens, seqused_k.device) if uniform else cu_seqlens(q_lens)
        return build_plan(cu_q, seqused_k.to(torch.int32), max_seqlen_q=max_q, max_seqlen_k=max_k,
                          page_table=table.to(torch.int32), num_kv_heads=self.engine.num_kv_heads,
                          deterministic=self.engine.deterministic, page_size=page_size,
                          total_q=rows * q_lens if uniform else None)

    def _rows(self, fb, width: int, offset: torch.Tensor | None = None) -> torch.Tensor:
        return token_table_rows(self.engine.req_to_token, fb.req_pool_indices[: fb.batch_size],
                                width, offset)

    def _paged(self, fb, q_lens, seqused_k, max_q: int, max_k: int) -> AttnPlan:
        """Rows over SGLang's pages: the first ``max_k`` tokens of each request."""
        ps = self.engine.page_size
        table = page_table_from_token_table(self._rows(fb, -(-max(1, max_k) // ps) * ps), ps)
        return self._plan(q_lens, seqused_k, table, max_q, max_k, ps)

    def _slots(self, q_lens, seqused_k, table: torch.Tensor, max_q: int) -> AttnPlan:
        """Rows over cache token slots (page size 1): ``table[r, :seqused_k[r]]``."""
        return self._plan(q_lens, seqused_k, table, max_q, table.shape[1], 1)

    # -- modes ---------------------------------------------------------------------------
    def _plain(self, fb, q_lens, max_q: int, graph: bool) -> AttnPlan:
        """DECODE, EXTEND, MIXED, DRAFT_EXTEND_V2: queries are the last tokens of each row.

        Graph replays pad rows with a seq_len fill value but a fixed query width; each key
        count is raised to at least its query count there (those rows are discarded).
        """
        seq_lens = fb.seq_lens[: fb.batch_size]
        if graph and isinstance(q_lens, torch.Tensor):
            seq_lens = torch.maximum(seq_lens, q_lens.to(seq_lens.dtype))
        max_k = self._key_bound(fb, graph)
        if getattr(fb, "encoder_lens", None) is None:
            return self._paged(fb, q_lens, seq_lens, max_q, max_k)
        # Self-attention of an encoder-decoder model: decoder tokens follow the encoder's.
        table = self._rows(fb, max_k, offset=fb.encoder_lens[: fb.batch_size])
        return self._slots(q_lens, seq_lens, table, max_q)

    def _cross(self, fb, q_lens, max_q: int, graph: bool) -> AttnPlan:
        """Cross-attention: every decoder token sees all of its request's encoder tokens."""
        max_enc = self.engine.max_context_len
        if not graph and getattr(fb, "encoder_lens_cpu", None) is not None:
            max_enc = max(1, max(int(x) for x in fb.encoder_lens_cpu))
        return self._slots(q_lens, fb.encoder_lens[: fb.batch_size], self._rows(fb, max_enc), max_q)

    def _extend_q_lens(self, fb, graph: bool) -> tuple[torch.Tensor, int]:
        bs, n = fb.batch_size, self.engine.num_draft_tokens
        q_lens = fb.extend_seq_lens
        if q_lens is None and fb.spec_info is not None:
            q_lens = getattr(fb.spec_info, "extend_seq_lens_tensor", None)
        if q_lens is None:
            expect(fb.forward_mode.is_draft_extend_v2(),
                          "anyattn: extend batch without extend_seq_lens")
            q_lens = torch.full((bs,), n, dtype=torch.int32, device=fb.seq_lens.device)
        if graph:
            return q_lens[:bs], max(1, n)
        host = fb.extend_seq_lens_cpu
        if host is None and fb.spec_info is not None:
            host = getattr(fb.spec_info, "extend_seq_lens_cpu", None)
        # Without host lengths: the widest possible query (a bound, never read back).
        widest = (max(int(x) for x in host) if host is not None and len(host)
                  else max(n, self.engine.max_context_len))
        return q_lens[:bs], max(1, widest)

    def _verify_chain(self, fb, shape: VerifyShape, graph: bool) -> AttnPlan:
        """TARGET_VERIFY of a chain: an extend of ``n`` causal tokens."""
        n, seq_lens = shape.num_draft, fb.seq_lens[: fb.batch_size]
        mask = getattr(fb.spec_info, "custom_mask", None)
        if not graph and mask is not None and (mask.device.type == "cpu" or debug_mode()):
            # Where reading the mask is free: a tree declared a chain is refused, not run as one.
            spec_tree.check_chain(mask, shape.mask_prefix_lens(seq_lens), n)
        return self._paged(fb, n, seq_lens + n, n, self._key_bound(fb, graph, extra=n))

    def _verify_tree(self, fb, shape: VerifyShape, graph: bool) -> dict[str, AttnPlan]:
        """TARGET_VERIFY of a tree: the cascade's prefix rows and per-token draft key lists."""
        n, seq_lens = shape.num_draft, fb.seq_lens[: fb.batch_size]
        seqused, table = spec_tree.tree_token_table(
            fb.spec_info.custom_mask, shape.mask_prefix_lens(seq_lens),
            self._rows(fb, n, offset=seq_lens))
        return {"main": self._paged(fb, n, seq_lens, n, self._key_bound(fb, graph)),
                "draft": self._slots(1, seqused, table, 1)}

    def _draft_chain(self, fb, graph: bool) -> AttnPlan:
        """Draft decode, topk 1: the step's token follows ``step + 1`` draft tokens."""
        depth = self.engine.step_id + 1
        return self._paged(fb, 1, fb.seq_lens[: fb.batch_size] + depth, 1,
                           self._key_bound(fb, graph, extra=depth))

    def _draft_tree(self, fb, graph: bool) -> dict[str, AttnPlan]:
        """Draft decode, topk > 1: every branch's token over the prefix (a request's branches
        are one prefix row), then over its own chain so far."""
        bs, topk, steps = fb.batch_size, self.engine.topk, self.engine.num_steps
        loc = fb.out_cache_loc
        expect(loc is not None and loc.shape[0] >= bs * topk * steps,
                      lambda: f"draft decode: out_cache_loc must hold batch x topk x num_steps = "
                      f"{bs * topk * steps} slots, got {None if loc is None else tuple(loc.shape)}")
        seqused, table = spec_tree.chain_token_table(loc[: bs * topk * steps].view(-1, steps),
                                                     self.engine.step_id + 1)
        return {"main": self._paged(fb, topk, fb.seq_lens[:bs], topk, self._key_bound(fb, graph)),
                "draft": self._slots(1, seqused, table, 1)}
