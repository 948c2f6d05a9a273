"""FlashAttention-3, called where an engine install already carries it (never bundled).

Sources, first found wins: vLLM's ``vllm.vllm_flash_attn.flash_attn_varlen_func`` with
``fa_version=3`` (every vLLM CUDA install; paged through ``block_table`` + ``seqused_k``,
contiguous through ``cu_seqlens_k``), else SGLang's ``sgl_kernel.flash_attn.
flash_attn_with_kvcache`` (every SGLang CUDA install; paged plans only). Both run on Hopper
(compute capability 9.x) only.

What FA3 covers, and so what the registry may route here: fp16/bf16 queries with a
cache of the same dtype (its FP8 path quantises the queries too, which anyattn's contract does
not), head dims that are multiples of 8 up to 256 with ``Dv == D``, any page size, causal and
window ``(left, right)`` (both bottom-right aligned, as anyattn's), soft-cap, sinks
(``s_aux``: bf16 sinks with bf16 queries, the only kind FA3 accepts), LSE. Not: masks, bias,
tree masks, bidirectional spans (FA3 has no mm-prefix), ALiBi (FA3 dropped FA2's
``alibi_slopes``), chunked-local, fp8 descales, strided last dims, deterministic plans.
Empty rows: FA3 writes output 0 and LSE +inf; anyattn's contract says LSE -inf, fixed in place.
Unlike anyattn's kernels, FA3 loads whole pages and masks the scores, so cache slots past a
sequence's end must hold finite values (engines' caches are allocated zeroed; a NaN there
would reach the output through a zero probability).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .base import Call, Provider, Workload

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan
    from ..plan.schedule import Schedule

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Source:
    """Where FA3 came from: ``varlen`` (vLLM's signature, with ``metadata``, its ahead-of-time
    tile scheduler) or ``kvcache`` (sgl_kernel's)."""

    name: str
    varlen: Callable | None = None
    kvcache: Callable | None = None
    needs_hopper: bool = True
    metadata: Callable | None = None


@functools.cache
def source() -> Source | None:
    """The installed FA3, or None. Tests replace this function to simulate one."""
    try:
        from vllm.vllm_flash_attn import flash_attn_interface as fa
        if fa.FA3_AVAILABLE:
            return Source("vllm.vllm_flash_attn", varlen=fa.flash_attn_varlen_func,
                          metadata=getattr(fa, "get_scheduler_metadata", None))
    except Exception:  # no vLLM, or a vLLM without CUDA kernels (the CPU build)
        pass
    try:
        from sgl_kernel.flash_attn import flash_attn_with_kvcache
        return Source("sgl_kernel.flash_attn", kvcache=flash_attn_with_kvcache)
    except Exception:
        return None


def unavailable(device: torch.device) -> str | None:
    """Why FA3 cannot run on ``device`` (None: it can)."""
    src = source()
    if src is None:
        return "not installed (neither vllm.vllm_flash_attn nor sgl_kernel.flash_attn)"
    if src.needs_hopper:
        if device.type != "cuda":
            return f"needs a CUDA device, got {device}"
        if torch.cuda.get_device_capability(device)[0] != 9:
            return "needs compute capability 9.x (Hopper)"
    return None


# Packed query rows per sequence (max_seqlen_q x GQA group) up to which anyattn's split-KV
# Triton kernel beats FA3 on the H200 (decode and short verify); above it FA3 runs.
TRITON_MAX_ROWS = 16


def half_workload_uncovered(w: Workload, plan: AttnPlan, max_head_dim: int) -> str | None:
    """Why a FlashAttention build (FA3, FA4) does not take ``w``: what both refuse alike."""
    if plan.deterministic:
        return "deterministic plans keep anyattn's fixed split schedule"
    if w.dtype not in HALF_DTYPES:
        return f"dtype {w.dtype} (fp16/bf16 only)"
    if w.kv_dtype != w.dtype:
        return f"KV cache dtype {w.kv_dtype} differs from q's {w.dtype}"
    if w.head_dim % 8 or not 8 <= w.head_dim <= max_head_dim or w.head_dim_v != w.head_dim:
        return (f"head dims {w.head_dim}/{w.head_dim_v} (multiples of 8 up to {max_head_dim}, "
                "Dv == D)")
    return None


def few_rows_slower(w: Workload, plan: AttnPlan) -> str | None:
    """Decode and short verify stay on split-KV Triton (measured against FA3 on the H200)."""
    rows = plan.max_seqlen_q * w.group
    if rows <= TRITON_MAX_ROWS:
        return f"{rows} query rows per sequence <= {TRITON_MAX_ROWS}: split-KV Triton is faster"
    return None


class FA3Provider(Provider):
    name = "fa3"

    def unavailable(self, device: torch.device) -> str | None:
        return unavailable(device)

    def uncovered(self, w: Workload, plan: AttnPlan) -> str | None:
        why = half_workload_uncovered(w, plan, 256)
        if why is not None:
            return why
        if not plan.paged:
            if source().varlen is None:
                return "contiguous keys (sgl_kernel source: paged only)"
            if not plan.keys_span_rows:
                return "contiguous keys with seqused_k shorter than the cu_seqlens_k spans"
        return None

    def slower(self, w: Workload, plan: AttnPlan) -> str | None:
        return few_rows_slower(w, plan)

    def uncovered_call(self, call: Call) -> str | None:
        if call.mask is not None or call.bias is not None:
            return "masks / bias"
        if call.spans:
            return "bidirectional spans"
        if call.alibi_slopes is not None:
            return "ALiBi"
        if call.k_descale is not None or call.v_descale is not None:
            return "fp8 descales"
        if call.params.chunk_size > 0:
            return "chunked-local attention"
        sinks, dtype = call.sinks, call.q.dtype
        if sinks is not None and (sinks.dtype != torch.bfloat16 or dtype != torch.bfloat16):
            return f"sinks dtype {sinks.dtype} with q {dtype} (FA3: bf16 sinks and bf16 q only)"
        out = call.out
        if (call.q.stride(-1) != 1 or call.k_cache.stride(-1) != 1
                or call.v_cache.stride(-1) != 1 or (out is not None and out.stride(-1) != 1)):
            return "a tensor whose last dim is not contiguous"
        return None

    def run(self, call: Call, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor | None]:
        return run_fa3(call, schedule.memo)


def _scheduler_metadata(src: Source, call: Call, memo: dict) -> torch.Tensor | None:
    """FA3's tile schedule for an eager paged plan, computed at its first call of each layer
    kind and reused by the others (vLLM's FLASH_ATTN computes it once per step too); FA3 then
    skips its own per-call scheduling. None for CUDA-graph plans, whose lengths change in
    place between replays (FA3 schedules those on the device itself)."""
    plan, params = call.plan, call.params
    if src.metadata is None or plan.pad_rows or not plan.paged:
        return None
    key = ("fa3_metadata", params.causal, params.window_left, params.window_right,
           params.softcap > 0)
    found = memo.get(key)
    if found is None:
        q, hk = call.q, call.k_cache.shape[-2]
        found = memo[key] = src.metadata(
            batch_size=plan.batch_size, max_seqlen_q=plan.max_seqlen_q,
            max_seqlen_k=plan.max_seqlen_k, num_heads_q=q.shape[1], num_heads_kv=hk,
            headdim=q.shape[2], cache_seqlens=plan.seqused_k, qkv_dtype=q.dtype,
            headdim_v=call.v_cache.shape[-1], cu_seqlens_q=plan.cu_seqlens_q,
            page_size=plan.page_size, causal=params.causal,
            window_size=(params.window_left, params.window_right),
            has_softcap=params.softcap > 0)
    return found


def run_fa3(call: Call, memo: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One FA3 launch for the plan; writes ``out`` when given. Graph-safe: every size is a
    host int of the plan, and the split count is FA3's own heuristic on those. The keyword
    arguments a layer's calls share are built once per call signature (``call.memo``)."""
    src, want_lse = source(), call.want_lse
    kwargs = call.memo.get("fa3 kwargs")
    if kwargs is None:
        kwargs = call.memo["fa3 kwargs"] = _plan_kwargs(src, call, memo)
    if src.varlen is not None:
        res = src.varlen(call.q, call.k_cache, call.v_cache, out=call.out, s_aux=call.sinks,
                         **kwargs)
    else:
        res = src.kvcache(call.q, call.k_cache, call.v_cache, out=call.out, sinks=call.sinks,
                          **kwargs)
    o, lse = (res[0], res[1]) if want_lse else (res, None)
    if lse is not None:
        lse.masked_fill_(lse == float("inf"), float("-inf"))  # empty rows: anyattn's -inf
    return o, lse


def _plan_kwargs(src: Source, call: Call, memo: dict) -> dict:
    """FA3's arguments fixed by the plan and the layer's params, in the source's signature."""
    plan, params = call.plan, call.params
    window = (params.window_left, params.window_right)
    common = dict(max_seqlen_q=plan.max_seqlen_q, cu_seqlens_q=plan.cu_seqlens_q,
                  softmax_scale=params.softmax_scale, causal=params.causal,
                  softcap=params.softcap, return_softmax_lse=call.want_lse, num_splits=0)
    if src.varlen is None:
        return dict(common, cache_seqlens=plan.seqused_k, page_table=plan.page_table,
                    window_size=window)
    keys = (dict(seqused_k=plan.seqused_k, block_table=plan.page_table,
                 scheduler_metadata=_scheduler_metadata(src, call, memo)) if plan.paged
            else dict(cu_seqlens_k=plan.cu_seqlens_k))
    return dict(common, max_seqlen_k=plan.max_seqlen_k, window_size=list(window), fa_version=3,
                **keys)


FA3 = FA3Provider()
