"""Random paged batches for oracle tests: caches poisoned with NaN wherever no key lives."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anyattn.core.builders import build_plan, cu_seqlens
from anyattn.core.plan import AttnPlan


@dataclass
class Batch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    plan: AttnPlan


def paged_batch(q_lens: list[int], k_lens: list[int], *, hq: int, hk: int, d: int, dv: int | None = None,
                page_size: int = 16, dtype=torch.float32, device="cpu", seed: int = 0,
                num_splits: int | None = None, deterministic: bool = False,
                extra_pages: int = 3, cache_layout: str = "nhd") -> Batch:
    """Sequences with ``q_lens``/``k_lens`` over a cache whose pages are in random order.

    Slots that hold no key are NaN, so a kernel that reads past a sequence shows it.
    ``cache_layout="vllm"`` stores K and V in one ``[pages, Hk, page_size, D + Dv]`` tensor and
    hands out strided NHD views of it, as vLLM does.
    """
    dv = dv or d
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = [math.ceil(k / page_size) for k in k_lens]
    num_pages = sum(pages_per_seq) + extra_pages
    if cache_layout == "vllm":
        kv = torch.full((num_pages, hk, page_size, d + dv), math.nan)
        k_cache, v_cache = kv[..., :d].transpose(1, 2), kv[..., d:].transpose(1, 2)
    else:
        k_cache = torch.full((num_pages, page_size, hk, d), math.nan)
        v_cache = torch.full((num_pages, page_size, hk, dv), math.nan)
    order = torch.randperm(num_pages, generator=gen)
    max_pages = max(pages_per_seq + [1])
    page_table = torch.zeros(len(k_lens), max_pages, dtype=torch.int32)
    used = 0
    for b, (n, k_len) in enumerate(zip(pages_per_seq, k_lens)):
        pages = order[used:used + n]
        used += n
        page_table[b, :n] = pages
        pos = torch.arange(k_len)
        k_cache[pages[pos // page_size], pos % page_size] = torch.randn(k_len, hk, d, generator=gen)
        v_cache[pages[pos // page_size], pos % page_size] = torch.randn(k_len, hk, dv, generator=gen)
    q = torch.randn(sum(q_lens), hq, d, generator=gen)
    plan = build_plan(cu_seqlens(torch.tensor(q_lens)), torch.tensor(k_lens, dtype=torch.int32),
                      max_seqlen_q=max(q_lens + [0]), max_seqlen_k=max(k_lens + [0]),
                      page_table=page_table, num_kv_heads=hk, num_splits=num_splits,
                      deterministic=deterministic)
    to = dict(device=device)
    plan = AttnPlan(**{f: (getattr(plan, f).to(**to) if isinstance(getattr(plan, f), torch.Tensor)
                           else getattr(plan, f)) for f in plan.__dataclass_fields__})
    return Batch(q.to(dtype=dtype, **to), k_cache.to(dtype=dtype, **to),
                 v_cache.to(dtype=dtype, **to), plan)


def dense_attention(q, k, v, *, scale, causal=True, window=(-1, -1), chunk=0, softcap=0.0,
                    sinks=None, mask=None, bias=None):
    """Naive float64 softmax attention of one sequence: q [Lq, Hq, D], k/v [Lk, Hk, D].

    ``mask`` (bool) / ``bias`` (float) are dense ``[Hq, Lq, Lk]``.
    """
    lq, hq, _ = q.shape
    lk, hk, _ = k.shape
    g = hq // hk
    k = k.double().repeat_interleave(g, 1)
    v = v.double().repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    qp = torch.arange(lq)[:, None] + (lk - lq)
    kp = torch.arange(lk)[None, :]
    ok = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        ok &= kp <= qp
    if window[0] >= 0:
        ok &= kp >= qp - window[0]
    if window[1] >= 0:
        ok &= kp <= qp + window[1]
    if chunk:
        ok &= (kp // chunk) == (qp // chunk)
    if bias is not None:
        s = s + bias.double()
    if mask is not None:
        ok = ok & mask
    s = s.masked_fill(~ok, -math.inf)
    if sinks is not None:
        s = torch.cat([s, sinks.double()[:, None, None].expand(hq, lq, 1)], -1)
        v = torch.cat([v, torch.zeros(1, hq, v.shape[-1], dtype=v.dtype)], 0)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, v), lse
