"""The CUDA-graph metadata path on the CPU: ``init_cuda_graph_state`` once at the largest
batch, ``init_forward_metadata_out_graph(in_capture=True)`` per captured batch size, then
replays with new lengths update the same storage in place and give the outputs of freshly
built (eager) metadata."""
from __future__ import annotations

import pytest
import torch

from harness import Spec
from sglang.srt.model_executor.forward_batch_info import ForwardMode

MAX_BS = 4
ATOL = 2e-5


def _storage(backend) -> list[int]:
    md = backend.forward_metadata
    return [t.data_ptr() for p in (md.main, md.draft, md.cross) if p is not None
            for t in (p.cu_seqlens_q, p.seqused_k, p.page_table)]


def _capture_then_replay(scenario, capture_lens, replay_lens):
    """Capture each batch size, replay it with new lengths; compare with eager metadata."""
    backend = scenario.backend("anyattn")
    backend.init_cuda_graph_state(MAX_BS, MAX_BS * 8)
    for bs in (MAX_BS, 2):
        captured = scenario.shrink(*[lens[:bs] for lens in capture_lens])
        captured.run(backend, init=lambda fb: backend.init_forward_metadata_out_graph(fb, True))
        pointers = _storage(backend)
        step = scenario.shrink(*[lens[:bs] for lens in replay_lens], seed=bs)
        replayed = step.run(backend, init=backend.init_forward_metadata_out_graph)
        assert _storage(backend) == pointers, "replay must reuse the captured plan storage"
        eager = step.run(scenario.backend("anyattn"))
        torch.testing.assert_close(replayed, eager, atol=ATOL, rtol=ATOL)
        # Eager anyattn is checked against SGLang's own backends in test_modes/test_spec.


@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_graph(scenario_factory, page_size):
    s = scenario_factory(mode=ForwardMode.DECODE, prefix_lens=(40, 30, 20, 45), new_lens=(1,) * 4,
                         page_size=page_size)
    _capture_then_replay(s, ((9, 3, 17, 1), (1,) * 4), ((33, 12, 5, 44), (1,) * 4))


@pytest.mark.parametrize("topk,parents", [(1, [-1, 0, 1]), (2, [-1, 0, 0, 1])])
def test_target_verify_graph(scenario_factory, topk, parents):
    n = len(parents)
    s = scenario_factory(mode=ForwardMode.TARGET_VERIFY, prefix_lens=(40, 30, 20, 45),
                         new_lens=(n,) * 4, page_size=16, tree_parents=parents,
                         spec=Spec(topk=topk, num_draft_tokens=n, num_steps=n - 1))
    _capture_then_replay(s, ((9, 3, 17, 1), (n,) * 4), ((33, 12, 5, 44), (n,) * 4))


def test_draft_extend_graph(scenario_factory):
    s = scenario_factory(mode=ForwardMode.DRAFT_EXTEND_V2, prefix_lens=(40, 30, 20, 45),
                         new_lens=(3,) * 4, page_size=16,
                         spec=Spec(topk=1, num_draft_tokens=3, num_steps=2))
    _capture_then_replay(s, ((9, 3, 17, 1), (3,) * 4), ((33, 12, 5, 44), (3,) * 4))


def test_padded_replay_rows_do_not_disturb_real_rows(scenario_factory):
    """SGLang pads a replay to the captured batch: seq_len = fill value, request slot 0."""
    s = scenario_factory(mode=ForwardMode.DECODE, prefix_lens=(40, 30, 20, 45), new_lens=(1,) * 4)
    backend = s.backend("anyattn")
    backend.init_cuda_graph_state(MAX_BS, MAX_BS)
    s.run(backend, init=lambda fb: backend.init_forward_metadata_out_graph(fb, True))
    real = s.shrink((12, 7, 15), (1, 1, 1), seed=5)
    fill = backend.get_cuda_graph_seq_len_fill_value()
    fb = real.forward_batch()
    fb.batch_size = MAX_BS
    fb.req_pool_indices = torch.cat([fb.req_pool_indices, torch.zeros(1, dtype=torch.int32)])
    fb.seq_lens = torch.cat([fb.seq_lens, torch.tensor([fill], dtype=torch.int32)])
    fb.seq_lens_cpu = fb.seq_lens.clone()
    fb.out_cache_loc = torch.cat([fb.out_cache_loc, torch.zeros(1, dtype=torch.int64)])
    padded = real.shrink((12, 7, 15), (1, 1, 1), seed=5)
    padded.q = torch.cat([real.q, torch.randn(1, real.q.shape[1])])
    padded.k = torch.cat([real.k, torch.zeros(1, real.k.shape[1])])
    padded.v = torch.cat([real.v, torch.zeros(1, real.v.shape[1])])
    replayed = padded.run(backend, fb, init=backend.init_forward_metadata_out_graph)
    eager = real.run(s.backend("anyattn"))
    torch.testing.assert_close(replayed[:3], eager, atol=ATOL, rtol=ATOL)
