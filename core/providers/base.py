"""The provider interface: what a kernel source says about itself, and what a call hands it.

A provider is one source of attention kernels (anyattn's Triton kernels, FlashAttention-3 from
an engine's install, ...). The registry (:mod:`core.providers.registry`) asks each, once per
(plan, :class:`Workload`), whether it can run there and cover the workload; the plan's
schedule keeps the providers that do, in preference order, Triton last. Per call, each of them
in turn says whether it covers the call's per-layer features (:class:`Call`, host attributes
only: graph-safe); the first that does runs the call, and Triton covers every call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan
    from ..plan.schedule import Schedule
    from ..semantics.masks import MaskSpec
    from ..semantics.params import AttnParams


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


@dataclass(slots=True)
class Call:
    """One attention call, checked (:mod:`core.inputs`), as every provider takes it.

    ``k_cache``/``v_cache`` are already in the plan's pages; ``k_descale``/``v_descale`` are
    ``[B, Hk]`` float32 (or None); ``mask``/``bias`` come from :mod:`core.semantics.masks`;
    ``spans``: the plan's bidirectional spans apply to this call. ``memo``: what providers
    derive from the call's signature (shapes, strides, dtypes, params; the run path keeps one
    per signature of a plan, so a provider prepares its launch once per layer kind).
    """

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    plan: AttnPlan
    params: AttnParams
    out: torch.Tensor | None
    want_lse: bool
    sinks: torch.Tensor | None = None
    k_descale: torch.Tensor | None = None
    v_descale: torch.Tensor | None = None
    mask: MaskSpec | None = None
    bias: MaskSpec | None = None
    alibi_slopes: torch.Tensor | None = None
    spans: bool = False
    memo: dict = field(default_factory=dict)


class Provider:
    """A kernel source. Answers are reasons (a short phrase, logged) or None for "yes"."""

    name: str = ""

    def unavailable(self, device: torch.device) -> str | None:
        """Why this provider cannot run on ``device`` at all (not installed, wrong GPU)."""
        return None

    def uncovered(self, w: Workload, plan: AttnPlan) -> str | None:
        """Why it does not cover a plan's calls of workload ``w`` (asked once per plan)."""
        return None

    def slower(self, w: Workload, plan: AttnPlan) -> str | None:
        """Why ``auto`` would not pick it for ``w`` although it covers it (measured policy)."""
        return None

    def uncovered_call(self, call: Call) -> str | None:
        """Why it does not cover this call's per-layer features (host attributes only)."""
        return None

    def run(self, call: Call, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compute the call: ``(out, lse)``, lse ``[Hq, total_q]`` float32 when asked for."""
        raise NotImplementedError
