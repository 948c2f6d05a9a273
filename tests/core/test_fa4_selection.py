"""The FlashAttention-4 provider's routing and argument mapping, with FA4 simulated on the CPU.

The simulated FA4 implements ``_flash_attn_fwd``'s documented contract (bottom-right causal and
local windows, soft-cap, ``learnable_sink``, ``score_mod`` on the scaled scores, ``mask_mod``
replacing causal/window, per-sequence ``q_idx``/``kv_idx``, LSE -inf for empty rows) in float64,
and refuses what FA4 refuses (``softcap`` beside a ``score_mod``, causal/window flags beside a
``mask_mod``, sinks of another dtype, split-KV). Its modifiers are torch twins of the CuTe-DSL
ones in ``core/providers/fa4_mods.py``, built from the same specs (``fa4.AlibiScore``,
``fa4.SpanMask``), so these tests check the routing, the variant mapping and its aux tensors
against the chunked reference; the CuTe code itself runs on the device only
(tests/gpu/test_fa4_provider.py).
"""
import dataclasses
import math
import types

import pytest
import torch

from anyattn import core
from anyattn.core import build_plan
from anyattn.core.providers import TRITON, fa3, fa4
from anyattn.core.semantics import masks
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention
from anyattn.core.semantics.spans import span_table

from batches import paged_batch
from graph_storage import GraphStorage
from test_providers import FakeFA3

HQ, HK, D = 8, 2, 32
DEV = "cuda" if torch.cuda.is_available() else "cpu"
P = AttnParams(softmax_scale=D ** -0.5)


def _twin_score_mod(spec: fa4.AlibiScore):
    def alibi(score, b, h, q_idx, kv_idx, seqlen_info, aux_tensors):
        if spec.softcap > 0:
            score = spec.softcap * torch.tanh(score / spec.softcap)
        p = q_idx + seqlen_info.seqlen_k - seqlen_info.seqlen_q
        if spec.slopes is not None:
            slope = torch.tensor(spec.slopes, dtype=torch.float64, device=score.device)[h]
        else:
            slope = aux_tensors[spec.slopes_at].double()[h]
        dist = p - kv_idx
        # no abs under keys_behind, as the real modifier: wrong for a key after its query, so
        # a spec that promises keys_behind where the call sees such keys fails the reference
        return score - slope * (dist if spec.keys_behind else dist.abs())
    return alibi


def _twin_mask_mod(spec: fa4.SpanMask):
    assert spec.hi is not None or spec.lo is not None, "a span mask over a call that hides nothing"

    def spans_mask(b, h, q_idx, kv_idx, seqlen_info, aux_tensors):
        p = q_idx + seqlen_info.seqlen_k - seqlen_info.seqlen_q
        behind = p - kv_idx
        keep = torch.ones_like(behind, dtype=torch.bool)
        if spec.hi is not None:
            keep &= behind >= -spec.hi
        if spec.lo is not None:
            keep &= behind <= spec.lo
        table, counts = aux_tensors[0].cpu(), aux_tensors[1].cpu()
        for i in range(spec.max_spans):
            start, end = (int(x) for x in table[b, i])
            inside = ((i < int(counts[b])) & (p >= start) & (p < end)
                      & (kv_idx >= start) & (kv_idx < end))
            if spec.in_window:
                inside = inside & (behind <= spec.lo)
            keep = keep | inside
        return keep
    return spans_mask


