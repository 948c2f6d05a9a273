"""Paged varlen attention forward: one tile loop for prefill, extend and split-KV decode.

A program owns ``BLOCK_M`` packed query rows of one (sequence, kv head) and one key split.
Rows pack GQA: row ``r`` is token ``r // GROUP`` of the sequence and query head
``kv_head * GROUP + r % GROUP``, so every K/V tile loaded is shared by the whole group.
Features (causal, window, chunked-local, soft-cap, sinks, FP8 descale, paged or contiguous
keys, split output, bidirectional spans, ALiBi) are ``constexpr`` flags of the same loop.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from ...semantics import checks
from ...semantics.masks import MaskSpec
from ..base import Call
from .key_term import key_term, shared_key_side, term_start
from .launch import BoundKernel, Launch, LaunchKey, Static
from .merge import merge_splits

if TYPE_CHECKING:
    from ...plan.plan import AttnPlan


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _layout_load(Ptr, Start, b, q_row, head, offs_n, in_range,
                 stride_r, stride_h, stride_c, cols, other,
                 LAYOUT: tl.constexpr, HEADS: tl.constexpr, HQ: tl.constexpr):
    """Load a ``[BLOCK_M, BLOCK_N]`` mask/bias tile whose values differ between rows (layouts of
    ``core.semantics.masks``: key-side per query head, query-side).

    Returns the values and where the layout describes a key (elsewhere: not visible).
    """
    if LAYOUT == 1:  # key-side [total_k, Hq]
        row = (tl.load(Start + b) + offs_n).to(tl.int64) * stride_r
        vals = tl.load(Ptr + row[None, :] + head[:, None] * stride_h, mask=in_range, other=other)
        ok = in_range
    elif LAYOUT == 2:  # query-side [total_q, H', cols]
        mh = head // (HQ // HEADS)
        ok = in_range & (offs_n[None, :] < cols)
        vals = tl.load(Ptr + q_row[:, None].to(tl.int64) * stride_r + mh[:, None] * stride_h
                       + offs_n[None, :] * stride_c, mask=ok, other=other)
    return vals, ok


@triton.jit
def _row_spans(Spans, count, q_pos, stride_ss):
    """The span ``[lo, hi)`` holding each row's query position (``lo == hi == 0``: none).

    ``Spans`` points at one sequence's ``count`` sorted, disjoint (start, end) pairs
    (:mod:`core.semantics.spans`), so a position lies in at most one of them.
    """
    lo = tl.zeros_like(q_pos)
    hi = tl.zeros_like(q_pos)
    for i in range(0, count):
        start = tl.load(Spans + i * stride_ss)
        end = tl.load(Spans + i * stride_ss + 1)
        inside = (q_pos >= start) & (q_pos < end)
        lo = tl.where(inside, start, lo)
        hi = tl.where(inside, end, hi)
    return lo, hi


@triton.jit
def _alibi_term(alibi, q_pos, start_n, BLOCK_N: tl.constexpr, ANY_SIDE: tl.constexpr):
    """``alibi * |q_pos - k|`` for the keys ``[start_n, start_n + BLOCK_N)`` (raw units).

    Without ``ANY_SIDE`` every key lies at or before every row's position (the causal bulk),
    so the distance splits into a per-row and a per-key part: one multiply-add per score.
    """
    if ANY_SIDE:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        return alibi[:, None] * tl.abs(q_pos[:, None] - offs_n[None, :]).to(tl.float32)
    row = alibi * (q_pos - start_n).to(tl.float32)
    return row[:, None] - alibi[:, None] * tl.arange(0, BLOCK_N).to(tl.float32)[None, :]


@triton.jit
def _merge_if_last(O, LSE, Out, OutLse, Arrival, t, head, row_ok, offs_dv, row0, q_start, q_len,
                   kvh, stride_os, stride_ot, stride_oh, stride_od, stride_ls, stride_lh,
                   stride_lt, stride_fot, stride_foh, stride_fod, stride_flh, stride_flt,
                   NUM_SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr, MERGE_ROWS: tl.constexpr,
                   GROUP: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_DV: tl.constexpr, WANT_LSE: tl.constexpr):
    """The split merge, fused: the last of a tile's ``NUM_SPLITS`` programs to finish merges
    their partial states into ``Out``/``OutLse`` (the same sums whichever finishes last), then
    re-arms the tile's arrival counter for the next call (or CUDA-graph replay). One launch per
    call instead of two: the merge's host cost goes away.

    Ordering: the barrier puts every thread's partial stores before the counter's release;
    the last program acquires, and reads the partials from L2 (``.cg``), not a stale L1.
    The merge is latency-bound (one program, a few KB): ``MERGE_ROWS`` > 0 (few rows, many
    splits: decode) loads each row's splits as one ``[splits, Dv]`` tile, one round trip per
    row; otherwise each split's rows load as one ``[BLOCK_M, Dv]`` tile, one per split.
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(Arrival, 1, sem="acq_rel", scope="gpu")
    if arrived == NUM_SPLITS - 1:
        split = tl.arange(0, BLOCK_SPLITS)
        s_ok = split < NUM_SPLITS
        d_ok = offs_dv < HEAD_DIM_V
        if MERGE_ROWS > 0:
            for r in range(MERGE_ROWS):
                row = row0 + r
                tok_r = row // GROUP
                if tok_r < q_len:
                    t_r = (q_start + tok_r).to(tl.int64)
                    head_r = kvh * GROUP + row % GROUP
                    lse = tl.load(LSE + split * stride_ls + head_r * stride_lh + t_r * stride_lt,
                                  mask=s_ok, other=float("-inf"), cache_modifier=".cg")
                    o = tl.load(O + split[:, None] * stride_os + t_r * stride_ot
                                + head_r * stride_oh + offs_dv[None, :] * stride_od,
                                mask=s_ok[:, None] & d_ok[None, :], other=0.0,
                                cache_modifier=".cg")
                    m = tl.max(lse, 0)
                    m_safe = tl.where(m == float("-inf"), 0.0, m)
                    w = tl.exp(lse - m_safe)
                    total = tl.sum(w, 0)
                    empty = total == 0.0
                    out = tl.sum(w[:, None] * o, 0) / tl.where(empty, 1.0, total)
                    tl.store(Out + t_r * stride_fot + head_r * stride_foh + offs_dv * stride_fod,
                             out.to(Out.dtype.element_ty), mask=d_ok)
                    if WANT_LSE:
                        tl.store(OutLse + head_r * stride_flh + t_r * stride_flt,
                                 tl.where(empty, float("-inf"),
                                          m_safe + tl.log(tl.where(empty, 1.0, total))))
        else:
            lse = tl.load(LSE + split[:, None] * stride_ls + head[None, :] * stride_lh
                          + t[None, :] * stride_lt, mask=s_ok[:, None] & row_ok[None, :],
                          other=float("-inf"), cache_modifier=".cg")
            m = tl.max(lse, 0)
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            total = tl.sum(tl.exp(lse - m_safe[None, :]), 0)
            o_mask = row_ok[:, None] & d_ok[None, :]
            acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
            for s in tl.static_range(NUM_SPLITS):  # no reduction inside: the loads overlap
                w = tl.exp(tl.load(LSE + s * stride_ls + head * stride_lh + t * stride_lt,
                                   mask=row_ok, other=float("-inf"), cache_modifier=".cg")
                           - m_safe)
                o = tl.load(O + s * stride_os + t[:, None] * stride_ot
                            + head[:, None] * stride_oh + offs_dv[None, :] * stride_od,
                            mask=o_mask, other=0.0, cache_modifier=".cg")
                acc += w[:, None] * o
            empty = total == 0.0
            out = acc / tl.where(empty, 1.0, total)[:, None]
            tl.store(Out + t[:, None] * stride_fot + head[:, None] * stride_foh
                     + offs_dv[None, :] * stride_fod, out.to(Out.dtype.element_ty), mask=o_mask)
            if WANT_LSE:
                tl.store(OutLse + head * stride_flh + t * stride_flt,
                         tl.where(empty, float("-inf"),
                                  m_safe + tl.log(tl.where(empty, 1.0, total))), mask=row_ok)
        tl.atomic_xchg(Arrival, 0)


