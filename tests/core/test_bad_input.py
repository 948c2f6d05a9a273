"""Bad input: a ValueError naming the argument, and nothing written to the cache."""
import dataclasses
import math

import pytest
import torch

from anyattn import core
from anyattn.core import build_plan, cu_seqlens
from anyattn.core.providers import TRITON, Call, Workload
from anyattn.core.providers.triton.attention import run_attention
from anyattn.core.semantics.params import AttnParams

from batches import paged_batch
from oracle import reference_path

P = AttnParams(softmax_scale=0.125)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _batch(device="cpu"):
    return paged_batch([2, 1], [9, 20], hq=4, hk=2, d=16, page_size=4, device=device)


def _plan(b, **kw):
    p = b.plan
    args = dict(max_seqlen_q=p.max_seqlen_q, max_seqlen_k=p.max_seqlen_k, page_table=p.page_table,
                page_size=p.page_size, num_kv_heads=2)
    args.update(kw)
    return build_plan(kw.pop("cu_seqlens_q", p.cu_seqlens_q), kw.pop("seqused_k", p.seqused_k),
                      **{k: v for k, v in args.items() if k not in ("cu_seqlens_q", "seqused_k")})


def _expect(match, fn):
    with pytest.raises(ValueError, match=match):
        fn()


def test_q_len_greater_than_k_len():
    b = _batch()
    plan = build_plan(cu_seqlens(torch.tensor([2, 1])), torch.tensor([1, 20], dtype=torch.int32),
                      max_seqlen_q=2, max_seqlen_k=20, page_table=b.plan.page_table,
                      page_size=b.plan.page_size)
    _expect("q_len > k_len", lambda: core.attention(b.q, b.k_cache, b.v_cache, plan, P))


def test_heads_not_a_multiple():
    b = _batch()
    _expect("num_kv_heads", lambda: core.attention(b.q[:, :3], b.k_cache, b.v_cache, b.plan, P))


def test_head_dim_mismatch():
    b = _batch()
    _expect("head_dim", lambda: core.attention(b.q[..., :8], b.k_cache, b.v_cache, b.plan, P))


def test_dtype_mismatch():
    b = _batch()
    _expect("k_cache: expected dtype", lambda: core.attention(b.q.half(), b.k_cache, b.v_cache, b.plan, P))


def test_non_positive_scale():
    b = _batch()
    for scale in (0.0, -0.125):
        _expect("softmax_scale: expected a positive", lambda: core.attention(
            b.q, b.k_cache, b.v_cache, b.plan, AttnParams(softmax_scale=scale)))


def test_wrong_rank():
    b = _batch()
    _expect("q: expected a 3-D", lambda: core.attention(b.q[None], b.k_cache, b.v_cache, b.plan, P))


def test_page_table_out_of_range():
    b = _batch()
    b.plan.page_table[1, 0] = b.k_cache.shape[0]
    _expect("page_table: entries", lambda: core.attention(b.q, b.k_cache, b.v_cache, b.plan, P))


def test_page_table_too_narrow():
    b = _batch()
    plan = _plan(b, page_table=b.plan.page_table[:, :2])
    _expect("page_table: 2 columns", lambda: core.attention(b.q, b.k_cache, b.v_cache, plan, P))


def test_wrong_device():
    b = _batch()
    _expect("sinks: expected a tensor on", lambda: core.attention(
        b.q, b.k_cache, b.v_cache, b.plan, P, sinks=torch.zeros(4, device="meta")))


def test_bad_out_and_sinks_shapes():
    b = _batch()
    _expect("out: expected shape", lambda: core.attention(
        b.q, b.k_cache, b.v_cache, b.plan, P, out=torch.empty(3, 4, 8)))
    _expect("sinks: expected shape", lambda: core.attention(
        b.q, b.k_cache, b.v_cache, b.plan, P, sinks=torch.zeros(3)))


