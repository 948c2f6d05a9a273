"""Kernel-provider selection (core.providers) with FA3 simulated on the CPU.

The simulated FA3 implements the two installed signatures anyattn calls (vLLM's
``flash_attn_varlen_func(..., fa_version=3)`` and sgl_kernel's ``flash_attn_with_kvcache``)
from their documented contracts on top of the chunked reference, including FA3's +inf LSE for
rows with nothing visible. So these tests check the argument mapping and the routing against
the oracle; the real FA3 is checked on the device (tests/gpu/test_providers.py).
"""
import dataclasses
import math
import os

import pytest
import torch

from anyattn import core
from anyattn.core import build_plan, providers
from anyattn.core.plan import plan as plan_module
from anyattn.core.providers import TRITON, fa3, fa4
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention
from anyattn.core.semantics.spans import span_table

from batches import paged_batch
from graph_storage import GraphStorage

HQ, HK, D = 8, 2, 32
# CPU: the Triton kernels under the interpreter; a CUDA machine: compiled, on CUDA tensors.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(q, k, v, plan, params, sinks):
    os.environ["ANYATTN_IMPL"] = "reference"
    try:
        return reference_attention(q, k, v, plan, params, sinks=sinks)
    finally:
        del os.environ["ANYATTN_IMPL"]


class FakeFA3:
    """FA3's contract over the reference; records every call."""

    def __init__(self):
        self.calls = []

    def _finish(self, o, lse, out, return_softmax_lse):
        if out is not None:
            out.copy_(o)
            o = out
        lse = torch.where(lse == -math.inf, math.inf, lse)  # FA3 marks empty rows +inf
        return (o, lse) if return_softmax_lse else o

    def varlen(self, q, k, v, max_seqlen_q, cu_seqlens_q, max_seqlen_k, cu_seqlens_k=None,
               seqused_k=None, softmax_scale=None, causal=False, window_size=None, softcap=0.0,
               block_table=None, return_softmax_lse=False, out=None, num_splits=0,
               fa_version=2, s_aux=None, scheduler_metadata=None):
        assert fa_version == 3 and (cu_seqlens_k is None) != (seqused_k is None)
        self.calls.append("varlen")
        left, right = window_size or (-1, -1)
        params = AttnParams(softmax_scale=softmax_scale, causal=causal, window_left=left,
                            window_right=right, softcap=softcap)
        plan = build_plan(cu_seqlens_q, seqused_k, max_seqlen_q=max_seqlen_q,
                          max_seqlen_k=max_seqlen_k, page_table=block_table,
                          page_size=k.shape[1] if block_table is not None else None,
                          cu_seqlens_k=cu_seqlens_k)
        o, lse = _reference(q, k, v, plan, params, s_aux)
        return self._finish(o, lse, out, return_softmax_lse)

    def kvcache(self, q, k_cache, v_cache, cache_seqlens=None, page_table=None,
                cu_seqlens_q=None, max_seqlen_q=None, softmax_scale=None, causal=False,
                window_size=(-1, -1), softcap=0.0, num_splits=0, out=None,
                return_softmax_lse=False, sinks=None):
        self.calls.append("kvcache")
        params = AttnParams(softmax_scale=softmax_scale, causal=causal,
                            window_left=window_size[0], window_right=window_size[1],
                            softcap=softcap)
        plan = build_plan(cu_seqlens_q, cache_seqlens, max_seqlen_q=max_seqlen_q,
                          max_seqlen_k=page_table.shape[1] * k_cache.shape[1],
                          page_table=page_table, page_size=k_cache.shape[1])
        o, lse = _reference(q, k_cache, v_cache, plan, params, sinks)
        return self._finish(o, lse, out, return_softmax_lse)


@pytest.fixture(params=["varlen", "kvcache"])
def fake_fa3(monkeypatch, request):
    fake = FakeFA3()
    src = fa3.Source(f"fake {request.param}", needs_hopper=False,
                     **{request.param: getattr(fake, request.param)})
    monkeypatch.setattr(fa3, "source", lambda: src)
    monkeypatch.setattr(fa4, "source", lambda: None)  # FA4's routing: test_fa4_selection.py
    monkeypatch.delenv("ANYATTN_KERNELS", raising=False)
    return fake


