"""The provider registry: which provider a plan's calls of one workload use.

Providers are asked in preference order (FlashAttention-3 where it is installed and covers
the workload, then anyattn's Triton kernels, which cover every call on every device and the
CPU interpreter). ``ANYATTN_KERNELS=auto|triton|fa3`` forces the choice (a forced provider
still falls back to Triton where it does not cover a call). The ``auto`` policy comes from the
H200 measurements in the README (see each provider's ``slower``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .base import Provider, Workload
from .fa3 import FA3
from .triton import TRITON

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan

PROVIDERS: tuple[Provider, ...] = (FA3, TRITON)  # preference order; the last covers every call
CHOICES = ("auto",) + tuple(p.name for p in PROVIDERS)


def requested() -> str:
    choice = os.environ.get("ANYATTN_KERNELS", "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"ANYATTN_KERNELS: expected one of {CHOICES}, got {choice!r}")
    return choice


def select(w: Workload, plan: AttnPlan) -> tuple[Provider, str]:
    """The provider for ``plan``'s calls of workload ``w``, and why."""
    choice = requested()
    fallback = PROVIDERS[-1]
    reasons = []
    for provider in PROVIDERS[:-1]:
        if choice not in ("auto", provider.name):
            continue
        why = provider.unavailable(w.device) or provider.uncovered(w, plan)
        if why is None and choice == "auto":
            why = provider.slower(w, plan)
        if why is None:
            return provider, f"ANYATTN_KERNELS={choice}" if choice != "auto" else "covers it"
        reasons.append(f"{provider.name}: {why}")
    return fallback, "; ".join(reasons) or f"ANYATTN_KERNELS={choice}"


def describe(device) -> str:
    """One line for an engine's log: the providers that can run on ``device``."""
    return "; ".join(f"{p.name}: {p.unavailable(device) or 'available'}" for p in PROVIDERS)
