"""FP8 KV cache with per-tensor scales, chunked-local (iRoPE) attention and ALiBi slopes,
through real SGLang pools and RadixAttention.

Expected outputs come from SGLang's Triton backend (interpreter) where it supports the
feature, and from the float64 dense oracle over each request's K/V rebuilt independently of
the backend under test: prefix tokens from the scenario's cache snapshot, new tokens from
its k/v (quantized exactly as the pool's write does for fp8).
"""
from __future__ import annotations

import pytest
import torch

from harness import HEAD_DIM, Scenario, Spec, count_kernel_launches, fp8_round_trip
from oracle import dense_attention
from sglang.srt.model_executor.forward_batch_info import ForwardMode

FP8 = torch.float8_e4m3fn
IMPLS = ["reference", "triton"]


def expected(s: Scenario, *, chunk: int = 0, abs_v: bool = False,
             alibi: torch.Tensor | None = None) -> torch.Tensor:
    """Dense float64 causal attention per request (keys start at position 0), ``[T, Hq*D]``.

    ``abs_v`` attends over ``|V|`` instead: per element, sum_j P_j |v_j|.
    """
    outs = []
    for b, n in enumerate(s.new_lens):
        lo = sum(s.new_lens[:b])
        q = s.q[lo:lo + n].float().view(n, s.num_heads, HEAD_DIM)
        k, v = s.request_kv(b)
        out, _ = dense_attention(q, k, v.abs() if abs_v else v, scale=s.layer.scaling,
                                 chunk=chunk, alibi=alibi)
        outs.append(out.reshape(n, -1))
    return torch.cat(outs).float()


def fp8_pv_bound(s: Scenario) -> torch.Tensor:
    """Per-element bound on how far SGLang's Triton fp8 path may be from exact attention
    over the same (on-grid) q/K/V: it casts the softmax weights to e4m3 for the P.V dot.

    With P_j in (0, 1] relative to a running max M <= the final max, e4m3 rounds each to
    within max(2**-4 P_j, 2**-10) (3 mantissa bits; subnormal spacing 2**-9) while the
    denominator L >= 1 stays fp32, so |delta o| <= 2**-4 sum_j P_j |v_j| + 2**-10 sum_j |v_j|.
    The second sum is bounded by keys x max |v| of the request; 1e-4 covers fp32 noise.
    """
    floor = []
    for b, n in enumerate(s.new_lens):
        _, v = s.request_kv(b)
        floor.append(torch.full((n, 1), 2 ** -10 * v.shape[0] * float(v.abs().max())))
    return 2 ** -4 * expected(s, abs_v=True) + torch.cat(floor) + 1e-4


