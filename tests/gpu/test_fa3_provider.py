"""The FA3 provider on the device, against the reference, for every feature routed to it; and
the ``auto`` choice under CUDA graphs (capture + replay bitwise equal to eager, no sync).

Needs FlashAttention-3 from an engine install (vLLM's ``vllm.vllm_flash_attn``: on the lent
H200, the carried vLLM 0.26 site on PYTHONPATH). Without one the module is skipped with that
reason (``pytest -rs`` shows it).
"""
import math
import random

import pytest
import torch

from anyattn import core
from anyattn.core import providers
from anyattn.core import build_plan
from graph_storage import GraphStorage
from anyattn.core.providers import fa3
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention

from batches import paged_batch
from provider_cases import assert_matches_reference, random_lengths

if fa3.unavailable(torch.device("cuda")):
    pytest.skip(f"FA3: {fa3.unavailable(torch.device('cuda'))}", allow_module_level=True)

TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.fixture
def fa3_calls(monkeypatch):
    calls = []
    original = fa3.run_fa3
    monkeypatch.setattr(fa3, "run_fa3", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


def fa3_case(seed: int) -> dict:
    """A random batch inside FA3's coverage: empty and 1-token sequences, GQA 1/4/8 and MQA,
    head dims 64/128/256, page sizes 1/16/64 in random order, window, soft-cap, sinks."""
    rng = random.Random(seed)
    q_lens, k_lens, hk, group = random_lengths(rng)
    d = rng.choice([64, 128, 256])
    causal = rng.random() < 0.75
    left = rng.choice([-1, -1, rng.randint(0, 300)])
    right = (rng.choice([-1, 0]) if causal else rng.choice([-1, rng.randint(0, 40)]))
    return dict(q_lens=q_lens, k_lens=k_lens, hk=hk, hq=hk * group, d=d,
                page_size=rng.choice([1, 16, 64]), cache_layout=rng.choice(["nhd", "vllm"]),
                dtype=rng.choice([torch.bfloat16, torch.float16]),
                params=AttnParams(softmax_scale=d ** -0.5, causal=causal, window_left=left,
                                  window_right=right, softcap=rng.choice([0.0, 0.0, 30.0])),
                sinks=rng.random() < 0.3)


@pytest.mark.parametrize("seed", range(40))
def test_fa3_matches_reference(monkeypatch, fa3_calls, seed):
    monkeypatch.setenv("ANYATTN_KERNELS", "fa3")
    c = fa3_case(seed)
    # FA3 loads whole pages and masks the scores: slots past a sequence hold large finite
    # garbage (a NaN would reach the output through a zero probability; engines' caches are
    # zeroed), which changes the result if a key past the end is ever attended.
    b = paged_batch(c["q_lens"], c["k_lens"], hq=c["hq"], hk=c["hk"], d=c["d"],
                    page_size=c["page_size"], dtype=c["dtype"], device="cuda", seed=seed,
                    cache_layout=c["cache_layout"], poison=1e4)
    # FA3 takes bf16 sinks with bf16 queries only; fp16 calls with sinks fall back to Triton.
    sinks = torch.randn(c["hq"], device="cuda").bfloat16() if c["sinks"] else None
    routed = sinks is None or c["dtype"] == torch.bfloat16
    out = torch.full((b.q.shape[0], c["hq"], c["d"]), math.nan, dtype=c["dtype"], device="cuda")
    got, lse = core.attention(b.q, b.k_cache, b.v_cache, b.plan, c["params"], sinks=sinks,
                             out=out, return_lse=True)
    ref, ref_lse = reference_attention(b.q, b.k_cache, b.v_cache, b.plan, c["params"],
                                       sinks=sinks)
    if b.q.shape[0]:
        assert bool(fa3_calls) == routed, "FA3 ran for an uncovered call, or did not run"
    assert got is out
    assert_matches_reference(got, lse, ref, ref_lse, TOL[c["dtype"]])


def test_fa3_contiguous_keys(monkeypatch, fa3_calls):
    monkeypatch.setenv("ANYATTN_KERNELS", "fa3")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q_lens, k_lens = [300, 1, 0, 77], [300, 500, 9, 77]
    q = torch.randn(sum(q_lens), 16, 128, generator=gen, device="cuda").bfloat16()
    k = torch.randn(sum(k_lens), 4, 128, generator=gen, device="cuda").bfloat16()
    v = torch.randn_like(k)
    cu_q = torch.tensor([0, 300, 301, 301, 378], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 300, 800, 809, 886], dtype=torch.int32, device="cuda")
    got = core.flash_attn_varlen_func(q, k, v, cu_q, cu_k, causal=True, softcap=20.0)
    plan = build_plan(cu_q, None, max_seqlen_q=300, max_seqlen_k=500, cu_seqlens_k=cu_k)
    ref, _ = reference_attention(q, k, v, plan, AttnParams(softmax_scale=128 ** -0.5,
                                                               softcap=20.0))
    # vLLM's FA3 takes contiguous keys; sgl_kernel's is called paged only (Triton runs this).
    assert bool(fa3_calls) == (fa3.source().varlen is not None)
    torch.testing.assert_close(got.float(), ref.float(), atol=3e-2, rtol=3e-2)