class FakeFA4:
    """``_flash_attn_fwd``'s contract in float64; records each call's modifiers and the specs
    each builder was asked for."""

    def __init__(self, sink_dtypes=(torch.bfloat16,)):
        self.calls, self.built, self.aux = [], [], []
        self.source = fa4.Source("fake fa4", self.forward, self.score_mod, self.mask_mod,
                                 sink_dtypes, needs_gpu=False)

    def score_mod(self, spec):
        self.built.append(spec)
        return _twin_score_mod(spec)

    def mask_mod(self, spec):
        self.built.append(spec)
        return _twin_mask_mod(spec)

    def forward(self, q, k, v, *, cu_seqlens_q, max_seqlen_q, max_seqlen_k, softmax_scale,
                causal, window_size_left, window_size_right, softcap, learnable_sink,
                num_splits, score_mod, mask_mod, aux_tensors, return_lse, out, pack_gqa,
                page_table=None, cu_seqlens_k=None, seqused_k=None):
        assert num_splits == 1 and (page_table is None) != (cu_seqlens_k is None)
        assert score_mod is None or not softcap, "FA4: softcap and score_mod are exclusive"
        assert mask_mod is None or not (causal or window_size_left is not None
                                        or window_size_right is not None), \
            "FA4 ignores causal/window under a mask_mod"
        assert all(w is None or w >= 0 for w in (window_size_left, window_size_right))
        assert q.dtype == k.dtype == v.dtype and all(t.stride(-1) == 1 for t in (q, k, v))
        assert learnable_sink is None or learnable_sink.dtype in self.source.sink_dtypes
        assert aux_tensors is None or len(aux_tensors) > 0
        assert mask_mod is None or aux_tensors is not None, "the span mask reads the table"
        assert pack_gqa in (None, False)
        if page_table is not None:
            assert page_table.dtype == torch.int32 and page_table.stride(-1) == 1
        self.calls.append((score_mod, mask_mod))
        self.aux.append(aux_tensors)
        total_q, hq, _ = q.shape
        hk, dv = v.shape[-2], v.shape[-1]
        o = torch.zeros(total_q, hq, dv, dtype=torch.float64, device=q.device)
        lse = torch.full((hq, total_q), -math.inf, dtype=torch.float64, device=q.device)
        cu = cu_seqlens_q.tolist()
        k_lens = (seqused_k.tolist() if seqused_k is not None
                  else (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist())
        for b, k_len in enumerate(k_lens):
            q0, q1 = cu[b], cu[b + 1]
            pos = torch.arange(k_len, device=q.device)
            if page_table is not None:
                pages = page_table[b, pos // k.shape[1]].long()
                kb, vb = k[pages, pos % k.shape[1]], v[pages, pos % k.shape[1]]
            else:
                kb, vb = k[cu_seqlens_k[b] + pos], v[cu_seqlens_k[b] + pos]
            g = hq // hk
            kb, vb = (t.double().repeat_interleave(g, 1) for t in (kb, vb))
            s = torch.einsum("qhd,khd->hqk", q[q0:q1].double(), kb) * softmax_scale
            info = types.SimpleNamespace(seqlen_q=q1 - q0, seqlen_k=k_len)
            h = torch.arange(hq, device=q.device)[:, None, None]
            qi = torch.arange(q1 - q0, device=q.device)[None, :, None]
            ki = pos[None, None, :]
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            if score_mod is not None:
                s = score_mod(s, b, h, q_idx=qi, kv_idx=ki, seqlen_info=info,
                              aux_tensors=aux_tensors)
            p = qi + k_len - (q1 - q0)
            ok = torch.ones_like(s, dtype=torch.bool)
            if causal:
                ok &= ki <= p
            if window_size_left is not None:
                ok &= ki >= p - window_size_left
            if window_size_right is not None:
                ok &= ki <= p + window_size_right
            if mask_mod is not None:
                ok &= mask_mod(b, h, qi, ki, info, aux_tensors)
            s = s.masked_fill(~ok, -math.inf)
            if learnable_sink is not None:
                sink = learnable_sink.double()[:, None, None].expand(-1, q1 - q0, 1)
                s = torch.cat([s, sink], -1)
                vb = torch.cat([vb, vb.new_zeros(1, hq, dv)])
            row_lse = torch.logsumexp(s, -1)  # -inf where nothing is visible
            w = torch.exp(s - row_lse[..., None]).nan_to_num(0.0)
            o[q0:q1] = torch.einsum("hqk,khd->qhd", w, vb)
            lse[:, q0:q1] = row_lse
        if out is None:
            out = torch.empty(total_q, hq, dv, dtype=q.dtype, device=q.device)
        out.copy_(o)
        return out, (lse.float() if return_lse else None), None, None


@pytest.fixture(autouse=True)
def no_installed_flash_attention(monkeypatch):
    """Neither FA3 nor FA4 unless a test simulates one (a GPU machine may carry both)."""
    monkeypatch.setattr(fa3, "source", lambda: None)
    monkeypatch.setattr(fa4, "source", lambda: None)
    monkeypatch.delenv("ANYATTN_KERNELS", raising=False)


@pytest.fixture
def fake_fa4(monkeypatch):
    """A simulated FA4, routed under ``auto`` as it will be once verified on the GPU."""
    fake = FakeFA4()
    monkeypatch.setattr(fa4, "source", lambda: fake.source)
    monkeypatch.setattr(fa4, "ROUTED_UNDER_AUTO", True)
    monkeypatch.setattr(fa4, "SPANS_UNDER_AUTO", True)
    return fake


@pytest.fixture
def fake_fa3(monkeypatch):
    fake = FakeFA3()
    src = fa3.Source("fake varlen", varlen=fake.varlen, needs_hopper=False)
    monkeypatch.setattr(fa3, "source", lambda: src)
    return fake


def _batch(q_lens, k_lens, dtype=torch.float16, seed=0, spans=None, **kw):
    b = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, page_size=16, dtype=dtype, seed=seed,
                    device=DEV, **kw)
    if spans is not None:
        table, counts = span_table(spans, DEV, k_lens=k_lens)
        b.plan = dataclasses.replace(b.plan, spans=table, span_counts=counts)
    return b


def _slopes():
    return 2.0 ** (-8.0 * torch.arange(1, HQ + 1, device=DEV) / HQ)


def _reference(q, k, v, plan, params, **kw):
    """The chunked reference of ``core.attention(q, k, v, plan, params, **kw)``."""
    mask, bias = kw.pop("attn_mask", None), kw.pop("attn_bias", None)
    shape = dict(plan=plan, total_q=q.shape[0], hq=HQ, hk=HK, device=q.device)
    return reference_attention(q, k, v, plan, params, **kw,
                               mask=masks.describe("attn_mask", mask, **shape),
                               bias=masks.describe("attn_bias", bias, **shape))


def _check(b, params, tol=2e-3, **kw):
    """anyattn against the chunked reference: output and LSE (empty rows: -inf)."""
    got, lse = core.attention(b.q, b.k_cache, b.v_cache, b.plan, params, return_lse=True, **kw)
    want, want_lse = _reference(b.q, b.k_cache, b.v_cache, b.plan, params, **kw)
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert torch.equal(lse == -math.inf, want_lse == -math.inf), "empty rows: LSE must be -inf"
    finite = want_lse.isfinite()
    torch.testing.assert_close(lse[finite], want_lse[finite], atol=tol, rtol=tol)


def _chain(b):
    (sched,) = b.plan.schedules.values()
    return [p.name for p in sched.providers]


# Sequences with no keys, one token, a prompt and an extend with prefix (GQA 4); spans at a
# prompt's start, middle and end, one cut by the step's last key, one in the cached prefix.
Q_LENS, K_LENS = [0, 1, 37, 9], [0, 1, 37, 50]
SPANS = [[], [(0, 1)], [(0, 5), (12, 20), (30, 37)], [(10, 30), (44, 50)]]


@pytest.mark.parametrize("params,alibi,spans", [
    (P, True, False),
    (AttnParams(softmax_scale=D ** -0.5, causal=False), True, False),
    (AttnParams(softmax_scale=D ** -0.5, softcap=15.0), True, False),
    (AttnParams(softmax_scale=D ** -0.5, window_left=6, window_right=0), True, False),
    (P, False, True),
    (AttnParams(softmax_scale=D ** -0.5, window_left=6, window_right=0), False, True),
    (AttnParams(softmax_scale=D ** -0.5, window_left=6, spans_in_window=True), False, True),
    (AttnParams(softmax_scale=D ** -0.5, causal=False, window_left=4, window_right=2), False, True),
    (AttnParams(softmax_scale=D ** -0.5, softcap=15.0), True, True),
], ids=["alibi-causal", "alibi-bidirectional", "alibi+softcap", "alibi+window", "spans",
        "spans+window", "spans-in-window", "spans+bidirectional-window", "alibi+spans+softcap"])
def test_alibi_and_spans_run_on_fa4_with_anyattns_semantics(fake_fa4, kernel_calls, params,
                                                           alibi, spans):
    b = _batch(Q_LENS, K_LENS, seed=4, spans=SPANS if spans else None)
    kw = dict(alibi_slopes=_slopes()) if alibi else {}
    _check(b, params, **kw)
    assert fake_fa4.calls and not kernel_calls
    assert _chain(b) == ["fa4", "triton"]
    score_mod, mask_mod = fake_fa4.calls[-1]
    assert (score_mod is not None) == alibi and (mask_mod is not None) == spans


def test_bidirectional_spans_without_window_need_no_mask(fake_fa4, kernel_calls):
    """Non-causal without a window sees every key: spans change nothing, FA4 runs plain."""
    params = AttnParams(softmax_scale=D ** -0.5, causal=False)
    b = _batch(Q_LENS, K_LENS, seed=5, spans=SPANS)
    _check(b, params)
    assert fake_fa4.calls == [(None, None)] and not fake_fa4.built and not kernel_calls


@pytest.mark.parametrize("spans", [False, True])
def test_cross_attention_rows_without_keys(fake_fa4, spans):
    """Output 0 and LSE -inf for the rows of a sequence with no keys."""
    params = AttnParams(softmax_scale=D ** -0.5, causal=False, window_left=8 if spans else -1)
    b = _batch([30, 20], [0, 25], seed=17, spans=[[], [(3, 20)]] if spans else None)
    _check(b, params, **({} if spans else dict(alibi_slopes=_slopes())))
    assert len(fake_fa4.calls) == 1


def test_sinks_and_out_with_spans(fake_fa4):
    b = _batch(Q_LENS, K_LENS, dtype=torch.bfloat16, seed=6, spans=SPANS)
    sinks = torch.randn(HQ, device=DEV).bfloat16()
    out = torch.full((b.q.shape[0], HQ, D), math.nan, dtype=torch.bfloat16, device=DEV)
    got = core.attention(b.q, b.k_cache, b.v_cache, b.plan, P, sinks=sinks, out=out)
    want, _ = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P, sinks=sinks)
    assert got is out and fake_fa4.calls
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_contiguous_keys(fake_fa4, kernel_calls):
    gen = torch.Generator().manual_seed(7)
    k = torch.randn(60, HK, D, generator=gen).half().to(DEV)
    v = torch.randn(60, HK, D, generator=gen).half().to(DEV)
    q = torch.randn(40, HQ, D, generator=gen).half().to(DEV)
    cu = torch.tensor([0, 10, 40], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, 25, 60], dtype=torch.int32, device=DEV)
    slopes = _slopes()
    for seqused in (None, torch.tensor([10, 30], dtype=torch.int32, device=DEV)):
        plan = build_plan(cu, seqused, max_seqlen_q=30, max_seqlen_k=35, cu_seqlens_k=cu_k)
        got = core.attention(q, k, v, plan, P, alibi_slopes=slopes)
        want, _ = reference_attention(q, k, v, plan, P, alibi_slopes=slopes)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)
    assert len(fake_fa4.calls) == 2 and not kernel_calls