FP8_CASES = {
    "extend": dict(mode=ForwardMode.EXTEND, prefix_lens=(3, 17, 0), new_lens=(4, 2, 6)),
    "decode": dict(mode=ForwardMode.DECODE, prefix_lens=(6, 15, 30), new_lens=(1, 1, 1)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(FP8_CASES))
def test_fp8_kv_cache_with_scales(scenario_factory, monkeypatch, name, impl):
    """fp8 (e4m3) pool, k_scale 0.5 / v_scale 0.25: against the dequantized dense oracle
    (fp32 tolerance) and SGLang's Triton backend on the same pool and scales.

    q and the new k/v are first put on the (scaled) fp8 grid, so that what SGLang's Triton
    path quantizes besides the cache (q cast to e4m3 for the Q.K dot; the new tokens, which
    its extend attends from the unquantized tensors) is exact. What remains between it and
    anyattn is its e4m3 softmax weights, bounded by :func:`fp8_pv_bound`. A dropped or
    misapplied scale, on the write or the read, is off by a factor of 2 or more.
    """
    monkeypatch.setenv("ANYATTN_IMPL", impl)
    calls = count_kernel_launches(monkeypatch)
    s = scenario_factory(page_size=16, kv_dtype=FP8, **FP8_CASES[name])
    assert s.runner.token_to_kv_pool.get_kv_buffer(0)[0].dtype == FP8
    s.q = s.q.to(FP8).float()
    s.k = fp8_round_trip(s.k, s.layer.k_scale)
    s.v = fp8_round_trip(s.v, s.layer.v_scale)
    tol = 2e-5 if impl == "reference" else 1e-4
    ours = s.run(s.backend("anyattn"))
    torch.testing.assert_close(ours, expected(s), atol=tol, rtol=tol)
    gap = (ours - s.run(s.backend("triton"))).abs() - fp8_pv_bound(s)
    assert gap.max() <= 0, f"off SGLang's Triton backend by {gap.max():.3g} beyond the bound"
    assert bool(calls) == (impl == "triton")


CHUNK = 8
# Page size 16: chunk boundaries fall inside pages. Extend: prefixes longer than a chunk and
# queries straddling a boundary (13..19 over 16, 3..12 over 8, 20..24 over 24). Decode: the
# first (8) and last (15) position of a chunk, and one deep in a later chunk (30).
CHUNK_CASES = {
    "extend": dict(mode=ForwardMode.EXTEND, prefix_lens=(13, 3, 20), new_lens=(7, 10, 5)),
    "decode": dict(mode=ForwardMode.DECODE, prefix_lens=(8, 15, 30), new_lens=(1, 1, 1)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(CHUNK_CASES))
def test_chunked_local_attention(scenario_factory, monkeypatch, name, impl):
    """``attention_chunk_size`` on a ``use_irope`` layer: key k is visible to query position
    p only when k // C == p // C (and k <= p); a layer without iRoPE stays fully causal.

    No SGLang backend that runs on the CPU implements chunked-local attention (only
    FlashAttention and the XPU backend do), so the dense oracle is the only reference.
    """
    monkeypatch.setenv("ANYATTN_IMPL", impl)
    calls = count_kernel_launches(monkeypatch)
    s = scenario_factory(page_size=16, attention_chunk=CHUNK, **CHUNK_CASES[name])
    tol = 2e-5 if impl == "reference" else 1e-4
    chunked, full = expected(s, chunk=CHUNK), expected(s)
    assert (chunked - full).abs().max() > 1e-2, "the case does not exercise the chunk mask"
    backend = s.backend("anyattn")
    torch.testing.assert_close(s.run(backend), chunked, atol=tol, rtol=tol)
    s.layer.use_irope = False
    torch.testing.assert_close(s.run(backend), full, atol=tol, rtol=tol)
    assert bool(calls) == (impl == "triton")


SLOPES = torch.tensor([0.5, 0.25, 0.125, 0.0625])
# Extend with and without prefixes, decode, and a chain target verify (a single pass whose
# draft tokens sit at the last positions); page size 16, GQA 4/2.
ALIBI_CASES = {
    "extend": dict(mode=ForwardMode.EXTEND, prefix_lens=(0, 17, 40), new_lens=(9, 5, 12)),
    "decode": dict(mode=ForwardMode.DECODE, prefix_lens=(6, 15, 60), new_lens=(1, 1, 1)),
    "verify-chain": dict(mode=ForwardMode.TARGET_VERIFY, prefix_lens=(5, 30), new_lens=(3, 3),
                         spec=Spec(topk=1, num_draft_tokens=3, num_steps=2)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(ALIBI_CASES))
def test_alibi_slopes(scenario_factory, monkeypatch, name, impl):
    """ALiBi slopes as RadixAttention's ``slopes`` keyword, the way SGLang's Baichuan passes
    them (on NPU builds; no SGLang backend that runs on a CPU applies ALiBi, so the dense
    oracle, ``-slope * |query position - key position|``, is the only reference)."""
    monkeypatch.setenv("ANYATTN_IMPL", impl)
    calls = count_kernel_launches(monkeypatch)
    s = scenario_factory(page_size=16, **ALIBI_CASES[name])
    tol = 2e-5 if impl == "reference" else 1e-4
    got = s.run(s.backend("anyattn"), slopes=SLOPES)
    torch.testing.assert_close(got, expected(s, alibi=SLOPES), atol=tol, rtol=tol)
    assert (got - expected(s)).abs().max() > 1e-2
    assert bool(calls) == (impl == "triton")


def test_unusable_slopes_are_refused_before_any_write(scenario_factory):
    """A slope count that is not the layer's head count, slopes on another device than q, and
    ALiBi in a tree verify (the cascade places draft tokens at other positions than SGLang's):
    errors before the KV write."""
    extend = scenario_factory(page_size=16, **ALIBI_CASES["extend"])
    tree = scenario_factory(mode=ForwardMode.TARGET_VERIFY, prefix_lens=(5, 30), new_lens=(4, 4),
                            page_size=16, tree_parents=[-1, 0, 0, 1], batch_topk=2,
                            spec=Spec(topk=2, num_draft_tokens=4, num_steps=3))
    for s, slopes, error, match in (
            (extend, SLOPES[:3], ValueError, r"alibi_slopes: expected .* \(4,\) \[num_heads\]"),
            (extend, SLOPES.to("meta"), ValueError, "alibi_slopes: expected a tensor on cpu"),
            (tree, SLOPES, NotImplementedError, "ALiBi in a speculative tree cascade")):
        before = [t.clone() for t in s.runner.token_to_kv_pool.get_kv_buffer(0)]
        with pytest.raises(error, match=match):
            s.run(s.backend("anyattn"), slopes=slopes)
        assert all(torch.equal(a, b)
                   for a, b in zip(before, s.runner.token_to_kv_pool.get_kv_buffer(0)))
