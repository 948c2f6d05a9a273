"""FlashAttention-4 (the CuTe-DSL FlashAttention), called where an install already carries it.

Sources, first found wins: vLLM's copy ``vllm.vllm_flash_attn.cute`` (every vLLM CUDA
install), else the standalone ``flash_attn.cute`` (the ``flash-attn-4`` package SGLang pins).
Both run on Hopper (compute capability 9.x) and Blackwell (10.x, 11.x); nothing is bundled.

Entry point: ``interface._flash_attn_fwd``, the function both packages' public
``flash_attn_varlen_func`` forward to (and the one vLLM's own ``flash_attn_varlen_func(...,
fa_version=4)`` calls): it writes ``out=`` in place, which flash-attn-4 4.0.0b36's public
varlen function does not take, and skips the autograd wrapper. Paged plans pass
``page_table`` + ``seqused_k``, contiguous ones ``cu_seqlens_k`` (+ ``seqused_k`` when a
sequence uses less than its span); always ``cu_seqlens_q``, ``num_splits=1``.

Routed here (what FA3 leaves to Triton, exactly as anyattn defines it) where
``ANYATTN_KERNELS=fa4`` asks for it; ``auto`` routes here too once ``ROUTED_UNDER_AUTO`` is
set, when tests/gpu/test_fa4_provider.py has passed on a GPU (it has not yet):

- **ALiBi**: a ``score_mod`` (:class:`AlibiScore`) adding ``-slope[h] * |p - j|`` with ``p`` the
  bottom-right aligned query position (``q_idx + seqlen_k - seqlen_q``; FA4 passes per-sequence
  ``q_idx``/``kv_idx``; causal calls drop the ``abs``). The slopes are read to the host once per
  slopes tensor (:func:`host_slopes`) and compiled into the modifier, run without pack-GQA so
  a CTA's tile has one slope: with no aux tensor FA4 scores two lanes at a time and skips the
  per-score index wrap it does before aux loads. A tensor first seen inside a CUDA-graph
  capture (no host read there) is read in the kernel instead, as an aux tensor. FA4 refuses
  ``softcap`` beside a ``score_mod``, so the modifier applies the soft-cap itself first
  (anyattn's order). Causal and window stay FA4's own flags, so FA4 still skips the key blocks
  they hide.
- **Bidirectional spans**, alone or with a window (and ``spans_in_window``): a ``mask_mod``
  (:class:`SpanMask`) reading the plan's ``spans``/``span_counts`` as aux tensors. Under a
  ``mask_mod`` FA4 drops its causal and window flags, so the modifier computes
  ``(causal and window) or span`` itself; FA4 then visits every key block of a sequence (no
  causal block skipping: about twice a causal prefill's work, until block-sparsity tables are
  built per plan). A non-causal call without a window sees every key already: spans change
  nothing there, and it runs without the modifier.
- Plain causal / window / soft-cap / sinks calls FA4 covers too; FA3 stays ahead of it in the
  registry, so on Hopper with FA3 installed those keep running on FA3.

Not routed (left to Triton): masks and bias (a ``mask_mod``/``score_mod`` over aux tensors could
read the key-side layouts, not written yet), chunked-local (expressible as a ``mask_mod``, not
written yet), FP8 KV (FA4 takes FP8 only with q in the same FP8 dtype, and on SM100 only;
anyattn keeps q in fp16/bf16),
ALiBi slopes that are not float32 (vLLM 0.26's copy does not key its compile cache on an aux
tensor's dtype), sinks of a dtype the source refuses (vLLM 0.26's copy: bf16 only;
flash-attn-4: fp16/bf16/fp32), tensors FA4 would copy first (a strided last dim, or strides
not 16-byte aligned: for the caches, a copy of the whole cache), ``Dv != D``,
deterministic plans (FA4's tile schedule depends on the batch), head dims above 256 on Hopper
or above 128 on Blackwell (its hd256 kernel takes no ``seqused_k``, soft-cap or sinks).

Compile cache: FA4 JIT-compiles one kernel per key of dtype, head dims, GQA group, causal /
window flags, ``hash_callable`` of the modifiers (their source and closure values), aux tensor
metadata, which optional tensors are present, tile shape, page size == tile width (TMA pages),
split-KV and architecture. The modifiers are built once per variant (``functools.cache`` in
:mod:`.fa4_mods`) and the variant of a call is memoised per schedule; everything in the key
is static per plan and layer, so a CUDA-graph replay never compiles (its capture's eager
warm-up call did).

Empty rows: FA4 writes output 0 and LSE -inf already (``softmax.py``'s ``Softmax.finalize``; the
sink logit with sinks), anyattn's contract, so nothing is rewritten. vLLM 0.26's copy returns
LSE -inf rather than the sink when the cache has no slots at all; such calls (with sinks) run
on Triton. Like FA3, FA4 loads whole key tiles of a TMA-loaded page, so cache slots past a
sequence's end must hold finite values (engines' caches are zeroed).
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .base import Call, Provider, Workload
from .fa3 import few_rows_slower, half_workload_uncovered

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan
    from ..plan.schedule import Schedule

# Largest head dim routed here, by compute capability major (FA4's _validate_head_dims; on
# Blackwell its hd256 kernel takes no seqused_k, soft-cap or sinks).
MAX_HEAD_DIM_BY_ARCH = {9: 256, 10: 128, 11: 128}


@dataclass(frozen=True)
class AlibiScore:
    """The ALiBi ``score_mod``: soft-cap (``softcap > 0``) then ``-slope[h] * |p - j|``. The
    slopes are ``slopes`` (one per query head, compiled into the kernel) or, when None, the
    float32 ``[Hq]`` tensor at ``aux_tensors[slopes_at]``. ``keys_behind``: every key the
    call sees lies at or before its query (causal, no span), so ``|p - j| = p - j``."""

    softcap: float
    slopes_at: int
    slopes: tuple[float, ...] | None = None
    keys_behind: bool = False


@dataclass(frozen=True)
class SpanMask:
    """The spans ``mask_mod``: key ``j`` is visible to the query at ``p`` when
    ``p - lo <= j <= p + hi`` (a None bound is open) or ``p`` and ``j`` lie in one of the
    sequence's first ``span_counts[b]`` spans (``aux_tensors[0]`` ``[B, max_spans, 2]``,
    ``aux_tensors[1]`` ``[B]``), that span's keys also ``>= p - lo`` when ``in_window``."""

    hi: int | None
    lo: int | None
    in_window: bool
    max_spans: int