def test_each_call_takes_the_first_provider_that_covers_it(fake_fa3, fake_fa4, kernel_calls):
    """One prefill plan, chain fa3 > fa4 > triton: plain calls on FA3, ALiBi and spans on FA4,
    a masked call on Triton."""
    b = _batch([20, 3], [40, 3], seed=8, spans=[[(5, 25)], []])
    plain = AttnParams(softmax_scale=D ** -0.5, use_spans=False)
    _check(b, plain)
    assert fake_fa3.calls and not fake_fa4.calls and not kernel_calls
    _check(b, plain, alibi_slopes=_slopes())
    assert len(fake_fa4.calls) == 1 and not kernel_calls
    _check(b, P)  # the plan's spans
    assert len(fake_fa4.calls) == 2 and not kernel_calls
    _check(b, plain, attn_mask=torch.rand(43, 1, device=DEV) < 0.7)
    assert kernel_calls and len(fake_fa4.calls) == 2 and len(fake_fa3.calls) == 1
    assert _chain(b) == ["fa3", "fa4", "triton"]


def test_without_fa4_alibi_and_spans_stay_on_triton(fake_fa3, monkeypatch, kernel_calls):
    monkeypatch.setattr(fa4, "source", lambda: None)
    monkeypatch.delenv("ANYATTN_KERNELS", raising=False)
    b = _batch([20, 3], [40, 3], seed=9, spans=[[(5, 25)], []])
    _check(b, P, alibi_slopes=_slopes())
    assert kernel_calls and not fake_fa3.calls
    assert _chain(b) == ["fa3", "triton"]
    (sched,) = b.plan.schedules.values()
    assert "fa4: not installed" in sched.reason


