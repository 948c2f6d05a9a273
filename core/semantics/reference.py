"""PyTorch oracle for every semantic in docs/semantics.md; also the CPU fallback path.

Keys are walked in chunks with an online softmax in float32, so memory stays
O(q_chunk x k_chunk) per step and never O(q_len x k_len), even at 256K tokens.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

from . import masks
from . import spans as core_spans
from .checks import FP8_DTYPES
from .masks import MaskSpec
from .params import AttnParams

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan

Q_CHUNK = 256
K_CHUNK = 1024


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, k_len: int, p: AttnParams,
            spans: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """``[CQ, CK]`` boolean: which keys each query may see (positions are absolute).

    ``spans``: the sequence's bidirectional spans, half-open (:mod:`core.semantics.spans`).
    """
    qp, kp = q_pos[:, None], k_pos[None, :]
    ok = torch.ones(qp.shape[0], kp.shape[1], dtype=torch.bool, device=q_pos.device)
    if p.causal:
        ok = ok & (kp <= qp)
    if p.window_left >= 0:
        ok = ok & (kp >= qp - p.window_left)
    if p.window_right >= 0:
        ok = ok & (kp <= qp + p.window_right)
    if p.chunk_size > 0:
        ok = ok & (torch.div(kp, p.chunk_size, rounding_mode="floor")
                   == torch.div(qp, p.chunk_size, rounding_mode="floor"))
    for start, end in spans:
        both = (qp >= start) & (qp < end) & (kp >= start) & (kp < end)
        if p.spans_in_window and p.window_left >= 0:
            both = both & (kp >= qp - p.window_left)
        ok = ok | both
    return ok & (kp < k_len)


def _sequence_spans(plan: AttnPlan, params: AttnParams) -> list[list[tuple[int, int]]]:
    """Each sequence's spans as host lists (none when the layer or the plan has none)."""
    if not core_spans.applies(plan, params):
        return [[] for _ in range(plan.batch_size)]
    table, counts = plan.spans.tolist(), plan.span_counts.tolist()
    return [[tuple(r) for r in table[b][:n]] for b, n in enumerate(counts)]