@dataclass(frozen=True)
class Source:
    """Where FA4 came from: ``forward`` (``_flash_attn_fwd``), the modifier builders
    (``score_mod(AlibiScore)``, ``mask_mod(SpanMask)``, cached per spec), the sink dtypes it
    takes, and whether it needs a GPU (False for a test's simulation)."""

    name: str
    forward: Callable
    score_mod: Callable[[AlibiScore], Callable]
    mask_mod: Callable[[SpanMask], Callable]
    sink_dtypes: tuple[torch.dtype, ...]
    needs_gpu: bool = True


def _source(name: str, interface) -> Source:
    from .fa4_mods import alibi_score_mod, span_mask_mod  # CuTe DSL: importable only here

    # flash-attn-4 lists the sink dtypes it takes; vLLM 0.26's copy asserts bf16.
    sinks = getattr(interface, "_LEARNABLE_SINK_DTYPES", (torch.bfloat16,))
    return Source(name, interface._flash_attn_fwd, alibi_score_mod, span_mask_mod, tuple(sinks))


@functools.cache
def source() -> Source | None:
    """The installed FA4, or None. Tests replace this function to simulate one."""
    try:
        from vllm.vllm_flash_attn.cute import interface
        return _source("vllm.vllm_flash_attn.cute", interface)
    except Exception:  # no vLLM, a CPU build, or no CuTe DSL beside it
        pass
    try:
        from flash_attn.cute import interface
        return _source("flash_attn.cute", interface)
    except Exception:  # no flash-attn-4 (a flash_attn package may be FA2, without .cute)
        return None


def _major(device: torch.device) -> int:
    """Compute capability major of ``device``; a simulated source off the GPU follows Hopper's
    rules."""
    return torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 9


def unavailable(device: torch.device) -> str | None:
    """Why FA4 cannot run on ``device`` (None: it can)."""
    src = source()
    if src is None:
        return "not installed (neither vllm.vllm_flash_attn.cute nor flash_attn.cute)"
    if src.needs_gpu:
        if device.type != "cuda":
            return f"needs a CUDA device, got {device}"
        if _major(device) not in MAX_HEAD_DIM_BY_ARCH:
            return "needs compute capability 9.x, 10.x or 11.x (Hopper, Blackwell)"
    return None