def _fp8(b):
    return b.k_cache.to(torch.float8_e4m3fn), b.v_cache.to(torch.float8_e4m3fn)


@pytest.mark.parametrize("case", ["mask", "bias", "fp8-kv", "chunked", "fp16-slopes",
                                  "fp32-sinks", "strided-q", "unaligned-out",
                                  "empty-cache-sinks"])
def test_uncovered_calls_fall_back_to_triton(fake_fa4, kernel_calls, case):
    b = _batch([20, 3], [40, 3], seed=10)
    q, k, v, params = b.q, b.k_cache, b.v_cache, P
    kw = dict(alibi_slopes=_slopes())  # ALiBi: what would send the call to FA4
    if case == "mask":
        kw["attn_mask"] = torch.rand(43, 1, device=DEV) < 0.7
    elif case == "bias":
        kw["attn_bias"] = torch.randn(43, HK, device=DEV)
    elif case == "fp8-kv":
        k, v = _fp8(b)
        kw.update(k_descale=torch.full((2, HK), 0.5, device=DEV),
                  v_descale=torch.full((2, HK), 2.0, device=DEV))
    elif case == "chunked":
        params = AttnParams(softmax_scale=D ** -0.5, chunk_size=16)
    elif case == "fp16-slopes":  # vLLM's copy keys no aux dtype: float32 slopes only
        kw["alibi_slopes"] = _slopes().half()
    elif case == "fp32-sinks":  # the fake is vLLM's copy: bf16 sinks only
        kw["sinks"] = torch.randn(HQ, device=DEV)
    elif case == "strided-q":
        q = torch.cat([q, q], dim=-1)[..., ::2]
    elif case == "unaligned-out":  # rows of D + 1 halves: strides off the 16-byte grid
        kw["out"] = torch.empty(q.shape[0], HQ, D + 1, dtype=q.dtype, device=DEV)[..., :D]
    elif case == "empty-cache-sinks":  # cross attention over no keys at all
        b = _batch([4], [0], seed=10)
        q, k, v = b.q, b.k_cache[:0], b.v_cache[:0]
        params = AttnParams(softmax_scale=D ** -0.5, causal=False)
        kw["sinks"] = torch.randn(HQ, device=DEV).bfloat16()
    got = core.attention(q, k, v, b.plan, params, **kw)
    want = _reference(q, k, v, b.plan, params, **kw)[0]
    tol = 1e-2 if case == "fp8-kv" else 2e-3
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert kernel_calls and not fake_fa4.calls


