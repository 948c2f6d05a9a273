"""The FA4 provider on the device, against the reference, for every feature routed to it (ALiBi
causal and bidirectional, bidirectional spans alone, with a window and inside it, both
together); its compile cache across calls; and the ``auto`` chain under CUDA graphs (capture +
replay bitwise equal to eager, no sync).

Needs FlashAttention-4 from an install (vLLM's ``vllm.vllm_flash_attn.cute`` with the CuTe DSL
beside it, or flash-attn-4's ``flash_attn.cute``) and a Hopper or Blackwell GPU. Without one
the module is skipped with that reason (``pytest -rs`` shows it).
"""
import dataclasses
import math
import random

import pytest
import torch

from anyattn import core
from anyattn.core import build_plan, providers
from anyattn.core.providers import fa4
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention
from anyattn.core.semantics.spans import span_table

from batches import paged_batch
from provider_cases import assert_matches_reference, random_lengths
from graph_storage import GraphStorage

if fa4.unavailable(torch.device("cuda")):
    pytest.skip(f"FA4: {fa4.unavailable(torch.device('cuda'))}", allow_module_level=True)

TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}
HOPPER = torch.cuda.get_device_capability()[0] == 9


@pytest.fixture
def fa4_calls(monkeypatch):
    calls = []
    original = fa4.run_fa4
    monkeypatch.setattr(fa4, "run_fa4", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def slopes(hq: int) -> torch.Tensor:
    return 2.0 ** (-8.0 * torch.arange(1, hq + 1, device="cuda") / hq)


def random_spans(rng: random.Random, q_lens: list[int], k_lens: list[int]) -> list[list]:
    """Per sequence up to three spans among its queries: at the step's first query, in the
    middle, and at its last key (a span cut by the step's end)."""
    out = []
    for q_len, k_len in zip(q_lens, k_lens):
        first, spans = k_len - q_len, []
        if q_len >= 2:
            cuts = sorted(rng.sample(range(first, k_len + 1), min(6, q_len + 1)))
            spans = [(s, e) for s, e in zip(cuts[::2], cuts[1::2]) if s < e]
            if rng.random() < 0.5 and spans:  # a span reaching back into the cached prefix
                spans[0] = (max(0, spans[0][0] - rng.randint(1, 50)), spans[0][1])
        out.append(spans)
    return out


def fa4_case(seed: int) -> dict:
    """A random batch inside FA4's routed features: empty and 1-token sequences, GQA 1/4/8 and
    MQA, head dims 64/128 (and 256 on Hopper), page sizes 1/16/64 in random order, ALiBi
    (causal or not), spans (alone, with a window, inside it), soft-cap, sinks."""
    rng = random.Random(seed)
    features = ["alibi", "alibi", "spans", "spans+window", "spans-in-window", "alibi+spans"]
    feature = features[seed % len(features)]
    causal = feature != "spans+window" and (feature != "alibi" or rng.random() < 0.6)
    q_lens, k_lens, hk, group = random_lengths(rng)
    d = rng.choice([64, 128, 256] if HOPPER else [64, 128])
    left = rng.randint(0, 300) if "window" in feature else rng.choice([-1, -1, rng.randint(0, 300)])
    right = 0 if causal else rng.choice([-1, rng.randint(0, 40)])
    params = AttnParams(softmax_scale=d ** -0.5, causal=causal, window_left=left,
                        window_right=right, softcap=rng.choice([0.0, 0.0, 30.0]),
                        spans_in_window=feature == "spans-in-window")
    return dict(q_lens=q_lens, k_lens=k_lens, hk=hk, hq=hk * group, d=d,
                page_size=rng.choice([1, 16, 64]), cache_layout=rng.choice(["nhd", "vllm"]),
                dtype=rng.choice([torch.bfloat16, torch.float16]), params=params,
                alibi="alibi" in feature,
                spans=random_spans(rng, q_lens, k_lens) if "spans" in feature else None,
                sinks=rng.random() < 0.3)


@pytest.mark.parametrize("seed", range(48))
def test_fa4_matches_reference(monkeypatch, fa4_calls, seed):
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    c = fa4_case(seed)
    # FA4 loads whole key tiles of TMA-loaded pages: slots past a sequence hold large finite
    # garbage, which changes the result if a key past the end is ever attended.
    b = paged_batch(c["q_lens"], c["k_lens"], hq=c["hq"], hk=c["hk"], d=c["d"],
                    page_size=c["page_size"], dtype=c["dtype"], device="cuda", seed=seed,
                    cache_layout=c["cache_layout"], poison=1e4)
    if c["spans"] is not None:
        table, counts = span_table(c["spans"], "cuda", k_lens=c["k_lens"])
        b.plan = dataclasses.replace(b.plan, spans=table, span_counts=counts)
    kw = {}
    if c["alibi"]:  # the paper's slopes, or any positive ones (both are compiled in)
        kw["alibi_slopes"] = (slopes(c["hq"]) if seed % 4 else
                              torch.rand(c["hq"], device="cuda", generator=torch.Generator(
                                  device="cuda").manual_seed(seed)))
    if c["sinks"]:
        kw["sinks"] = torch.randn(c["hq"], device="cuda").bfloat16()
    out = torch.full((b.q.shape[0], c["hq"], c["d"]), math.nan, dtype=c["dtype"], device="cuda")
    got, lse = core.attention(b.q, b.k_cache, b.v_cache, b.plan, c["params"], out=out,
                              return_lse=True, **kw)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, c["params"], **kw)
    if b.q.shape[0]:
        assert fa4_calls, "FA4 did not run a call routed to it"
    assert got is out
    assert_matches_reference(got, lse, ref, ref_lse, TOL[c["dtype"]])


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_slopes_read_in_the_kernel(monkeypatch, fa4_calls, causal):
    """Slopes first seen inside a CUDA-graph capture are not read to the host: the score_mod
    reads them from the aux tensor (FA4's generic path) with the same results."""
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    monkeypatch.setattr(fa4, "_capturing", lambda t: True)
    params = AttnParams(softmax_scale=128 ** -0.5, causal=causal)
    b = paged_batch([70, 1, 0, 300], [200, 40, 9, 300], hq=16, hk=4, d=128, page_size=16,
                    dtype=torch.bfloat16, device="cuda", seed=3, poison=1e4)
    kw = dict(alibi_slopes=torch.rand(16, device="cuda"))
    got, lse = core.attention(b.q, b.k_cache, b.v_cache, b.plan, params, return_lse=True, **kw)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, params, **kw)
    assert fa4_calls
    assert_matches_reference(got, lse, ref, ref_lse, TOL[torch.bfloat16])


