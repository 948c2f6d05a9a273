"""``GraphPlans``: per-role CUDA-graph storage, reserved at capture, reused by replays."""
from __future__ import annotations

import pytest
import torch

from anyattn.core import build_plan, uniform_cu_seqlens
from anyattn.core import GraphPlans


def _plan(rows: int, q: int, keys: list[int], width: int, page_size: int):
    return build_plan(uniform_cu_seqlens(rows, q, "cpu"), torch.tensor(keys, dtype=torch.int32),
                      max_seqlen_q=q, max_seqlen_k=width * page_size,
                      page_table=torch.arange(rows * width, dtype=torch.int32).view(rows, width),
                      page_size=page_size)


def _step(bs: int, n: int, keys: list[int]) -> dict:
    """A cascade step of ``bs`` requests with ``n`` draft tokens: prefix + draft plans."""
    return {"main": _plan(bs, n, keys, 4, 16),
            "draft": _plan(bs * n, 1, [1] * (bs * n), n, 1)}


def test_replays_reuse_the_captured_storage_with_new_contents():
    g = GraphPlans(4, num_kv_heads=2, device="cpu")
    captured = g.fill("verify", _step(4, 3, [1, 1, 1, 1]), 4, capture=True)
    small = g.fill("verify", _step(2, 3, [9, 30]), 2, capture=True)
    replay = g.fill("verify", _step(2, 3, [17, 5]), 2, capture=False)
    for role in ("main", "draft"):
        assert replay[role].seqused_k.data_ptr() == small[role].seqused_k.data_ptr() \
            == captured[role].seqused_k.data_ptr()
        assert replay[role].page_size == captured[role].page_size
    assert replay["main"].seqused_k.tolist() == [17, 5]
    assert replay["main"].page_size == 16 and replay["draft"].page_size == 1
    assert replay["draft"].batch_size == 6 and replay["main"].max_seqlen_q == 3


def test_a_replay_with_other_plans_or_widths_is_refused():
    g = GraphPlans(4, num_kv_heads=2, device="cpu")
    g.fill("verify", {"main": _plan(4, 3, [4] * 4, 4, 16)}, 4, capture=True)
    with pytest.raises(ValueError, match=r"needs \['draft', 'main'\], but its CUDA graph was "
                                         r"captured with \['main'\]"):
        g.fill("verify", _step(4, 3, [4] * 4), 4, capture=False)
    with pytest.raises(ValueError, match="has 5 queries per row, but its CUDA graph was "
                                         "captured with 3"):
        g.fill("verify", {"main": _plan(4, 5, [6] * 4, 4, 16)}, 4, capture=False)
    with pytest.raises(ValueError, match=r"needs \['main'\], but its CUDA graph was captured "
                                         r"with \[\]"):
        g.fill("decode", {"main": _plan(4, 1, [6] * 4, 4, 16)}, 4, capture=False)
