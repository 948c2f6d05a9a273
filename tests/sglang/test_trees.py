"""Random EAGLE draft trees through real SGLang objects, against a dense float64 oracle.

Each request has its own random tree (a random parent array over 4-8 draft tokens), the
requests have different prefix lengths (0 included), GQA 8/2, page sizes 1 and 16. The
oracle attends each draft token over its request's prefix and its ancestors, rebuilt from
the cache snapshot and the step's k/v, independently of any backend.
"""
from __future__ import annotations

import random

import pytest
import torch

from harness import Spec, count_kernel_launches
from oracle import dense_attention
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from trees import random_parents

# (draft tokens, prefix lengths, page size)
CASES = [(4, (0, 23, 7), 16), (6, (13, 0, 2, 40), 1), (8, (5, 31), 16), (7, (0, 17, 9), 1)]


def _scenario(scenario_factory, case: int, *, window: int | None = None, topk: int = 4):
    n, prefix_lens, page_size = CASES[case]
    rng = random.Random(100 + case)
    return scenario_factory(
        mode=ForwardMode.TARGET_VERIFY, prefix_lens=prefix_lens, new_lens=(n,) * len(prefix_lens),
        page_size=page_size, num_heads=8, num_kv_heads=2, sliding_window=window,
        tree_parents=[random_parents(rng, n) for _ in prefix_lens],
        spec=Spec(topk=topk, num_draft_tokens=n, num_steps=n - 1), seed=case)


def expected(s, *, window: int = -1, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Draft token i of a request with prefix P sits at P + i; it sees the prefix (from
    P + i - window with a window) and its ancestors in the tree."""
    n, outs = s.new_lens[0], []
    for b, (p, draft) in enumerate(zip(s.prefix_lens, s.draft_masks())):
        k, v = s.request_kv(b)
        mask = torch.ones(n, p + n, dtype=torch.bool)
        mask[:, p:] = draft
        q = s.q[b * n:(b + 1) * n].view(n, s.num_heads, -1)
        out, _ = dense_attention(q, k, v, scale=s.layer.scaling, causal=False, window=(window, -1),
                                 mask=mask[None].expand(s.num_heads, -1, -1), sinks=sinks)
        outs.append(out.reshape(n, -1))
    return torch.cat(outs)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_random_trees(scenario_factory, case):
    s = _scenario(scenario_factory, case)
    torch.testing.assert_close(s.run(s.backend("anyattn")).double(), expected(s),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case", [0, 1])
def test_random_trees_sliding_window(scenario_factory, case):
    """A window of n + 2 keys (SGLang's sliding_window_size) cuts into the longer prefixes."""
    window = CASES[case][0] + 2
    s = _scenario(scenario_factory, case, window=window)
    want = expected(s, window=window)
    assert (want - expected(s)).abs().max() > 1e-2, "the case does not exercise the window"
    torch.testing.assert_close(s.run(s.backend("anyattn")).double(), want, atol=2e-5, rtol=2e-5)


def test_random_trees_with_sinks(scenario_factory):
    s = _scenario(scenario_factory, 2)
    sinks = torch.linspace(-1.0, 1.5, 8)
    torch.testing.assert_close(s.run(s.backend("anyattn"), sinks=sinks).double(),
                               expected(s, sinks=sinks), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case", [0, 3])
def test_random_trees_triton_kernels(scenario_factory, monkeypatch, case):
    """anyattn's own Triton kernels (interpreter) on the cascade."""
    monkeypatch.setenv("ANYATTN_IMPL", "triton")
    calls = count_kernel_launches(monkeypatch)
    s = _scenario(scenario_factory, case)
    torch.testing.assert_close(s.run(s.backend("anyattn")).double(), expected(s),
                               atol=1e-4, rtol=1e-4)
    assert len(calls) == 2, "the cascade is two attention launches (prefix, draft)"
