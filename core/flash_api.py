"""The FlashAttention-3-compatible API: ``flash_attn_with_kvcache`` and
``flash_attn_varlen_func`` as anyattn calls (a plan built per call from their arguments)."""
from __future__ import annotations

from typing import Sequence

import torch

from .plan.build import build_plan
from .run import attention
from .semantics import checks
from .semantics.params import AttnParams

__all__ = ["flash_attn_with_kvcache", "flash_attn_varlen_func"]


def _params(q: torch.Tensor, softmax_scale: float | None, causal: bool,
            window_size: Sequence[int], attention_chunk: int, softcap: float) -> AttnParams:
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    left, right = (int(w) for w in window_size)
    return AttnParams(softmax_scale=float(scale), causal=bool(causal), window_left=left,
                      window_right=right, chunk_size=int(attention_chunk or 0),
                      softcap=float(softcap or 0.0))


def _unsupported(**kwargs) -> None:
    given = [k for k, v in kwargs.items() if v is not None]
    if given:
        raise NotImplementedError(f"anyattn: argument(s) {given} are not supported")


def flash_attn_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                            qv: torch.Tensor | None = None,
                            rotary_cos: torch.Tensor | None = None,
                            rotary_sin: torch.Tensor | None = None,
                            cache_seqlens: torch.Tensor | int | None = None,
                            cache_batch_idx: torch.Tensor | None = None,
                            cache_leftpad: torch.Tensor | None = None,
                            page_table: torch.Tensor | None = None,
                            cu_seqlens_q: torch.Tensor | None = None,
                            cu_seqlens_k_new: torch.Tensor | None = None,
                            max_seqlen_q: int | None = None,
                            rotary_seqlens: torch.Tensor | None = None,
                            q_descale: torch.Tensor | None = None,
                            k_descale: torch.Tensor | None = None,
                            v_descale: torch.Tensor | None = None,
                            softmax_scale: float | None = None, causal: bool = False,
                            window_size: Sequence[int] = (-1, -1), attention_chunk: int = 0,
                            softcap: float = 0.0, rotary_interleaved: bool = True,
                            scheduler_metadata=None, num_splits: int = 0, pack_gqa=None,
                            sm_margin: int = 0, return_softmax_lse: bool = False,
                            sinks: torch.Tensor | None = None, deterministic: bool = False,
                            attn_mask: torch.Tensor | None = None,
                            attn_bias: torch.Tensor | None = None,
                            alibi_slopes: torch.Tensor | None = None):
    """FlashAttention-3 ``flash_attn_with_kvcache`` over a paged or per-batch cache
    (``alibi_slopes [Hq]`` as in FlashAttention-2).

    q is ``[total_q, Hq, D]`` with ``cu_seqlens_q`` or ``[B, Sq, Hq, D]``; the cache is
    ``[num_pages, page_size, Hk, D]`` with ``page_table [B, max_pages]``, or ``[B, S, Hk, D]``
    without one. ``cache_seqlens [B]`` counts every key (cached + new). New K/V must already
    be in the cache (write them with :func:`write_kv_cache`).
    """
    _unsupported(k=k, v=v, qv=qv, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                 cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad,
                 cu_seqlens_k_new=cu_seqlens_k_new, q_descale=q_descale)
    checks.expect(cache_seqlens is not None, "cache_seqlens: required, int32 [batch]")
    batched_q = q.dim() == 4
    if batched_q:
        checks.expect(cu_seqlens_q is None, "cu_seqlens_q: must be None when q is 4-D [B, Sq, H, D]")
        batch, sq = q.shape[:2]
        cu_seqlens_q = torch.arange(0, (batch + 1) * sq, sq, dtype=torch.int32, device=q.device)
        max_seqlen_q = sq
        q = q.reshape(batch * sq, *q.shape[2:])
    else:
        checks.check_rank("q", q, 3, "[total_q, num_heads, head_dim] (with cu_seqlens_q)")
        checks.expect(cu_seqlens_q is not None,
                      "cu_seqlens_q: required int32 [batch + 1] when q is 3-D")
        batch = cu_seqlens_q.shape[0] - 1
        if max_seqlen_q is None:
            max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if batch else 0
    total_q = q.shape[0] if batched_q else None  # the offsets built here: B x Sq rows
    if isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    if page_table is None:
        checks.check_rank("k_cache", k_cache, 4, "[batch, seqlen_k, num_kv_heads, head_dim]")
        # A per-batch cache is a paged cache with one page per sequence.
        page_table = torch.arange(k_cache.shape[0], dtype=torch.int32, device=q.device)[:, None]
    else:
        checks.check_rank("k_cache", k_cache, 4, "[num_pages, page_size, num_kv_heads, head_dim]")
    max_seqlen_k = page_table.shape[1] * k_cache.shape[1]
    plan = build_plan(cu_seqlens_q, cache_seqlens, max_seqlen_q=max_seqlen_q,
                      max_seqlen_k=max_seqlen_k, page_table=page_table, page_size=k_cache.shape[1],
                      num_kv_heads=k_cache.shape[-2], num_splits=num_splits or None,
                      deterministic=deterministic, total_q=total_q)
    res = attention(q, k_cache, v_cache, plan,
                    _params(q, softmax_scale, causal, window_size, attention_chunk, softcap),
                    sinks=sinks, k_descale=k_descale, v_descale=v_descale,
                    return_lse=return_softmax_lse, attn_mask=attn_mask, attn_bias=attn_bias,
                    alibi_slopes=alibi_slopes)
    if not batched_q:
        return res
    out, lse = res if return_softmax_lse else (res, None)
    out = out.view(batch, -1, *out.shape[1:])
    return (out, lse.view(lse.shape[0], batch, -1).permute(1, 0, 2)) if return_softmax_lse else out


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                           max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                           seqused_q: torch.Tensor | None = None,
                           seqused_k: torch.Tensor | None = None,
                           softmax_scale: float | None = None, causal: bool = False,
                           qv: torch.Tensor | None = None,
                           q_descale: torch.Tensor | None = None,
                           k_descale: torch.Tensor | None = None,
                           v_descale: torch.Tensor | None = None,
                           window_size: Sequence[int] = (-1, -1), attention_chunk: int = 0,
                           softcap: float = 0.0, num_splits: int = 1, pack_gqa=None,
                           deterministic: bool = False, sm_margin: int = 0,
                           return_softmax_lse: bool = False, sinks: torch.Tensor | None = None,
                           attn_mask: torch.Tensor | None = None,
                           attn_bias: torch.Tensor | None = None,
                           alibi_slopes: torch.Tensor | None = None):
    """FlashAttention-3 ``flash_attn_varlen_func``: contiguous ``k``/``v [total_k, Hk, D]``
    (``alibi_slopes [Hq]`` as in FlashAttention-2)."""
    _unsupported(seqused_q=seqused_q, qv=qv, q_descale=q_descale)
    checks.check_rank("cu_seqlens_k", cu_seqlens_k, 1, "[batch + 1]")
    batch = cu_seqlens_k.shape[0] - 1
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if batch else 0
    if max_seqlen_k is None:
        lens = seqused_k if seqused_k is not None else cu_seqlens_k[1:] - cu_seqlens_k[:-1]
        max_seqlen_k = int(lens.max()) if batch else 0
    plan = build_plan(cu_seqlens_q, seqused_k, max_seqlen_q=max_seqlen_q,
                      max_seqlen_k=max_seqlen_k, cu_seqlens_k=cu_seqlens_k,
                      num_kv_heads=k.shape[-2], num_splits=num_splits,
                      deterministic=deterministic)
    return attention(q, k, v, plan,
                     _params(q, softmax_scale, causal, window_size, attention_chunk, softcap),
                     sinks=sinks, k_descale=k_descale, v_descale=v_descale,
                     return_lse=return_softmax_lse, attn_mask=attn_mask, attn_bias=attn_bias,
                     alibi_slopes=alibi_slopes)
