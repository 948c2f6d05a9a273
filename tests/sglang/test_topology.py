"""The speculative topology of a verify step comes from the batch (``spec_info``), and batch
and server settings that truly conflict are refused (before any KV-cache write)."""
from __future__ import annotations

import pytest
import torch

from harness import Spec
from oracle import dense_attention
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.speculative import eagle_utils

TREE = [-1, 0, 0, 1, 2]
N = len(TREE)


def _verify(scenario_factory, *, spec: Spec, batch_topk: int | None, tree=TREE, **kw):
    return scenario_factory(mode=ForwardMode.TARGET_VERIFY, prefix_lens=(2, 19, 33),
                            new_lens=(N,) * 3, page_size=16, tree_parents=tree, spec=spec,
                            batch_topk=batch_topk, **kw)


def test_tree_with_unset_settings_is_read_from_the_batch(scenario_factory):
    """Issue 13: settings say topk 0 (as SGLang's attention kit publishes them), the batch
    carries a tree with topk 2. anyattn computed it as a causal chain before."""
    s = _verify(scenario_factory, spec=Spec(topk=0, num_draft_tokens=N), batch_topk=2)
    ours = s.run(s.backend("anyattn"))
    torch.testing.assert_close(ours, s.run(s.backend("triton")), atol=2e-5, rtol=2e-5)
    chain = _verify(scenario_factory, spec=Spec(topk=0, num_draft_tokens=N), batch_topk=1,
                    tree=None)
    assert (ours - chain.run(chain.backend("anyattn"))).abs().max() > 1e-2


@pytest.mark.parametrize("spec,batch_topk,tree,match", [
    (Spec(topk=1, num_draft_tokens=N), 2, TREE, "topk 2, but the server runs with "
                                                 "--speculative-eagle-topk 1"),
    (Spec(topk=2, num_draft_tokens=N - 1), 2, TREE, f"{N} draft tokens per request, but the "
                                                     f"server runs with --speculative-num-draft"),
    (Spec(topk=0, num_draft_tokens=N), 1, TREE, "declared a chain \\(topk 1\\) but the draft "
                                                 "mask of request 0 is a tree"),
])
def test_conflicts_are_refused_before_any_write(scenario_factory, spec, batch_topk, tree, match):
    s = _verify(scenario_factory, spec=spec, batch_topk=batch_topk, tree=tree)
    backend = s.backend("anyattn")
    before = [t.clone() for t in s.runner.token_to_kv_pool.get_kv_buffer(0)]
    with pytest.raises(ValueError, match=match):
        s.run(backend)
    assert all(torch.equal(a, b) for a, b in zip(before, s.runner.token_to_kv_pool.get_kv_buffer(0)))


def test_tree_without_custom_mask_is_refused(scenario_factory):
    s = _verify(scenario_factory, spec=Spec(topk=2, num_draft_tokens=N), batch_topk=2)
    fb = s.forward_batch()
    fb.spec_info.custom_mask = None
    with pytest.raises(ValueError, match="spec_info.custom_mask is required"):
        s.backend("anyattn").init_forward_metadata(fb)


def test_cpu_engine_mask_layout(scenario_factory, monkeypatch):
    """SGLang's CPU engine writes QLEN_ONLY masks (n x n per request, no prefix columns);
    anyattn reads the layout SGLang reports, checked against the dense float64 oracle."""
    monkeypatch.setattr(eagle_utils, "default_tree_mask_mode",
                        lambda: eagle_utils.TreeMaskMode.QLEN_ONLY)
    s = _verify(scenario_factory, spec=Spec(topk=2, num_draft_tokens=N), batch_topk=2,
                qlen_only_mask=True)
    ours = s.run(s.backend("anyattn"))
    want = []
    for b, (p, draft) in enumerate(zip(s.prefix_lens, s.draft_masks())):
        k, v = s.request_kv(b)
        mask = torch.ones(N, p + N, dtype=torch.bool)
        mask[:, p:] = draft
        q = s.q[b * N:(b + 1) * N].view(N, s.num_heads, -1)
        out, _ = dense_attention(q, k, v, scale=s.layer.scaling, causal=False,
                                 mask=mask[None].expand(s.num_heads, -1, -1))
        want.append(out.reshape(N, -1))
    torch.testing.assert_close(ours.double(), torch.cat(want), atol=2e-5, rtol=2e-5)


def test_graph_replay_with_another_topology_is_refused(scenario_factory):
    """A graph captured for a chain cannot replay a tree (its kernels are fixed)."""
    s = _verify(scenario_factory, spec=Spec(topk=0, num_draft_tokens=N), batch_topk=1,
                tree=None)
    backend = s.backend("anyattn")
    backend.init_cuda_graph_state(4, 4 * N)
    s.run(backend, init=lambda fb: backend.init_forward_metadata_out_graph(fb, True))
    s.batch_topk, s.tree_parents = 2, TREE
    with pytest.raises(ValueError, match="captured with \\['main'\\]"):
        s.run(backend, init=backend.init_forward_metadata_out_graph)


def test_sliding_window_draft_decode_tree_is_refused_before_any_write(scenario_factory):
    """Multi-step draft decode with topk > 1 on a window layer: a clear error (its branches
    share one position, which the cascade's window does not express)."""
    from sglang.srt.speculative.eagle_info import EagleDraftInput
    from anyattn.sglang_backend.draft import AnyAttnMultiStepDraftBackend

    s = scenario_factory(mode=ForwardMode.DECODE, prefix_lens=(3, 9), new_lens=(6, 6),
                         sliding_window=4, spec=Spec(topk=2, num_draft_tokens=4, num_steps=3))
    container = AnyAttnMultiStepDraftBackend(s.runner, 2, 3)
    fb = s.forward_batch()
    fb.spec_info = EagleDraftInput()
    fb.out_cache_loc = torch.cat(s.new_slots).long()
    container.init_forward_metadata(fb)
    step = container.attn_backends[0]
    before = [t.clone() for t in s.runner.token_to_kv_pool.get_kv_buffer(0)]
    q = torch.zeros(4, s.q.shape[1])
    kv = torch.zeros(4, s.k.shape[1])
    with pytest.raises(NotImplementedError, match="sliding-window layers in multi-step draft"):
        step.forward_decode(q, kv, kv, s.layer, fb)
    assert all(torch.equal(a, b) for a, b in zip(before, s.runner.token_to_kv_pool.get_kv_buffer(0)))


@pytest.mark.parametrize("layer_kw,match", [
    (dict(sliding_window=N - 2), f"window of {N - 2} keys .* narrower than the {N} draft tokens"),
    (dict(attention_chunk=8), "chunked-local attention .* in a speculative cascade"),
])
def test_tree_layers_the_cascade_cannot_compute_are_refused_before_any_write(
        scenario_factory, layer_kw, match):
    s = _verify(scenario_factory, spec=Spec(topk=2, num_draft_tokens=N), batch_topk=2, **layer_kw)
    before = [t.clone() for t in s.runner.token_to_kv_pool.get_kv_buffer(0)]
    with pytest.raises(NotImplementedError, match=match):
        s.run(s.backend("anyattn"))
    assert all(torch.equal(a, b) for a, b in zip(before, s.runner.token_to_kv_pool.get_kv_buffer(0)))
