"""Masks and bias in every layout x head broadcast, and O(N) memory."""
import math
import os
import random
import subprocess
import sys
import zlib

import pytest
import torch

from anyattn import core
from anyattn.core.semantics import masks
from anyattn.core.semantics.params import AttnParams

from batches import dense_attention, paged_batch, sequence_kv
from oracle import reference_path

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = 3e-2 if DEVICE == "cuda" else 1e-4


def _layout_tensor(layout, heads, q_lens, k_lens, gen, kind):
    """A random mask (bool) or bias (float) of the given layout."""
    total_q, total_k, max_k = sum(q_lens), sum(k_lens), max(k_lens)
    shape = (total_k, heads) if layout == "key" else (total_q, heads, max_k)
    if kind == "mask":
        return torch.rand(shape, generator=gen) < 0.7
    return torch.randn(shape, generator=gen)


def _dense(t, layout, b, q_lens, k_lens, hq):
    """The [Hq, Lq, Lk] slice of a layout tensor for sequence b (test-side expansion)."""
    q0, k0 = sum(q_lens[:b]), sum(k_lens[:b])
    lq, lk = q_lens[b], k_lens[b]
    if layout == "key":
        d = t[k0:k0 + lk].t()[:, None, :].expand(-1, lq, -1)
    else:
        d = t[q0:q0 + lq, :, :lk].permute(1, 0, 2)
    return d.repeat_interleave(hq // d.shape[0], 0)


COMBOS = [(m, b) for m in ("key", "query", None) for b in ("key", "query", None) if m or b]


@pytest.mark.parametrize("heads_kind", ["1", "hk", "hq"])
@pytest.mark.parametrize("mask_layout,bias_layout", COMBOS, ids=lambda x: str(x))
def test_layouts_against_reference_and_dense(mask_layout, bias_layout, heads_kind):
    seed = zlib.crc32(f"{mask_layout}{bias_layout}{heads_kind}".encode()) % 1000
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    hk, hq = 2, 8
    heads = {"1": 1, "hk": hk, "hq": hq}[heads_kind]
    k_lens = [rng.randint(1, 150) for _ in range(3)]
    q_lens = [rng.choice([1, rng.randint(1, k)]) for k in k_lens]
    batch = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=32, page_size=rng.choice([1, 16]),
                        dtype=DTYPE, device=DEVICE, seed=seed)
    mask = _layout_tensor(mask_layout, heads, q_lens, k_lens, gen, "mask") if mask_layout else None
    bias = _layout_tensor(bias_layout, heads, q_lens, k_lens, gen, "bias") if bias_layout else None
    params = AttnParams(softmax_scale=0.2, causal=rng.random() < 0.5)
    kw = dict(attn_mask=None if mask is None else mask.to(DEVICE),
              attn_bias=None if bias is None else bias.to(DEVICE))
    got, lse = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan, params,
                             return_lse=True, **kw)
    assert not got.isnan().any()
    # The oracle: the reference path on the same inputs ...
    ref, ref_lse = reference_path(batch.q, batch.k_cache, batch.v_cache, batch.plan, params,
                              return_lse=True, **kw)
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL, rtol=TOL)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    # ... and the reference against an explicit dense computation.
    q0 = 0
    for b in range(3):
        k, v = sequence_kv(batch, b, k_lens[b])
        dm = _dense(mask, mask_layout, b, q_lens, k_lens, hq) if mask is not None else None
        db = _dense(bias, bias_layout, b, q_lens, k_lens, hq) if bias is not None else None
        want, _ = dense_attention(batch.q[q0:q0 + q_lens[b]].cpu(), k, v, scale=0.2,
                                  causal=params.causal, mask=dm, bias=db)
        torch.testing.assert_close(ref[q0:q0 + q_lens[b]].double().cpu(), want,
                                   atol=TOL, rtol=TOL)
        q0 += q_lens[b]


