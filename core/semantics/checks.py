"""Input validation: every error names the argument and the shape/dtype it expected.

All checks run before a kernel launches or a cache is written. Host facts (shapes, strides,
python ints, a plan's host fields ``total_q`` / ``total_k``) are checked on every call. Checks
that would read device memory (offsets, lengths, page ids, scales held in tensors) run only
where that is free (CPU tensors) or in debug mode (``ANYATTN_DEBUG=1``), because a host sync
inside a captured CUDA graph is not allowed: on CUDA without it the caller guarantees them,
and the kernels stay inside the tensors they are given whatever the values say.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import torch

# Head dims up to this run (others pad to the next power of two); any page size >= 1 works,
# since pages are addressed per key.
MAX_HEAD_DIM = 256
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def debug_mode() -> bool:
    return os.environ.get("ANYATTN_DEBUG", "0") == "1"


def expect(cond: bool, message: str | Callable[[], str]) -> None:
    """Raise ``ValueError(message)`` unless ``cond``. A message that formats shapes is passed as
    a callable, formatted only on failure: the checks run on every call of every layer."""
    if not cond:
        raise ValueError(message() if callable(message) else message)


def check_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    expect(t.dim() == rank, lambda: f"{name}: expected a {rank}-D tensor {layout}, got shape {tuple(t.shape)}")


def check_device(name: str, t: torch.Tensor | None, device: torch.device) -> None:
    if t is not None:
        expect(t.device == device, lambda: f"{name}: expected a tensor on {device} (like q), got {t.device}")


def check_int_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], layout: str) -> None:
    expect(t.dtype in (torch.int32, torch.int64),
           lambda: f"{name}: expected int32 {layout}, got dtype {t.dtype}")
    expect(tuple(t.shape) == shape, lambda: f"{name}: expected shape {shape} {layout}, got {tuple(t.shape)}")
    check_unit_stride(name, t)


def check_unit_stride(name: str, t: torch.Tensor) -> None:
    """The kernels index plan tensors' last dim as contiguous (``ptr + i``)."""
    expect(t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1,
           lambda: f"{name}: expected a contiguous last dim, got strides {t.stride()}")


def check_scale(name: str, scale: torch.Tensor | float | None) -> None:
    """An FP8 (de)quantisation scale: finite and positive (0, a negative or a NaN scale would
    store or return NaN). A python number always; a tensor where reading it is free (CPU) or
    in debug mode."""
    if scale is None:
        return
    if isinstance(scale, torch.Tensor):
        if scale.device.type != "cpu" and not debug_mode():
            return
        vals = scale.detach().float().cpu().flatten()
        ok = bool(torch.isfinite(vals).all()) and bool((vals > 0).all())
        shown = vals[:4].tolist()
    else:
        ok, shown = math.isfinite(float(scale)) and float(scale) > 0, scale
    expect(ok, lambda: f"{name}: expected finite positive scale(s), got {shown}")


def check_alibi_slopes(slopes: torch.Tensor, num_heads: int,
                       device: torch.device | None = None) -> None:
    """ALiBi slopes: one float per query head (``[num_heads]``), on ``device`` when given
    (q's: adapters call this before they write the KV cache)."""
    expect(isinstance(slopes, torch.Tensor) and tuple(slopes.shape) == (num_heads,)
           and slopes.dtype in FLOAT_DTYPES,
           lambda: f"alibi_slopes: expected a float32 (or float16/bfloat16) tensor of shape "
           f"({num_heads},) [num_heads], got "
           + (f"{slopes.dtype} {tuple(slopes.shape)}" if isinstance(slopes, torch.Tensor)
              else type(slopes).__name__))
    if device is not None:
        check_device("alibi_slopes", slopes, device)


def check_kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    check_rank("k", k, 3, "[num_tokens, num_kv_heads, head_dim]")
    check_rank("v", v, 3, "[num_tokens, num_kv_heads, head_dim_v]")
    check_rank("k_cache", k_cache, 4, "[num_pages, page_size, num_kv_heads, head_dim]")
    check_rank("v_cache", v_cache, 4, "[num_pages, page_size, num_kv_heads, head_dim_v]")
    for name, t in (("v", v), ("k_cache", k_cache), ("v_cache", v_cache), ("slot_mapping", slot_mapping)):
        check_device(name, t, k.device)
    n = k.shape[0]
    expect(v.shape[0] == n and slot_mapping.shape[0] >= n,
           lambda: f"v/slot_mapping: expected {n} tokens like k, got v {tuple(v.shape)}, "
           f"slot_mapping {tuple(slot_mapping.shape)}")
    expect(slot_mapping.dim() == 1 and slot_mapping.dtype in (torch.int32, torch.int64),
           lambda: f"slot_mapping: expected int32/int64 [num_tokens], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    expect(tuple(k.shape[1:]) == tuple(k_cache.shape[2:]),
           lambda: f"k: expected [num_tokens, {k_cache.shape[2]}, {k_cache.shape[3]}] to match k_cache, got {tuple(k.shape)}")
    expect(tuple(v.shape[1:]) == tuple(v_cache.shape[2:]),
           lambda: f"v: expected [num_tokens, {v_cache.shape[2]}, {v_cache.shape[3]}] to match v_cache, got {tuple(v.shape)}")
    expect(k_cache.dtype == v_cache.dtype and (k_cache.dtype == k.dtype or k_cache.dtype in FP8_DTYPES),
           lambda: f"k_cache/v_cache: expected dtype {k.dtype} (like k) or fp8, got {k_cache.dtype}/{v_cache.dtype}")


def check_kv_write_values(k: torch.Tensor, k_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
    """The slots a cache write reads from the device (CPU tensors, or debug mode)."""
    slots = slot_mapping[:k.shape[0]]
    cap = k_cache.shape[0] * k_cache.shape[1]
    expect(slots.numel() == 0 or (int(slots.min()) >= -1 and int(slots.max()) < cap),
           lambda: f"slot_mapping: entries must be -1 (padding) or in [0, {cap})")
