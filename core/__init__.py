"""anyattn's core: the public face the engine adapters (and users) import.

Data flows one way: an engine's batch -> an adapter -> plan builders (``build_plan``, the
index builders, ``spec_tree``'s speculative key lists, ``GraphPlans`` for CUDA graphs) -> an
:class:`AttnPlan` per step -> ``attention`` / ``cascade_attention`` per layer -> the kernels
of the plan's schedule (``core.providers``). ``docs/architecture.md`` maps the packages.
"""
from .cascade import cascade_attention, cascade_params
from .flash_api import flash_attn_varlen_func, flash_attn_with_kvcache
from .plan import spec_tree
from .plan.build import build_plan
from .plan.graph import GraphPlans
from .plan.indices import (cu_seqlens, page_table_from_token_table, token_table_rows,
                           uniform_cu_seqlens)
from .plan.plan import AttnPlan
from .plan.validate import validate_plan
from .providers import Workload
from .providers import describe as describe_providers
from .run import attention, merge_state, write_kv_cache
from .semantics.checks import (FP8_DTYPES, MAX_HEAD_DIM, check_alibi_slopes, debug_mode,
                               expect)
from .semantics.params import AttnParams
from .semantics.spans import span_table, step_spans

__all__ = [
    # per-layer semantics and the step plan
    "AttnParams", "AttnPlan", "build_plan", "GraphPlans", "Workload", "validate_plan",
    # index builders
    "cu_seqlens", "uniform_cu_seqlens", "page_table_from_token_table", "token_table_rows",
    "span_table", "step_spans", "spec_tree",
    # the run path
    "attention", "cascade_attention", "cascade_params", "write_kv_cache", "merge_state",
    "flash_attn_with_kvcache", "flash_attn_varlen_func",
    # argument checks adapters share
    "expect", "debug_mode", "check_alibi_slopes", "FP8_DTYPES", "MAX_HEAD_DIM",
    "describe_providers",
]