def _batch(q_lens, k_lens, dtype=torch.float16, seed=0, **kw):
    return paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, page_size=16, dtype=dtype, seed=seed,
                       device=DEV, **kw)


def _run(b, params, **kw):
    return core.attention(b.q, b.k_cache, b.v_cache, b.plan, params, **kw)


def _close(got, want, tol=2e-3):
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


P = AttnParams(softmax_scale=D ** -0.5)


def test_no_fa3_installed_means_triton(monkeypatch, kernel_calls):
    monkeypatch.setattr(fa3, "source", lambda: None)
    monkeypatch.setattr(fa4, "source", lambda: None)
    monkeypatch.delenv("ANYATTN_KERNELS", raising=False)
    b = _batch([40], [60])
    _close(_run(b, P), reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P)[0])
    (sched,) = b.plan.schedules.values()
    assert sched.providers == (TRITON,) and "not installed" in sched.reason
    assert kernel_calls


@pytest.mark.parametrize("params", [
    P,
    AttnParams(softmax_scale=D ** -0.5, window_left=7, window_right=0, softcap=20.0),
    AttnParams(softmax_scale=D ** -0.5, causal=False, window_left=5, window_right=3),
], ids=["causal", "window+softcap", "bidirectional-window"])
def test_prefill_goes_to_fa3_with_the_same_semantics(fake_fa3, kernel_calls, params):
    # Sequences with no keys, one token, a long prompt and an extend with prefix; GQA 4.
    b = _batch([0, 1, 37, 9], [0, 1, 37, 50], dtype=torch.bfloat16, seed=3)
    sinks = torch.randn(HQ, device=DEV).bfloat16()
    out = torch.full((b.q.shape[0], HQ, D), math.nan, dtype=b.q.dtype, device=DEV)
    got, lse = _run(b, params, sinks=sinks, out=out, return_lse=True)
    want, want_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, params, sinks=sinks)
    assert got is out and fake_fa3.calls and not kernel_calls
    _close(got, want, tol=2e-2)  # bf16 (the interpreter upcasts it; CUDA rounds)
    torch.testing.assert_close(lse, want_lse, atol=2e-2, rtol=2e-2)
    (sched,) = b.plan.schedules.values()
    assert sched.providers[0] is fa3.FA3


def test_empty_rows_get_lse_minus_inf_from_fa3(fake_fa3):
    """Cross-attention rows of a sequence with no keys: output 0 and LSE -inf, as the contract
    says (FA3 itself writes +inf)."""
    params = AttnParams(softmax_scale=D ** -0.5, causal=False)
    b = _batch([30, 20], [0, 25])
    got, lse = _run(b, params, return_lse=True)
    want, want_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, params)
    assert bool((want_lse == -math.inf).any())
    assert torch.equal(lse == -math.inf, want_lse == -math.inf)
    _close(got, want)


def test_decode_stays_on_triton(fake_fa3, kernel_calls):
    b = _batch([1, 1, 1], [5, 70, 33])
    _close(_run(b, P), reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P)[0])
    assert kernel_calls and not fake_fa3.calls
    (sched,) = b.plan.schedules.values()
    assert sched.providers == (TRITON,) and "split-KV" in sched.reason


@pytest.mark.parametrize("choice,q_len,provider", [("triton", 20, "triton"), ("fa3", 1, "fa3"),
                                                   ("auto", 1, "triton"), ("auto", 20, "fa3")])
def test_override_variable(fake_fa3, monkeypatch, choice, q_len, provider):
    monkeypatch.setenv("ANYATTN_KERNELS", choice)
    b = _batch([q_len], [40])
    _close(_run(b, P), reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P)[0])
    assert [s.providers[0].name for s in b.plan.schedules.values()] == [provider]


