"""Bidirectional spans (prefix-LM image tokens) and ALiBi: the Triton kernels (interpreter on
CPU, compiled on CUDA) against the chunked reference, and the reference against the dense
float64 oracle, whose spans are HF-style image ids per position (tests/oracle.py)."""
import dataclasses
import math
import random

import pytest
import torch

from anyattn import core
from anyattn.core.semantics import spans as span_lib
from graph_storage import GraphStorage
from anyattn.core.semantics.params import AttnParams

from batches import dense_attention, paged_batch, sequence_kv
from oracle import reference_path

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = 3e-2 if DEVICE == "cuda" else 1e-4
HQ, HK, D = 8, 2, 32


def with_spans(plan, spans, k_lens):
    table, counts = span_lib.span_table(spans, DEVICE, k_lens=k_lens)
    return dataclasses.replace(plan, spans=table, span_counts=counts)


def image_ids(spans, k_len):
    """The oracle's view of one sequence's spans: an image id per key position, -1 for text."""
    ids = torch.full((k_len,), -1)
    for i, (start, end) in enumerate(spans):
        ids[start:end] = i
    return ids


def check(batch, plan, params, q_lens, k_lens, spans, *, slopes=None, sinks=None, tol=TOL):
    """Kernels vs reference path vs dense oracle, per sequence; returns the kernels' output."""
    kw = dict(alibi_slopes=slopes, sinks=sinks)
    got, lse = core.attention(batch.q, batch.k_cache, batch.v_cache, plan, params,
                             return_lse=True, **kw)
    ref, ref_lse = reference_path(batch.q, batch.k_cache, batch.v_cache, plan, params,
                                  return_lse=True, **kw)
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=tol, rtol=tol)
    q0 = 0
    for b, (q_len, k_len) in enumerate(zip(q_lens, k_lens)):
        k, v = sequence_kv(batch, b, k_len)
        want, _ = dense_attention(
            batch.q[q0:q0 + q_len].cpu(), k, v, scale=params.softmax_scale,
            causal=params.causal, window=(params.window_left, params.window_right),
            chunk=params.chunk_size, softcap=params.softcap, image_ids=image_ids(spans[b], k_len),
            image_in_window=params.spans_in_window,
            alibi=None if slopes is None else slopes.cpu(),
            sinks=None if sinks is None else sinks.cpu())
        torch.testing.assert_close(ref[q0:q0 + q_len].double().cpu(), want, atol=tol, rtol=tol)
        q0 += q_len
    return got


# (q_lens, k_lens, spans per sequence [start, end), page size). Prefills put a span at the
# start, in the middle and at the end of a prompt; extends continue a prompt whose cached
# part ends inside a span (a chunked-prefill step after the first, or a prefix-cache hit
# that stops inside an image); a decode row and a text-only row share the batch.
SPAN_CASES = {
    "start-middle-end": ([40, 50, 33], [40, 50, 33], [[(0, 23)], [(12, 38)], [(20, 33)]], 16),
    "two-spans-and-text": ([60, 17], [60, 17], [[(5, 20), (30, 52)], []], 16),
    "extend-inside-span": ([20, 33, 1], [70, 33, 60], [[(40, 62)], [(0, 33)], [(10, 50)]], 16),
    "page-1": ([30, 14], [41, 14], [[(14, 35)], [(3, 11)]], 1),
    "across-pages-32": ([48], [80], [[(31, 66), (70, 79)]], 32),
    # Spans much longer than a key tile: whole tiles past a program's diagonal.
    "long-spans": ([200, 70], [200, 250], [[(5, 150)], [(120, 240)]], 16),
}


@pytest.mark.parametrize("name", sorted(SPAN_CASES))
def test_spans(name):
    q_lens, k_lens, spans, page = SPAN_CASES[name]
    seed = sorted(SPAN_CASES).index(name)
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, page_size=page, dtype=DTYPE,
                        device=DEVICE, seed=seed)
    params = AttnParams(softmax_scale=D ** -0.5)
    got = check(batch, with_spans(batch.plan, spans, k_lens), params, q_lens, k_lens, spans)
    causal = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan, params)
    assert (got.float() - causal.float()).abs().max() > 0.05, "the spans change nothing here"
    # A layer that keeps causal attention on the same plan (Gemma-4's full layers).
    ignore = dataclasses.replace(params, use_spans=False)
    torch.testing.assert_close(core.attention(batch.q, batch.k_cache, batch.v_cache,
                                             with_spans(batch.plan, spans, k_lens), ignore),
                               causal, atol=TOL, rtol=TOL)