def test_kv_write_errors_leave_cache_untouched():
    b = _batch()
    before = b.k_cache.clone()
    k = torch.randn(3, 2, 16)
    _expect("slot_mapping: entries", lambda: core.write_kv_cache(
        k, k, b.k_cache, b.v_cache, torch.tensor([0, 1, 10_000])))
    _expect("k: expected", lambda: core.write_kv_cache(
        torch.randn(3, 2, 8), k, b.k_cache, b.v_cache, torch.tensor([0, 1, 2])))
    _expect("slot_mapping: expected int32", lambda: core.write_kv_cache(
        k, k, b.k_cache, b.v_cache, torch.tensor([0.0, 1.0, 2.0])))
    assert torch.equal(b.k_cache.nan_to_num(7.0), before.nan_to_num(7.0))


def test_merge_state_shapes():
    o = torch.randn(3, 2, 8)
    _expect("lse_b: expected float32", lambda: core.merge_state(o, torch.zeros(2, 3), o, torch.zeros(3, 2)))


# -- issue #22: every call path, both CPU paths ------------------------------------------------

@pytest.fixture(params=["reference", "triton"])
def impl(request, monkeypatch):
    """The chunked reference, or the Triton kernels (interpreted on the CPU). On CUDA the
    checks that read device values need ANYATTN_DEBUG=1."""
    monkeypatch.setenv("ANYATTN_IMPL", request.param)
    if DEVICE == "cuda":
        monkeypatch.setenv("ANYATTN_DEBUG", "1")
    return request.param


def _call(b, plan=None, params=P, **kw):
    return core.attention(b.q, b.k_cache, b.v_cache, plan or b.plan, params, **kw)


def _unknown_total(plan, **kw):
    """The plan as a caller builds it from device tensors: no host total_q."""
    return dataclasses.replace(plan, total_q=None, **kw)


@pytest.mark.parametrize("rows", [-1, 1])
def test_q_rows_must_match_cu_seqlens_q(impl, rows):
    """Extra rows came back uninitialised; missing rows crashed the kernel (heap corruption)."""
    b = _batch(DEVICE)
    q = torch.randn(b.q.shape[0] + rows, 4, 16, device=DEVICE) if rows > 0 else b.q[:rows]
    for plan in (b.plan, _unknown_total(b.plan)):  # host total, or read from the CPU tensor
        _expect(r"q: expected 3 rows \(cu_seqlens_q\[-1\]\)",
                lambda: core.attention(q, b.k_cache, b.v_cache, plan, P))


def test_cu_seqlens_q_must_start_at_zero(impl):
    b = _batch(DEVICE)
    plan = _unknown_total(b.plan, cu_seqlens_q=b.plan.cu_seqlens_q + 1)  # [1, 3, 4]: 3 rows
    _expect("cu_seqlens_q: expected first entry 0", lambda: core.attention(
        b.q, b.k_cache, b.v_cache, plan, P))


def test_understated_max_seqlen_q(impl):
    """The grid is sized from max_seqlen_q: rows past it were left unwritten."""
    b = _batch(DEVICE)
    _expect("max_seqlen_q: 1 is below the longest query", lambda: _call(
        b, dataclasses.replace(b.plan, max_seqlen_q=1)))


def _contiguous(total_k_rows=29):
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(total_k_rows, 2, 16, generator=gen)
    q = torch.randn(3, 4, 16, generator=gen)
    return q.to(DEVICE), k.to(DEVICE)


def test_contiguous_keys_past_k_rows(impl):
    """cu_seqlens_k[-1] past k's rows: an IndexError (reference), a read past k (Triton)."""
    q, k = _contiguous()
    cu_k = torch.tensor([0, 9, 30], dtype=torch.int32, device=DEVICE)
    cu_q = cu_seqlens(torch.tensor([2, 1], device=DEVICE))
    _expect(r"cu_seqlens_k/seqused_k: keys .* must lie in k's 29 rows", lambda: (
        core.flash_attn_varlen_func(q, k, k, cu_q, cu_k, causal=True)))
    plan = build_plan(cu_q, None, max_seqlen_q=2, max_seqlen_k=21,
                      cu_seqlens_k=cu_k, num_kv_heads=2, total_q=3, total_k=30)
    _expect(r"cu_seqlens_k: last entry 30 runs past k's 29 rows", lambda: core.attention(
        q, k, k, plan, P))


