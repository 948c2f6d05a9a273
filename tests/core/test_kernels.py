"""Triton kernels (interpreter on CPU, compiled on CUDA) against the chunked reference."""
import dataclasses
import math
import random

import pytest
import torch

from anyattn import core
from anyattn.core import build_plan
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention

from batches import paged_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes bf16 wrongly: bf16 is checked on the device only.
DTYPES = [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def random_case(seed: int) -> dict:
    rng = random.Random(seed)
    batch = rng.randint(1, 4)
    k_lens, q_lens = [], []
    for _ in range(batch):
        k = rng.choice([0, 1, rng.randint(2, 64), rng.randint(65, 300), rng.randint(300, 1200)])
        q = rng.choice([0, 1, 1, rng.randint(0, k), k]) if k else 0
        k_lens.append(k)
        q_lens.append(min(q, k))
    hk = rng.choice([1, 2])
    d = rng.choice([64, 80, 96, 128, 256])
    window = rng.choice([(-1, -1)] * 3 + [(rng.randint(0, 40), -1), (rng.randint(0, 40), rng.randint(0, 9))])
    causal = rng.random() < 0.8
    return dict(
        q_lens=q_lens, k_lens=k_lens, hk=hk, hq=hk * rng.choice([1, 4, 8]), d=d,
        dv=rng.choice([d, d, 64]), page_size=rng.choice([1, 16, 32, 64, 128]),
        num_splits=rng.choice([None, 1, 3]), cache_layout=rng.choice(["nhd", "vllm"]),
        params=AttnParams(softmax_scale=d ** -0.5, causal=causal, window_left=window[0],
                          window_right=window[1] if not causal else rng.choice([-1, 0]),
                          chunk_size=rng.choice([0, 0, 0, 32, 128]),
                          softcap=rng.choice([0.0, 0.0, 0.0, 20.0])),
        sinks=rng.random() < 0.25,
    )


def run_both(case: dict, dtype: torch.dtype, seed: int):
    b = paged_batch(case["q_lens"], case["k_lens"], hq=case["hq"], hk=case["hk"], d=case["d"],
                    dv=case["dv"], page_size=case["page_size"], dtype=dtype, device=DEVICE,
                    seed=seed, num_splits=case["num_splits"], cache_layout=case["cache_layout"])
    sinks = torch.randn(case["hq"], device=DEVICE) if case["sinks"] else None
    out = torch.full((b.q.shape[0], case["hq"], case["dv"]), math.nan, dtype=dtype, device=DEVICE)
    got, got_lse = core.attention(b.q, b.k_cache, b.v_cache, b.plan, case["params"], sinks=sinks,
                                 out=out, return_lse=True)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, case["params"], sinks=sinks)
    return got, got_lse, ref, ref_lse


def assert_matches(got, got_lse, ref, ref_lse, dtype):
    assert not got.isnan().any(), "output has NaN (unwritten or 0/0)"
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    assert torch.equal(torch.isneginf(got_lse), torch.isneginf(ref_lse))
    finite = ~torch.isneginf(ref_lse)
    torch.testing.assert_close(got_lse[finite], ref_lse[finite], atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(14))
def test_random_sweep(seed, dtype):
    case = random_case(seed)
    assert_matches(*run_both(case, dtype, seed), dtype)


def _case(**kw):
    base = dict(q_lens=[1], k_lens=[1], hk=2, hq=8, d=64, dv=64, page_size=16, num_splits=None,
                cache_layout="nhd", params=AttnParams(softmax_scale=0.125), sinks=False)
    base.update(kw)
    return base


