"""The run path: attention over a plan, the KV-cache write, the state merge.

CUDA tensors run the kernels of the plan's schedule (:mod:`core.plan.schedule`: the provider
where it covers the call, anyattn's Triton kernels everywhere else). CPU tensors run the
Triton kernels through the interpreter when ``TRITON_INTERPRET=1``, and the chunked PyTorch
reference otherwise (``ANYATTN_IMPL=reference|triton`` overrides the choice between reference
and kernels, ``ANYATTN_KERNELS=auto|triton|fa3|fa4`` the provider). A call derives nothing its
plan already holds: the schedule, the spans flag and the key-row starts come from the plan,
and a call whose tensors' signature the plan has seen skips the host checks and the routing.
"""
from __future__ import annotations

import os

import torch

from .inputs import check_call, check_values
from .plan.plan import AttnPlan
from .plan.schedule import Schedule
from .plan.views import cache_view, expand_descale
from .providers import Call, Provider, Workload
from .providers.triton.kv_write import run_kv_write
from .providers.triton.merge import run_merge_state
from .semantics import checks, masks, reference
from .semantics.params import AttnParams

__all__ = ["attention", "write_kv_cache", "merge_state"]


def use_triton(t: torch.Tensor) -> bool:
    forced = os.environ.get("ANYATTN_IMPL", "")
    if forced:
        return forced == "triton"
    return t.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttnPlan,
              params: AttnParams, *, sinks: torch.Tensor | None = None,
              k_descale: torch.Tensor | float | None = None,
              v_descale: torch.Tensor | float | None = None,
              out: torch.Tensor | None = None, return_lse: bool = False,
              attn_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
              alibi_slopes: torch.Tensor | None = None,
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q [total_q, Hq, D]`` over the keys the plan describes.

    The caches are read in the plan's pages (:func:`anyattn.core.plan.views.cache_view`):
    ``[num_pages, page_size, Hk, D]`` with any strides, or token-major ``[num_slots, Hk, D]``;
    contiguous-key plans take ``[total_k, Hk, D]``. ``k_descale``/``v_descale``: FP8
    dequantisation scales, per tensor, per kv head or ``[batch, Hk]``.
    ``attn_mask`` (bool, True = attend) and ``attn_bias`` (float, added to the scaled scores)
    take the layouts of :mod:`core.semantics.masks` (speculative trees:
    :func:`anyattn.core.cascade.cascade_attention`).
    ``alibi_slopes [Hq]``: ALiBi, ``-slope[h] * |q_pos - k_pos|`` added to the scaled (and
    soft-capped) scores, ``q_pos`` the query's bottom-right aligned position (FlashAttention-2's
    convention). The plan's bidirectional spans (:mod:`core.semantics.spans`) apply per
    ``params``. Writes into ``out`` when given (``[total_q, Hq, Dv]``); returns out, or
    (out, lse) with lse ``[Hq, total_q]`` float32.
    """
    masked = attn_mask is not None or attn_bias is not None
    known = None  # calls with masks (their layouts vary per call) are checked and routed each time
    if not masked:  # the signature of the arguments as given: views and expansions follow from it
        key = (params, return_lse, _meta(q), _meta(k_cache), _meta(v_cache), _meta(out),
               _meta(sinks), _meta(k_descale), _meta(v_descale), _meta(alibi_slopes))
        calls = plan._memo.setdefault("calls", {})
        known = calls.get(key)
    if known is None or known.views:
        k_view, v_view = cache_view(k_cache, plan), cache_view(v_cache, plan)
        views = k_view is not k_cache or v_view is not v_cache
        k_cache, v_cache = k_view, v_view
    if k_descale is not None or v_descale is not None:
        rows, hk = plan.batch_size, k_cache.shape[-2]
        k_descale = expand_descale(k_descale, rows, hk, q.device, "k_descale")
        v_descale = expand_descale(v_descale, rows, hk, q.device, "v_descale")
    if known is None:
        check_call(q, k_cache, v_cache, plan, sinks=sinks, k_descale=k_descale,
                   v_descale=v_descale, out=out, alibi_slopes=alibi_slopes)
        known = _Known(q, plan, params, views)
        if not masked and len(calls) < 64:
            calls[key] = known
    if known.check_values:
        check_values(q, k_cache, plan, params, k_descale=k_descale, v_descale=v_descale)
    mask = bias = None
    if masked:
        shape = dict(plan=plan, total_q=q.shape[0], hq=q.shape[1], hk=k_cache.shape[-2],
                     device=q.device)
        mask = masks.describe("attn_mask", attn_mask, **shape)
        bias = masks.describe("attn_bias", attn_bias, **shape)
        masks.check_key_rows(mask, bias)
    call = Call(q, k_cache, v_cache, plan, params, out, return_lse, sinks, k_descale, v_descale,
                mask, bias, alibi_slopes, known.spans, known.memo)
    if known.empty:
        o, lse = _empty_result(call)
    elif not use_triton(q):
        o, lse = reference.reference_attention(
            q, k_cache, v_cache, plan, params, sinks=sinks, k_descale=k_descale,
            v_descale=v_descale, out=out, mask=mask, bias=bias, alibi_slopes=alibi_slopes)
    else:
        if known.route is None:
            known.route = _route(call)
        provider, sched = known.route
        o, lse = provider.run(call, sched)
    return (o, lse) if return_lse else o


def _meta(t: torch.Tensor | None) -> tuple | type | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.shape, t.stride(), t.dtype, t.device
    return type(t)  # not a tensor: the checks refuse it (or, for scales, check its value)


class _Known:
    """A call signature a plan has seen (its arguments' shapes, strides, dtypes and devices,
    and the params), whose calls passed the host checks, and what follows from it:

    - ``views``: the caches need :func:`cache_view` to be in the plan's pages;
    - ``check_values``: its calls check device values too (CPU tensors, or ``ANYATTN_DEBUG=1``
      when the plan first saw the signature);
    - ``empty``: no queries or no sequences; ``spans``: the plan's spans apply;
    - ``route`` (once a kernel path asked): the provider and schedule its calls run on, and
      ``memo``: what that provider prepared for the signature (its launch).

    Every host fact a check, a provider's choice or a launch reads is in the signature, so a
    later call with it skips straight to the launch."""

    __slots__ = ("views", "check_values", "empty", "spans", "route", "memo")

    def __init__(self, q: torch.Tensor, plan: AttnPlan, params: AttnParams, views: bool) -> None:
        self.views = views
        self.check_values = q.device.type == "cpu" or checks.debug_mode()
        self.empty = q.shape[0] == 0 or plan.batch_size == 0
        self.spans = params.use_spans and plan.has_spans
        self.route: tuple[Provider, Schedule] | None = None
        self.memo: dict = {}


def _route(call: Call) -> tuple[Provider, Schedule]:
    """The plan's schedule for the call's workload, and the provider that runs the call: the
    first of the schedule's providers that covers the call's per-layer features."""
    sched = call.plan.schedule(Workload.of(call.q, call.k_cache, call.v_cache))
    return sched.provider_for(call), sched


def _empty_result(call: Call) -> tuple[torch.Tensor, torch.Tensor]:
    """No queries (or no sequences): nothing to compute, on every path."""
    q, out = call.q, call.out
    if out is None:
        out = q.new_empty(q.shape[0], q.shape[1], call.v_cache.shape[-1])
    return out, torch.empty(q.shape[1], q.shape[0], dtype=torch.float32, device=q.device)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                   k_scale: torch.Tensor | float | None = None,
                   v_scale: torch.Tensor | float | None = None) -> None:
    """Store ``k``/``v [T, Hk, D]`` at cache slots ``slot_mapping[T]`` (-1 = padding, skipped).

    Caches are ``[num_pages, page_size, Hk, D]`` with any strides; an fp8 cache stores
    ``k / k_scale`` (scales default to 1; finite and positive), saturated to the format's
    finite range (e4m3 +-448, e5m2 +-57344) as vLLM's cache writes are.
    """
    key = (_meta(k), _meta(v), _meta(k_cache), _meta(v_cache), _meta(slot_mapping),
           _meta(k_scale), _meta(v_scale))
    memo = _WRITES.get(key)
    if memo is None:
        checks.check_kv_write(k, v, k_cache, v_cache, slot_mapping)
        memo = {}
        if len(_WRITES) < 256:
            _WRITES[key] = memo
    if k.device.type == "cpu" or checks.debug_mode():
        checks.check_kv_write_values(k, k_cache, slot_mapping)
    checks.check_scale("k_scale", k_scale)
    checks.check_scale("v_scale", v_scale)
    if use_triton(k):
        run_kv_write(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale, memo)
        return
    reference.write_kv_reference(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


_WRITES: dict[tuple, dict] = {}
"""Cache write signatures whose host checks passed (their shapes, strides, dtypes and
devices; an engine has a few: one per step shape and cache layout), each with the memo of
its kernel launch. Device values are checked per call (CPU tensors, or debug mode)."""


def merge_state(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial results over disjoint keys: ``o [T, H, D]``, ``lse [H, T]`` float32."""
    checks.check_rank("o_a", o_a, 3, "[num_tokens, num_heads, head_dim]")
    checks.expect(o_b.shape == o_a.shape, lambda: f"o_b: expected shape {tuple(o_a.shape)} like o_a, got {tuple(o_b.shape)}")
    t, h, _ = o_a.shape
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        checks.expect(tuple(lse.shape) == (h, t) and lse.dtype == torch.float32,
                      lambda: f"{name}: expected float32 [num_heads={h}, num_tokens={t}], got {lse.dtype} {tuple(lse.shape)}")
    if use_triton(o_a):
        return run_merge_state(o_a, lse_a, o_b, lse_b)
    return reference.merge_state_reference(o_a, lse_a, o_b, lse_b)