def test_span_split_across_chunked_prefill_steps():
    """A 150-token prompt with an image at 50..130, prefilled in chunks of 64: each step
    sees the whole-request spans cut to its keys (core.spans.step_spans), and the last
    step equals the dense oracle over the whole prompt."""
    prompt, image, chunk = 150, [(50, 130)], 64
    batch = paged_batch([prompt], [prompt], hq=HQ, hk=HK, d=D, dtype=DTYPE, device=DEVICE, seed=11)
    params = AttnParams(softmax_scale=D ** -0.5)
    for k_len in range(chunk, prompt + chunk, chunk):
        k_len = min(k_len, prompt)
        q_len = k_len - (k_len - 1) // chunk * chunk
        step = span_lib.step_spans([image], [q_len], [k_len])
        plan = dataclasses.replace(
            batch.plan, cu_seqlens_q=batch.plan.cu_seqlens_q.new_tensor([0, q_len]),
            seqused_k=batch.plan.seqused_k.new_tensor([k_len]), max_seqlen_q=q_len,
            total_q=q_len)
        q = batch.q[k_len - q_len:k_len]
        sub = dataclasses.replace(batch, q=q)
        check(sub, with_spans(plan, step, [k_len]), params, [q_len], [k_len], step)
    assert step == [[(50, 130)]]
    assert span_lib.step_spans([image], [64], [64]) == [[(50, 64)]]
    assert span_lib.step_spans([image], [20], [150]) == [[]]  # queries 130..149: text only


@pytest.mark.parametrize("in_window", [False, True])
def test_spans_with_sliding_window(in_window):
    """Window 7 on spans longer than it: a span overrides the window (vLLM's default), or its
    keys stay within the window's left edge (mm_prefix_clamp_sliding_window)."""
    q_lens, k_lens = [40, 1, 25], [70, 50, 25]
    spans = [[(35, 60), (64, 70)], [(10, 50)], [(0, 20)]]
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, dtype=DTYPE, device=DEVICE, seed=3)
    plan = with_spans(batch.plan, spans, k_lens)
    params = AttnParams(softmax_scale=D ** -0.5, window_left=7, spans_in_window=in_window)
    got = check(batch, plan, params, q_lens, k_lens, spans)
    other = dataclasses.replace(params, spans_in_window=not in_window)
    assert (got.float() - core.attention(batch.q, batch.k_cache, batch.v_cache, plan,
                                        other).float()).abs().max() > 0.05


@pytest.mark.parametrize("feature", ["split", "gqa8", "mqa", "softcap-sinks", "fp16", "chunk"])
def test_spans_with_other_features(feature):
    rng = random.Random(feature)
    hq, hk = {"gqa8": (16, 2), "mqa": (8, 1)}.get(feature, (HQ, HK))
    k_lens = [rng.randint(40, 90) for _ in range(2)]
    q_lens = [k_lens[0], rng.randint(20, k_lens[1])]
    first_q = k_lens[1] - q_lens[1]
    spans = [[(3, 20), (25, 37)], [(max(0, first_q - 5), k_lens[1] - 3)]]
    dtype = torch.float16 if feature == "fp16" else DTYPE
    batch = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=D, dtype=dtype, device=DEVICE,
                        seed=len(feature), num_splits=3 if feature == "split" else 1)
    plan = with_spans(batch.plan, spans, k_lens)
    # chunk: chunked-local attention (16-key chunks) with spans that cross chunk edges.
    params = AttnParams(softmax_scale=D ** -0.5, softcap=5.0 if feature == "softcap-sinks" else 0.0,
                        chunk_size=16 if feature == "chunk" else 0)
    sinks = torch.randn(hq, device=DEVICE) if feature == "softcap-sinks" else None
    check(batch, plan, params, q_lens, k_lens, spans, sinks=sinks,
          tol=2e-2 if dtype == torch.float16 else TOL)