@pytest.mark.parametrize("spans", [False, True])
def test_empty_rows_get_lse_minus_inf(monkeypatch, fa4_calls, spans):
    """Cross-attention rows of a sequence with no keys (FA4 then divides aux indices by a zero
    length): output 0, LSE -inf, and the other sequence unharmed."""
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    params = AttnParams(softmax_scale=128 ** -0.5, causal=False, window_left=8 if spans else -1)
    b = paged_batch([30, 20], [0, 25], hq=16, hk=4, d=128, page_size=16, dtype=torch.bfloat16,
                    device="cuda", seed=2, poison=1e4)
    if spans:
        table, counts = span_table([[], [(3, 20)]], "cuda", k_lens=[0, 25])
        b.plan = dataclasses.replace(b.plan, spans=table, span_counts=counts)
    kw = {} if spans else dict(alibi_slopes=slopes(16))
    got, lse = core.attention(b.q, b.k_cache, b.v_cache, b.plan, params, return_lse=True, **kw)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, params, **kw)
    assert fa4_calls and bool((ref_lse == -math.inf).any())
    assert torch.equal(lse == -math.inf, ref_lse == -math.inf)
    assert not got[:30].any(), "rows with no keys must be 0"
    torch.testing.assert_close(got.float(), ref.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("span_rows", [False, True], ids=["whole-spans", "seqused_k"])
def test_fa4_contiguous_keys(monkeypatch, fa4_calls, span_rows):
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q_lens, k_lens = [300, 1, 0, 77], [300, 500, 9, 77]
    q = torch.randn(sum(q_lens), 16, 128, generator=gen, device="cuda").bfloat16()
    k = torch.randn(sum(k_lens), 4, 128, generator=gen, device="cuda").bfloat16()
    v = torch.randn_like(k)
    cu_q = torch.tensor([0, 300, 301, 301, 378], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 300, 800, 809, 886], dtype=torch.int32, device="cuda")
    used = torch.tensor([300, 400, 9, 77], dtype=torch.int32, device="cuda") if span_rows else None
    plan = build_plan(cu_q, used, max_seqlen_q=300, max_seqlen_k=500, cu_seqlens_k=cu_k)
    params = AttnParams(softmax_scale=128 ** -0.5, softcap=20.0)
    got = core.attention(q, k, v, plan, params, alibi_slopes=slopes(16))
    ref, _ = reference_attention(q, k, v, plan, params, alibi_slopes=slopes(16))
    assert fa4_calls
    torch.testing.assert_close(got.float(), ref.float(), atol=3e-2, rtol=3e-2)