def test_bad_override_is_refused(fake_fa3, monkeypatch):
    monkeypatch.setenv("ANYATTN_KERNELS", "fastest")
    b = _batch([20], [40])
    with pytest.raises(ValueError, match="ANYATTN_KERNELS"):
        _run(b, P)


def _fp8(b):
    return b.k_cache.to(torch.float8_e4m3fn), b.v_cache.to(torch.float8_e4m3fn)


@pytest.mark.parametrize("case", ["fp32", "fp8-kv", "chunked", "fp32-sinks", "fp16-sinks",
                                  "mask", "bias", "dv", "strided-q", "spans", "alibi"])
def test_uncovered_calls_fall_back_to_triton(fake_fa3, kernel_calls, case):
    dtype = torch.float32 if case == "fp32" else torch.float16
    b = _batch([20, 3], [40, 3], dtype=dtype, dv=16 if case == "dv" else None)
    q, k, v, params, kw = b.q, b.k_cache, b.v_cache, P, {}
    plan = b.plan
    if case == "fp8-kv":
        k, v = _fp8(b)
        kw = dict(k_descale=torch.full((2, HK), 0.5, device=DEV),
                  v_descale=torch.full((2, HK), 2.0, device=DEV))
    elif case == "chunked":
        params = AttnParams(softmax_scale=D ** -0.5, chunk_size=16)
    elif case == "fp32-sinks":  # FA3 takes bf16 sinks only
        kw = dict(sinks=torch.randn(HQ, device=DEV))
    elif case == "fp16-sinks":  # ... and only with bf16 queries
        kw = dict(sinks=torch.randn(HQ, device=DEV).bfloat16())
    elif case == "mask":
        kw = dict(attn_mask=torch.rand(43, 1, device=DEV) < 0.7)
    elif case == "bias":
        kw = dict(attn_bias=torch.randn(43, HK, device=DEV))
    elif case == "strided-q":
        q = torch.cat([q, q], dim=-1)[..., ::2]
    elif case == "spans":  # FA3 has no mm-prefix: a plan with spans runs on Triton
        table, counts = span_table([[(25, 40)], []], DEV)
        plan = dataclasses.replace(b.plan, spans=table, span_counts=counts)
    elif case == "alibi":  # FA3 dropped FA2's alibi_slopes
        kw = dict(alibi_slopes=torch.rand(HQ, device=DEV))
    got = core.attention(q, k, v, plan, params, **kw)
    want = reference_attention(q, k, v, plan, params, **{
        key: val for key, val in kw.items()
        if key in ("sinks", "k_descale", "v_descale", "alibi_slopes")},
        **_reference_masks(b, kw, q))[0]
    # fp8 rounds K/V; on CUDA a float32 dot runs in TF32.
    _close(got, want, tol=1e-2 if case == "fp8-kv" or (case == "fp32" and DEV == "cuda") else 2e-3)
    assert kernel_calls and not fake_fa3.calls


def _reference_masks(b, kw, q):
    from anyattn.core.semantics import masks

    shape = dict(plan=b.plan, total_q=q.shape[0], hq=HQ, hk=HK, device=q.device)
    return dict(mask=masks.describe("attn_mask", kw.get("attn_mask"), **shape),
                bias=masks.describe("attn_bias", kw.get("attn_bias"), **shape))


def test_contiguous_keys(fake_fa3, kernel_calls):
    """FA3 takes contiguous keys only when each sequence uses its whole cu_seqlens_k span."""
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(60, HK, D, generator=gen).half().to(DEV)
    v = torch.randn(60, HK, D, generator=gen).half().to(DEV)
    q = torch.randn(48, HQ, D, generator=gen).half().to(DEV)
    cu = torch.tensor([0, 20, 48], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, 25, 60], dtype=torch.int32, device=DEV)
    got = core.flash_attn_varlen_func(q, k, v, cu, cu_k, causal=True)
    plan = build_plan(cu, None, max_seqlen_q=28, max_seqlen_k=35, cu_seqlens_k=cu_k)
    _close(got, reference_attention(q, k, v, plan, P)[0])
    uses_fa3 = fa3.source().varlen is not None
    assert bool(fake_fa3.calls) == uses_fa3 and bool(kernel_calls) != uses_fa3
    # seqused_k shorter than the spans: Triton (the vLLM wrapper takes one or the other).
    fake_fa3.calls.clear()
    short = torch.tensor([10, 30], dtype=torch.int32, device=DEV)
    got = core.flash_attn_varlen_func(q[:40], k, v, torch.tensor([0, 10, 40], dtype=torch.int32, device=DEV),
                                     cu_k, seqused_k=short, causal=True)
    plan = build_plan(torch.tensor([0, 10, 40], dtype=torch.int32, device=DEV), short, max_seqlen_q=30,
                      max_seqlen_k=30, cu_seqlens_k=cu_k)
    _close(got, reference_attention(q[:40], k, v, plan, P)[0])
    assert not fake_fa3.calls


