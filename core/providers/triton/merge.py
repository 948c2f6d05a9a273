"""Log-sum-exp merge of partial attention states (split-KV combine and ``merge_state``)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import BoundKernel, Static


@triton.jit
def _merge_kernel(
    OA, LA, OB, LB, O, L,
    stride_oas, stride_oat, stride_oah, stride_oad,
    stride_las, stride_lah, stride_lat,
    stride_obt, stride_obh, stride_obd,
    stride_lbh, stride_lbt,
    stride_ot, stride_oh, stride_od,
    stride_lh, stride_lt,
    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, NUM_A: tl.constexpr,
    BLOCK_A: tl.constexpr, HAS_B: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    """Merge ``NUM_A`` stacked states of A (and one state B) for one (token, head).

    Weights are ``exp(lse_i - max)``; states with LSE -inf weigh exactly 0, and a row whose
    states are all empty gets output 0 and LSE -inf. All states load at once as one
    ``[BLOCK_A, BLOCK_DV]`` tile: one memory round trip, not one per split.
    """
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs = tl.arange(0, BLOCK_DV)
    d_ok = offs < HEAD_DIM_V
    split = tl.arange(0, BLOCK_A)
    s_ok = split < NUM_A
    la = tl.load(LA + split * stride_las + h * stride_lah + t * stride_lat, mask=s_ok,
                 other=float("-inf"))
    oa = tl.load(OA + split[:, None] * stride_oas + t * stride_oat + h * stride_oah
                 + offs[None, :] * stride_oad, mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.max(la, 0)
    if HAS_B:
        lb = tl.load(LB + h * stride_lbh + t * stride_lbt)
        ob = tl.load(OB + t * stride_obt + h * stride_obh + offs * stride_obd, mask=d_ok, other=0.0)
        m = tl.maximum(m, lb)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(la - m_safe)
    acc = tl.sum(w[:, None] * oa.to(tl.float32), 0)
    total = tl.sum(w, 0)
    if HAS_B:
        wb = tl.exp(lb - m_safe)
        acc += wb * ob.to(tl.float32)
        total += wb
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    tl.store(O + t * stride_ot + h * stride_oh + offs * stride_od, out.to(O.dtype.element_ty), mask=d_ok)
    if WRITE_LSE:
        tl.store(L + h * stride_lh + t * stride_lt,
                 tl.where(empty, float("-inf"), m_safe + tl.log(tl.where(empty, 1.0, total))))


def _launch(o_a: torch.Tensor, l_a: torch.Tensor, o_b: torch.Tensor | None,
            l_b: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor | None) -> None:
    """``o_a [S, T, H, Dv]`` / ``l_a [S, H, T]`` stacked states, optional single state B."""
    num_a, t, h, dv = o_a.shape
    if t == 0:
        return
    has_b = o_b is not None
    ob, lb = (o_b, l_b) if has_b else (o_a[0], l_a[0])
    _MERGE(
        (t, h, 1), None, (o_a, l_a, ob, lb, out, lse if lse is not None else l_a),
        (*o_a.stride(), *l_a.stride(), *ob.stride(), *lb.stride(), *out.stride(),
         *(lse.stride() if lse is not None else (0, 0))), (), (), _NO_STATIC,
        dict(HEAD_DIM_V=dv, BLOCK_DV=triton.next_power_of_2(dv), NUM_A=num_a,
             BLOCK_A=triton.next_power_of_2(num_a), HAS_B=has_b, WRITE_LSE=lse is not None),
        dict(num_warps=max(1, min(4, num_a * dv // 1024))))


def merge_splits(o_part: torch.Tensor, l_part: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor | None) -> None:
    """Combine split-KV partials ``[S, T, H, Dv]`` / ``[S, H, T]`` into ``out`` (and ``lse``)."""
    _launch(o_part, l_part, None, None, out, lse)


def run_merge_state(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                    lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(o_a)
    lse = torch.empty_like(lse_a, dtype=torch.float32)
    _launch(o_a.unsqueeze(0), lse_a.unsqueeze(0), o_b, lse_b, out, lse)
    return out, lse


_MERGE = BoundKernel(_merge_kernel)
_NO_STATIC = Static(())