HQ, HK, D, PAGE, MAX_PAGES, NUM_PAGES = 32, 8, 128, 16, 64, 4096


@pytest.mark.parametrize("q_len,provider", [(1, "triton"), (4, "triton"), (8, "fa3"),
                                            (64, "fa3")],
                         ids=["decode", "verify4", "verify8", "prefill64"])
def test_auto_choice_replays_bitwise_in_graphs(monkeypatch, q_len, provider):
    monkeypatch.delenv("ANYATTN_KERNELS", raising=False)
    gen = torch.Generator(device="cuda").manual_seed(q_len)
    k_cache = torch.randn(NUM_PAGES, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    v_cache = torch.randn(NUM_PAGES, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    w = providers.Workload(torch.device("cuda"), torch.bfloat16, torch.bfloat16, D, D, HQ, HK)
    bs = 8
    bufs = GraphStorage(16, MAX_PAGES, max_seqlen_q=q_len, page_size=PAGE, num_kv_heads=HK,
                            device="cuda", workload=w)
    params = AttnParams(softmax_scale=D ** -0.5, window_left=700, softcap=30.0)
    sinks = torch.randn(HQ, generator=gen, device="cuda").bfloat16()

    def step():
        k_lens = torch.randint(q_len, MAX_PAGES * PAGE, (bs,), generator=gen, device="cuda",
                               dtype=torch.int32)
        table = torch.randint(0, NUM_PAGES, (bs, MAX_PAGES), generator=gen, device="cuda",
                              dtype=torch.int32)
        cu_q = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * q_len
        q = torch.randn(bs * q_len, HQ, D, generator=gen, device="cuda").bfloat16()
        return bufs.update(bs, cu_seqlens_q=cu_q, seqused_k=k_lens, page_table=table), q

    plan, q = step()
    assert plan.schedules[w].providers[0].name == provider
    static_q, static_out = q.clone(), torch.empty_like(q)
    run = lambda: core.attention(static_q, k_cache, v_cache, plan, params, sinks=sinks,
                                out=static_out)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    replays, eagers = [], []
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            run()
        for _ in range(3):
            _, q = step()
            static_q.copy_(q)
            graph.replay()
            replays.append(static_out.clone())
            eagers.append(core.attention(q, k_cache, v_cache, plan, params, sinks=sinks))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for replayed, eager in zip(replays, eagers):
        assert torch.equal(replayed, eager)
    ref, _ = reference_attention(q, k_cache, v_cache, plan, params, sinks=sinks)
    torch.testing.assert_close(static_out.float(), ref.float(), atol=3e-2, rtol=3e-2)
