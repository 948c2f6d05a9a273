"""The key-side mask/bias term that every query row of a program shares.

A key-side layout whose head count is 1 or Hk (``core.semantics.masks``) is the same for all the rows
the attention kernel packs into one program (GQA heads of one kv head, tokens of one
sequence). It is turned once per call into one float32 vector per head, in the kernel's
log2 score domain (``bias * log2(e)``, -inf where the mask hides a key), laid out per
sequence from a 16-byte aligned start (:func:`term_start`). The attention loop then fetches a
tile of it with the same asynchronous copies as K and V and adds it to the scores: no mask
byte loads, no per-tile conversion.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from typing import TYPE_CHECKING

from ...semantics.masks import Layout, MaskSpec

if TYPE_CHECKING:
    from ...plan.plan import AttnPlan

_BLOCK = 1024


@triton.jit
def term_start(row0, b):
    """Where sequence ``b`` (key rows from ``row0`` in the layout) starts in the term vector:
    a multiple of 4 float32 slots (16 bytes), so tiles load with vector copies."""
    return tl.multiple_of(((row0 + 3) // 4) * 4 + 4 * b, 4)


@triton.jit
def _key_term_kernel(Mask, stride_mr, stride_mh, Bias, stride_br, stride_bh, Out, stride_oh,
                     RowStart, SeqUsedK,
                     HAS_MASK: tl.constexpr, MASK_HEADS: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BIAS_HEADS: tl.constexpr, BLOCK: tl.constexpr):
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = tl.program_id(1)
    h = tl.program_id(2)
    ok = pos < tl.load(SeqUsedK + b)
    row0 = tl.load(RowStart + b)
    rows = (row0 + pos).to(tl.int64)
    term = tl.zeros([BLOCK], tl.float32)
    if HAS_BIAS:
        bh = h if BIAS_HEADS > 1 else 0
        term = tl.load(Bias + rows * stride_br + bh * stride_bh, mask=ok,
                       other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_MASK:
        mh = h if MASK_HEADS > 1 else 0
        keep = tl.load(Mask + rows * stride_mr + mh * stride_mh, mask=ok, other=0)
        term = tl.where(keep != 0, term, float("-inf"))
    tl.store(Out + h * stride_oh + term_start(row0, b) + pos, term, mask=ok)


def shared_key_side(spec: MaskSpec | None, hq: int) -> MaskSpec | None:
    """``spec`` if it is a key-side layout shared by every row of a program, else None."""
    return spec if spec is not None and spec.layout == Layout.KEY and spec.heads != hq else None


def key_term(mask: MaskSpec | None, bias: MaskSpec | None, plan: AttnPlan,
             block_n: int) -> torch.Tensor:
    """``[H, L]`` float32 term vectors (``H``: the larger head count of the two, 1 or Hk).

    Pass only shared key-side specs (see :func:`shared_key_side`). Slots between sequences
    are never written: the attention kernel, whose tiles are ``block_n`` keys wide, reads
    them only for keys past a sequence's end, which its position predicate hides.
    """
    specs = [s for s in (mask, bias) if s is not None]
    heads, device = max(s.heads for s in specs), specs[0].tensor.device
    # term_start moves sequence b by at most 4 * b + 3 slots; a tile reads up to block_n past.
    length = specs[0].tensor.shape[0] + 8 * plan.batch_size + block_n
    out = torch.empty(heads, triton.cdiv(length, 4) * 4, dtype=torch.float32, device=device)
    if plan.batch_size == 0 or plan.max_seqlen_k == 0:
        return out
    m = mask.tensor.view(torch.uint8) if mask is not None else out
    b = bias.tensor if bias is not None else out
    _key_term_kernel[(triton.cdiv(plan.max_seqlen_k, _BLOCK), plan.batch_size, heads)](
        m, m.stride(0) if mask is not None else 0, m.stride(1) if mask is not None else 0,
        b, b.stride(0) if bias is not None else 0, b.stride(1) if bias is not None else 0,
        out, out.stride(0), specs[0].row_start, plan.seqused_k,
        HAS_MASK=mask is not None, MASK_HEADS=mask.heads if mask is not None else 1,
        HAS_BIAS=bias is not None, BIAS_HEADS=bias.heads if bias is not None else 1,
        BLOCK=_BLOCK)
    return out