@pytest.mark.parametrize("feature", ["softcap", "window", "chunk", "sinks", "split"])
@pytest.mark.parametrize("heads_kind", ["1", "hk"])
def test_shared_key_side_terms_with_other_features(feature, heads_kind):
    """Key-side mask + bias shared by a program's rows (the per-call term vector of
    key_term.py) combined with the other features; the bias has large magnitudes and -inf
    entries."""
    seed = zlib.crc32(f"{feature}{heads_kind}".encode()) % 1000
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    hk, hq = 2, 8
    heads = {"1": 1, "hk": hk}[heads_kind]
    k_lens = [rng.randint(60, 300) for _ in range(3)]
    q_lens = [rng.choice([1, 3, k]) for k in k_lens]
    batch = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=32, page_size=16, dtype=DTYPE,
                        device=DEVICE, seed=seed, num_splits=3 if feature == "split" else 1)
    total_k = sum(k_lens)
    mask = torch.rand(total_k, heads, generator=gen) < 0.8
    bias = torch.randn(total_k, heads, generator=gen) * 20
    bias[torch.rand(total_k, heads, generator=gen) < 0.05] = -math.inf
    kw = dict(softmax_scale=0.2, causal=True)
    kw.update({"softcap": dict(softcap=5.0), "window": dict(window_left=40),
               "chunk": dict(chunk_size=64)}.get(feature, {}))
    params = AttnParams(**kw)
    sinks = torch.randn(hq, generator=gen).to(DEVICE) if feature == "sinks" else None
    got = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan, params, sinks=sinks,
                        attn_mask=mask.to(DEVICE), attn_bias=bias.to(DEVICE))
    assert not got.isnan().any()
    q0 = 0
    for b in range(3):
        k, v = sequence_kv(batch, b, k_lens[b])
        want, _ = dense_attention(batch.q[q0:q0 + q_lens[b]].cpu(), k, v, scale=0.2,
                                  window=(params.window_left, -1), chunk=params.chunk_size,
                                  softcap=params.softcap, sinks=None if sinks is None else sinks.cpu(),
                                  mask=_dense(mask, "key", b, q_lens, k_lens, hq),
                                  bias=_dense(bias, "key", b, q_lens, k_lens, hq))
        torch.testing.assert_close(got[q0:q0 + q_lens[b]].double().cpu(), want, atol=TOL, rtol=TOL)
        q0 += q_lens[b]


@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_shared_key_side_terms_with_fp8_descale(softcap):
    """A shared key-side mask + bias over an fp8 cache with per-(sequence, kv head) descales:
    the key term is added in units of the unscaled q.k, so the kernel rescales by k_descale."""
    gen = torch.Generator().manual_seed(7)
    hk, hq, k_lens, q_lens = 2, 8, [90, 170], [1, 40]
    batch = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=32, page_size=16, dtype=DTYPE,
                        device=DEVICE, seed=7)
    k_descale = torch.rand(2, hk, generator=gen).to(DEVICE) + 0.5
    v_descale = torch.rand(2, hk, generator=gen).to(DEVICE) + 0.5
    k8, v8 = (c.to(torch.float8_e4m3fn) for c in (batch.k_cache, batch.v_cache))
    mask = (torch.rand(sum(k_lens), hk, generator=gen) < 0.8).to(DEVICE)
    bias = (torch.randn(sum(k_lens), 1, generator=gen) * 10).to(DEVICE)
    params = AttnParams(softmax_scale=0.2, causal=True, softcap=softcap)
    kw = dict(k_descale=k_descale, v_descale=v_descale, attn_mask=mask, attn_bias=bias)
    got = core.attention(batch.q, k8, v8, batch.plan, params, **kw)
    ref = reference_path(batch.q, k8, v8, batch.plan, params, **kw)
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL, rtol=TOL)


def test_fully_masked_rows_give_zero_and_neg_inf_lse():
    batch = paged_batch([3, 1], [40, 70], hq=4, hk=2, d=32, dtype=DTYPE, device=DEVICE)
    mask = torch.ones(4, 4, 70, dtype=torch.bool, device=DEVICE)
    mask[1] = False          # sequence 0, query 1: nothing visible
    mask[3, 2] = False       # sequence 1: query head 2 sees nothing
    bias = torch.zeros(110, 1, device=DEVICE)
    bias[:40] = -math.inf    # key-side bias hiding all of sequence 0 except via nothing
    out, lse = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                             AttnParams(softmax_scale=0.2), attn_mask=mask, return_lse=True)
    assert not out.isnan().any()
    assert torch.equal(out[1], torch.zeros_like(out[1])) and bool(torch.isneginf(lse[:, 1]).all())
    assert torch.equal(out[3, 2], torch.zeros_like(out[3, 2])) and bool(torch.isneginf(lse[2, 3]))
    assert bool((lse[:, 0] > -math.inf).all())
    out2, lse2 = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                               AttnParams(softmax_scale=0.2), attn_bias=bias, return_lse=True)
    assert torch.equal(out2[:3], torch.zeros_like(out2[:3])) and bool(torch.isneginf(lse2[:, :3]).all())
    assert bool((lse2[:, 3] > -math.inf).all())


