"""Bad input: a ValueError naming the argument, and nothing written to the cache."""
import pytest
import torch

from anyattn.core import ops
from anyattn.core.builders import build_plan, cu_seqlens
from anyattn.core.params import AttnParams

from batches import paged_batch

P = AttnParams(softmax_scale=0.125)


def _batch():
    return paged_batch([2, 1], [9, 20], hq=4, hk=2, d=16, page_size=4)


def _plan(b, **kw):
    p = b.plan
    args = dict(max_seqlen_q=p.max_seqlen_q, max_seqlen_k=p.max_seqlen_k, page_table=p.page_table,
                num_kv_heads=2)
    args.update(kw)
    return build_plan(kw.pop("cu_seqlens_q", p.cu_seqlens_q), kw.pop("seqused_k", p.seqused_k),
                      **{k: v for k, v in args.items() if k not in ("cu_seqlens_q", "seqused_k")})


def _expect(match, fn):
    with pytest.raises(ValueError, match=match):
        fn()


def test_q_len_greater_than_k_len():
    b = _batch()
    plan = build_plan(cu_seqlens(torch.tensor([2, 1])), torch.tensor([1, 20], dtype=torch.int32),
                      max_seqlen_q=2, max_seqlen_k=20, page_table=b.plan.page_table)
    _expect("q_len > k_len", lambda: ops.attention(b.q, b.k_cache, b.v_cache, plan, P))


def test_heads_not_a_multiple():
    b = _batch()
    _expect("num_kv_heads", lambda: ops.attention(b.q[:, :3], b.k_cache, b.v_cache, b.plan, P))


def test_head_dim_mismatch():
    b = _batch()
    _expect("head_dim", lambda: ops.attention(b.q[..., :8], b.k_cache, b.v_cache, b.plan, P))


def test_dtype_mismatch():
    b = _batch()
    _expect("k_cache: expected dtype", lambda: ops.attention(b.q.half(), b.k_cache, b.v_cache, b.plan, P))


def test_non_positive_scale():
    b = _batch()
    for scale in (0.0, -0.125):
        _expect("softmax_scale: expected a positive", lambda: ops.attention(
            b.q, b.k_cache, b.v_cache, b.plan, AttnParams(softmax_scale=scale)))


def test_wrong_rank():
    b = _batch()
    _expect("q: expected a 3-D", lambda: ops.attention(b.q[None], b.k_cache, b.v_cache, b.plan, P))


def test_page_table_out_of_range():
    b = _batch()
    b.plan.page_table[1, 0] = b.k_cache.shape[0]
    _expect("page_table: entries", lambda: ops.attention(b.q, b.k_cache, b.v_cache, b.plan, P))


def test_page_table_too_narrow():
    b = _batch()
    plan = _plan(b, page_table=b.plan.page_table[:, :2])
    _expect("page_table: 2 columns", lambda: ops.attention(b.q, b.k_cache, b.v_cache, plan, P))


def test_wrong_device():
    b = _batch()
    _expect("sinks: expected a tensor on", lambda: ops.attention(
        b.q, b.k_cache, b.v_cache, b.plan, P, sinks=torch.zeros(4, device="meta")))


def test_bad_out_and_sinks_shapes():
    b = _batch()
    _expect("out: expected shape", lambda: ops.attention(
        b.q, b.k_cache, b.v_cache, b.plan, P, out=torch.empty(3, 4, 8)))
    _expect("sinks: expected shape", lambda: ops.attention(
        b.q, b.k_cache, b.v_cache, b.plan, P, sinks=torch.zeros(3)))


def test_kv_write_errors_leave_cache_untouched():
    b = _batch()
    before = b.k_cache.clone()
    k = torch.randn(3, 2, 16)
    _expect("slot_mapping: entries", lambda: ops.write_kv_cache(
        k, k, b.k_cache, b.v_cache, torch.tensor([0, 1, 10_000])))
    _expect("k: expected", lambda: ops.write_kv_cache(
        torch.randn(3, 2, 8), k, b.k_cache, b.v_cache, torch.tensor([0, 1, 2])))
    _expect("slot_mapping: expected int32", lambda: ops.write_kv_cache(
        k, k, b.k_cache, b.v_cache, torch.tensor([0.0, 1.0, 2.0])))
    assert torch.equal(b.k_cache.nan_to_num(7.0), before.nan_to_num(7.0))


def test_merge_state_shapes():
    o = torch.randn(3, 2, 8)
    _expect("lse_b: expected float32", lambda: ops.merge_state(o, torch.zeros(2, 3), o, torch.zeros(3, 2)))
