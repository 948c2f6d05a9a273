"""FlashAttention-compatible entry points against the reference, and graph plan buffers."""
import dataclasses

import torch

from anyattn import core
from anyattn.core import build_plan, cu_seqlens
from graph_storage import GraphStorage
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention

from batches import paged_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16


def test_with_kvcache_varlen_matches_reference():
    b = paged_batch([3, 1], [40, 70], hq=8, hk=2, d=64, page_size=16, dtype=DTYPE, device=DEVICE)
    out, lse = core.flash_attn_with_kvcache(
        b.q, b.k_cache, b.v_cache, cache_seqlens=b.plan.seqused_k, page_table=b.plan.page_table,
        cu_seqlens_q=b.plan.cu_seqlens_q, max_seqlen_q=3, causal=True, window_size=(16, 0),
        softcap=30.0, return_softmax_lse=True)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, AttnParams(
        softmax_scale=64 ** -0.5, window_left=16, window_right=0, softcap=30.0))
    torch.testing.assert_close(out.float(), ref.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, ref_lse, atol=1e-2, rtol=1e-2)


def test_with_kvcache_batched_q_and_dense_cache():
    """q [B, Sq, H, D] against a per-batch cache [B, S, Hk, D] (no page table)."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 4, 32, generator=gen).to(DEVICE, DTYPE)
    k = torch.randn(2, 50, 2, 32, generator=gen).to(DEVICE, DTYPE)
    v = torch.randn(2, 50, 2, 32, generator=gen).to(DEVICE, DTYPE)
    lens = torch.tensor([50, 9], dtype=torch.int32, device=DEVICE)
    out, lse = core.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, causal=True,
                                           return_softmax_lse=True)
    plan = build_plan(torch.tensor([0, 4, 8], dtype=torch.int32, device=DEVICE), lens,
                      max_seqlen_q=4, max_seqlen_k=50, page_table=torch.tensor(
                          [[0], [1]], dtype=torch.int32, device=DEVICE), page_size=k.shape[1])
    ref, ref_lse = reference_attention(q.flatten(0, 1), k, v, plan, AttnParams(softmax_scale=32 ** -0.5))
    assert out.shape == (2, 4, 4, 32) and lse.shape == (2, 4, 4)
    torch.testing.assert_close(out.flatten(0, 1).float(), ref.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, ref_lse.view(4, 2, 4).permute(1, 0, 2), atol=1e-2, rtol=1e-2)


def test_varlen_func_contiguous_keys():
    gen = torch.Generator().manual_seed(2)
    q_lens, k_lens = torch.tensor([5, 0, 17]), torch.tensor([9, 4, 17])
    q = torch.randn(int(q_lens.sum()), 8, 64, generator=gen).to(DEVICE, DTYPE)
    k = torch.randn(int(k_lens.sum()), 1, 64, generator=gen).to(DEVICE, DTYPE)
    v = torch.randn(int(k_lens.sum()), 1, 64, generator=gen).to(DEVICE, DTYPE)
    cu_q, cu_k = cu_seqlens(q_lens).to(DEVICE), cu_seqlens(k_lens).to(DEVICE)
    sinks = torch.randn(8, device=DEVICE)
    out = core.flash_attn_varlen_func(q, k, v, cu_q, cu_k, causal=True, sinks=sinks)
    for b in range(3):
        qs, ks = int(cu_q[b]), int(cu_k[b])
        plan = build_plan(cu_seqlens(q_lens[b:b + 1]).to(DEVICE), k_lens[b:b + 1].to(DEVICE, torch.int32),
                          max_seqlen_q=int(q_lens[b]), max_seqlen_k=int(k_lens[b]),
                          cu_seqlens_k=torch.tensor([0, int(k_lens[b])], device=DEVICE))
        kk, vv = k[ks:ks + int(k_lens[b])], v[ks:ks + int(k_lens[b])]
        ref, _ = reference_attention(q[qs:qs + int(q_lens[b])], kk, vv, plan,
                                     AttnParams(softmax_scale=0.125), sinks=sinks)
        torch.testing.assert_close(out[qs:qs + int(q_lens[b])].float(), ref.float(), atol=1e-2, rtol=1e-2)


def test_graph_buffers_update_matches_fresh_plan():
    """A plan captured at the largest batch, updated for a smaller one, computes the same."""
    b = paged_batch([1, 1, 1], [30, 200, 7], hq=8, hk=2, d=64, page_size=16, dtype=DTYPE, device=DEVICE)
    bufs = GraphStorage(4, 16, max_seqlen_q=1, page_size=16, num_kv_heads=2, device=DEVICE)
    captured = bufs.plan(4)
    q = torch.zeros(4, 8, 64, dtype=DTYPE, device=DEVICE)
    q[:3] = b.q
    params = AttnParams(softmax_scale=0.125)
    updated = bufs.update(4, cu_seqlens_q=b.plan.cu_seqlens_q, seqused_k=b.plan.seqused_k,
                          page_table=b.plan.page_table)
    assert updated.page_table.data_ptr() == captured.page_table.data_ptr()
    assert updated.num_splits == captured.num_splits
    out = core.attention(q, b.k_cache, b.v_cache, updated, params)
    # The graph plan keeps the split count of its static bounds; the fresh plan uses it too.
    fresh = core.attention(b.q, b.k_cache, b.v_cache,
                          dataclasses.replace(b.plan, num_splits=captured.num_splits), params)
    assert torch.equal(out[:3], fresh)
    # The padding sequence owns no query rows and no keys.
    assert updated.cu_seqlens_q.tolist() == [0, 1, 2, 3, 3] and int(updated.seqused_k[3]) == 0
    smaller = bufs.update(4, cu_seqlens_q=b.plan.cu_seqlens_q[:2], seqused_k=b.plan.seqused_k[:1] - 5,
                          page_table=b.plan.page_table[:1])
    out2 = core.attention(q, b.k_cache, b.v_cache, smaller, params)
    plan1 = build_plan(b.plan.cu_seqlens_q[:2], b.plan.seqused_k[:1] - 5, max_seqlen_q=1,
                       max_seqlen_k=256, page_table=b.plan.page_table[:1], page_size=16,
                       num_kv_heads=2)
    expected = core.attention(q[:1], b.k_cache, b.v_cache, plan1, params)
    assert not expected.isnan().any() and torch.equal(out2[:1], expected)
