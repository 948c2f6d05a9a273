"""A plan's kernel schedule: the key splits (from static sizes), and per workload the providers
a call tries in order, ending with the Triton launch that serves every call the others do not
cover.

Chosen once per (plan, :class:`~anyattn.core.providers.Workload`) from static facts only
(device, dtypes, head dims, ``max_seqlen_q``, batch), so an eager step and a CUDA-graph
replay launch the same kernels and nothing syncs.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..providers import TRITON, Call, Provider, Workload, select

if TYPE_CHECKING:
    from .plan import AttnPlan

logger = logging.getLogger("anyattn")

# Below this many keys per split, splitting costs more in the merge than it gains.
MIN_SPLIT_TOKENS = 128  # one BLOCK_N key tile
MAX_SPLITS = 64


@dataclass(frozen=True, eq=False)
class Schedule:
    """What a plan's calls of one workload launch: the first of ``providers`` that covers the
    call (the registry's order; the last is Triton, with ``tile`` and ``num_splits``, which
    covers every call). ``reason`` says why each provider is in or out (logged once); ``memo``
    holds what the providers prepare once per schedule (bound launches, workspace, compiled
    variants)."""

    providers: tuple[Provider, ...]
    reason: str
    tile: dict
    num_splits: int
    memo: dict = field(default_factory=dict, repr=False)

    def provider_for(self, call: Call) -> Provider:
        """The provider that runs ``call``: the first whose ``uncovered_call`` is None.

        Host attributes only, so graph-safe; ``core/run.py`` keeps the answer per call
        signature, so a layer kind's later calls skip it.
        """
        for provider in self.providers[:-1]:
            if provider.uncovered_call(call) is None:
                return provider
        return self.providers[-1]


def make_schedule(plan: AttnPlan, w: Workload) -> Schedule:
    providers, reason = select(w, plan)
    found = Schedule(providers, reason, TRITON.tile(w, plan), plan.num_splits)
    logger.debug("anyattn plan (batch %d, max_seqlen_q %d, max_seqlen_k %d) %s: %s (%s)",
                 plan.batch_size, plan.max_seqlen_q, plan.max_seqlen_k, w,
                 " > ".join(p.name for p in providers), reason)
    return found


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a nominal 8 elsewhere (CPU, interpreter)."""
    if device.type != "cuda":
        return 8
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _nearest_power_of_two(x: int) -> int:
    """The power of two nearest to ``x >= 1`` on a log scale."""
    low = 1 << (x.bit_length() - 1)
    return 2 * low if x * x > 2 * low * low else low


def choose_num_splits(batch_size: int, num_kv_heads: int, max_seqlen_q: int,
                      max_seqlen_k: int, num_sms: int, *, deterministic: bool = False,
                      q_rows_per_tile: int = 64) -> int:
    """How many key splits a launch uses, from static sizes only.

    Enough (batch x kv-head x query-tile) programs fill the GPU without splitting; otherwise
    keys are split until about two waves of programs exist (the split count rounded to the
    nearest power of two, which measured best on the H100: 16x32K reads at 2.97 TB/s with 4
    splits and 2.83 with 3), never below MIN_SPLIT_TOKENS keys per split. Deterministic mode never
    splits: each row then reduces over its keys in the same fixed tiles whatever else is in
    the batch (bitwise-stable, slower at small batch).
    """
    if batch_size <= 0 or max_seqlen_k <= 0 or deterministic:
        return 1
    q_tiles = max(1, -(-max_seqlen_q // q_rows_per_tile))
    programs = batch_size * num_kv_heads * q_tiles
    if programs >= num_sms:
        return 1
    want = _nearest_power_of_two(-(-2 * num_sms // programs))
    by_length = max(1, max_seqlen_k // MIN_SPLIT_TOKENS)
    return max(1, min(want, by_length, MAX_SPLITS))