def _aligned(t: torch.Tensor) -> bool:
    """Whether FA4 takes ``t`` as it is: a contiguous last dim and 16-byte aligned strides.
    Otherwise flash-attn-4 copies it first (``maybe_contiguous``; for k and v, the whole
    cache) or refuses it (``out``), and vLLM's copy copies a strided last dim. The start
    address is not checked: ``core/run.py`` keeps a call's route per tensor signature
    (shapes, strides, dtypes), which holds no address; torch's allocations, and the views at
    whole-row offsets the engines pass, start 16-byte aligned."""
    return t.stride(-1) == 1 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])


# ``auto`` routes calls to FA4 once tests/gpu/test_fa4_provider.py has passed on the H200 (a
# kernel anyattn calls is tested there against the reference for every feature routed to it
# before users get it); until then FA4 runs only where it is asked for, ANYATTN_KERNELS=fa4.
ROUTED_UNDER_AUTO = False
# Plans with spans stay on Triton under ``auto``: FA4 visits every key block under the span
# ``mask_mod`` (H200, 4x4K / 1x16K, one 1,024-token span per request: FA4 240 / 246 TFLOP/s,
# Triton 344 / 418) until block-sparsity tables built with the plan let it skip them.
SPANS_UNDER_AUTO = False


class FA4Provider(Provider):
    name = "fa4"

    def unavailable(self, device: torch.device) -> str | None:
        return unavailable(device)

    def uncovered(self, w: Workload, plan: AttnPlan) -> str | None:
        # Any page size (a page of one key tile loads by TMA, others key by key: paged_kv.py)
        # and contiguous keys (cu_seqlens_k, with seqused_k) both run.
        return half_workload_uncovered(w, plan, MAX_HEAD_DIM_BY_ARCH.get(_major(w.device), 0))

    def slower(self, w: Workload, plan: AttnPlan) -> str | None:
        if not ROUTED_UNDER_AUTO:
            return "not yet verified on a GPU (ANYATTN_KERNELS=fa4 opts in)"
        if plan.spans is not None and not SPANS_UNDER_AUTO:
            return "spans: slower than Triton until the span mask skips blocks"
        # FA3's measured threshold, not measured for FA4 yet (FA4 runs unsplit here).
        return few_rows_slower(w, plan)

    def uncovered_call(self, call: Call) -> str | None:
        if call.mask is not None or call.bias is not None:
            return "masks / bias"
        if call.k_descale is not None or call.v_descale is not None:
            return "fp8 descales"
        if call.params.chunk_size > 0:
            return "chunked-local attention"
        slopes, sinks = call.alibi_slopes, call.sinks
        if slopes is not None and slopes.dtype != torch.float32:
            return f"ALiBi slopes dtype {slopes.dtype} (float32 only)"
        if sinks is not None:
            taken = source().sink_dtypes
            if sinks.dtype not in taken:
                return f"sinks dtype {sinks.dtype} ({source().name} takes {taken})"
            if call.k_cache.numel() == 0:
                return "sinks over an empty cache (FA4 may return LSE -inf, not the sink)"
        out = call.out
        if not (_aligned(call.q) and _aligned(call.k_cache) and _aligned(call.v_cache)
                and (out is None or _aligned(out))):
            return "a tensor FA4 would copy (strided last dim, or strides not 16-byte aligned)"
        return None

    def run(self, call: Call, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor | None]:
        return run_fa4(call, schedule.memo)


@dataclass(frozen=True)
class Variant:
    """How one layer kind's calls on a plan map onto FA4: its own causal / window flags, its
    soft-cap, the modifiers, and where the span table and slopes go among the aux tensors."""

    causal: bool
    window_left: int | None
    window_right: int | None
    softcap: float
    score_mod: Callable | None
    mask_mod: Callable | None
    baked_slopes: bool = False  # ALiBi slopes compiled into score_mod (not an aux tensor)

    @property
    def reads_spans(self) -> bool:
        return self.mask_mod is not None

    @property
    def pack_gqa(self) -> bool | None:
        """False with baked slopes (one query head per CTA, so a tile's slope is uniform);
        None leaves it to FA4."""
        return False if self.baked_slopes else None


_HOST_SLOPES: dict[int, tuple[weakref.ref, int | None, tuple[float, ...]]] = {}


