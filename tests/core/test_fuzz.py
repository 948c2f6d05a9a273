"""Fuzz: random valid plans against the dense float64 oracle, and random single corruptions of
a valid call, each of which must raise a ValueError naming the argument with the caches
bitwise unchanged.

Seeded and small (tiny shapes, a fixed number of cases) so it runs in CI on both CPU paths
(reference, and the Triton kernels under the interpreter) in a couple of minutes; on a GPU
it runs the compiled kernels, with ``ANYATTN_DEBUG=1`` for the corruptions only a device
read can see (checks.py).
"""
from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from anyattn import core
from anyattn.core.semantics import spans as span_lib
from anyattn.core import build_plan, cu_seqlens
from anyattn.core.semantics.params import AttnParams
from anyattn.core import AttnPlan

from batches import dense_attention, paged_batch, sequence_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32
TOL = 2e-2 if DEVICE == "cuda" else 1e-4
VALID_CASES = 40
CORRUPT_CASES = 16


@pytest.fixture(params=["reference", "triton"])
def impl(request, monkeypatch):
    monkeypatch.setenv("ANYATTN_IMPL", request.param)
    return request.param


@dataclass
class Call:
    """One valid attention call and what the oracle needs to check it."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    plan: AttnPlan
    params: AttnParams
    kwargs: dict
    q_lens: list[int]
    k_lens: list[int]
    keys: list[tuple[torch.Tensor, torch.Tensor]]  # per sequence, on the CPU
    spans: list[list[tuple[int, int]]]
    dense_mask: list[torch.Tensor | None]  # per sequence [Hq, Lq, Lk] bool

    def run(self, **changes):
        args = dict(q=self.q, k_cache=self.k_cache, v_cache=self.v_cache, plan=self.plan,
                    params=self.params)
        kwargs = dict(self.kwargs)
        for name, value in changes.items():
            (args if name in args else kwargs)[name] = value
        return core.attention(args["q"], args["k_cache"], args["v_cache"], args["plan"],
                             args["params"], **kwargs)


def _lengths(rng: random.Random, positional: bool) -> tuple[list[int], list[int]]:
    """Per-sequence (q_lens, k_lens); q_len <= k_len under causal or chunked masks."""
    k_lens = [rng.choice([0, 1, rng.randint(2, 12), rng.randint(13, 40), rng.randint(13, 40)])
              for _ in range(rng.randint(1, 3))]
    q_lens = [min(k, rng.choice([0, 1, rng.randint(1, 6), k, k])) if positional
              else rng.randint(0, 5) for k in k_lens]
    return q_lens, k_lens


def _spans(rng: random.Random, q_lens, k_lens) -> list[list[tuple[int, int]]]:
    whole = []
    for k in k_lens:
        seq, at = [], 0
        while at < k - 1 and rng.random() < 0.6:
            start = rng.randint(at, k - 2)
            end = rng.randint(start + 1, min(k, start + 10))
            seq.append((start, end))
            at = end
        whole.append(seq)
    return span_lib.step_spans(whole, q_lens, k_lens)


def _mask(rng: random.Random, q_lens, k_lens, hq: int, hk: int):
    """A random mask layout (key-side over all heads, or query-side per kv head) and its dense
    per-sequence view for the oracle."""
    gen = torch.Generator().manual_seed(rng.randint(0, 1 << 30))
    group = hq // hk
    if rng.random() < 0.5:
        rows = torch.rand(sum(k_lens), 1, generator=gen) > 0.3
        dense, at = [], 0
        for q, k in zip(q_lens, k_lens):
            dense.append(rows[at:at + k, 0][None, None, :].expand(hq, q, k))
            at += k
        return rows, dense
    max_k = max(k_lens)
    rows = torch.rand(sum(q_lens), hk, max_k, generator=gen) > 0.3
    dense, at = [], 0
    for q, k in zip(q_lens, k_lens):
        dense.append(rows[at:at + q, :, :k].permute(1, 0, 2).repeat_interleave(group, 0))
        at += q
    return rows, dense


def random_call(seed: int) -> Call:
    rng = random.Random(seed)
    causal = rng.random() < 0.8
    hk = rng.choice([1, 2])
    hq = hk * rng.choice([1, 2, 4])
    d = rng.choice([16, 32])
    window = rng.choice([-1, -1, rng.randint(0, 12)])
    params = AttnParams(softmax_scale=d ** -0.5, causal=causal, window_left=window,
                        window_right=-1 if causal else rng.choice([-1, rng.randint(0, 6)]),
                        chunk_size=rng.choice([0, 0, 0, 8]),
                        softcap=rng.choice([0.0, 0.0, 15.0]),
                        spans_in_window=rng.random() < 0.5)
    q_lens, k_lens = _lengths(rng, params.positional)
    b = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=d, page_size=rng.choice([1, 4, 8, 16]),
                    dtype=DTYPE, device=DEVICE, seed=seed, num_splits=rng.choice([None, 1, 3]),
                    cache_layout=rng.choice(["nhd", "vllm"]))
    keys = [sequence_kv(b, i, k) for i, k in enumerate(k_lens)]
    plan, k_cache, v_cache = b.plan, b.k_cache, b.v_cache
    if rng.random() < 0.3:  # contiguous keys: each sequence's keys gathered in order
        k_cache = torch.cat([k for k, _ in keys]).to(DEVICE)
        v_cache = torch.cat([v for _, v in keys]).to(DEVICE)
        cu_k = cu_seqlens(torch.tensor(k_lens))
        plan = build_plan(plan.cu_seqlens_q, None, max_seqlen_q=plan.max_seqlen_q,
                          max_seqlen_k=plan.max_seqlen_k, cu_seqlens_k=cu_k.to(DEVICE),
                          num_kv_heads=hk, num_splits=plan.num_splits, total_q=sum(q_lens),
                          total_k=sum(k_lens))
    spans = [[] for _ in k_lens]
    if causal and rng.random() < 0.5:
        spans = _spans(rng, q_lens, k_lens)
        table, counts = span_lib.span_table(spans, DEVICE, k_lens=k_lens)
        plan = dataclasses.replace(plan, spans=table, span_counts=counts)
    kwargs, dense_mask = {}, [None] * len(k_lens)
    if rng.random() < 0.25:
        kwargs["sinks"] = torch.randn(hq, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    if rng.random() < 0.25:
        kwargs["alibi_slopes"] = torch.tensor([2.0 ** -(h + 1) for h in range(hq)], device=DEVICE)
    if max(k_lens) > 0 and sum(q_lens) > 0 and rng.random() < 0.25:
        mask, dense_mask = _mask(rng, q_lens, k_lens, hq, hk)
        kwargs["attn_mask"] = mask.to(DEVICE)
    return Call(b.q, k_cache, v_cache, plan, params, kwargs, q_lens, k_lens, keys, spans,
                dense_mask)


def oracle(call: Call) -> list[torch.Tensor]:
    p, kw = call.params, call.kwargs
    outs, q0 = [], 0
    for b, (q_len, (k, v)) in enumerate(zip(call.q_lens, call.keys)):
        ids = torch.full((k.shape[0],), -1)
        for i, (start, end) in enumerate(call.spans[b]):
            ids[start:end] = i
        want, _ = dense_attention(
            call.q[q0:q0 + q_len].cpu(), k, v, scale=p.softmax_scale, causal=p.causal,
            window=(p.window_left, p.window_right), chunk=p.chunk_size, softcap=p.softcap,
            sinks=kw["sinks"].cpu() if "sinks" in kw else None, mask=call.dense_mask[b],
            image_ids=ids if call.spans[b] else None, image_in_window=p.spans_in_window,
            alibi=kw["alibi_slopes"].cpu() if "alibi_slopes" in kw else None)
        outs.append(want)
        q0 += q_len
    return outs


@pytest.mark.parametrize("seed", range(VALID_CASES))
def test_random_valid_plan_matches_dense_oracle(impl, seed):
    call = random_call(seed)
    got = call.run()
    q0 = 0
    for q_len, want in zip(call.q_lens, oracle(call)):
        torch.testing.assert_close(got[q0:q0 + q_len].double().cpu(), want, atol=TOL, rtol=TOL)
        q0 += q_len


# -- single corruptions -------------------------------------------------------------------------

def _replace(plan: AttnPlan, **kw) -> AttnPlan:
    return dataclasses.replace(plan, **kw)


def _bump(t: torch.Tensor, index, delta: int) -> torch.Tensor:
    t = t.clone()
    t[index] += delta
    return t


def _corruptions(call: Call) -> dict[str, tuple[str, Callable]]:
    """name -> (the argument the error must name, the corrupted call)."""
    p, q, plan = call.params, call.q, call.plan
    hq, d = q.shape[1], q.shape[2]
    unknown = _replace(plan, total_q=None)
    extra = torch.zeros(1, hq, d, dtype=q.dtype, device=q.device)
    out = {
        "q_extra_row": ("q: expected", lambda: call.run(q=torch.cat([q, extra]))),
        "q_extra_row_device_total": ("q: expected", lambda: call.run(
            q=torch.cat([q, extra]), plan=unknown)),
        "cu_seqlens_q_start": ("cu_seqlens_q: expected first entry 0", lambda: call.run(
            plan=_replace(unknown, cu_seqlens_q=_bump(plan.cu_seqlens_q, slice(None), 1)),
            q=torch.cat([q, extra]))),
        "softmax_scale_inf": ("softmax_scale", lambda: call.run(
            params=dataclasses.replace(p, softmax_scale=float("inf")))),
        "softcap_negative": ("softcap", lambda: call.run(
            params=dataclasses.replace(p, softcap=-1.0))),
        "softcap_nan": ("softcap", lambda: call.run(params=dataclasses.replace(p, softcap=float("nan")))),
        "chunk_size_negative": ("chunk_size", lambda: call.run(
            params=dataclasses.replace(p, chunk_size=-8))),
        "window_below_minus_one": ("window_left", lambda: call.run(
            params=dataclasses.replace(p, window_left=-2))),
        "sinks_shape": ("sinks", lambda: call.run(sinks=torch.zeros(hq + 1, device=q.device))),
        "alibi_shape": ("alibi_slopes", lambda: call.run(
            alibi_slopes=torch.zeros(hq + 1, device=q.device))),
        "out_shape": ("out", lambda: call.run(out=torch.empty(q.shape[0] + 1, hq, d,
                                                              dtype=q.dtype, device=q.device))),
        "q_dtype": ("k_cache: expected dtype", lambda: call.run(
            q=q.to(torch.float16 if q.dtype == torch.float32 else torch.float32))),
        "k_descale_zero": ("k_descale", lambda: call.run(
            k_descale=torch.zeros(plan.batch_size, call.k_cache.shape[-2], device=q.device))),
    }
    longest = max(call.q_lens)
    if longest > 1:
        out["max_seqlen_q_understated"] = ("max_seqlen_q", lambda: call.run(
            plan=_replace(plan, max_seqlen_q=longest - 1)))
    b = max(range(len(call.k_lens)), key=lambda i: call.k_lens[i])  # the longest keys
    bq = max(range(len(call.q_lens)), key=lambda i: call.q_lens[i])  # the most queries
    last = max((i for i, k in enumerate(call.k_lens) if k), default=None)  # last with keys
    if plan.paged and call.k_lens[b] > 0:
        pages = call.k_cache.shape[0]
        width = plan.page_table.shape[1]
        out["page_id_past_cache"] = ("page_table: entries", lambda: call.run(
            plan=_replace(plan, page_table=_bump(plan.page_table, (b, 0), pages))))
        out["page_id_negative"] = ("page_table: entries", lambda: call.run(
            plan=_replace(plan, page_table=_bump(plan.page_table, (b, 0), -pages - 1))))
        out["seqused_k_past_table"] = ("page_table: .* columns", lambda: call.run(
            plan=_replace(plan, seqused_k=_bump(plan.seqused_k, b,
                                                width * call.k_cache.shape[1]))))
    if not plan.paged and last is not None:
        out["cu_seqlens_k_past_k"] = ("cu_seqlens_k", lambda: call.run(
            plan=_replace(plan, cu_seqlens_k=_bump(plan.cu_seqlens_k, last, 1))))
        out["k_rows_short"] = ("cu_seqlens_k", lambda: call.run(
            k_cache=call.k_cache[:-1], v_cache=call.v_cache[:-1]))
    if call.params.positional and call.q_lens[bq] > 0:
        out["seqused_k_below_q_len"] = ("q_len > k_len", lambda: call.run(
            plan=_replace(plan, seqused_k=_bump(plan.seqused_k, bq, -1 - call.k_lens[bq]
                                                + call.q_lens[bq]))))
    if plan.spans is not None and plan.spans.shape[1] > 0:
        out["span_past_keys"] = ("spans", lambda: call.run(
            plan=_replace(plan, spans=_bump(plan.spans, (b, 0, 1), 10 ** 4),
                          span_counts=torch.ones_like(plan.span_counts))))
    return out


def _kv_write_corruptions(call: Call) -> dict[str, tuple[str, Callable]]:
    """Corrupted writes of one new token per kv head into a paged cache."""
    k_cache, v_cache = call.k_cache, call.v_cache
    if k_cache.dim() != 4:
        k_cache, v_cache = k_cache[:, None], v_cache[:, None]  # one-slot pages
    hk = k_cache.shape[2]
    k = torch.randn(2, hk, k_cache.shape[3]).to(k_cache.device, k_cache.dtype)
    v = torch.randn(2, hk, v_cache.shape[3]).to(v_cache.device, v_cache.dtype)
    slots = k_cache.shape[0] * k_cache.shape[1]
    padding = torch.tensor([-1, -1])

    def write(slot_mapping, k_=k, **kw):
        core.write_kv_cache(k_, v, k_cache, v_cache, slot_mapping.to(k.device), **kw)

    return {
        "slot_past_cache": ("slot_mapping", lambda: write(torch.tensor([0, slots]))),
        "slot_below_minus_one": ("slot_mapping", lambda: write(torch.tensor([-2, 0]))),
        "k_head_dim": ("k: expected", lambda: write(padding, k_=k[..., :-1])),
        "k_scale_zero": ("k_scale", lambda: write(padding, k_scale=0.0)),
        "v_scale_nan": ("v_scale", lambda: write(padding, v_scale=torch.tensor([float("nan")]))),
    }


@pytest.mark.parametrize("seed", range(CORRUPT_CASES))
def test_single_corruptions_are_refused_before_any_write(impl, seed, monkeypatch):
    """Every corruption that applies to one random valid call, one at a time."""
    if DEVICE == "cuda":
        monkeypatch.setenv("ANYATTN_DEBUG", "1")  # the checks that read device values
    call = random_call(1000 + seed)
    k_before, v_before = call.k_cache.clone(), call.v_cache.clone()
    for name, (match, corrupted) in {**_corruptions(call), **_kv_write_corruptions(call)}.items():
        try:
            corrupted()
        except ValueError as err:
            assert re.search(match, str(err)), f"{name}: {err}"
        else:
            pytest.fail(f"{name}: accepted")
        assert torch.equal(call.k_cache.nan_to_num(7.0), k_before.nan_to_num(7.0)), name
        assert torch.equal(call.v_cache.nan_to_num(7.0), v_before.nan_to_num(7.0)), name