NAMED = {
    "decode_long_split": _case(q_lens=[1, 1], k_lens=[1500, 37], num_splits=4),
    "decode_mqa": _case(q_lens=[1, 1, 1], k_lens=[300, 1, 90], hk=1, hq=8, page_size=1),
    "extend_with_prefix_gqa8": _case(q_lens=[70, 5], k_lens=[200, 5], hk=1, hq=8, page_size=32),
    "prefill_d128_p128": _case(q_lens=[150], k_lens=[150], d=128, dv=128, page_size=128),
    "dv_ne_d": _case(q_lens=[9, 3], k_lens=[40, 3], d=128, dv=64, page_size=64),
    "sliding_window_split": _case(q_lens=[1, 40], k_lens=[900, 600], num_splits=3,
                                  params=AttnParams(softmax_scale=0.125, window_left=100)),
    # Windows several key tiles wide: whole tiles between a program's window edge and its
    # diagonal run unmasked, the edges masked (causal; non-causal with a right window).
    "sliding_window_prefill": _case(q_lens=[300, 130], k_lens=[300, 210],
                                    params=AttnParams(softmax_scale=0.125, window_left=75)),
    "sliding_window_prefill_split": _case(q_lens=[200], k_lens=[330], num_splits=2,
                                          params=AttnParams(softmax_scale=0.125, window_left=90)),
    "non_causal_wide_window": _case(q_lens=[180], k_lens=[180], params=AttnParams(
        softmax_scale=0.125, causal=False, window_left=70, window_right=45)),
    "chunked_local": _case(q_lens=[100], k_lens=[260],
                           params=AttnParams(softmax_scale=0.125, chunk_size=64)),
    "softcap_sinks_split": _case(q_lens=[3], k_lens=[700], num_splits=3, sinks=True,
                                 params=AttnParams(softmax_scale=0.125, softcap=10.0)),
    "non_causal_empty_prefix": _case(q_lens=[4, 2], k_lens=[0, 30], sinks=False,
                                     params=AttnParams(softmax_scale=0.125, causal=False)),
    "strided_vllm_cache": _case(q_lens=[5, 1], k_lens=[60, 33], cache_layout="vllm"),
    # A non-causal window is defined for q_len > k_len (the cascade's prefix pass): queries
    # at negative positions see the keys their window reaches.
    "non_causal_window_more_queries_than_keys": _case(
        q_lens=[9, 3], k_lens=[6, 30], params=AttnParams(softmax_scale=0.125, causal=False,
                                                         window_left=2)),
}


@pytest.mark.parametrize("name", NAMED)
def test_named_case(name):
    dtype = DTYPES[-1]
    assert_matches(*run_both(NAMED[name], dtype, 0), dtype)


def test_empty_rows_give_zero_and_neg_inf_lse():
    got, lse, _, _ = run_both(NAMED["non_causal_empty_prefix"], DTYPES[0], 1)
    assert torch.equal(got[:4], torch.zeros_like(got[:4]))
    assert bool(torch.isneginf(lse[:, :4]).all())


