"""The FlashAttention-4 modifiers of :mod:`.fa4`, in CuTe DSL: imported only by
:func:`.fa4.source` once an FA4 install (and so ``cutlass``) is found.

FA4 calls a ``score_mod`` as ``score_mod(score, batch_idx, head_idx, q_idx=, kv_idx=,
seqlen_info=, aux_tensors=)`` on scores already multiplied by ``softmax_scale``, and a
``mask_mod`` as ``mask_mod(batch_idx, head_idx, q_idx, kv_idx, seqlen_info, aux_tensors)``
(``softmax.py`` / ``mask.py``'s ``call_score_mod`` / ``call_mask_mod`` in both packages). The
indices are one-lane ``TensorSSA`` values (FA4 uses one lane when aux tensors are passed);
``q_idx`` and ``kv_idx`` count within the sequence, ``head_idx`` is the query head (pack-GQA
unpacked); ``seqlen_info.seqlen_q`` / ``seqlen_k`` are the sequence's lengths (``seqused_k``).

Each builder is cached per spec, so a variant is one function object: FA4's compile cache
keys a modifier by ``hash_callable`` (its source and closure values) and keeps that hash on the
function, so later calls of the variant neither re-hash nor recompile.
"""
from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Callable

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

if TYPE_CHECKING:
    from .fa4 import AlibiScore, SpanMask


def _lane(value, dtype):
    """A scalar as a one-lane TensorSSA, to combine with the index lanes (runs while FA4 traces
    the kernel, like FA4's own ``utils.scalar_to_ssa``)."""
    vec = cute.make_rmem_tensor(1, dtype)
    vec[0] = value
    return vec.load()


def _per_head(values: tuple[float, ...], head_idx, like):
    """``values[head_idx]`` for compile-time ``values``: a ``where`` chain over the heads. A
    variant with baked slopes runs without pack-GQA, so ``head_idx`` is one query head per
    CTA and the chain is uniform across its tile, not a per-score lookup."""
    picked = cute.full_like(like, values[0])
    for h in range(1, len(values)):
        picked = cute.where(operator.eq(head_idx, cute.full_like(head_idx, h)),
                            cute.full_like(like, values[h]), picked)
    return picked


@functools.cache
def alibi_score_mod(spec: AlibiScore) -> Callable:
    """Soft-cap, then ``-slope[h] * |p - j|`` with ``p = q_idx + seqlen_k - seqlen_q`` (the
    query's bottom-right aligned position, FlashAttention-2's ALiBi). ``spec.slopes`` baked in
    (no aux tensor: FA4 then scores two lanes at a time and skips its per-score index wrap)
    or read from ``aux_tensors[slopes_at]``; ``keys_behind``: ``p - j`` needs no ``abs``."""
    softcap, slopes_at, slopes, keys_behind = (spec.softcap, spec.slopes_at, spec.slopes,
                                               spec.keys_behind)

    @cute.jit
    def alibi(score, batch_idx, head_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
        if cutlass.const_expr(softcap > 0):
            score = cute.math.tanh(score * (1.0 / softcap), fastmath=True) * softcap
        if cutlass.const_expr(slopes is not None):
            slope = _per_head(slopes, head_idx, score)
        else:
            slope = _lane(aux_tensors[slopes_at][head_idx[0]], Float32)
        dist = (q_idx + (seqlen_info.seqlen_k - seqlen_info.seqlen_q) - kv_idx).to(Float32)
        if cutlass.const_expr(not keys_behind):
            zero = cute.full_like(dist, 0.0)
            dist = cute.where(operator.lt(dist, zero), zero - dist, dist)
        return score - slope * dist

    return alibi


@functools.cache
def span_mask_mod(spec: SpanMask) -> Callable:
    """``(p - lo <= j <= p + hi) or (p and j in one span [, j >= p - lo])``: anyattn's
    ``(causal and window) or span`` (``core/semantics/spans.py``) with causal as ``hi = 0``."""
    hi, lo, in_window, max_spans = spec.hi, spec.lo, spec.in_window, spec.max_spans

    @cute.jit
    def spans_mask(batch_idx, head_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
        p = q_idx + (seqlen_info.seqlen_k - seqlen_info.seqlen_q)
        behind = p - kv_idx  # how far key j lies before the query (negative: after it)
        if cutlass.const_expr(hi is not None and lo is not None):
            keep = operator.ge(behind, cute.full_like(behind, -hi)) & operator.le(
                behind, cute.full_like(behind, lo))
        elif cutlass.const_expr(hi is not None):
            keep = operator.ge(behind, cute.full_like(behind, -hi))
        else:
            keep = operator.le(behind, cute.full_like(behind, lo))
        table, counts = aux_tensors[0], aux_tensors[1]
        b = batch_idx[0]
        count = _lane(counts[b], Int32)
        for i in cutlass.range_constexpr(max_spans):
            start = _lane(table[b, i, 0], Int32)
            end = _lane(table[b, i, 1], Int32)
            inside = (operator.lt(cute.full_like(count, i), count)
                      & operator.ge(p, start) & operator.lt(p, end)
                      & operator.ge(kv_idx, start) & operator.lt(kv_idx, end))
            if cutlass.const_expr(in_window):
                inside = inside & operator.le(behind, cute.full_like(behind, lo))
            keep = keep | inside
        return keep

    return spans_mask