@pytest.mark.parametrize("what", ["sinks", "alibi_slopes"])
def test_strided_per_head_vectors(impl, what):
    """A strided view of sinks / alibi_slopes was read as contiguous by the kernel."""
    b = _batch(DEVICE)
    base = torch.linspace(0.1, 0.8, 8, device=DEVICE)
    strided, dense = base[::2], base[::2].contiguous()
    got = _call(b, **{what: strided})
    want = reference_path(b.q, b.k_cache, b.v_cache, b.plan, P, **{what: dense})
    tol = 1e-4 if DEVICE == "cpu" else 2e-2  # fp32 dots run as tf32 on the GPU
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("fp8", ["float8_e5m2", "float8_e4m3fn"])
def test_fp8_write_saturates(impl, fp8):
    """e5m2 stored values past 57344 x scale (and +-inf) as +-inf; attention then gave NaN."""
    dtype = getattr(torch, fp8)
    top = torch.finfo(dtype).max
    k_cache = torch.zeros(2, 4, 2, 16, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k = torch.randn(3, 2, 16)
    k[0, 0, :4] = torch.tensor([1e6, -1e6, math.inf, -math.inf])
    k = k.to(DEVICE)
    core.write_kv_cache(k, k.clone(), k_cache, v_cache, torch.tensor([0, 1, 2], device=DEVICE),
                       k_scale=0.5, v_scale=0.5)
    stored = k_cache[0, 0, 0, :4].float().cpu()
    assert torch.equal(stored, torch.tensor([top, -top, top, -top]))
    plan = build_plan(cu_seqlens(torch.tensor([1], device=DEVICE)),
                      torch.tensor([3], dtype=torch.int32, device=DEVICE), max_seqlen_q=1,
                      max_seqlen_k=3, page_table=torch.tensor([[0]], device=DEVICE), page_size=4,
                      num_kv_heads=2, total_q=1)
    descale = torch.full((1, 2), 0.5, device=DEVICE)
    out = core.attention(torch.randn(1, 4, 16, device=DEVICE), k_cache, v_cache, plan, P,
                        k_descale=descale, v_descale=descale)
    assert bool(out.isfinite().all())


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_bad_kv_write_scales(impl, scale):
    b = _batch(DEVICE)
    k_cache = torch.zeros(2, 4, 2, 16, dtype=torch.float8_e4m3fn, device=DEVICE)
    before = k_cache.clone()
    k = torch.randn(2, 2, 16, device=DEVICE)
    slots = torch.tensor([0, 1], device=DEVICE)
    for name, kw in (("k_scale", dict(k_scale=scale)),
                     ("v_scale", dict(v_scale=torch.tensor([scale], device=DEVICE)))):
        _expect(f"{name}: expected finite positive", lambda: core.write_kv_cache(
            k, k, k_cache, k_cache.clone(), slots, **kw))
    assert torch.equal(k_cache.view(torch.uint8), before.view(torch.uint8))
    _expect("k_descale: expected finite positive", lambda: _call(
        b, k_descale=torch.full((2, 2), scale, device=DEVICE)))


@pytest.mark.parametrize("field,value,match", [
    ("softmax_scale", math.inf, "softmax_scale: expected a positive finite"),
    ("softmax_scale", math.nan, "softmax_scale: expected a positive finite"),
    ("softcap", -1.0, "softcap: expected a finite float >= 0"),
    ("softcap", math.nan, "softcap: expected a finite float >= 0"),
    ("chunk_size", -4, "chunk_size: expected an int >= 0"),
    ("window_left", -3, "window_left: expected an int >= -1"),
])
def test_bad_params(impl, field, value, match):
    b = _batch(DEVICE)
    _expect(match, lambda: _call(b, params=dataclasses.replace(P, **{field: value})))


def test_strided_plan_tensors():
    b = _batch(DEVICE)
    wide = torch.zeros(b.plan.page_table.shape[0], 2 * b.plan.page_table.shape[1],
                       dtype=torch.int32, device=DEVICE)
    wide[:, ::2] = b.plan.page_table
    _expect("page_table: expected a contiguous last dim", lambda: _call(
        b, dataclasses.replace(b.plan, page_table=wide[:, ::2])))


def _launch(q, k_cache, v_cache, plan, out):
    """The Triton launch itself, past every check: what a bad plan on CUDA reaches."""
    tile = TRITON.tile(Workload.of(q, k_cache, v_cache), plan)
    return run_attention(Call(q, k_cache, v_cache, plan, P, out, want_lse=False), tile, {})[0]


def test_kernel_stays_inside_its_tensors_whatever_the_plan():
    """Each tensor is a view into a larger buffer whose tail is poison: NaN keys past the
    cache, canary rows past out. A plan that points past the views (page ids, a table row
    too short for seqused_k, cu_seqlens_q past q) reads and writes inside them only."""
    b = _batch(DEVICE)
    pages, ps, hk, d = b.k_cache.shape
    store = torch.full((pages + 3, ps, hk, d), math.nan, device=DEVICE)
    store[:pages] = b.k_cache.nan_to_num(0.0)
    k_cache = store[:pages]
    table = torch.full((2, 9), pages + 1, dtype=torch.int32, device=DEVICE)  # 6..: NaN pages
    table[:, :6] = b.plan.page_table.clamp_max(pages - 1)[:, :1]
    table[0, 2] = pages + 2  # a used page id past the cache
    out_store = torch.full((b.q.shape[0] + 4, 4, d), 7.0, device=DEVICE)
    plan = dataclasses.replace(
        b.plan, page_table=table[:, :6],
        seqused_k=torch.tensor([9, 36], dtype=torch.int32, device=DEVICE),
        cu_seqlens_q=torch.tensor([0, 2, 7], dtype=torch.int32, device=DEVICE))
    out = _launch(b.q, k_cache, k_cache, plan, out_store[: b.q.shape[0]])
    assert bool(out.isfinite().all()), "read a key outside k_cache"
    assert bool((out_store[b.q.shape[0]:] == 7.0).all()), "wrote past out"


def test_kernel_contiguous_keys_stay_inside_k():
    q, k = _contiguous()
    store = torch.full((40, 2, 16), math.nan, device=DEVICE)
    store[:29] = k
    ints = dict(dtype=torch.int32, device=DEVICE)
    plan = build_plan(torch.tensor([0, 2, 3], **ints), None, max_seqlen_q=2, max_seqlen_k=30,
                      cu_seqlens_k=torch.tensor([-5, 9, 35], **ints), num_kv_heads=2)
    out = _launch(q, store[:29], store[:29], plan, None)
    assert bool(out.isfinite().all()), "read a key outside k"


def test_graph_plans_take_padding_rows_but_not_fewer_rows(impl):
    """A CUDA-graph plan's q may carry the engine's padding tokens past cu_seqlens_q[-1]."""
    from graph_storage import GraphStorage

    b = _batch(DEVICE)
    bufs = GraphStorage(4, 8, max_seqlen_q=2, page_size=4, num_kv_heads=2, device=DEVICE)
    plan = bufs.update(2, cu_seqlens_q=b.plan.cu_seqlens_q, seqused_k=b.plan.seqused_k,
                       page_table=b.plan.page_table)
    padded = torch.cat([b.q, torch.zeros_like(b.q)])
    got = core.attention(padded, b.k_cache, b.v_cache, plan, P)[:3]
    torch.testing.assert_close(got, reference_path(b.q, b.k_cache, b.v_cache, b.plan, P),
                               atol=2e-2 if DEVICE == "cuda" else 1e-4, rtol=1e-2)
    _expect(r"q: expected 3 rows \(cu_seqlens_q\[-1\]\) or more \(padding rows\), got 2",
            lambda: core.attention(b.q[:2], b.k_cache, b.v_cache, plan, P))
