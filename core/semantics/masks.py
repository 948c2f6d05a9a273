"""Mask and bias descriptions: layout detection, head broadcasting and validation.

A boolean mask (True = attend) or an additive float bias comes in one of two layouts,
told apart by rank (never materialised as a q_len x k_len tensor by anyattn itself):

- ``KEY``: ``[total_k, H']`` broadcast over every query of a sequence; row
  ``cu_seqlens_k[b] + j`` describes key position ``j`` of sequence ``b`` (keys in sequence
  order, cached and new). O(N) memory: the layout for 256K contexts and streaming gates.
- ``QUERY``: ``[total_q, H', max_seqlen_k]``: row ``cu_seqlens_q[b] + i``, column = key
  position. Keys past the last column are not visible.

Speculative-decoding trees are not a mask layout: ``core.cascade`` turns them into key lists.

``H'`` is 1 (all heads), Hk (per kv head: query head h uses h // (Hq // Hk)) or Hq.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from typing import TYPE_CHECKING

from .checks import debug_mode, expect

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan


class Layout(enum.IntEnum):
    KEY = 1
    QUERY = 2


@dataclass(frozen=True)
class MaskSpec:
    """A validated mask or bias: the tensor, its layout, head count and row offsets."""

    tensor: torch.Tensor
    layout: Layout
    heads: int
    row_start: torch.Tensor  # [B+1] int32: cu_seqlens_k (KEY), cu_seqlens_q (QUERY)

    @property
    def is_bool(self) -> bool:
        return self.tensor.dtype == torch.bool


LAYOUTS_HELP = ("accepted layouts: key-side [total_k, H'] or query-side [total_q, H', max_seqlen_k], "
                "H' in {1, num_kv_heads, num_heads}")


def describe(name: str, t: torch.Tensor | None, *, plan: AttnPlan, total_q: int, hq: int,
             hk: int, device: torch.device) -> MaskSpec | None:
    """Validate ``attn_mask`` (``name='attn_mask'``, bool) or ``attn_bias`` (float)."""
    if t is None:
        return None
    is_mask = name == "attn_mask"
    expect(isinstance(t, torch.Tensor), lambda: f"{name}: expected a tensor, got {type(t).__name__}")
    if is_mask:
        expect(t.dtype == torch.bool, lambda: f"{name}: expected dtype torch.bool (True = attend), got "
               f"{t.dtype}; pass an additive float tensor as attn_bias instead")
    else:
        expect(t.dtype in (torch.float16, torch.bfloat16, torch.float32),
               lambda: f"{name}: expected a float16/bfloat16/float32 additive bias, got {t.dtype}; "
               "pass a boolean tensor as attn_mask instead")
    expect(t.device == device, lambda: f"{name}: expected a tensor on {device} (like q), got {t.device}")
    expect(t.dim() in (2, 3), lambda: f"{name}: shape {tuple(t.shape)} fits no layout; {LAYOUTS_HELP}")
    heads = t.shape[1]
    expect(heads in (1, hk, hq), lambda: f"{name}: head dim {heads} not in {{1, {hk}, {hq}}}; {LAYOUTS_HELP}")
    expect(t.stride(-1) == 1 or t.shape[-1] == 1 or t.dim() == 2,
           lambda: f"{name}: the last dimension must be contiguous")
    if t.dim() == 3:
        expect(t.shape[0] == total_q, lambda: f"{name}: query-side layout needs shape[0] == total_q "
               f"({total_q}), got {tuple(t.shape)}; {LAYOUTS_HELP}")
        spec = MaskSpec(t, Layout.QUERY, heads, plan.cu_seqlens_q)
    else:
        spec = MaskSpec(t, Layout.KEY, heads, plan.key_starts)
        if device.type == "cpu" or debug_mode():
            total_k = int(spec.row_start[-1])
            expect(t.shape[0] == total_k, lambda: f"{name}: key-side layout needs shape[0] == total_k "
                   f"({total_k}), got {tuple(t.shape)}; {LAYOUTS_HELP}")
    return spec


def check_key_rows(mask: MaskSpec | None, bias: MaskSpec | None) -> None:
    """A key-side mask and a key-side bias describe the same keys: equal row counts (host
    shapes only, so it holds on CUDA too, where ``total_k`` itself would need a sync)."""
    if mask is not None and bias is not None and mask.layout == bias.layout == Layout.KEY:
        expect(mask.tensor.shape[0] == bias.tensor.shape[0],
               lambda: f"attn_bias: a key-side bias needs as many rows (total_k) as the key-side mask, "
               f"got {bias.tensor.shape[0]} and {mask.tensor.shape[0]}")


def tile(spec: MaskSpec, b: int, q_rows: torch.Tensor, k_pos: torch.Tensor, hq: int) -> torch.Tensor:
    """Reference helper: the ``[Hq, CQ, CK]`` slice of a mask/bias for one tile.

    ``q_rows`` are global query rows, ``k_pos`` key positions of sequence ``b``. Entries outside
    the layout are False (mask) / -inf (bias).
    """
    t = spec.tensor
    if spec.layout == Layout.KEY:
        vals = t[int(spec.row_start[b]) + k_pos]  # [CK, H']
        vals = vals.t()[:, None, :].expand(-1, q_rows.shape[0], -1)
    else:
        inside = k_pos < t.shape[2]
        cols = torch.where(inside, k_pos, torch.zeros_like(k_pos))
        vals = t[q_rows][:, :, cols].permute(1, 0, 2)  # [H', CQ, CK]
        outside = ~inside[None, None, :]
        vals = vals.masked_fill(outside, False) if spec.is_bool else vals.masked_fill(outside, float("-inf"))
    return vals.repeat_interleave(hq // vals.shape[0], 0)