def _gather_keys(cache: torch.Tensor, plan: AttnPlan, b: int, k_start: int, start: int,
                 stop: int) -> torch.Tensor:
    """Keys ``start:stop`` of sequence ``b`` as ``[n, Hk, D]`` (float32)."""
    pos = torch.arange(start, stop, device=cache.device)
    if plan.page_table is None:
        return cache[k_start + pos].float()
    page_size = cache.shape[1]
    pages = plan.page_table[b, pos // page_size].long()
    return cache[pages, pos % page_size].float()


def _merge_sink(acc, m, l, sinks):
    """Join one extra logit per head (no value) to the softmax denominator."""
    sink = sinks.float()[:, None]  # [Hq, 1]
    m_new = torch.maximum(m, sink)
    alpha = torch.exp(m - m_new)
    l = l * alpha + torch.exp(sink - m_new)
    return acc * alpha[..., None], m_new, l


def reference_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        plan: AttnPlan, params: AttnParams, *, sinks: torch.Tensor | None = None,
                        k_descale: torch.Tensor | None = None,
                        v_descale: torch.Tensor | None = None,
                        out: torch.Tensor | None = None,
                        mask: MaskSpec | None = None, bias: MaskSpec | None = None,
                        alibi_slopes: torch.Tensor | None = None,
                        q_chunk: int = Q_CHUNK, k_chunk: int = K_CHUNK,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q [total_q, Hq, D]`` over the plan's keys -> (out, lse ``[Hq, total_q]``).

    ``k_cache``/``v_cache`` are ``[num_pages, page_size, Hk, D]`` (paged plan) or
    ``[total_k, Hk, D]`` (contiguous plan); ``k_descale``/``v_descale`` are ``[B, Hk]``
    dequantisation scales (FP8 caches); ``mask``/``bias`` come from :mod:`core.semantics.masks`;
    ``alibi_slopes [Hq]`` add ``-slope * |q_pos - k_pos|`` (FA2's ALiBi) to the scaled scores.
    """
    total_q, hq, _ = q.shape
    hk = k_cache.shape[-2]
    group = hq // hk
    dv = v_cache.shape[-1]
    if out is None:
        out = torch.empty(total_q, hq, dv, dtype=q.dtype, device=q.device)
    lse_out = torch.full((hq, total_q), -math.inf, dtype=torch.float32, device=q.device)
    cu_q = plan.cu_seqlens_q.tolist()
    k_lens = plan.seqused_k.tolist()
    cu_k = plan.cu_seqlens_k.tolist() if plan.cu_seqlens_k is not None else None
    seq_spans = _sequence_spans(plan, params)
    for b in range(plan.batch_size):
        q0, q1, k_len = cu_q[b], cu_q[b + 1], k_lens[b]
        if q1 - q0 > k_len and params.positional:
            raise ValueError(f"sequence {b}: q_len {q1 - q0} > k_len {k_len}")
        k_start = cu_k[b] if cu_k is not None else 0
        for qs in range(q0, q1, q_chunk):
            qe = min(qs + q_chunk, q1)
            q_pos = torch.arange(qs - q0, qe - q0, device=q.device) + (k_len - (q1 - q0))
            # [Hk, G, CQ, D] so a query head h reads kv head h // G.
            qf = q[qs:qe].float().view(qe - qs, hk, group, -1).permute(1, 2, 0, 3)
            m = torch.full((hq, qe - qs), -math.inf, device=q.device)
            l = torch.zeros(hq, qe - qs, device=q.device)
            acc = torch.zeros(hq, qe - qs, dv, device=q.device)
            for ks in range(0, k_len, k_chunk):
                ke = min(ks + k_chunk, k_len)
                k_pos = torch.arange(ks, ke, device=q.device)
                ok = visible(q_pos, k_pos, k_len, params, seq_spans[b])
                if not bool(ok.any()):
                    continue
                kf = _gather_keys(k_cache, plan, b, k_start, ks, ke)
                vf = _gather_keys(v_cache, plan, b, k_start, ks, ke)
                if k_descale is not None:
                    kf = kf * k_descale[b].float()[None, :, None]
                if v_descale is not None:
                    vf = vf * v_descale[b].float()[None, :, None]
                s = torch.einsum("hgqd,khd->hgqk", qf, kf).reshape(hq, qe - qs, ke - ks)
                s = s * params.softmax_scale
                if params.softcap > 0:
                    s = params.softcap * torch.tanh(s / params.softcap)
                if alibi_slopes is not None:
                    dist = (q_pos[:, None] - k_pos[None, :]).abs().float()
                    s = s - alibi_slopes.float()[:, None, None] * dist
                rows = torch.arange(qs, qe, device=q.device)
                if bias is not None:
                    s = s + masks.tile(bias, b, rows, k_pos, hq).float()
                if mask is not None:
                    ok = ok & masks.tile(mask, b, rows, k_pos, hq)
                s = s.masked_fill(~ok, -math.inf)
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
                p = torch.exp(s - m_safe[..., None])
                alpha = torch.exp(m - m_safe)
                l = l * alpha + p.sum(-1)
                pv = torch.einsum("hgqk,khd->hgqd", p.view(hk, group, qe - qs, -1), vf)
                acc = acc * alpha[..., None] + pv.reshape(hq, qe - qs, dv)
                m = m_new
            if sinks is not None:
                acc, m, l = _merge_sink(acc, m, l, sinks)
            empty = l == 0
            o = acc / torch.where(empty, torch.ones_like(l), l)[..., None]
            out[qs:qe] = o.permute(1, 0, 2).to(out.dtype)
            lse_out[:, qs:qe] = torch.where(empty, torch.full_like(m, -math.inf), m + torch.log(l))
    return out, lse_out


def merge_state_reference(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                          lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attention results over disjoint key sets.

    ``o_*`` are ``[T, H, D]``, ``lse_*`` are ``[H, T]`` (natural log); a side with LSE -inf
    contributes nothing, and both -inf gives output 0.
    """
    la, lb = lse_a.float().t(), lse_b.float().t()  # [T, H]
    m = torch.maximum(la, lb)
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(la - m_safe), torch.exp(lb - m_safe)
    total = wa + wb
    denom = torch.where(total == 0, torch.ones_like(total), total)
    o = (o_a.float() * (wa / denom)[..., None] + o_b.float() * (wb / denom)[..., None])
    lse = torch.where(total == 0, torch.full_like(m, -math.inf), m_safe + torch.log(total))
    return o.to(o_a.dtype), lse.t().contiguous()


def quantize(x: torch.Tensor, scale: torch.Tensor | float | None, dtype: torch.dtype) -> torch.Tensor:
    """``x / scale`` (a per-tensor scale; None: 1) in a cache's ``dtype``. FP8 values saturate
    to the format's finite range, as vLLM's cache writes do: without it e5m2 rounds values
    past 57344 (and +-inf) to +-inf, which attention turns into NaN."""
    x = x.float()
    if scale is not None:
        x = x / (scale.float().reshape(-1)[0] if isinstance(scale, torch.Tensor) else scale)
    if dtype in FP8_DTYPES:
        top = torch.finfo(dtype).max
        x = x.clamp(-top, top)
    return x.to(dtype)


def write_kv_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                       k_scale: torch.Tensor | float | None,
                       v_scale: torch.Tensor | float | None) -> None:
    """The KV-cache write in PyTorch (see ``ops.write_kv_cache``)."""
    slots = slot_mapping[: k.shape[0]].long()
    keep = slots >= 0
    page_size = k_cache.shape[1]
    pages, offs = slots[keep] // page_size, slots[keep] % page_size
    for src, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        cache[pages, offs] = quantize(src[keep], scale, cache.dtype)