def test_a_source_that_takes_fp32_sinks(fake_fa4, kernel_calls):
    """flash-attn-4 lists fp16/bf16/fp32 sinks (``_LEARNABLE_SINK_DTYPES``)."""
    fake_fa4.source = dataclasses.replace(fake_fa4.source, sink_dtypes=(
        torch.float16, torch.bfloat16, torch.float32))
    b = _batch([20, 3], [40, 3], seed=11)
    _check(b, P, alibi_slopes=_slopes(), sinks=torch.randn(HQ, device=DEV))
    assert fake_fa4.calls and not kernel_calls


@pytest.mark.parametrize("dtype,dv,deterministic,why", [
    (torch.float32, None, False, "dtype"), (torch.float16, 16, False, "head dims"),
    (torch.float16, None, True, "deterministic")])
def test_uncovered_workloads_leave_fa4_out(fake_fa4, kernel_calls, dtype, dv, deterministic, why):
    b = _batch([20], [40], dtype=dtype, dv=dv, deterministic=deterministic, seed=12)
    got = core.attention(b.q, b.k_cache, b.v_cache, b.plan, P, alibi_slopes=_slopes())
    want = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P, alibi_slopes=_slopes())[0]
    tol = 1e-2 if dtype == torch.float32 and DEV == "cuda" else 2e-3  # TF32 on CUDA
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert _chain(b) == ["triton"] and not fake_fa4.calls
    (sched,) = b.plan.schedules.values()
    assert f"fa4: {why}" in sched.reason