def _version(t: torch.Tensor) -> int | None:
    """``t``'s in-place version counter (None for an inference-mode tensor, which has none:
    asked first, since reading ``_version`` there raises, and this runs on every FA4 call)."""
    return None if t.is_inference() else t._version


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def host_slopes(slopes: torch.Tensor) -> tuple[float, ...] | None:
    """The values of an ALiBi slopes tensor, read to the host once per tensor (one sync, the
    first time FA4 sees it) and kept while it lives and is not written in place; None while a
    CUDA graph is being captured and the tensor has not been read yet (the call then reads
    the slopes in the kernel, from an aux tensor). Engines build their slopes once per layer,
    so serving reads each layer's once."""
    hit = _HOST_SLOPES.get(id(slopes))
    if hit is not None and hit[0]() is slopes and hit[1] == _version(slopes):
        return hit[2]
    if _capturing(slopes):
        return None
    values = tuple(float(x) for x in slopes.tolist())
    key = id(slopes)
    _HOST_SLOPES[key] = (weakref.ref(slopes, lambda _: _HOST_SLOPES.pop(key, None)),
                         _version(slopes), values)
    return values


def variant(src: Source, call: Call, slopes: tuple[float, ...] | None = None) -> Variant:
    """The FA4 variant of ``call`` (static per plan and layer kind: causal, window, soft-cap,
    ALiBi or not, spans or not, the span table's width). ``slopes``: the ALiBi slopes' values
    (:func:`host_slopes`) to compile in; None reads them from the tensor in the kernel."""
    params, plan = call.params, call.plan
    causal = params.causal
    left = params.window_left if params.window_left >= 0 else None
    right = params.window_right if params.window_right >= 0 else None
    mask_mod = None
    if call.spans and (causal or left is not None or right is not None):
        mask_mod = src.mask_mod(SpanMask(
            hi=0 if causal else right, lo=left,
            in_window=params.spans_in_window and left is not None,
            max_spans=plan.spans.shape[1]))
        causal, left, right = False, None, None  # the mask_mod computes them
    score_mod, softcap = None, params.softcap
    if call.alibi_slopes is not None:
        keys_behind = causal and not right  # FA4's own causal flag: no key after its query
        score_mod = src.score_mod(AlibiScore(softcap, slopes_at=2 if mask_mod else 0,
                                             slopes=slopes, keys_behind=keys_behind))
        softcap = 0.0  # applied by the score_mod (FA4 takes one or the other)
    return Variant(causal, left, right, softcap, score_mod, mask_mod,
                   baked_slopes=score_mod is not None and slopes is not None)


def _variant(src: Source, call: Call, memo: dict) -> Variant:
    slopes = None if call.alibi_slopes is None else host_slopes(call.alibi_slopes)
    key = ("fa4", call.params, call.alibi_slopes is not None, slopes, call.spans)
    found = memo.get(key)
    if found is None:
        found = memo[key] = variant(src, call, slopes)
    return found


def run_fa4(call: Call, memo: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One FA4 launch for the plan; writes ``out`` when given. Graph-safe: every size is a host
    int of the plan, the variant is memoised per schedule, nothing splits or allocates a
    workspace (``num_splits=1``)."""
    src, plan = source(), call.plan
    v = _variant(src, call, memo)
    aux = [plan.spans, plan.span_counts] if v.reads_spans else []
    if call.alibi_slopes is not None and not v.baked_slopes:
        aux.append(call.alibi_slopes)
    if plan.paged:
        keys = dict(page_table=plan.page_table, seqused_k=plan.seqused_k)
    else:
        keys = dict(cu_seqlens_k=plan.cu_seqlens_k,
                    seqused_k=None if plan.keys_span_rows else plan.seqused_k)
    res = src.forward(call.q, call.k_cache, call.v_cache, cu_seqlens_q=plan.cu_seqlens_q,
                      max_seqlen_q=plan.max_seqlen_q, max_seqlen_k=plan.max_seqlen_k,
                      softmax_scale=call.params.softmax_scale, causal=v.causal,
                      window_size_left=v.window_left, window_size_right=v.window_right,
                      softcap=v.softcap, learnable_sink=call.sinks, num_splits=1,
                      score_mod=v.score_mod, mask_mod=v.mask_mod, aux_tensors=aux or None,
                      return_lse=call.want_lse, out=call.out, pack_gqa=v.pack_gqa, **keys)
    return res[0], (res[1] if call.want_lse else None)


FA4 = FA4Provider()
