"""Public kernel API: plan-based entry points and FlashAttention-3-compatible functions.

CUDA tensors run the kernels: the provider each plan chose (:mod:`core.providers`: FA3 where
it is installed and covers the call, anyattn's Triton kernels everywhere else). CPU tensors run
the Triton kernels through the interpreter when ``TRITON_INTERPRET=1``, and the chunked
PyTorch reference otherwise (``ANYATTN_IMPL=reference|triton`` overrides the choice between
reference and kernels, ``ANYATTN_KERNELS=auto|triton|fa3`` the provider).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from . import checks, masks, providers, reference
from . import spans as core_spans
from .builders import build_plan
from .cascade import cascade_attention
from .plan import AttnPlan
from .params import AttnParams

__all__ = ["AttnParams", "attention", "write_kv_cache", "merge_state", "cascade_attention",
           "flash_attn_with_kvcache", "flash_attn_varlen_func"]


def use_triton(t: torch.Tensor) -> bool:
    forced = os.environ.get("ANYATTN_IMPL", "")
    if forced:
        return forced == "triton"
    return t.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttnPlan,
              params: AttnParams, *, sinks: torch.Tensor | None = None,
              k_descale: torch.Tensor | None = None, v_descale: torch.Tensor | None = None,
              out: torch.Tensor | None = None, return_lse: bool = False,
              attn_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
              alibi_slopes: torch.Tensor | None = None,
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q [total_q, Hq, D]`` over the keys the plan describes.

    ``attn_mask`` (bool, True = attend) and ``attn_bias`` (float, added to the scaled scores)
    take the layouts of :mod:`core.masks` (speculative trees: :func:`cascade_attention`).
    ``alibi_slopes [Hq]``: ALiBi, ``-slope[h] * |q_pos - k_pos|`` added to the scaled (and
    soft-capped) scores, ``q_pos`` the query's bottom-right aligned position (FlashAttention-2's
    convention). The plan's bidirectional spans (:mod:`core.spans`) apply per ``params``.
    Writes into ``out`` when given (``[total_q, Hq, Dv]``); returns out, or (out, lse) with
    lse ``[Hq, total_q]`` float32.
    """
    checks.check_attention_inputs(q, k_cache, v_cache, plan, params, sinks=sinks, k_descale=k_descale,
                                  v_descale=v_descale, out=out, alibi_slopes=alibi_slopes)
    shape = dict(plan=plan, total_q=q.shape[0], hq=q.shape[1], hk=k_cache.shape[-2], device=q.device)
    mask = masks.describe("attn_mask", attn_mask, **shape)
    bias = masks.describe("attn_bias", attn_bias, **shape)
    masks.check_key_rows(mask, bias)
    if q.shape[0] == 0 or plan.batch_size == 0:
        o, lse = _empty_result(q, v_cache, out)
    elif not use_triton(q):
        o, lse = reference.reference_attention(q, k_cache, v_cache, plan, params, sinks=sinks,
                                               k_descale=k_descale, v_descale=v_descale, out=out,
                                               mask=mask, bias=bias, alibi_slopes=alibi_slopes)
    else:
        o, lse = _run_kernels(q, k_cache, v_cache, plan, params, sinks=sinks, k_descale=k_descale,
                              v_descale=v_descale, out=out, want_lse=return_lse, mask=mask,
                              bias=bias, alibi_slopes=alibi_slopes)
    return (o, lse) if return_lse else o


def _empty_result(q: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """No queries (or no sequences): nothing to compute, on every path."""
    if out is None:
        out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    return out, torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)


def _run_kernels(q, k_cache, v_cache, plan: AttnPlan, params: AttnParams, *, sinks, k_descale,
                 v_descale, out, want_lse: bool, mask, bias, alibi_slopes):
    """The plan's provider where it covers the call, else the plan's Triton launch."""
    from .kernels import fa3
    from .kernels.attention import run_attention

    sched = providers.schedule(plan, providers.Workload.of(q, k_cache, v_cache))
    if sched.provider == providers.FA3 and fa3.uncovered_call(providers.features(
            params, q=q, k_cache=k_cache, v_cache=v_cache, out=out, sinks=sinks,
            k_descale=k_descale, v_descale=v_descale, masked=mask is not None or bias is not None,
            want_lse=want_lse, spans=core_spans.applies(plan, params),
            alibi=alibi_slopes is not None)) is None:
        return fa3.run_fa3(q, k_cache, v_cache, plan, params, sinks=sinks, out=out,
                           want_lse=want_lse)
    return run_attention(q, k_cache, v_cache, plan, params, sinks=sinks, k_descale=k_descale,
                         v_descale=v_descale, out=out, want_lse=want_lse, mask=mask, bias=bias,
                         alibi_slopes=alibi_slopes, cfg=sched.tile)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                   k_scale: torch.Tensor | float | None = None,
                   v_scale: torch.Tensor | float | None = None) -> None:
    """Store ``k``/``v [T, Hk, D]`` at cache slots ``slot_mapping[T]`` (-1 = padding, skipped).

    Caches are ``[num_pages, page_size, Hk, D]`` with any strides; an fp8 cache stores
    ``k / k_scale`` (scales default to 1; finite and positive), saturated to the format's
    finite range (e4m3 +-448, e5m2 +-57344) as vLLM's cache writes are.
    """
    checks.check_kv_write(k, v, k_cache, v_cache, slot_mapping)
    checks.check_scale("k_scale", k_scale)
    checks.check_scale("v_scale", v_scale)
    if use_triton(k):
        from .kernels.kv_write import run_kv_write
        run_kv_write(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
        return
    reference.write_kv_reference(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


def merge_state(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial results over disjoint keys: ``o [T, H, D]``, ``lse [H, T]`` float32."""
    checks.check_rank("o_a", o_a, 3, "[num_tokens, num_heads, head_dim]")
    checks.expect(o_b.shape == o_a.shape, lambda: f"o_b: expected shape {tuple(o_a.shape)} like o_a, got {tuple(o_b.shape)}")
    t, h, _ = o_a.shape
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        checks.expect(tuple(lse.shape) == (h, t) and lse.dtype == torch.float32,
                      lambda: f"{name}: expected float32 [num_heads={h}, num_tokens={t}], got {lse.dtype} {tuple(lse.shape)}")
    if use_triton(o_a):
        from .kernels.merge import run_merge_state
        return run_merge_state(o_a, lse_a, o_b, lse_b)
    return reference.merge_state_reference(o_a, lse_a, o_b, lse_b)


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
    max_seqlen_k = page_table.shape[1] * k_cache.shape[1]
    plan = build_plan(cu_seqlens_q, cache_seqlens, max_seqlen_q=max_seqlen_q,
                      max_seqlen_k=max_seqlen_k, page_table=page_table,
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