def alibi_slopes(hq: int) -> torch.Tensor:
    """The ALiBi paper's geometric slopes (2^(-8 i / hq)), as BLOOM and MPT use them."""
    return (2.0 ** (-8.0 * torch.arange(1, hq + 1) / hq)).to(DEVICE)


ALIBI_CASES = {
    # name: (q_lens, k_lens, hq, hk)
    "decode": ([1, 1, 1], [1, 77, 300], 8, 2),
    "prefill": ([64, 37], [64, 37], 8, 2),
    "extend-with-prefix": ([20, 5, 1], [150, 40, 90], 8, 2),
    "gqa8-long-context": ([2, 1], [2500, 4096], 16, 2),
    "mqa": ([30, 1], [60, 200], 8, 1),
}


@pytest.mark.parametrize("name", sorted(ALIBI_CASES))
def test_alibi(name):
    q_lens, k_lens, hq, hk = ALIBI_CASES[name]
    batch = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=D, dtype=DTYPE, device=DEVICE,
                        seed=len(name), num_splits=4 if "long" in name else None)
    slopes = alibi_slopes(hq) / (64 if "long" in name else 1)  # keep far keys in play
    params = AttnParams(softmax_scale=D ** -0.5)
    got = check(batch, batch.plan, params, q_lens, k_lens, [[]] * len(q_lens), slopes=slopes)
    plain = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan, params)
    assert (got.float() - plain.float()).abs().max() > 0.05, "ALiBi changes nothing here"


def test_alibi_with_spans_window_softcap_and_bias():
    """Every additive term at once: ALiBi (symmetric in the distance, so keys past the
    diagonal inside a span are penalised too), a key-side bias, soft-cap, a window."""
    q_lens, k_lens = [50, 1], [80, 40]
    spans = [[(40, 70)], [(0, 40)]]
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, dtype=DTYPE, device=DEVICE, seed=5)
    gen = torch.Generator().manual_seed(5)
    bias = torch.randn(sum(k_lens), 1, generator=gen)
    params = AttnParams(softmax_scale=D ** -0.5, softcap=8.0, window_left=12)
    slopes = alibi_slopes(HQ)
    plan = with_spans(batch.plan, spans, k_lens)
    got = core.attention(batch.q, batch.k_cache, batch.v_cache, plan, params,
                        alibi_slopes=slopes, attn_bias=bias.to(DEVICE))
    ref = reference_path(batch.q, batch.k_cache, batch.v_cache, plan, params,
                         alibi_slopes=slopes, attn_bias=bias.to(DEVICE))
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL, rtol=TOL)
    q0, k0 = 0, 0
    for b, (q_len, k_len) in enumerate(zip(q_lens, k_lens)):
        k, v = sequence_kv(batch, b, k_len)
        dense_bias = bias[k0:k0 + k_len, 0][None, None, :].expand(HQ, q_len, k_len)
        want, _ = dense_attention(batch.q[q0:q0 + q_len].cpu(), k, v, scale=params.softmax_scale,
                                  window=(12, -1), softcap=8.0, alibi=slopes.cpu(),
                                  image_ids=image_ids(spans[b], k_len), bias=dense_bias)
        torch.testing.assert_close(ref[q0:q0 + q_len].double().cpu(), want, atol=TOL, rtol=TOL)
        q0, k0 = q0 + q_len, k0 + k_len


