"""Random paged batches for oracle tests: caches poisoned with NaN wherever no key lives."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from anyattn.core import build_plan, cu_seqlens
from anyattn.core import AttnPlan
from oracle import dense_attention  # noqa: F401  (re-exported for the core tests)


@dataclass
class Batch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    plan: AttnPlan


def paged_batch(q_lens: list[int], k_lens: list[int], *, hq: int, hk: int, d: int, dv: int | None = None,
                page_size: int = 16, dtype=torch.float32, device="cpu", seed: int = 0,
                num_splits: int | None = None, deterministic: bool = False,
                extra_pages: int = 3, cache_layout: str = "nhd", poison: float = math.nan) -> Batch:
    """Sequences with ``q_lens``/``k_lens`` over a cache whose pages are in random order.

    Slots that hold no key are ``poison``: NaN by default, so a kernel that reads past a
    sequence shows it; a large finite value for kernels that load and mask (FA3), where only
    a wrong result shows a wrong read.
    ``cache_layout="vllm"`` stores K and V in one ``[pages, Hk, page_size, D + Dv]`` tensor and
    hands out strided NHD views of it, as vLLM does.
    """
    dv = dv or d
    gen = torch.Generator().manual_seed(seed)
    pages_per_seq = [math.ceil(k / page_size) for k in k_lens]
    num_pages = sum(pages_per_seq) + extra_pages
    if cache_layout == "vllm":
        kv = torch.full((num_pages, hk, page_size, d + dv), poison)
        k_cache, v_cache = kv[..., :d].transpose(1, 2), kv[..., d:].transpose(1, 2)
    else:
        k_cache = torch.full((num_pages, page_size, hk, d), poison)
        v_cache = torch.full((num_pages, page_size, hk, dv), poison)
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
                      page_table=page_table, page_size=page_size, num_kv_heads=hk,
                      num_splits=num_splits,
                      deterministic=deterministic, total_q=sum(q_lens))
    to = dict(device=device)
    plan = plan_to(plan, device)
    return Batch(q.to(dtype=dtype, **to), k_cache.to(dtype=dtype, **to),
                 v_cache.to(dtype=dtype, **to), plan)


def plan_to(plan: AttnPlan, device) -> AttnPlan:
    """The same plan with its tensors on ``device`` (a fresh kernel schedule)."""
    return dataclasses.replace(plan, **{f.name: getattr(plan, f.name).to(device)
                                        for f in dataclasses.fields(plan)
                                        if isinstance(getattr(plan, f.name), torch.Tensor)})


def sequence_kv(batch: Batch, b: int, k_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence ``b``'s first ``k_len`` keys and values gathered from the paged cache, on CPU."""
    ps = batch.k_cache.shape[1]
    pos = torch.arange(k_len, device=batch.k_cache.device)
    pages = batch.plan.page_table[b, pos // ps].long()
    return batch.k_cache[pages, pos % ps].cpu(), batch.v_cache[pages, pos % ps].cpu()