def test_decode_stays_on_triton(fake_fa4, kernel_calls):
    b = _batch([1, 1], [30, 70], seed=13)
    _check(b, P, alibi_slopes=_slopes())
    assert _chain(b) == ["triton"] and kernel_calls and not fake_fa4.calls


@pytest.mark.parametrize("choice,chain", [("fa4", ["fa4", "triton"]), ("fa3", ["fa3", "triton"]),
                                          ("triton", ["triton"]),
                                          ("auto", ["fa3", "fa4", "triton"])])
def test_override_variable(fake_fa3, fake_fa4, monkeypatch, choice, chain):
    monkeypatch.setenv("ANYATTN_KERNELS", choice)
    b = _batch([20], [40], seed=14)
    _check(b, P)
    assert _chain(b) == chain
    assert bool(fake_fa4.calls) == (chain[0] == "fa4")  # plain calls: FA4 when forced


def test_variant_is_built_once_per_plan(fake_fa4):
    """The modifiers of a layer kind are built on its first call and reused by the next
    layers (FA4 keys its compile cache by them)."""
    b = _batch(Q_LENS, K_LENS, seed=15, spans=SPANS)
    for _ in range(3):
        core.attention(b.q, b.k_cache, b.v_cache, b.plan, P, alibi_slopes=_slopes())
    assert len(fake_fa4.calls) == 3 and len(fake_fa4.built) == 2  # one mask_mod, one score_mod
    assert len({id(m) for call in fake_fa4.calls for m in call}) == 2


def test_alibi_slopes_are_compiled_in_and_reread_when_they_change(fake_fa4):
    """The slopes' values go into the score_mod (no aux tensor, no pack-GQA); a tensor written
    in place, or another tensor with other values, gets its own variant (a stale one would
    score with the old slopes and fail the reference)."""
    b = _batch(Q_LENS, K_LENS, seed=17)
    slopes = _slopes()
    _check(b, P, alibi_slopes=slopes)
    spec = fake_fa4.built[-1]
    assert spec.slopes == tuple(slopes.tolist()) and spec.keys_behind
    assert fake_fa4.aux[-1] is None
    slopes.mul_(3.0)
    _check(b, P, alibi_slopes=slopes)
    assert fake_fa4.built[-1].slopes == tuple(slopes.tolist())
    other = torch.rand(HQ, device=DEV)
    _check(b, P, alibi_slopes=other)
    assert fake_fa4.built[-1].slopes == tuple(other.tolist())
    with torch.inference_mode():  # no version counter: read once, kept while it lives
        frozen = torch.rand(HQ, device=DEV)
        _check(b, P, alibi_slopes=frozen)
        assert fake_fa4.built[-1].slopes == tuple(frozen.tolist())


def test_host_slopes_reads_each_tensor_once(monkeypatch):
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or original(t))
    slopes = _slopes()
    assert fa4.host_slopes(slopes) == fa4.host_slopes(slopes) == tuple(original(slopes))
    assert len(reads) == 1
    key = id(slopes)
    del slopes
    assert key not in fa4._HOST_SLOPES  # dropped with its tensor


