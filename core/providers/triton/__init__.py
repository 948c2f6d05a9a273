"""anyattn's own Triton kernels: the provider that covers every call, on every device and
under the CPU interpreter (``attention``: the forward tile loop; ``merge``: the log-sum-exp
merge; ``key_term``: key-side masks as a per-key term; ``kv_write``: the cache write;
``tiles``: tile shapes; ``launch``: launching without Triton's per-call binder)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..base import Call, Provider, Workload
from . import attention
from .tiles import tile_config

if TYPE_CHECKING:
    from ...plan.plan import AttnPlan
    from ...plan.schedule import Schedule


class TritonProvider(Provider):
    name = "triton"

    def tile(self, w: Workload, plan: AttnPlan) -> dict:
        """The launch config of ``plan``'s calls of ``w`` (static sizes only)."""
        return tile_config(w.head_dim, plan.max_seqlen_q * w.group, plan.max_seqlen_k,
                           plan.deterministic, w.device, plan.num_splits)

    def run(self, call: Call, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor | None]:
        return attention.run_attention(call, schedule.tile, schedule.memo)


TRITON = TritonProvider()
