"""EAGLE modes through real SGLang objects, against SGLang's Triton backend (interpreter).

TARGET_VERIFY with topk 1 (a causal chain) and topk 2 / 4 (a draft tree from custom_mask,
attended by anyattn as a prefix pass + per-token draft pass merged by LSE), page sizes 1 and
16; DRAFT_EXTEND_V2.
"""
from __future__ import annotations

import pytest
import torch

from harness import Spec, count_kernel_launches
from sglang.srt.model_executor.forward_batch_info import ForwardMode

# Draft trees as parent lists (-1 = the root, the last verified token's successor).
TREES = {
    1: [-1, 0, 1, 2],
    2: [-1, 0, 0, 1, 2],
    4: [-1, 0, 0, 0, 0, 1],
}
ATOL = 2e-5


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("topk", sorted(TREES))
def test_target_verify_matches_triton(scenario_factory, topk, page_size):
    parents = TREES[topk]
    n = len(parents)
    s = scenario_factory(mode=ForwardMode.TARGET_VERIFY, prefix_lens=(2, 19, 33), new_lens=(n,) * 3,
                         page_size=page_size, tree_parents=parents,
                         spec=Spec(topk=topk, num_draft_tokens=n, num_steps=n - 1))
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("triton"))
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=ATOL)


def test_draft_extend_matches_triton(scenario_factory):
    s = scenario_factory(mode=ForwardMode.DRAFT_EXTEND_V2, prefix_lens=(5, 21), new_lens=(3, 3),
                         page_size=16, spec=Spec(topk=1, num_draft_tokens=3, num_steps=2))
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("triton"))
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("topk", [1, 2])
def test_target_verify_triton_kernels(scenario_factory, monkeypatch, topk):
    """anyattn's own Triton kernels (interpreter) on the verify cascade, small shapes."""
    monkeypatch.setenv("ANYATTN_IMPL", "triton")
    calls = count_kernel_launches(monkeypatch)
    parents = TREES[topk][:4]
    n = len(parents)
    s = scenario_factory(mode=ForwardMode.TARGET_VERIFY, prefix_lens=(2, 19), new_lens=(n,) * 2,
                         page_size=16, tree_parents=parents,
                         spec=Spec(topk=topk, num_draft_tokens=n, num_steps=n - 1))
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("triton"))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert calls, "the Triton kernels did not run"


@pytest.mark.parametrize("mode,topk", [(ForwardMode.EXTEND, 0), (ForwardMode.TARGET_VERIFY, 2)])
def test_sinks_match_triton(scenario_factory, mode, topk):
    """Attention sinks (one extra logit per head); in the cascade they join one half only."""
    parents = TREES[2]
    n = len(parents)
    s = scenario_factory(mode=mode, prefix_lens=(2, 11), new_lens=(n, n), page_size=16,
                         tree_parents=parents if topk else None,
                         spec=Spec(topk=topk, num_draft_tokens=n, num_steps=n - 1))
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    ours = s.run(s.backend("anyattn"), sinks=sinks)
    theirs = s.run(s.backend("triton"), sinks=sinks)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=ATOL)
    assert (s.run(s.backend("anyattn")) - ours).abs().max() > 1e-3
