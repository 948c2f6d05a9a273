"""Bidirectional spans and ALiBi on the device in bf16: anyattn's Triton kernel against vLLM's
own Triton kernel (TRITON_ATTN's ``unified_attention``, compiled) and the reference, on the
same paged tensors. The CPU counterpart is tests/vllm/test_vllm_kernels.py (interpreter,
fp32/fp16).

Needs vLLM's kernel source (on the lent H200, the carried vLLM 0.26 site on PYTHONPATH);
without it the module is skipped with that reason (``pytest -rs`` shows it).
"""
import dataclasses

import pytest
import torch

from anyattn import core
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.spans import span_table

from batches import paged_batch
from oracle import reference_path

try:
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention
except Exception as e:  # no vLLM on this machine
    pytest.skip(f"vLLM's unified_attention: {type(e).__name__}: {e}", allow_module_level=True)

HQ, HK, D = 32, 8, 128
TOL = 3e-2


def vllm_call(batch, out, *, spans=None, slopes=None, window=None):
    """vLLM's kernel as TRITON_ATTN calls it; ``spans`` half-open, passed end-inclusive."""
    plan = batch.plan
    ranges = None
    if spans is not None:
        ranges = torch.tensor([[(s, e - 1) for s, e in seq] for seq in spans], dtype=torch.int32,
                              device="cuda")
    unified_attention(q=batch.q, k=batch.k_cache, v=batch.v_cache, out=out,
                      cu_seqlens_q=plan.cu_seqlens_q, max_seqlen_q=plan.max_seqlen_q,
                      seqused_k=plan.seqused_k, max_seqlen_k=plan.max_seqlen_k,
                      softmax_scale=D ** -0.5, causal=True,
                      window_size=(-1, -1) if window is None else (window - 1, 0),
                      block_table=plan.page_table, softcap=0, q_descale=None,
                      k_descale=torch.ones(plan.batch_size, HK, device="cuda"),
                      v_descale=torch.ones(plan.batch_size, HK, device="cuda"),
                      alibi_slopes=slopes, mm_prefix_range=ranges,
                      mm_prefix_clamp_sliding_window=window is not None)
    return out


@pytest.mark.parametrize("window", [None, 256])
def test_spans_match_vllm_triton(window):
    """Two 1,500-token prompts, an image of 300 tokens in the middle of each (the second one
    cut by a prefill chunk: 500 of its keys were cached)."""
    q_lens, k_lens = [1500, 1000], [1500, 1500]
    spans = [[(600, 900)], [(400, 700)]]
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, dtype=torch.bfloat16, device="cuda",
                        seed=1, poison=0.0)
    table, counts = span_table(spans, "cuda", k_lens=k_lens)
    plan = dataclasses.replace(batch.plan, spans=table, span_counts=counts)
    params = AttnParams(softmax_scale=D ** -0.5, window_left=-1 if window is None else window - 1,
                        spans_in_window=window is not None)
    got = core.attention(batch.q, batch.k_cache, batch.v_cache, plan, params)
    want = vllm_call(batch, torch.empty_like(batch.q), spans=spans, window=window)
    torch.testing.assert_close(got.float(), want.float(), atol=TOL, rtol=TOL)
    ref = reference_path(batch.q, batch.k_cache, batch.v_cache, plan, params)
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("q_lens,k_lens", [([2048], [2048]), ([1] * 8, [4096] * 8),
                                           ([300, 1], [1200, 5000])])
def test_alibi_matches_vllm_triton(q_lens, k_lens):
    batch = paged_batch(q_lens, k_lens, hq=HQ, hk=HK, d=D, dtype=torch.bfloat16, device="cuda",
                        seed=2, poison=0.0)
    slopes = 2.0 ** (-8.0 * torch.arange(1, HQ + 1, device="cuda") / HQ)
    params = AttnParams(softmax_scale=D ** -0.5)
    got = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan, params,
                        alibi_slopes=slopes)
    want = vllm_call(batch, torch.empty_like(batch.q), slopes=slopes)
    torch.testing.assert_close(got.float(), want.float(), atol=TOL, rtol=TOL)
    ref = reference_path(batch.q, batch.k_cache, batch.v_cache, batch.plan, params,
                         alibi_slopes=slopes)
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL, rtol=TOL)
