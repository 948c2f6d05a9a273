"""Decode and spec-verify steps captured in CUDA graphs through core.graph, replayed with new
lengths and page tables: bitwise equal to eager, close to the reference, and sync-free."""
import pytest
import torch

from anyattn import core
from graph_storage import GraphStorage
from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import reference_attention

HQ, HK, D, PAGE, MAX_PAGES, NUM_PAGES = 32, 8, 128, 16, 64, 8192
PARAMS = AttnParams(softmax_scale=D ** -0.5)


def _step_inputs(gen, bs, q_len):
    """A new step's metadata, made on the device (a host->device copy would itself sync)."""
    cuda = dict(generator=gen, device="cuda")
    k_lens = torch.randint(q_len, MAX_PAGES * PAGE, (bs,), dtype=torch.int32, **cuda)
    table = torch.randint(0, NUM_PAGES, (bs, MAX_PAGES), dtype=torch.int32, **cuda)
    cu_q = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * q_len
    q = torch.randn(bs * q_len, HQ, D, **cuda).bfloat16()
    return cu_q, k_lens, table, q


@pytest.mark.parametrize("q_len", [1, 4], ids=["decode", "verify4"])
@pytest.mark.parametrize("bs", [1, 8, 64])
def test_graph_replay_bitwise_equals_eager(bs, q_len):
    gen = torch.Generator(device="cuda").manual_seed(bs * 10 + q_len)
    k_cache = torch.randn(NUM_PAGES, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    v_cache = torch.randn(NUM_PAGES, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    bufs = GraphStorage(64, MAX_PAGES, max_seqlen_q=q_len, page_size=PAGE, num_kv_heads=HK,
                            device="cuda")
    cu_q, k_lens, table, q = _step_inputs(gen, bs, q_len)
    plan = bufs.update(bs, cu_seqlens_q=cu_q, seqused_k=k_lens, page_table=table)
    static_q, static_out = q.clone(), torch.empty_like(q)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up compiles the kernels outside capture
        core.attention(static_q, k_cache, v_cache, plan, PARAMS, out=static_out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    replays, eagers = [], []
    torch.cuda.set_sync_debug_mode("error")  # capture, update, replay and eager: no sync
    try:
        with torch.cuda.graph(graph):
            core.attention(static_q, k_cache, v_cache, plan, PARAMS, out=static_out)
        for _ in range(3):
            cu_q, k_lens, table, q = _step_inputs(gen, bs, q_len)
            bufs.update(bs, cu_seqlens_q=cu_q, seqused_k=k_lens, page_table=table)
            static_q.copy_(q)
            graph.replay()
            replays.append(static_out.clone())
            eagers.append(core.attention(q, k_cache, v_cache, plan, PARAMS))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for replayed, eager in zip(replays, eagers):
        assert torch.equal(replayed, eager)
    ref, _ = reference_attention(q, k_cache, v_cache, plan, PARAMS)
    torch.testing.assert_close(static_out.float(), ref.float(), atol=3e-2, rtol=3e-2)