def test_split_merge_equals_unsplit():
    case = _case(q_lens=[2, 1], k_lens=[1100, 700], params=AttnParams(softmax_scale=0.125))
    dtype = torch.float32 if DEVICE == "cpu" else torch.float16
    one = run_both(dict(case, num_splits=1), dtype, 3)
    many = run_both(dict(case, num_splits=5), dtype, 3)
    torch.testing.assert_close(many[0].float(), one[0].float(), atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(many[1], one[1], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("for_graphs", [False, True], ids=["fused", "second_kernel"])
@pytest.mark.parametrize("splits", [3, 9], ids=["by_split", "by_row"])
def test_split_merge_rearms_between_calls(splits, for_graphs):
    """Eager plans merge their splits in the forward kernel (the last split of a tile, split
    by split or row by row when a tile has fewer rows than splits) and re-arm its counter;
    graph plans merge in a second kernel. Either way, calls of one split plan, with and
    without an LSE, in any order, give the same bits and the reference."""
    dtype = DTYPES[-1]
    params = AttnParams(softmax_scale=0.125)
    b = paged_batch([1, 2, 0, 1], [900, 40, 0, 333], hq=8, hk=2, d=64, dtype=dtype,
                    device=DEVICE, seed=9, num_splits=splits)
    plan = dataclasses.replace(b.plan, for_graphs=for_graphs)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, plan, params)
    first, first_lse = core.attention(b.q, b.k_cache, b.v_cache, plan, params, return_lse=True)
    plain = core.attention(b.q, b.k_cache, b.v_cache, plan, params)
    again, again_lse = core.attention(b.q, b.k_cache, b.v_cache, plan, params, return_lse=True)
    assert_matches(first, first_lse, ref, ref_lse, dtype)
    assert torch.equal(plain, first) and torch.equal(again, first)
    assert torch.equal(again_lse, first_lse)


@pytest.mark.parametrize("splits", [1, 3])
def test_calls_of_one_signature_read_their_own_tensors(splits):
    """A plan prepares each call signature's launch once (shapes, strides, dtypes, params);
    every later call with that signature must still read and write its own tensors: fresh
    queries, caches and outputs per call (as an engine's layers pass them), an output view
    with other strides (a new signature), and no ``out`` (allocated per call)."""
    dtype = DTYPES[-1]
    params = AttnParams(softmax_scale=0.125)
    q_lens, k_lens = [1, 3, 2], [70, 19, 300]
    b = paged_batch(q_lens, k_lens, hq=4, hk=2, d=64, dtype=dtype, device=DEVICE, seed=4,
                    num_splits=splits)
    plan = b.plan
    wide = torch.full((sum(q_lens), 4, 2 * 64), math.nan, dtype=dtype, device=DEVICE)
    outs = [torch.full_like(b.q, math.nan) for _ in range(3)] + [wide[..., 64:], None]
    gen = torch.Generator().manual_seed(5)
    for out in outs:  # fresh tensors of one layout per call (the caches' empty slots stay NaN)
        q, k_cache, v_cache = (t + torch.randn(t.shape, generator=gen).to(t)
                               for t in (b.q, b.k_cache, b.v_cache))
        got, got_lse = core.attention(q, k_cache, v_cache, plan, params, out=out,
                                      return_lse=True)
        ref, ref_lse = reference_attention(q, k_cache, v_cache, plan, params)
        assert_matches(got, got_lse, ref, ref_lse, dtype)
        if out is not None:
            assert got.data_ptr() == out.data_ptr()
    assert wide[..., :64].isnan().all()  # the strided view's neighbours are untouched


def test_deterministic_output_independent_of_batch():
    """A sequence's rows are bitwise identical whatever else is in the batch."""
    dtype = DTYPES[-1]
    params = AttnParams(softmax_scale=0.125)
    crowd = paged_batch([3, 64, 1], [500, 64, 2000], hq=8, hk=2, d=64, dtype=dtype,
                        device=DEVICE, seed=5, deterministic=True)
    p = crowd.plan
    alone = build_plan(p.cu_seqlens_q[:2], p.seqused_k[:1], max_seqlen_q=3, max_seqlen_k=500,
                       page_table=p.page_table[:1], page_size=p.page_size, num_kv_heads=2,
                       deterministic=True)
    out_crowd = core.attention(crowd.q, crowd.k_cache, crowd.v_cache, p, params)
    out_alone = core.attention(crowd.q[:3], crowd.k_cache, crowd.v_cache, alone, params)
    assert torch.equal(out_crowd[:3], out_alone)
    ref, _ = reference_attention(crowd.q[:3], crowd.k_cache, crowd.v_cache, alone, params)
    torch.testing.assert_close(out_alone.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_merge_state_kernel_matches_reference():
    gen = torch.Generator().manual_seed(0)
    t, h, d = 7, 4, 96
    o_a, o_b = (torch.randn(t, h, d, generator=gen).to(DEVICE) for _ in range(2))
    lse_a, lse_b = (torch.randn(h, t, generator=gen).to(DEVICE) for _ in range(2))
    lse_a[0, 0] = -math.inf
    lse_a[1, 1] = lse_b[1, 1] = -math.inf
    o, lse = core.merge_state(o_a, lse_a, o_b, lse_b)
    from anyattn.core.semantics.reference import merge_state_reference
    ref_o, ref_lse = merge_state_reference(o_a, lse_a, o_b, lse_b)
    torch.testing.assert_close(o, ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    assert torch.equal(o[1, 1], torch.zeros(d, device=DEVICE))
