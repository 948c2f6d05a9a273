"""KV-cache write: scatter new K/V rows into a paged cache through a slot mapping."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...semantics.checks import FP8_DTYPES
from ...semantics.reference import quantize
from .launch import BoundKernel, Launch, LaunchKey, Static


@triton.jit(do_not_specialize=["num_slots"])
def _kv_write_kernel(
    Kn, Vn, KC, VC, Slots, KScale, VScale,
    stride_knt, stride_knh, stride_knd, stride_vnt, stride_vnh, stride_vnd,
    stride_kcp, stride_kcs, stride_kch, stride_kcd,
    stride_vcp, stride_vcs, stride_vch, stride_vcd,
    num_slots,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_SCALE: tl.constexpr,
    FP8_MAX: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    slot = tl.load(Slots + t).to(tl.int64)
    if (slot < 0) | (slot >= num_slots):  # padding token (or a bad slot: never stored)
        return
    page = slot // PAGE_SIZE
    off = slot % PAGE_SIZE
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(Kn + t * stride_knt + h * stride_knh + offs_d * stride_knd,
                mask=offs_d < HEAD_DIM, other=0.0)
    v = tl.load(Vn + t * stride_vnt + h * stride_vnh + offs_dv * stride_vnd,
                mask=offs_dv < HEAD_DIM_V, other=0.0)
    if HAS_SCALE:
        k = k.to(tl.float32) / tl.load(KScale)
        v = v.to(tl.float32) / tl.load(VScale)
    if FP8_MAX > 0:  # saturate to the fp8 format's finite range (vLLM's cache writes do)
        k = tl.clamp(k.to(tl.float32), -FP8_MAX, FP8_MAX)
        v = tl.clamp(v.to(tl.float32), -FP8_MAX, FP8_MAX)
    tl.store(KC + page * stride_kcp + off * stride_kcs + h * stride_kch + offs_d * stride_kcd,
             k.to(KC.dtype.element_ty), mask=offs_d < HEAD_DIM)
    tl.store(VC + page * stride_vcp + off * stride_vcs + h * stride_vch + offs_dv * stride_vcd,
             v.to(VC.dtype.element_ty), mask=offs_dv < HEAD_DIM_V)


def _scale_tensor(scale: torch.Tensor | float | None, device: torch.device) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        return scale.reshape(-1)[:1].float() if scale.dtype != torch.float32 else scale
    return torch.tensor([1.0 if scale is None else float(scale)], device=device)


def run_kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, k_scale: torch.Tensor | float | None,
                 v_scale: torch.Tensor | float | None, memo: dict) -> None:
    """Launch the cache write; ``memo`` keeps the launch of the write's signature (the run
    path's, one per shape and cache layout)."""
    if k.shape[0] == 0:
        return
    if k_cache.dtype in FP8_DTYPES and _KV_WRITE.interpreted:
        # triton 3.9's interpreter drops the rounding carry in fp32 -> fp8 (1.96 -> 1.0):
        # quantise with torch there; the compiled kernel converts in-register.
        k, v = quantize(k, k_scale, k_cache.dtype), quantize(v, v_scale, v_cache.dtype)
        k_scale = v_scale = None
    has_scale = k_scale is not None or v_scale is not None
    ks = _scale_tensor(k_scale, k.device) if has_scale else slot_mapping
    vs = _scale_tensor(v_scale, k.device) if has_scale else slot_mapping
    tensors = (k, v, k_cache, v_cache, slot_mapping, ks, vs)
    launch = memo.get("kv write")
    if launch is None:
        launch = memo["kv write"] = _launch(tensors, has_scale)
    launch(tensors)


def _launch(tensors: tuple[torch.Tensor, ...], has_scale: bool) -> Launch:
    """The write's launch, everything but the tensors fixed: grid, strides, constexprs."""
    k, v, k_cache, v_cache = tensors[:4]
    n, hk, d = k.shape
    dv = v.shape[-1]
    constexprs = dict(
        PAGE_SIZE=k_cache.shape[1], HEAD_DIM=d, HEAD_DIM_V=dv,
        BLOCK_D=triton.next_power_of_2(d), BLOCK_DV=triton.next_power_of_2(dv),
        HAS_SCALE=has_scale,
        FP8_MAX=torch.finfo(k_cache.dtype).max if k_cache.dtype in FP8_DTYPES else 0.0)
    options = dict(num_warps=1)
    key = LaunchKey(tuple(t.dtype for t in tensors), tuple(constexprs.values()),
                    tuple(options.values()))
    return Launch(_KV_WRITE, (n, hk, 1), key,
                  (*k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride()),
                  (k_cache.shape[0] * k_cache.shape[1],), (), _NO_STATIC, constexprs, options)


_KV_WRITE = BoundKernel(_kv_write_kernel)
_NO_STATIC = Static(())