def test_bad_input_raises_before_any_provider(fake_fa3, kernel_calls):
    b = _batch([20], [40])
    with pytest.raises(ValueError, match="num_kv_heads"):
        core.attention(b.q[:, :7], b.k_cache, b.v_cache, b.plan, P)
    with pytest.raises(ValueError, match="out"):
        core.attention(b.q, b.k_cache, b.v_cache, b.plan, P, out=torch.empty(3, HQ, D, device=DEV).half())
    assert not fake_fa3.calls and not kernel_calls and not b.plan.schedules


@pytest.mark.parametrize("impl", ["reference", "triton", "fa3"])
def test_empty_batch_returns_empty_output(fake_fa3, monkeypatch, impl):
    """0 sequences (cache_seqlens of length 0) on every path; choose_num_splits used to divide
    by zero here."""
    if impl == "reference":
        monkeypatch.setenv("ANYATTN_IMPL", "reference")
    else:
        monkeypatch.setenv("ANYATTN_KERNELS", impl)
    b = _batch([5], [20])
    q = b.q[:0]
    out, lse = core.flash_attn_with_kvcache(
        q, b.k_cache, b.v_cache, cache_seqlens=torch.zeros(0, dtype=torch.int32, device=DEV),
        page_table=b.plan.page_table[:0], cu_seqlens_q=torch.zeros(1, dtype=torch.int32, device=DEV),
        causal=True, return_softmax_lse=True)
    assert out.shape == (0, HQ, D) and lse.shape == (HQ, 0)
    out = core.flash_attn_varlen_func(q, b.k_cache[0], b.v_cache[0],
                                     torch.zeros(1, dtype=torch.int32, device=DEV),
                                     torch.zeros(1, dtype=torch.int32, device=DEV))
    assert out.shape == (0, HQ, D) and not fake_fa3.calls


def test_graph_plan_keeps_its_choice_across_steps(fake_fa3):
    """The schedule is chosen once per captured batch size and survives in-place updates."""
    w = providers.Workload(torch.device(DEV), torch.float16, torch.float16, D, D, HQ, HK)
    bufs = GraphStorage(4, 8, max_seqlen_q=8, page_size=16, num_kv_heads=HK, device=DEV,
                            workload=w)
    first = bufs.plan(2)
    assert first.schedules[w].providers[0] is fa3.FA3  # 8 tokens x group 4 = 32 rows
    b = _batch([8, 8], [40, 100], seed=9)
    for _ in range(2):
        plan = bufs.update(2, cu_seqlens_q=b.plan.cu_seqlens_q, seqused_k=b.plan.seqused_k,
                           page_table=b.plan.page_table)
        assert plan is first and len(plan.schedules) == 1
        _close(core.attention(b.q, b.k_cache, b.v_cache, plan, P),
               reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P)[0])
    assert fake_fa3.calls


def test_schedule_is_made_once_per_plan(fake_fa3, monkeypatch):
    b = _batch([20], [40])
    made = []
    original = plan_module.make_schedule
    monkeypatch.setattr(plan_module, "make_schedule", lambda *a: made.append(1) or original(*a))
    for _ in range(3):
        _run(b, P)
    assert len(made) == 1 and len(fake_fa3.calls) == 3