@pytest.mark.parametrize("kv", ["e4m3", "e5m2"])
def test_alibi_with_fp8_kv_and_descales(kv):
    """fp8 caches with per-(sequence, kv head) descales: the ALiBi term is added after the
    descaled softmax scale, in the same units as the scores."""
    dtype8 = torch.float8_e4m3fn if kv == "e4m3" else torch.float8_e5m2
    q_lens, k_lens = [30, 1], [70, 130]
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, dtype=DTYPE, device=DEVICE, seed=9)
    gen = torch.Generator().manual_seed(9)
    k_descale = (torch.rand(2, HK, generator=gen) + 0.5).to(DEVICE)
    v_descale = (torch.rand(2, HK, generator=gen) + 0.5).to(DEVICE)
    k8, v8 = batch.k_cache.to(dtype8), batch.v_cache.to(dtype8)
    kw = dict(k_descale=k_descale, v_descale=v_descale, alibi_slopes=alibi_slopes(HQ))
    params = AttnParams(softmax_scale=D ** -0.5)
    got = core.attention(batch.q, k8, v8, batch.plan, params, **kw)
    ref = reference_path(batch.q, k8, v8, batch.plan, params, **kw)
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL, rtol=TOL)
    q0 = 0
    for b, (q_len, k_len) in enumerate(zip(q_lens, k_lens)):
        deq = dataclasses.replace(batch,
                                  k_cache=k8.float() * k_descale[b][None, None, :, None],
                                  v_cache=v8.float() * v_descale[b][None, None, :, None])
        k, v = sequence_kv(deq, b, k_len)
        want, _ = dense_attention(batch.q[q0:q0 + q_len].cpu(), k, v, scale=params.softmax_scale,
                                  alibi=alibi_slopes(HQ).cpu())
        torch.testing.assert_close(ref[q0:q0 + q_len].double().cpu(), want, atol=TOL, rtol=TOL)
        q0 += q_len


def test_flash_attn_varlen_func_alibi():
    """FlashAttention-2's ``alibi_slopes`` argument on the varlen entry point (contiguous keys,
    non-causal: the distance is symmetric)."""
    gen = torch.Generator().manual_seed(2)
    k = torch.randn(90, HK, D, generator=gen).to(DEVICE, DTYPE)
    v = torch.randn(90, HK, D, generator=gen).to(DEVICE, DTYPE)
    q = torch.randn(70, HQ, D, generator=gen).to(DEVICE, DTYPE)
    cu_q = torch.tensor([0, 30, 70], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 50, 90], dtype=torch.int32, device=DEVICE)
    slopes = alibi_slopes(HQ)
    for causal in (True, False):
        got = core.flash_attn_varlen_func(q, k, v, cu_q, cu_k, causal=causal, alibi_slopes=slopes)
        for (q0, q1), (k0, k1) in (((0, 30), (0, 50)), ((30, 70), (50, 90))):
            want, _ = dense_attention(q[q0:q1].cpu(), k[k0:k1].cpu(), v[k0:k1].cpu(),
                                      scale=D ** -0.5, causal=causal, alibi=slopes.cpu())
            torch.testing.assert_close(got[q0:q1].double().cpu(), want, atol=TOL, rtol=TOL)


def test_graph_buffers_carry_spans_in_place():
    """Span storage preallocated with the plans: replays copy spans in place, steps without
    spans empty the counts, and more spans than the storage holds are refused."""
    bufs = GraphStorage(4, 8, max_seqlen_q=2, page_size=16, num_kv_heads=HK, device=DEVICE,
                            max_spans=2)
    q_lens, k_lens = [2, 2, 2], [40, 70, 2]
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, dtype=DTYPE, device=DEVICE, seed=4)
    spans = [[(30, 40)], [(60, 65), (68, 70)], []]
    params = AttnParams(softmax_scale=D ** -0.5)
    ptr = None
    for step_spans in (spans, None):
        table = None if step_spans is None else span_lib.span_table(step_spans, DEVICE)
        plan = bufs.update(3, cu_seqlens_q=batch.plan.cu_seqlens_q,
                           seqused_k=batch.plan.seqused_k, page_table=batch.plan.page_table,
                           spans=table)
        assert ptr is None or ptr == (plan.spans.data_ptr(), plan.span_counts.data_ptr())
        ptr = (plan.spans.data_ptr(), plan.span_counts.data_ptr())
        check(batch, plan, params, q_lens, k_lens, step_spans or [[]] * 3)
    with pytest.raises(ValueError, match="3 spans per sequence exceed"):
        bufs.update(3, cu_seqlens_q=batch.plan.cu_seqlens_q, seqused_k=batch.plan.seqused_k,
                    page_table=batch.plan.page_table,
                    spans=span_lib.span_table([[(0, 1), (2, 3), (4, 5)], [], []], DEVICE))