def test_each_variant_compiles_once(monkeypatch):
    """Every layer of a step reuses its variant's compiled kernel (FA4's compile cache)."""
    monkeypatch.setenv("ANYATTN_KERNELS", "fa4")
    cache = fa4.source().forward.compile_cache.cache
    b = paged_batch([40, 90], [100, 90], hq=16, hk=4, d=128, page_size=16,
                    dtype=torch.bfloat16, device="cuda", seed=1)
    table, counts = span_table([[(70, 95)], [(0, 30)]], "cuda")
    b.plan = dataclasses.replace(b.plan, spans=table, span_counts=counts)
    params = AttnParams(softmax_scale=128 ** -0.5)
    sizes = []
    for _ in range(3):
        core.attention(b.q, b.k_cache, b.v_cache, b.plan, params, alibi_slopes=slopes(16))
        sizes.append(len(cache))
    assert sizes[0] == sizes[1] == sizes[2]


HQ, HK, D, PAGE, MAX_PAGES, NUM_PAGES, SPANS = 32, 8, 128, 16, 64, 4096, 2


@pytest.mark.parametrize("feature", ["alibi", "spans", "spans+window", "alibi+spans"])
def test_auto_choice_replays_bitwise_in_graphs(monkeypatch, fa4_calls, feature):
    """Under ``auto``, prefill chunks of 64 queries with ALiBi or spans run on FA4 (FA3, where
    installed, takes the plan's plain calls); replays equal eager bit for bit, with no sync.
    (Run with FA4 routed under ``auto``, as this file's passing on the H200 will let it be.)"""
    monkeypatch.delenv("ANYATTN_KERNELS", raising=False)
    monkeypatch.setattr(fa4, "ROUTED_UNDER_AUTO", True)
    monkeypatch.setattr(fa4, "SPANS_UNDER_AUTO", True)
    q_len, bs = 64, 8
    gen = torch.Generator(device="cuda").manual_seed(len(feature))
    k_cache = torch.randn(NUM_PAGES, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    v_cache = torch.randn(NUM_PAGES, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    w = providers.Workload(torch.device("cuda"), torch.bfloat16, torch.bfloat16, D, D, HQ, HK)
    bufs = GraphStorage(16, MAX_PAGES, max_seqlen_q=q_len, page_size=PAGE, num_kv_heads=HK,
                        device="cuda", workload=w, max_spans=SPANS)
    params = AttnParams(softmax_scale=D ** -0.5, window_left=300 if "window" in feature else -1,
                        softcap=30.0, use_spans="spans" in feature)
    kw = dict(alibi_slopes=slopes(HQ)) if "alibi" in feature else {}
    rng = random.Random(len(feature))

    def step():
        k_lens = torch.randint(q_len, MAX_PAGES * PAGE, (bs,), generator=gen, device="cuda",
                               dtype=torch.int32)
        table = torch.randint(0, NUM_PAGES, (bs, MAX_PAGES), generator=gen, device="cuda",
                              dtype=torch.int32)
        cu_q = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * q_len
        q = torch.randn(bs * q_len, HQ, D, generator=gen, device="cuda").bfloat16()
        lens = k_lens.tolist()  # the test's own host copy (outside the captured region)
        first = [n - q_len + 5 for n in lens]  # a span from the chunk's 6th query, or none
        spans = span_table([[(s, s + rng.randint(1, 40))][:rng.randint(0, 1)] for s in first],
                           "cuda", capacity=SPANS)
        return bufs.update(bs, cu_seqlens_q=cu_q, seqused_k=k_lens, page_table=table,
                           spans=spans), q

    plan, q = step()
    chain = [p.name for p in plan.schedules[w].providers]
    assert "fa4" in chain and chain[-1] == "triton"
    static_q, static_out = q.clone(), torch.empty_like(q)
    run = lambda: core.attention(static_q, k_cache, v_cache, plan, params, out=static_out, **kw)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    assert fa4_calls, "the warm-up call did not run on FA4"
    graph = torch.cuda.CUDAGraph()
    replays, eagers = [], []
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            run()
        torch.cuda.set_sync_debug_mode("default")
        for _ in range(3):
            _, q = step()
            torch.cuda.set_sync_debug_mode("error")
            static_q.copy_(q)
            graph.replay()
            replays.append(static_out.clone())
            eagers.append(core.attention(q, k_cache, v_cache, plan, params, **kw))
            torch.cuda.set_sync_debug_mode("default")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for replayed, eager in zip(replays, eagers):
        assert torch.equal(replayed, eager)
    ref, _ = reference_attention(q, k_cache, v_cache, plan, params, **kw)
    torch.testing.assert_close(static_out.float(), ref.float(), atol=3e-2, rtol=3e-2)