def test_one_query_against_long_cache_with_padding_mask():
    """The TransformerEngine case: q_len 1 per sequence, k_len long, key-side padding mask.

    Keys are never sliced to the query length: masking a key far from the query changes the
    output, exactly as the dense computation says.
    """
    k_lens = [700, 300]
    batch = paged_batch([1, 1], k_lens, hq=8, hk=2, d=64, dtype=DTYPE, device=DEVICE, seed=3)
    pad = torch.ones(sum(k_lens), 1, dtype=torch.bool)
    pad[:50] = False          # left padding of sequence 0
    pad[700 + 290:] = False   # right padding of sequence 1
    out = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                        AttnParams(softmax_scale=0.125), attn_mask=pad.to(DEVICE))
    unmasked = core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                             AttnParams(softmax_scale=0.125))
    for b, k_len in enumerate(k_lens):
        k, v = sequence_kv(batch, b, k_len)
        rows = pad[sum(k_lens[:b]):sum(k_lens[:b + 1]), 0]
        want, _ = dense_attention(batch.q[b:b + 1].cpu(), k, v, scale=0.125,
                                  mask=rows[None, None, :].expand(8, 1, -1))
        torch.testing.assert_close(out[b:b + 1].double().cpu(), want, atol=TOL, rtol=TOL)
    assert not torch.allclose(out.float(), unmasked.float(), atol=1e-3)


@pytest.mark.parametrize("bad,match", [
    (dict(attn_mask=torch.ones(5, 2, 3, 4, dtype=torch.bool)), "fits no layout"),
    (dict(attn_mask=torch.ones(29, 3, dtype=torch.bool)), "head dim 3 not in"),
    (dict(attn_mask=torch.ones(29, 1)), "expected dtype torch.bool"),
    (dict(attn_bias=torch.ones(29, 1, dtype=torch.bool)), "float16/bfloat16/float32 additive bias"),
    (dict(attn_bias=torch.ones(28, 1)), "key-side layout needs shape"),
    (dict(attn_bias=torch.ones(2, 1, 20)), "query-side layout needs shape"),
    (dict(attn_mask=torch.ones(29, 1, dtype=torch.bool, device="meta")), "expected a tensor on"),
])
def test_bad_masks(bad, match):
    batch = paged_batch([3, 1], [9, 20], hq=4, hk=2, d=16)
    with pytest.raises(ValueError, match=match):
        core.attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                      AttnParams(softmax_scale=0.2), **bad)


def test_key_side_mask_and_bias_row_counts_must_match():
    """Checked from host shapes: on CUDA, describe() cannot compare each one with total_k."""
    starts = torch.tensor([0, 29], dtype=torch.int32)
    mask = masks.MaskSpec(torch.ones(29, 1, dtype=torch.bool), masks.Layout.KEY, 1, starts)
    masks.check_key_rows(mask, masks.MaskSpec(torch.zeros(29, 2), masks.Layout.KEY, 2, starts))
    short = masks.MaskSpec(torch.zeros(28, 2), masks.Layout.KEY, 2, starts)
    with pytest.raises(ValueError, match="attn_bias: a key-side bias needs as many rows"):
        masks.check_key_rows(mask, short)


MEMORY_PROBE = r"""
import resource, torch
from anyattn.core import build_plan
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention
torch.manual_seed(0)
n = int(__import__("sys").argv[1])
q, k, v = torch.randn(n, 1, 16), torch.randn(n, 1, 16), torch.randn(n, 1, 16)
mask = torch.rand(n, 1) < 0.9
from anyattn.core.semantics import masks
plan = build_plan(torch.tensor([0, n]), torch.tensor([n]), max_seqlen_q=n, max_seqlen_k=n,
                  cu_seqlens_k=torch.tensor([0, n]))
spec = masks.describe("attn_mask", mask, plan=plan, total_q=n, hq=1, hk=1, device=q.device)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, _ = reference_attention(q, k, v, plan, AttnParams(softmax_scale=0.25), mask=spec,
                             q_chunk=512, k_chunk=2048)
assert not out.isnan().any()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_reference_memory_is_linear_at_32k():
    """32K x 32K causal prefill with a key-side mask: a float32 score matrix would be 4 GiB."""
    n = 32768
    grown = int(subprocess.check_output([sys.executable, "-c", MEMORY_PROBE, str(n)],
                                        env={"ANYATTN_IMPL": "reference", **os.environ},
                                        text=True).split()[-1])
    assert grown < 256 * 2**20, f"reference grew {grown / 2**20:.0f} MiB (O(N^2) would be 4096)"
