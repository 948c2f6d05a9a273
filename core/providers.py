"""Kernel providers: which kernel runs a plan's calls, decided once per plan.

Several kernels can compute the same call: anyattn's Triton kernels (every feature, every
device, the CPU interpreter) and FlashAttention-3 where an engine install carries it
(:mod:`core.kernels.fa3`). A :class:`Schedule` is chosen per (plan, :class:`Workload`) from
static facts only (device capability, dtypes, head dims, ``max_seqlen_q``, batch), memoised on
the plan and reused by every layer, so an eager step and a CUDA-graph replay launch the same
kernels and nothing syncs. A call whose per-layer features the chosen provider does not cover
(masks, bias, bidirectional spans, ALiBi, fp8 descales, chunked-local, ...) runs the
schedule's Triton launch instead: that test reads host attributes only, so it is graph-safe
too.

``ANYATTN_KERNELS=auto|triton|fa3`` forces the choice (``fa3`` still falls back where it does
not cover a call). The policy below comes from the H200 measurements in the README.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .params import AttnParams
from .plan import AttnPlan

logger = logging.getLogger("anyattn")

TRITON, FA3 = "triton", "fa3"
CHOICES = ("auto", TRITON, FA3)
# Packed query rows per sequence (max_seqlen_q x GQA group) up to which anyattn's split-KV
# Triton kernel beats FA3 on the H200 (decode and short verify); above it FA3 runs.
TRITON_MAX_ROWS = 16


@dataclass(frozen=True)
class Workload:
    """Static facts of a call's tensors that kernel choice depends on (no device values)."""

    device: torch.device
    dtype: torch.dtype
    kv_dtype: torch.dtype
    head_dim: int
    head_dim_v: int
    num_heads: int
    num_kv_heads: int

    def __post_init__(self) -> None:
        # One key per physical device: "cuda" and "cuda:0" name the same GPU.
        device = torch.device(self.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        object.__setattr__(self, "device", device)

    @classmethod
    def of(cls, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> Workload:
        return cls(q.device, q.dtype, k_cache.dtype, q.shape[-1], v_cache.shape[-1],
                   q.shape[-2], k_cache.shape[-2])

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class Schedule:
    """What a plan's calls of one workload launch: the provider, and the Triton launch (tile
    config and key splits) that also serves every call the provider does not cover."""

    provider: str
    tile: dict
    num_splits: int
    reason: str


@dataclass(frozen=True)
class CallFeatures:
    """Per-call facts a provider may not cover (host attributes only)."""

    params: AttnParams
    dtype: torch.dtype
    sinks: torch.Tensor | None
    fp8_descale: bool
    masked: bool
    want_lse: bool
    strided: bool  # some tensor's last dim is not contiguous
    spans: bool = False  # the plan's bidirectional spans apply
    alibi: bool = False


def requested() -> str:
    choice = os.environ.get("ANYATTN_KERNELS", "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"ANYATTN_KERNELS: expected one of {CHOICES}, got {choice!r}")
    return choice


def schedule(plan: AttnPlan, w: Workload) -> Schedule:
    """The plan's schedule for ``w``, chosen on first use and memoised on the plan."""
    found = plan.schedules.get(w)
    if found is None:
        found = plan.schedules[w] = _choose(plan, w)
        logger.debug("anyattn plan (batch %d, max_seqlen_q %d, max_seqlen_k %d) %s: %s (%s)",
                     plan.batch_size, plan.max_seqlen_q, plan.max_seqlen_k, w, found.provider,
                     found.reason)
    return found


def _choose(plan: AttnPlan, w: Workload) -> Schedule:
    from .kernels.attention import tile_config

    tile = tile_config(w.head_dim, plan.max_seqlen_q * w.group, plan.max_seqlen_k,
                       plan.deterministic, w.device, plan.num_splits)
    provider, reason = _pick(plan, w)
    return Schedule(provider, tile, plan.num_splits, reason)


def _pick(plan: AttnPlan, w: Workload) -> tuple[str, str]:
    choice = requested()
    if choice == TRITON:
        return TRITON, "ANYATTN_KERNELS=triton"
    from .kernels import fa3

    why_not = fa3.unavailable(w.device) or fa3.uncovered_workload(w, plan)
    if why_not:
        return TRITON, f"fa3: {why_not}"
    if choice == FA3:
        return FA3, "ANYATTN_KERNELS=fa3"
    rows = plan.max_seqlen_q * w.group
    if rows <= TRITON_MAX_ROWS:
        return TRITON, f"{rows} query rows per sequence <= {TRITON_MAX_ROWS}: split-KV Triton"
    return FA3, f"{rows} query rows per sequence > {TRITON_MAX_ROWS}: FA3"


def features(params: AttnParams, *, q: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, out: torch.Tensor | None, sinks: torch.Tensor | None,
             k_descale: torch.Tensor | None, v_descale: torch.Tensor | None, masked: bool,
             want_lse: bool, spans: bool = False, alibi: bool = False) -> CallFeatures:
    strided = any(t is not None and t.stride(-1) != 1 for t in (q, k_cache, v_cache, out))
    return CallFeatures(params, q.dtype, sinks, k_descale is not None or v_descale is not None,
                        masked, want_lse, strided, spans, alibi)
