"""The provider registry: which providers a plan's calls of one workload try, in order.

Providers are asked in preference order: FlashAttention-3 where it is installed and covers
the workload, then FlashAttention-4 (on Hopper: for the calls FA3 does not cover, ALiBi and
bidirectional spans; where FA3 cannot run, Blackwell, for the plain calls too), then anyattn's
Triton kernels, which cover every call on every device and the CPU interpreter. A plan keeps,
per workload, the providers that cover it (:func:`select`); each call then runs on the first
of them whose ``uncovered_call`` is None
(:meth:`anyattn.core.plan.schedule.Schedule.provider_for`).
``ANYATTN_KERNELS=auto|triton|fa3|fa4`` forces one provider (a forced provider still falls
back to Triton where it does not cover a call). The ``auto`` policy comes from the H200
measurements in the README (see each provider's ``slower``; FA4's is FA3's, not measured yet).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .base import Provider, Workload
from .fa3 import FA3
from .fa4 import FA4
from .triton import TRITON

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan

PROVIDERS: tuple[Provider, ...] = (FA3, FA4, TRITON)  # preference order; the last covers every call
CHOICES = ("auto",) + tuple(p.name for p in PROVIDERS)


def requested() -> str:
    choice = os.environ.get("ANYATTN_KERNELS", "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"ANYATTN_KERNELS: expected one of {CHOICES}, got {choice!r}")
    return choice


def select(w: Workload, plan: AttnPlan) -> tuple[tuple[Provider, ...], str]:
    """The providers ``plan``'s calls of workload ``w`` try, in order (the last, Triton,
    covers every call), and why each other provider is in or out."""
    choice = requested()
    chosen, notes = [], []
    for provider in PROVIDERS[:-1]:
        if choice not in ("auto", provider.name):
            continue
        why = provider.unavailable(w.device) or provider.uncovered(w, plan)
        if why is None and choice == "auto":
            why = provider.slower(w, plan)
        if why is None:
            chosen.append(provider)
            why = "covers it" if choice == "auto" else f"ANYATTN_KERNELS={choice}"
        notes.append(f"{provider.name}: {why}")
    return (*chosen, PROVIDERS[-1]), "; ".join(notes) or f"ANYATTN_KERNELS={choice}"


def describe(device) -> str:
    """One line for an engine's log: the providers that can run on ``device``."""
    return "; ".join(f"{p.name}: {p.unavailable(device) or 'available'}" for p in PROVIDERS)
