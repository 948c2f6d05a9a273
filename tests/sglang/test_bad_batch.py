"""A bad ForwardBatch is refused by init_forward_metadata, before any layer writes the pool:
key counts below the queries, a token table narrower than the keys (host bounds below the
device lengths), slots past the pool. These used to fail in the layer's attention, after
its K/V write."""
from __future__ import annotations

import pytest
import torch

from sglang.srt.model_executor.forward_batch_info import ForwardMode


def _seq_lens_below_queries(s, fb):  # request 1 has 4 new tokens
    fb.seq_lens[1] = fb.seq_lens_cpu[1] = 2


def _host_bound_below_device_lengths(s, fb):  # the token table is built from seq_lens_cpu
    fb.seq_lens_cpu = fb.seq_lens_cpu - 12


def _slot_past_pool(s, fb):  # a cached token of request 0
    r2t = s.runner.req_to_token_pool.req_to_token
    r2t[s.req_pool_indices[0], 0] = s.runner.token_to_kv_pool.size + 64


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("corrupt,match", [
    (_seq_lens_below_queries, "q_len > k_len for sequence 1"),
    (_host_bound_below_device_lengths, "page_table: .* columns, but seqused_k needs"),
    (_slot_past_pool, r"page_table: entries must lie in \[0, "),
])
def test_bad_batch_is_refused_before_any_write(scenario_factory, page_size, corrupt, match):
    s = scenario_factory(mode=ForwardMode.EXTEND, prefix_lens=(5, 20), new_lens=(3, 4),
                         page_size=page_size)
    fb = s.forward_batch()
    corrupt(s, fb)
    before = [t.clone() for t in s.runner.token_to_kv_pool.get_kv_buffer(0)]
    with pytest.raises(ValueError, match=match):
        s.run(s.backend("anyattn"), fb)
    assert all(torch.equal(a, b) for a, b in zip(before, s.runner.token_to_kv_pool.get_kv_buffer(0)))