@pytest.mark.parametrize("spans,match", [
    ([[(0, 10), (5, 20)], []], r"span 1 \(5, 20\) overlaps"),
    ([[(20, 30), (0, 10)], []], r"span 1 \(0, 10\) overlaps or precedes"),
    ([[(10, 10)], []], r"0 <= start < end"),
    ([[(-2, 3)], []], r"0 <= start < end"),
    ([[], [(30, 41)]], r"sequence 1 span 0 \(30, 41\) runs past the sequence's 40 keys"),
])
def test_bad_spans_are_refused(spans, match):
    """On the host when the table is built (what engines' builders call), and from the
    table's values when a plan carries a bad one (CPU tensors or ANYATTN_DEBUG=1)."""
    with pytest.raises(ValueError, match="^spans: .*" + match):
        span_lib.span_table(spans, "cpu", k_lens=[50, 40])
    batch = paged_batch([1, 1], [50, 40], hq=HQ, hk=HK, d=D)
    table = torch.zeros(2, 2, 2, dtype=torch.int32)
    for b, seq in enumerate(spans):
        table[b, : len(seq)] = torch.tensor(seq, dtype=torch.int32).view(-1, 2)
    counts = torch.tensor([len(s) for s in spans], dtype=torch.int32)
    plan = dataclasses.replace(batch.plan, spans=table, span_counts=counts)
    with pytest.raises(ValueError, match="^spans: .*" + match):
        core.attention(batch.q, batch.k_cache, batch.v_cache, plan, AttnParams(softmax_scale=0.2))


@pytest.mark.parametrize("change,match", [
    (dict(spans=torch.zeros(2, 1, 2, dtype=torch.int64)), "spans: expected int32"),
    (dict(spans=torch.zeros(3, 1, 2, dtype=torch.int32)), r"spans: expected int32 \[batch=2"),
    (dict(span_counts=torch.zeros(2, dtype=torch.int64)), "span_counts: expected int32"),
    (dict(span_counts=torch.tensor([2, 0], dtype=torch.int32)), "span_counts: sequence 0 has 2"),
    (dict(span_counts=None), "spans/span_counts: a plan carries both or neither"),
])
def test_bad_span_tables_are_refused(change, match):
    batch = paged_batch([1, 1], [50, 40], hq=HQ, hk=HK, d=D)
    good = dict(spans=torch.zeros(2, 1, 2, dtype=torch.int32),
                span_counts=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=match):  # when the plan is built, or at the call
        plan = dataclasses.replace(batch.plan, **{**good, **change})
        core.attention(batch.q, batch.k_cache, batch.v_cache, plan, AttnParams(softmax_scale=0.2))


@pytest.mark.parametrize("slopes,match", [
    (torch.ones(HQ - 1),
     rf"alibi_slopes: expected .* of shape \({HQ},\) \[num_heads\], got torch.float32 \({HQ - 1},\)"),
    (torch.ones(HQ, 1), r"got torch.float32 \(8, 1\)"),
    (torch.ones(HQ, dtype=torch.int32), "got torch.int32"),
    ([0.5] * HQ, "got list"),
])
def test_bad_alibi_slopes_are_refused(slopes, match):
    batch = paged_batch([3], [9], hq=HQ, hk=HK, d=D)
    with pytest.raises(ValueError, match=match):
        core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                      AttnParams(softmax_scale=0.2), alibi_slopes=slopes)


def test_alibi_convention_is_fa2s():
    """``-slope * |i + k_len - q_len - j|`` (FlashAttention-2): one query at the end of 3 keys
    with equal scores weighs key j by exp(-slope * (2 - j))."""
    q = torch.zeros(1, 1, 16, device=DEVICE, dtype=DTYPE)
    k = torch.zeros(3, 1, 16, device=DEVICE, dtype=DTYPE)
    v = torch.eye(3, 16, device=DEVICE, dtype=DTYPE)[:, None, :]
    cu_q = torch.tensor([0, 1], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 3], dtype=torch.int32, device=DEVICE)
    out = core.flash_attn_varlen_func(q, k, v, cu_q, cu_k, causal=True,
                                     alibi_slopes=torch.tensor([math.log(2.0)], device=DEVICE))
    torch.testing.assert_close(out[0, 0, :3].float().cpu(), torch.tensor([1.0, 2.0, 4.0]) / 7,
                               atol=TOL, rtol=TOL)