@triton.jit
def _attn_tiles(
    m_i, l_i, acc, q, K, V, PageTable, b, kvh, k_start, start, stop, gap_at, gap_len,
    gap2_at, gap2_len, row_ok, tok, head, q_start, q_pos, scale, softcap, window_left, window_right,
    chunk_size, stride_kp, stride_ks, stride_kh, stride_kd, stride_vp, stride_vs, stride_vh,
    stride_vd, stride_pt, Mask, MaskStart, stride_mr, stride_mh, stride_mc, mask_cols,
    Bias, BiasStart, stride_br, stride_bh, stride_bc, bias_cols, KeyTerm, key_row0,
    span_lo, span_hi, alibi,
    HQ: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr,
    MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_CHUNK: tl.constexpr, HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
    MASK_LAYOUT: tl.constexpr, MASK_HEADS: tl.constexpr, BIAS_LAYOUT: tl.constexpr,
    BIAS_HEADS: tl.constexpr, SKIP_MASKED_TILES: tl.constexpr, KEY_SHARED: tl.constexpr,
    HAS_SPANS: tl.constexpr, SPANS_IN_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr,
    GAP: tl.constexpr, GAP2: tl.constexpr,
):
    """The shared tile loop: keys ``[start, stop)`` in ``BLOCK_N`` tiles, online softmax,
    less the ``gap_len`` keys from ``gap_at`` (with ``GAP``) and the ``gap2_len`` keys from
    ``gap2_at`` (with ``GAP2``): the other part's tiles, whole tiles in ascending order.

    ``MASKED=False`` is the bulk of a causal or full row block, where every key exists and
    its position is visible to every valid row: no predicate, no bounds on the K/V loads.
    Masks and bias join the scaled scores as an additive log2-domain term (-inf hides a key):
    a key-side term that all rows share (``KEY_SHARED``, see ``key_term``) as a ``[BLOCK_N]``
    vector fetched with the K/V tiles, layouts that vary per row (``MASK_LAYOUT``,
    ``BIAS_LAYOUT``) as ``[BLOCK_M, BLOCK_N]`` tiles. ALiBi (``alibi``: ``-slope / scale`` per row,
    in raw score units) adds ``alibi * |q_pos - k|`` to the raw scores, through the MMA's
    accumulator unless soft-cap comes first. A row inside a bidirectional span
    (``[span_lo, span_hi)``, see ``core.semantics.spans``) also sees the span's keys: an OR with the
    position predicate, so the bulk (visible by position) stays visible.
    """
    MASK_ROWS: tl.constexpr = MASK_LAYOUT != 0
    BIAS_ROWS: tl.constexpr = BIAS_LAYOUT != 0
    HAS_ADD: tl.constexpr = MASK_ROWS or BIAS_ROWS or KEY_SHARED
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    dv_ok = offs_dv < HEAD_DIM_V
    end = stop
    if GAP:
        end -= gap_len
    if GAP2:
        end -= gap2_len
    for tile in range(start, end, BLOCK_N):
        # Gaps are whole tiles (the `// BLOCK_N * BLOCK_N` lets the compiler see it).
        start_n = tile
        if GAP:
            start_n += (start_n >= gap_at).to(tl.int32) * (gap_len // BLOCK_N * BLOCK_N)
        if GAP2:
            start_n += (start_n >= gap2_at).to(tl.int32) * (gap2_len // BLOCK_N * BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < stop
        in_range = row_ok[:, None] & n_ok[None, :]
        visible = in_range
        if IS_CAUSAL:
            visible = visible & (offs_n[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            visible = visible & ((window_left < 0) | (offs_n[None, :] >= q_pos[:, None] - window_left))
            visible = visible & ((window_right < 0) | (offs_n[None, :] <= q_pos[:, None] + window_right))
        if HAS_CHUNK:
            visible = visible & ((offs_n[None, :] // chunk_size) == (q_pos[:, None] // chunk_size))
        if HAS_SPANS:
            in_span = (offs_n[None, :] >= span_lo[:, None]) & (offs_n[None, :] < span_hi[:, None])
            if SPANS_IN_WINDOW:
                in_span = in_span & ((window_left < 0)
                                     | (offs_n[None, :] >= q_pos[:, None] - window_left))
            visible = visible | (in_range & in_span)
        add = tl.zeros([1, BLOCK_N], tl.float32)
        if MASK_ROWS:
            mvals, mok = _layout_load(Mask, MaskStart, b, q_start + tok, head, offs_n,
                                      in_range, stride_mr, stride_mh, stride_mc,
                                      mask_cols, 0, MASK_LAYOUT, MASK_HEADS, HQ)
            add = add + tl.where(mok & (mvals != 0), 0.0, float("-inf"))
        if BIAS_ROWS:
            bvals, bok = _layout_load(Bias, BiasStart, b, q_start + tok, head, offs_n,
                                      in_range, stride_br, stride_bh, stride_bc,
                                      bias_cols, 0.0, BIAS_LAYOUT, BIAS_HEADS, HQ)
            add = add + tl.where(bok, bvals.to(tl.float32) * 1.4426950408889634, float("-inf"))
        go = True
        if SKIP_MASKED_TILES:
            # Skip the K/V loads and both dots of a tile the mask hides entirely.
            go = tl.max(tl.max(tl.where(visible, add, float("-inf")), 1), 0) > float("-inf")
        if go:
            # The bulk loads need no bounds (keys exist) unless the head dim is padded.
            bounded: tl.constexpr = MASKED or BLOCK_D != HEAD_DIM or BLOCK_DV != HEAD_DIM_V
            if PAGED:
                if BLOCK_N % PAGE_SIZE == 0:
                    # Tiles start on a multiple of BLOCK_N, so a key's slot in its page depends
                    # on its place in the tile only (loop-invariant, whatever the tile start).
                    page_idx = start_n // PAGE_SIZE + tl.arange(0, BLOCK_N) // PAGE_SIZE
                    slot = tl.arange(0, BLOCK_N) % PAGE_SIZE
                else:  # pages span tiles; unsigned: positions are never negative
                    page_idx = (offs_n.to(tl.uint32) // PAGE_SIZE).to(tl.int32)
                    slot = (offs_n.to(tl.uint32) % PAGE_SIZE).to(tl.int32)
                if MASKED:
                    page = tl.load(PageTable + b * stride_pt + page_idx, mask=n_ok, other=0)
                else:
                    page = tl.load(PageTable + b * stride_pt + page_idx)
                k_row = page.to(tl.int64) * stride_kp + slot * stride_ks
                v_row = page.to(tl.int64) * stride_vp + slot * stride_vs
            else:
                k_row = (k_start + offs_n).to(tl.int64) * stride_ks
                v_row = (k_start + offs_n).to(tl.int64) * stride_vs
            k_ptrs = K + k_row[:, None] + kvh * stride_kh + offs_d[None, :] * stride_kd
            v_ptrs = V + v_row[:, None] + kvh * stride_vh + offs_dv[None, :] * stride_vd
            if bounded:
                k = tl.load(k_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                v = tl.load(v_ptrs, mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
            else:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
            k = k.to(q.dtype)
            if UPCAST:
                v = v.to(tl.float32)
            else:
                v = v.to(q.dtype)
            # Scores stay in raw units through soft-cap and ALiBi; the softmax scale (log2
            # domain) is applied inside the max and the exponent (one fused multiply-add per
            # score) unless a mask/bias term is added first.
            if HAS_ALIBI:
                alibi_term = _alibi_term(alibi, q_pos, start_n, BLOCK_N,
                                         MASKED or not IS_CAUSAL or HAS_SPANS)
            if HAS_ALIBI and not HAS_SOFTCAP:
                s = tl.dot(q, tl.trans(k), alibi_term)  # the MMA adds the term for free
            else:
                s = tl.dot(q, tl.trans(k))
            if HAS_SOFTCAP:
                s = (softcap / scale) * _tanh(s * (scale / softcap))
                if HAS_ALIBI:
                    s = s + alibi_term
            if HAS_ADD:
                s = s * (scale * 1.4426950408889634)
                if KEY_SHARED:  # slots past the sequence's end are garbage: `visible` hides them
                    s = s + tl.load(KeyTerm + tl.multiple_of(key_row0 + start_n, 4)
                                    + tl.arange(0, BLOCK_N))[None, :]
                if MASK_ROWS or BIAS_ROWS:
                    s = s + add
                s_mul = 1.0
            else:
                s_mul = scale * 1.4426950408889634
            if MASKED:
                s = tl.where(visible, s, float("-inf"))
            s_max = tl.max(s, 1) * s_mul
            m_new = tl.maximum(m_i, s_max)
            if MASKED or HAS_ADD:
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row may see nothing yet
            else:
                m_safe = m_new
            p = tl.exp2(s * s_mul - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["total_q", "total_k", "num_pages", "mask_cols", "bias_cols",
                                "window_left", "window_right", "chunk_size"])
def _attn_fwd(
    # Per call (launch.BoundKernel's groups): tensors, strides, free ints, floats.
    Q, K, V, O, LSE, Out, OutLse, Arrivals, Sinks, KDescale, VDescale, Mask, MaskStart, Bias,
    BiasStart, KeyTerm, KeyStart, AlibiSlopes,
    stride_qt, stride_qh, stride_qd, stride_kp, stride_ks, stride_kh, stride_kd,
    stride_vp, stride_vs, stride_vh, stride_vd, stride_os, stride_ot, stride_oh, stride_od,
    stride_ls, stride_lh, stride_lt, stride_fot, stride_foh, stride_fod, stride_flh, stride_flt,
    stride_mr, stride_mh, stride_mc, stride_br, stride_bh,
    stride_bc, stride_th, stride_desc, stride_desc_h, stride_alibi, stride_sink,
    total_q, total_k, num_pages, mask_cols, bias_cols, window_left, window_right, chunk_size,
    qk_scale, softcap,
    # Per plan.
    CuSeqQ, SeqUsedK, PageTable, CuSeqK, Spans, SpanCounts, stride_pt, stride_sb, stride_ss,
    max_spans, max_pages,
    NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, FUSED_MERGE: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
    MERGE_ROWS: tl.constexpr, PAGED: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_SINKS: tl.constexpr, HAS_K_DESCALE: tl.constexpr, HAS_V_DESCALE: tl.constexpr,
    WRITE_LSE: tl.constexpr, WANT_LSE: tl.constexpr, UPCAST: tl.constexpr,
    MASK_LAYOUT: tl.constexpr, MASK_HEADS: tl.constexpr,
    BIAS_LAYOUT: tl.constexpr, BIAS_HEADS: tl.constexpr, SKIP_MASKED_TILES: tl.constexpr,
    KEY_SHARED: tl.constexpr, KEY_HEADS: tl.constexpr,
    HAS_SPANS: tl.constexpr, SPANS_IN_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // NUM_KV_HEADS
    kvh = pid_bh % NUM_KV_HEADS

    # Whatever the plan says, rows stay inside q/out ([0, total_q)) and keys inside the cache:
    # the page table's row (max_pages columns; its ids were clamped into the cache once per
    # plan, AttnPlan.safe_page_table) or k's rows ([0, total_k)). Prologue clamps only; a bad
    # plan gives wrong rows (the checks refuse it where they can), never a stray read.
    q_start = tl.minimum(tl.maximum(tl.load(CuSeqQ + b), 0), total_q)
    q_len = tl.minimum(tl.load(CuSeqQ + b + 1), total_q) - q_start
    if pid_m * BLOCK_M >= q_len * GROUP:
        return
    k_len = tl.load(SeqUsedK + b)
    k_start = tl.load(CuSeqK + b)  # contiguous keys only; paged launches pass a dummy
    if PAGED:  # an empty cache (num_pages 0) has no keys to read
        k_len = tl.where(num_pages > 0, tl.minimum(k_len, max_pages * PAGE_SIZE), 0)
    else:
        k_start = tl.minimum(tl.maximum(k_start, 0), total_k)
        k_len = tl.minimum(k_len, total_k - k_start)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = tok < q_len
    q_pos = k_len - q_len + tok  # bottom-right aligned absolute positions

    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptrs = (Q + (q_start + tok)[:, None].to(tl.int64) * stride_qt
              + head[:, None] * stride_qh + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    scale = qk_scale
    if HAS_K_DESCALE:
        scale = scale * tl.load(KDescale + b * stride_desc + kvh * stride_desc_h)
    if KEY_SHARED:
        KeyTerm += (kvh if KEY_HEADS > 1 else 0) * stride_th
        key_row0 = term_start(tl.load(KeyStart + b), b)
    else:
        key_row0 = 0

    # Key range this tile can see, from its first and last query positions.
    pos_lo = k_len - q_len + pid_m * BLOCK_M // GROUP
    pos_hi = k_len - q_len + tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // GROUP, q_len - 1)
    lo = k_len * 0
    hi = k_len
    if IS_CAUSAL:
        hi = tl.minimum(hi, pos_hi + 1)
    if HAS_WINDOW:
        lo = tl.where(window_left >= 0, tl.maximum(lo, pos_lo - window_left), lo)
        hi = tl.where(window_right >= 0, tl.minimum(hi, pos_hi + window_right + 1), hi)
    if HAS_CHUNK:
        lo = tl.maximum(lo, (pos_lo // chunk_size) * chunk_size)
        hi = tl.minimum(hi, (pos_hi // chunk_size + 1) * chunk_size)
    if HAS_SPANS:
        # Rows inside a span also visit its keys: past the diagonal (up to the span's end),
        # and before a window's left edge unless the span is kept inside the window.
        span_lo, span_hi = _row_spans(Spans + b * stride_sb,
                                      tl.minimum(tl.load(SpanCounts + b), max_spans), q_pos,
                                      stride_ss)
        in_span = row_ok & (span_hi > span_lo)
        first = span_lo
        if SPANS_IN_WINDOW:
            first = tl.where(window_left >= 0, tl.maximum(span_lo, q_pos - window_left), span_lo)
        if HAS_WINDOW or HAS_CHUNK:  # otherwise lo is 0 already
            lo = tl.maximum(tl.minimum(lo, tl.min(tl.where(in_span, first, k_len), 0)), 0)
        hi = tl.maximum(hi, tl.minimum(tl.max(tl.where(in_span, span_hi, 0), 0), k_len))
    else:
        span_lo = tl.zeros_like(q_pos)
        span_hi = span_lo
    if HAS_ALIBI:
        # -slope in raw score units: the kernel scales raw scores by ``scale`` later.
        alibi = -tl.load(AlibiSlopes + head * stride_alibi, mask=row_ok,
                         other=0.0).to(tl.float32) / scale
    else:
        alibi = tl.zeros([BLOCK_M], tl.float32)
    lo = tl.multiple_of((lo // BLOCK_N) * BLOCK_N, BLOCK_N)
    if NUM_SPLITS > 1:
        per_split = tl.cdiv(tl.cdiv(tl.maximum(hi - lo, 0), NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = lo + pid_s * per_split
        hi = tl.minimum(hi, lo + per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Tiles every valid row may see whole by position ([bulk_lo, bulk_hi): after the last
    # row's window edge, before the first row's diagonal) skip the position predicates and
    # load bounds; window edges, the diagonal, chunks and the ragged end are masked. Masks
    # and bias apply in both parts (they are an additive term).
    bulk_lo = lo
    bulk_hi = lo
    if not HAS_CHUNK:
        bulk_hi = hi
        if IS_CAUSAL:
            bulk_hi = pos_lo + 1
        if HAS_WINDOW:
            edge = tl.cdiv(tl.maximum(pos_hi - window_left, 0), BLOCK_N) * BLOCK_N
            bulk_lo = tl.minimum(tl.where(window_left >= 0, tl.maximum(edge, lo), lo), hi)
            if not IS_CAUSAL:
                bulk_hi = tl.where(window_right >= 0, pos_lo + window_right + 1, bulk_hi)
        bulk_hi = tl.maximum(bulk_lo, (tl.minimum(bulk_hi, hi) // BLOCK_N) * BLOCK_N)
    # A program whose rows all lie in one span sees that span's keys past its diagonal whole:
    # those tiles ([span_bulk_lo, span_bulk_hi)) join the bulk, and the masked edge skips them.
    span_bulk_lo = bulk_hi
    span_bulk_hi = bulk_hi
    if HAS_SPANS and IS_CAUSAL:
        span_first = tl.min(tl.where(row_ok, span_lo, k_len), 0)
        span_last = tl.max(tl.where(row_ok, span_lo, -1), 0)
        one_span = (tl.min(tl.where(row_ok, in_span.to(tl.int32), 1), 0) == 1) & (span_first == span_last)
        span_end = tl.minimum(tl.max(tl.where(row_ok, span_hi, 0), 0), k_len)
        span_bulk_lo = tl.minimum(tl.maximum(tl.cdiv(pos_hi + 1, BLOCK_N) * BLOCK_N, bulk_hi), hi)
        span_bulk_hi = tl.minimum(tl.maximum((span_end // BLOCK_N) * BLOCK_N, span_bulk_lo), hi)
        span_bulk_hi = tl.where(one_span, span_bulk_hi, span_bulk_lo)
    # The masked part visits [lo, hi) less the bulk's tiles; without a window it starts at
    # the bulk's end (the bulk starts at lo).
    masked_lo = lo if HAS_WINDOW else bulk_hi
    for part in tl.static_range(2):  # the unmasked bulk, then the masked edges
        m_i, l_i, acc = _attn_tiles(
            m_i, l_i, acc, q, K, V, PageTable, b, kvh, k_start,
            bulk_lo if part == 0 else masked_lo, span_bulk_hi if part == 0 else hi,
            bulk_hi if part == 0 else bulk_lo,
            span_bulk_lo - bulk_hi if part == 0 else bulk_hi - bulk_lo,
            span_bulk_lo, span_bulk_hi - span_bulk_lo,
            row_ok, tok, head, q_start, q_pos, scale, softcap, window_left, window_right,
            chunk_size, stride_kp, stride_ks, stride_kh, stride_kd, stride_vp, stride_vs,
            stride_vh, stride_vd, stride_pt, Mask, MaskStart, stride_mr, stride_mh, stride_mc,
            mask_cols, Bias, BiasStart, stride_br, stride_bh, stride_bc, bias_cols, KeyTerm,
            key_row0, span_lo, span_hi, alibi, NUM_KV_HEADS * GROUP, HEAD_DIM, HEAD_DIM_V,
            BLOCK_D, BLOCK_DV, BLOCK_N, PAGE_SIZE, PAGED, part == 1, IS_CAUSAL, HAS_WINDOW,
            HAS_CHUNK, HAS_SOFTCAP, UPCAST,
            MASK_LAYOUT, MASK_HEADS, BIAS_LAYOUT, BIAS_HEADS, SKIP_MASKED_TILES, KEY_SHARED,
            HAS_SPANS, SPANS_IN_WINDOW, HAS_ALIBI,
            HAS_SPANS if part == 0 else HAS_WINDOW, HAS_SPANS and part == 1)

    if HAS_SINKS:
        # The sink is one more logit with no value; it joins only split 0's denominator.
        sink = tl.load(Sinks + head * stride_sink, mask=row_ok,
                       other=float("-inf")).to(tl.float32) * 1.4426950408889634
        sink = tl.where(pid_s == 0, sink, float("-inf"))
        m_new = tl.maximum(m_i, sink)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.exp2(sink - m_safe)
        acc = acc * alpha[:, None]
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if HAS_V_DESCALE:
        out = out * tl.load(VDescale + b * stride_desc + kvh * stride_desc_h)
    o_ptrs = (O + pid_s * stride_os + (q_start + tok)[:, None].to(tl.int64) * stride_ot
              + head[:, None] * stride_oh + offs_dv[None, :] * stride_od)
    tl.store(o_ptrs, out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    if WRITE_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        tl.store(LSE + pid_s * stride_ls + head * stride_lh + (q_start + tok).to(tl.int64) * stride_lt,
                 lse, mask=row_ok)
    if FUSED_MERGE:
        _merge_if_last(O, LSE, Out, OutLse, Arrivals + pid_bh * tl.num_programs(0) + pid_m,
                       (q_start + tok).to(tl.int64), head, row_ok, offs_dv, pid_m * BLOCK_M,
                       q_start, q_len, kvh, stride_os, stride_ot, stride_oh, stride_od,
                       stride_ls, stride_lh, stride_lt, stride_fot, stride_foh, stride_fod,
                       stride_flh, stride_flt, NUM_SPLITS, BLOCK_SPLITS, MERGE_ROWS, GROUP,
                       HEAD_DIM_V, BLOCK_M, BLOCK_DV, WANT_LSE)


def _static(plan: AttnPlan, num_pages: int) -> Static:
    """The kernel's per-plan arguments (``CuSeqQ`` .. ``max_pages``) for a cache of
    ``num_pages`` pages: the page table with its ids clamped into the cache
    (:meth:`AttnPlan.safe_page_table`), so a bad id never sends a load outside it and the
    tile loop pays nothing for the bound."""
    dummy = plan.seqused_k
    if plan.paged:
        table = plan.safe_page_table(num_pages)
        keys = (table, dummy, table.stride(0))
    else:
        keys = (dummy, plan.cu_seqlens_k, 0)
    spans = ((plan.spans, plan.span_counts, plan.spans.stride(0), plan.spans.stride(1),
              plan.spans.shape[1]) if plan.has_spans else (dummy, dummy, 0, 0, 0))
    max_pages = plan.page_table.shape[1] if plan.paged else 0
    return Static((plan.cu_seqlens_q, plan.seqused_k, *keys[:2], *spans[:2], keys[2],
                   *spans[2:], max_pages))


def _fused_merge(plan: AttnPlan) -> bool:
    """Whether the split merge runs fused in the forward kernel (eager plans: it saves a
    launch, the larger part of an eager decode call's host time) or as a second kernel
    (CUDA-graph plans: a replay pays only GPU time, and with many splits per tile the
    separate merge, parallel over (token, head), finishes sooner than the fused one's last
    program: measured on the H200, 1x4K decode 0.90 vs 0.78 TB/s)."""
    return plan.num_splits > 1 and not plan.for_graphs


def _merge_rows(call: Call, tile: dict) -> int:
    """The fused merge's rows per tile when it merges row by row (fewer rows than splits,
    decode), else 0 (split by split)."""
    splits = call.plan.num_splits
    rows = min(tile["BLOCK_M"], call.plan.max_seqlen_q * (call.q.shape[1] // call.k_cache.shape[-2]))
    return rows if splits > 1 and rows < splits else 0


def _constexprs(call: Call, tile: dict, key_shared: MaskSpec | None, key_heads: int,
                mask: MaskSpec | None, bias: MaskSpec | None) -> dict:
    q, params, plan = call.q, call.params, call.plan
    hq, d = q.shape[1], q.shape[2]
    hk, dv = call.k_cache.shape[-2], call.v_cache.shape[-1]
    return dict(
        NUM_KV_HEADS=hk, GROUP=hq // hk, HEAD_DIM=d, HEAD_DIM_V=dv,
        BLOCK_D=triton.next_power_of_2(d), BLOCK_DV=triton.next_power_of_2(dv),
        BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"],
        PAGE_SIZE=plan.page_size if plan.paged else 1, NUM_SPLITS=plan.num_splits,
        FUSED_MERGE=_fused_merge(plan), BLOCK_SPLITS=triton.next_power_of_2(plan.num_splits),
        MERGE_ROWS=_merge_rows(call, tile),
        PAGED=plan.paged, IS_CAUSAL=params.causal,
        HAS_WINDOW=params.window_left >= 0 or params.window_right >= 0,
        HAS_CHUNK=params.chunk_size > 0, HAS_SOFTCAP=params.softcap > 0,
        HAS_SINKS=call.sinks is not None, HAS_K_DESCALE=call.k_descale is not None,
        HAS_V_DESCALE=call.v_descale is not None,
        WRITE_LSE=call.want_lse or plan.num_splits > 1, WANT_LSE=call.want_lse,
        UPCAST=_ATTN_FWD.interpreted and q.dtype == torch.bfloat16,
        MASK_LAYOUT=int(mask.layout) if mask else 0, MASK_HEADS=mask.heads if mask else 1,
        BIAS_LAYOUT=int(bias.layout) if bias else 0, BIAS_HEADS=bias.heads if bias else 1,
        SKIP_MASKED_TILES=mask is not None,  # per-row layouts only: worth skipping tiles
        KEY_SHARED=key_shared is not None, KEY_HEADS=key_heads,
        HAS_SPANS=call.spans, SPANS_IN_WINDOW=call.spans and params.spans_in_window,
        HAS_ALIBI=call.alibi_slopes is not None)


def _split_parts(call: Call, memo: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-KV partials ``[S, T, Hq, Dv]`` / ``[S, Hq, T]`` float32: one workspace per
    schedule and shape, reused by every layer (their calls run in stream order)."""
    q, splits = call.q, call.plan.num_splits
    t, hq, dv = q.shape[0], q.shape[1], call.v_cache.shape[-1]
    key = ("split_parts", t, hq, dv)
    parts = memo.get(key)
    if parts is None:
        parts = memo[key] = (
            torch.empty(splits, t, hq, dv, dtype=torch.float32, device=q.device),
            torch.empty(splits, hq, t, dtype=torch.float32, device=q.device))
    return parts


class _Prepared:
    """What a plan's calls of one variant share: the grid, the per-plan arguments, the
    constexprs and options, the launch key, and (split plans) the fused merge's arrival
    counters, one per (query tile, sequence x kv head), zero between calls. Calls of one plan
    run in stream order (an engine's layers do); two streams must not share a plan."""

    __slots__ = ("grid", "static", "constexprs", "options", "fused", "arrivals", "key")

    def __init__(self, call: Call, tile: dict, variant: tuple, key_shared: MaskSpec | None,
                 key_heads: int, mask: MaskSpec | None, bias: MaskSpec | None) -> None:
        plan, q, hk = call.plan, call.q, call.k_cache.shape[-2]
        self.grid = (triton.cdiv(plan.max_seqlen_q * (q.shape[1] // hk), tile["BLOCK_M"]),
                     plan.batch_size * hk, plan.num_splits)
        self.static = _static(plan, call.k_cache.shape[0])
        self.constexprs = _constexprs(call, tile, key_shared, key_heads, mask, bias)
        self.options = dict(num_warps=tile["num_warps"], num_stages=tile["num_stages"])
        self.fused = self.constexprs["FUSED_MERGE"]
        self.arrivals = (torch.zeros(self.grid[0] * self.grid[1], dtype=torch.int32,
                                     device=q.device) if self.fused else plan.seqused_k)
        self.key = LaunchKey(variant, tuple(self.constexprs.values()),
                             tuple(self.options.values()))


def _variant(call: Call, key_heads: int, mask: MaskSpec | None, bias: MaskSpec | None) -> tuple:
    """Everything a call's launch depends on besides its tensors' data and strides: with the
    strides, it fixes the compiled kernel (dtypes included), so it keys the launch too."""
    q, params, k_cache, sinks, alibi = call.q, call.params, call.k_cache, call.sinks, call.alibi_slopes
    return (k_cache.shape[0], params.causal, params.window_left >= 0 or params.window_right >= 0,
            params.chunk_size > 0, params.softcap > 0, sinks is not None and sinks.dtype,
            call.k_descale is not None, call.v_descale is not None, call.want_lse, call.spans,
            params.spans_in_window, alibi is not None and alibi.dtype, q.dtype, k_cache.dtype,
            q.shape[1], q.shape[2], k_cache.shape[-2], call.v_cache.shape[-1], key_heads,
            mask is not None and (mask.layout, mask.heads, mask.tensor.dtype),
            bias is not None and (bias.layout, bias.heads, bias.tensor.dtype))


def _outputs(call: Call) -> tuple[torch.Tensor, torch.Tensor | None]:
    q = call.q
    out = call.out
    if out is None:
        out = torch.empty(q.shape[0], q.shape[1], call.v_cache.shape[-1], dtype=q.dtype,
                          device=q.device)
    lse = (torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)
           if call.want_lse else None)
    return out, lse


class _CallLaunch:
    """The forward launch of one call signature (its tensors' shapes, strides, dtypes and
    params, its masks' layouts): the :class:`Launch` with every argument but the tensors, the
    split partials and whether the merge runs fused. Built at the signature's first call; an
    unmasked signature's is kept in the run path's per-signature memo (``Call.memo``)."""

    __slots__ = ("launch", "parts", "arrivals", "merge_apart")

    def __init__(self, call: Call, tile: dict, memo: dict, mask: MaskSpec | None,
                 bias: MaskSpec | None, term: tuple[torch.Tensor | None, MaskSpec | None, int],
                 out: torch.Tensor, lse: torch.Tensor | None) -> None:
        q, k_cache, v_cache, plan, params = call.q, call.k_cache, call.v_cache, call.plan, call.params
        term_tensor, key_shared, key_heads = term
        variant = _variant(call, key_heads, mask, bias)
        prepared = memo.get(variant)
        if prepared is None:
            prepared = memo[variant] = _Prepared(call, tile, variant, key_shared,
                                                 max(key_heads, 1), mask, bias)
        self.arrivals = prepared.arrivals
        self.merge_apart = plan.num_splits > 1 and not prepared.fused
        if plan.num_splits > 1:
            self.parts = _split_parts(call, memo)
            o_strides, l_strides = self.parts[0].stride(), self.parts[1].stride()
            merged_strides = (*out.stride(), *((0, 0) if lse is None else lse.stride()))
        else:  # the kernel writes out (and lse) as split 0; without an LSE it never touches it
            self.parts = None
            o_strides = out.unsqueeze(0).stride()
            l_strides = (0, 0, 0) if lse is None else lse.unsqueeze(0).stride()
            merged_strides = (0, 0, 0, 0, 0)
        if plan.paged:
            kv_strides = (*k_cache.stride(), *v_cache.stride())
        else:
            kv_strides = (0, *k_cache.stride(), 0, *v_cache.stride())
        k_descale, v_descale = call.k_descale, call.v_descale
        descale = k_descale if k_descale is not None else v_descale
        if k_descale is not None and v_descale is not None:
            checks.expect(k_descale.stride() == v_descale.stride(),
                          "v_descale: expected the same strides as k_descale")
        mask_strides, mask_cols = _layout_strides(mask)
        bias_strides, bias_cols = _layout_strides(bias)
        sinks, alibi = call.sinks, call.alibi_slopes
        rows_k = k_cache.shape[0]
        self.launch = Launch(
            _ATTN_FWD, prepared.grid, prepared.key,
            (*q.stride(), *kv_strides, *o_strides, *l_strides, *merged_strides,
             *mask_strides, *bias_strides, 0 if term_tensor is None else term_tensor.stride(0),
             *((0, 0) if descale is None else descale.stride()),
             0 if alibi is None else alibi.stride(0), 0 if sinks is None else sinks.stride(0)),
            (q.shape[0], rows_k, rows_k if plan.paged else 0, mask_cols, bias_cols,
             params.window_left, params.window_right, max(params.chunk_size, 1)),
            (float(params.softmax_scale), float(params.softcap or 1.0)),  # never specialized
            prepared.static, prepared.constexprs, prepared.options)

    def __call__(self, call: Call, out: torch.Tensor, lse: torch.Tensor | None,
                 layouts: tuple[torch.Tensor, ...]) -> None:
        dummy = call.plan.seqused_k
        if self.parts is not None:
            o_part, l_part = self.parts
            outputs = (o_part, l_part, out, dummy if lse is None else lse, self.arrivals)
        else:
            outputs = (out, out if lse is None else lse, dummy, dummy, dummy)
        sinks, k_descale, v_descale, alibi = (call.sinks, call.k_descale, call.v_descale,
                                              call.alibi_slopes)
        self.launch((call.q, call.k_cache, call.v_cache, *outputs,
                     dummy if sinks is None else sinks,
                     dummy if k_descale is None else k_descale,
                     dummy if v_descale is None else v_descale,
                     *layouts, dummy if alibi is None else alibi))
        if self.merge_apart:
            merge_splits(self.parts[0], self.parts[1], out, lse)


def _layout_strides(spec: MaskSpec | None) -> tuple[tuple[int, int, int], int]:
    """The (row, head, column) strides and the column count of a mask/bias."""
    if spec is None:
        return (0, 0, 0), 0
    t = spec.tensor
    return (t.stride(0), t.stride(1), t.stride(2) if t.dim() == 3 else 0), (
        t.shape[2] if t.dim() == 3 else 0)


def _layout_tensors(spec: MaskSpec | None, dummy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask/bias's tensor (bool masks as bytes) and its row starts."""
    if spec is None:
        return dummy, dummy
    return (spec.tensor.view(torch.uint8) if spec.is_bool else spec.tensor), spec.row_start


_MEMO_KEY = "triton launch"


def run_attention(call: Call, tile: dict, memo: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel with the tile config ``tile`` (split plans merge their splits
    inside it, or in a second kernel for CUDA graphs: :func:`_fused_merge`); ``memo`` keeps
    what is prepared once per schedule, ``call.memo`` the launch of the call's signature."""
    out, lse = _outputs(call)
    if call.q.shape[0] == 0:
        return out, lse
    dummy = call.plan.seqused_k
    if call.mask is None and call.bias is None:
        launch = call.memo.get(_MEMO_KEY)
        if launch is None:
            launch = call.memo[_MEMO_KEY] = _CallLaunch(call, tile, memo, None, None,
                                                        (None, None, 0), out, lse)
        launch(call, out, lse, (dummy,) * 6)
        return out, lse
    mask, bias = call.mask, call.bias
    hq = call.q.shape[1]
    key_mask, key_bias = shared_key_side(mask, hq), shared_key_side(bias, hq)
    key_shared = key_mask or key_bias
    term, term_tensors = (None, None, 0), (dummy, dummy)
    if key_shared:
        tensor = key_term(key_mask, key_bias, call.plan, tile["BLOCK_N"])
        term, term_tensors = (tensor, key_shared, tensor.shape[0]), (tensor, key_shared.row_start)
        mask = None if key_mask else mask
        bias = None if key_bias else bias
    launch = _CallLaunch(call, tile, memo, mask, bias, term, out, lse)
    launch(call, out, lse, (*_layout_tensors(mask, dummy), *_layout_tensors(bias, dummy),
                            *term_tensors))
    return out, lse


_ATTN_FWD = BoundKernel(_attn_fwd)
