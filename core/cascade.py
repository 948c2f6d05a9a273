"""One speculative-decoding step as a cascade: a prefix pass, a draft pass, one merge.

The draft tokens of a request (an EAGLE tree in target verify, the branches of a multi-step
draft decode) all see the request's committed prefix, and each sees its own list of draft
keys (its ancestors). The cascade computes that as two ordinary attention calls over
disjoint keys, merged by log-sum-exp:

1. ``prefix_plan``: one row per request holding its draft tokens as queries, over the
   prefix through the engine's page table. Non-causal: every draft token follows the prefix.
   The prefix is read once per request (and per kv head) for all of its draft tokens.
2. ``draft_plan``: one row per draft token (one query each) over the cache slots of the
   draft keys it sees, in a page-size-1 table (``core.plan.spec_tree`` builds it).

Both calls go through :func:`anyattn.core.run.attention`, so they are the plain paged calls
every kernel provider covers, and nothing O(draft x keys) is materialised.

Positions, for a sliding window: draft token ``i`` of a prefix row (its ``i``-th query)
sits at position ``P + i`` after the row's ``P`` prefix keys, SGLang's convention (the tree
mask's column, as SGLang's Triton extend kernel and its attention test kit place it). A
window ``w`` then shows token ``i`` the prefix keys from ``P + i - w``. The kernels place a
row's ``n`` queries at the last positions ``P - n + i`` instead, so the prefix pass runs
with window ``w - n``; a window narrower than ``n`` is refused. A draft token's ancestors
lie fewer than ``n`` columns back, inside any window ``w >= n``, so the draft pass needs no
window.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .plan.plan import AttnPlan
from .run import attention, merge_state
from .semantics.checks import expect
from .semantics.params import AttnParams


def cascade_params(params: AttnParams, num_draft: int) -> tuple[AttnParams, AttnParams]:
    """The (prefix pass, draft pass) semantics of a causal layer's ``params`` for a cascade
    whose prefix rows hold ``num_draft`` draft tokens each (see the module docstring)."""
    if not params.causal:
        raise ValueError("params: a cascade computes causal (tree) attention; got causal=False")
    if params.chunk_size > 0:
        raise NotImplementedError("anyattn: chunked-local attention (chunk_size="
                                  f"{params.chunk_size}) in a speculative cascade is not supported")
    window = params.window_left
    if 0 <= window < num_draft:
        raise NotImplementedError(
            f"anyattn: a sliding window of {window} keys (window_left) narrower than the "
            f"{num_draft} draft tokens per request is not supported in a speculative cascade")
    draft = replace(params, causal=False, window_left=-1, window_right=-1)
    prefix = replace(draft, window_left=window - num_draft if window >= 0 else -1)
    return prefix, draft


def cascade_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      prefix_plan: AttnPlan, draft_plan: AttnPlan, params: AttnParams, *,
                      sinks: torch.Tensor | None = None,
                      k_descale: torch.Tensor | float | None = None,
                      v_descale: torch.Tensor | float | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of draft tokens ``q [T, Hq, D]`` over their prefix and their draft keys.

    ``prefix_plan`` holds each request's draft tokens as one row of ``max_seqlen_q`` queries
    (every request the same count) over its prefix; ``draft_plan`` has one query per row,
    ``T`` rows, over each token's draft keys. ``params`` are the layer's (causal) semantics.
    The caches are the engine's token-major buffers or pages, viewed per plan
    (:func:`anyattn.core.plan.views.cache_view`); ``k_descale``/``v_descale`` are per-tensor or
    per-kv-head FP8 scales. Sinks join the prefix pass only (one extra logit per softmax).
    Returns ``out [T, Hq, Dv]`` (written in place when given).
    """
    expect(draft_plan.max_seqlen_q == 1 and draft_plan.batch_size == q.shape[0],
           lambda: f"draft_plan: expected one query per row and {q.shape[0]} rows (one per draft "
           f"token), got max_seqlen_q={draft_plan.max_seqlen_q}, {draft_plan.batch_size} rows")
    expect(prefix_plan.paged and draft_plan.paged,
           "prefix_plan/draft_plan: a cascade reads a paged cache (page_table) in both passes")
    prefix_params, draft_params = cascade_params(params, prefix_plan.max_seqlen_q)
    o_prefix, lse_prefix = attention(q, k_cache, v_cache, prefix_plan, prefix_params,
                                     sinks=sinks, k_descale=k_descale, v_descale=v_descale,
                                     out=out, return_lse=True)
    o_draft, lse_draft = attention(q, k_cache, v_cache, draft_plan, draft_params,
                                   k_descale=k_descale, v_descale=v_descale, return_lse=True)
    merged, _ = merge_state(o_prefix, lse_prefix, o_draft, lse_draft)
    return o_prefix.copy_(merged)