def test_slopes_first_seen_in_a_capture_are_read_in_the_kernel(fake_fa4, monkeypatch):
    """No host read while a CUDA graph is captured: the score_mod reads the aux tensor."""
    monkeypatch.setattr(fa4, "_capturing", lambda t: True)
    b = _batch(Q_LENS, K_LENS, seed=18)
    slopes = torch.rand(HQ, device=DEV)
    _check(b, P, alibi_slopes=slopes)
    spec = fake_fa4.built[-1]
    assert spec.slopes is None and fake_fa4.aux[-1][spec.slopes_at] is slopes


def test_graph_plan_with_spans_on_fa4(fake_fa4):
    """CUDA-graph storage: the span table is refilled in place (stale rows past a sequence's
    span count stay in the storage), the variant made once."""
    w = core.Workload(torch.device(DEV), torch.float16, torch.float16, D, D, HQ, HK)
    bufs = GraphStorage(4, 8, max_seqlen_q=24, page_size=16, num_kv_heads=HK, device=DEV,
                        workload=w, max_spans=3)
    steps = [([20, 24], [40, 100], [[(1, 4), (10, 30), (33, 38)], [(80, 90)]]),
             ([24, 8], [50, 30], [[(40, 48)], []])]
    for q_lens, k_lens, spans in steps:
        b = _batch(q_lens, k_lens, seed=16, spans=spans)
        plan = bufs.update(2, cu_seqlens_q=b.plan.cu_seqlens_q, seqused_k=b.plan.seqused_k,
                           page_table=b.plan.page_table, spans=(b.plan.spans, b.plan.span_counts))
        got = core.attention(b.q, b.k_cache, b.v_cache, plan, P)
        want = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P)[0]
        torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)
    assert plan.schedules[w].providers[0] is fa4.FA4
    assert len(fake_fa4.calls) == 2 and len(fake_fa4.built) == 1


def test_auto_leaves_fa4_out_until_verified_on_a_gpu(fake_fa4, kernel_calls, monkeypatch):
    """Before tests/gpu/test_fa4_provider.py has passed on the device, ``auto`` keeps ALiBi on
    Triton; ANYATTN_KERNELS=fa4 still runs it on FA4."""
    monkeypatch.setattr(fa4, "ROUTED_UNDER_AUTO", False)
    b = _batch([40], [90], seed=3)
    slopes = torch.rand(HQ, device=DEV)
    core.attention(b.q, b.k_cache, b.v_cache, b.plan, P, alibi_slopes=slopes)
    (sched,) = b.plan.schedules.values()
    assert [p.name for p in sched.providers] == ["triton"]
    assert "not yet verified" in sched.reason
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    plan = dataclasses.replace(b.plan)
    got = core.attention(b.q, b.k_cache, b.v_cache, plan, P, alibi_slopes=slopes)
    assert [p.name for p in plan.schedules[next(iter(plan.schedules))].providers] == ["fa4", "triton"]
    ref, _ = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, P, alibi_slopes=slopes)
    torch.testing.assert_close(got.float(), ref.float(), atol=1e-2, rtol=1e-2)
    assert fake_fa4.calls, "ANYATTN_KERNELS=fa4: the call ran on FA4"


def test_auto_keeps_span_plans_on_triton_while_fa4_is_slower_there(fake_fa4, monkeypatch):
    """Until FA4 skips the blocks a span mask hides, ``auto`` leaves plans with spans to
    Triton; ALiBi still goes to FA4, and ANYATTN_KERNELS=fa4 still runs spans there."""
    monkeypatch.setattr(fa4, "SPANS_UNDER_AUTO", False)
    b = _batch(Q_LENS, K_LENS, seed=19, spans=SPANS)
    _check(b, P)
    assert _chain(b) == ["triton"] and not fake_fa4.calls
    assert "spans: slower than Triton" in next(iter(b.plan.schedules.values())).reason
    b = _batch(Q_LENS, K_LENS, seed=19)
    _check(b, P, alibi_slopes=_slopes())
    assert _chain(b) == ["fa4", "triton"] and len(fake_fa4.calls) == 1
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    b = _batch(Q_LENS, K_LENS, seed=19, spans=SPANS)
    _check(b, P)
    assert _chain(b) == ["fa4", "triton"] and len(fake_fa4.calls) == 2
