"""Engine tensors as the views core's kernels take: no copies, no host syncs.

- :func:`cache_view`: a KV cache as the ``[num_pages, page_size, Hk, D]`` pages a plan's
  table counts in. Engines store the cache token-major (SGLang ``[num_slots, Hk, D]``); a plan
  over SGLang's pages and a plan over single token slots (speculative key lists) read the
  same buffer through different views.
- :func:`expand_descale`: an FP8 per-tensor or per-kv-head scale as the ``[batch, Hk]``
  descale the kernels read, as a stride-0 view.
"""
from __future__ import annotations

import torch

from ..semantics.checks import expect
from .plan import AttnPlan


def cache_view(cache: torch.Tensor, plan: AttnPlan) -> torch.Tensor:
    """``cache`` (``[num_slots, Hk, D]`` or ``[num_pages, page, Hk, D]``) in ``plan.page_size``
    pages. Contiguous-key plans take the keys as they are."""
    page_size = plan.page_size
    if not plan.paged:
        return cache
    if cache.dim() == 4:
        if cache.shape[1] == page_size:
            return cache
        expect(cache.stride(0) == cache.shape[1] * cache.stride(1),
               lambda: f"k_cache/v_cache: a [num_pages, {cache.shape[1]}, Hk, D] cache with strides "
               f"{cache.stride()} cannot be viewed in pages of {page_size} (its slots are not "
               "evenly spaced)")
        cache = cache.flatten(0, 1)
    expect(cache.dim() == 3, lambda: f"k_cache/v_cache: expected [num_slots, num_kv_heads, head_dim] "
           f"or [num_pages, page_size, num_kv_heads, head_dim], got shape {tuple(cache.shape)}")
    num_pages = cache.shape[0] // page_size
    return cache[: num_pages * page_size].unflatten(0, (num_pages, page_size))


def expand_descale(scale: torch.Tensor | float | None, batch: int, num_kv_heads: int,
                   device: torch.device | str, name: str = "descale") -> torch.Tensor | None:
    """A per-tensor (one value), per-kv-head (``num_kv_heads`` values) or per-sequence
    (``[batch, num_kv_heads]``) dequantisation scale as ``[batch, num_kv_heads]`` float32,
    without a copy per sequence (stride 0)."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor) and scale.shape == (batch, num_kv_heads):
        return scale.float()
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
    expect(scale.numel() in (1, num_kv_heads),
           lambda: f"{name}: expected one value (per tensor), num_kv_heads={num_kv_heads} values "
           f"(per kv head) or [batch, num_kv_heads], got shape {tuple(scale.shape)}")
    return scale.reshape(1, -1).expand(batch, num_kv_heads)
