"""EAGLE multi-step draft decode (one backend per step), topk 1 and > 1, page sizes 1 and 16,
against SGLang's TritonMultiStepDraftBackend (interpreter) on the same draft layout."""
from __future__ import annotations

import pytest
import torch

from harness import HEAD_DIM, Spec, bind_batch
from sglang.srt.layers.attention.triton_backend import TritonMultiStepDraftBackend
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
from sglang.srt.speculative.eagle_info import EagleDraftInput
from sglang.srt.speculative.eagle_utils import per_step_draft_out_cache_loc

from anyattn.sglang_backend.draft import AnyAttnMultiStepDraftBackend

STEPS = 3


def _draft_positions(prefix: int, topk: int, page_size: int) -> list[list[int]]:
    """Token positions (in req_to_token) of each branch's draft tokens, as SGLang allocates
    them: after the prefix; with topk > 1 and pages, each branch starts a fresh page run
    whose first ``prefix % page_size`` slots duplicate the prefix tail."""
    if page_size == 1 or topk == 1:
        return [[prefix + k * STEPS + j for j in range(STEPS)] for k in range(topk)]
    tail = prefix % page_size
    pages_per_branch = -(-(tail + STEPS) // page_size)
    base = prefix - tail
    return [[base + k * pages_per_branch * page_size + tail + j for j in range(STEPS)]
            for k in range(topk)]


def _run_steps(s, container, fb, queries, keys, values, *, graph: bool = False
               ) -> list[torch.Tensor]:
    """All draft steps; ``graph`` builds the metadata through the CUDA-graph hooks (a
    capture, then a replay) instead of the eager entry point."""
    s.reset_cache()
    outs = []
    loc = fb.out_cache_loc
    per_step = per_step_draft_out_cache_loc(loc, fb.batch_size, container.topk, STEPS)
    with torch.no_grad():
        if graph:
            container.init_cuda_graph_state(4, 4 * container.topk)
            container.init_forward_metadata_out_graph(fb, in_capture=True)
            container.init_forward_metadata_out_graph(fb)
        else:
            container.init_forward_metadata(fb)
        for i, backend in enumerate(container.attn_backends):
            fb.out_cache_loc = per_step[i]
            with forward_context(ForwardContext(attn_backend=backend)):
                outs.append(s.layer(queries[i], keys[i], values[i], fb).float())
            fb.out_cache_loc = loc
    return outs


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("topk", [1, 2])
def test_draft_decode_matches_triton(scenario_factory, topk, page_size, graph):
    prefix_lens = (3, 20)
    positions = [_draft_positions(p, topk, page_size) for p in prefix_lens]
    new_lens = tuple(max(max(branch) for branch in pos) + 1 - p
                     for pos, p in zip(positions, prefix_lens))
    s = scenario_factory(mode=ForwardMode.DECODE, prefix_lens=prefix_lens, new_lens=new_lens,
                         page_size=page_size, spec=Spec(topk=topk, num_draft_tokens=STEPS + 1,
                                                        num_steps=STEPS))
    r2t = s.runner.req_to_token_pool.req_to_token
    loc = torch.stack([r2t[s.req_pool_indices[b], torch.tensor(positions[b])]
                       for b in range(s.batch)]).reshape(-1).long()
    bs = s.batch
    seq_lens = torch.tensor(prefix_lens, dtype=torch.int32)

    def batch() -> ForwardBatch:
        fb = ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs,
            input_ids=torch.zeros(bs * topk, dtype=torch.int64),
            req_pool_indices=s.req_pool_indices.clone(), seq_lens=seq_lens.clone(),
            seq_lens_cpu=seq_lens.clone(), out_cache_loc=loc.clone(),
            seq_lens_sum=int(seq_lens.sum()),
            positions=seq_lens.long().repeat_interleave(topk))
        bind_batch(s.runner, fb)
        fb.spec_info = EagleDraftInput()
        return fb

    g = torch.Generator().manual_seed(7)
    rows, hq, hk = bs * topk, s.num_heads, s.num_kv_heads
    queries = [torch.randn(rows, hq * HEAD_DIM, generator=g) for _ in range(STEPS - 1)]
    keys = [torch.randn(rows, hk * HEAD_DIM, generator=g) for _ in range(STEPS - 1)]
    values = [torch.randn(rows, hk * HEAD_DIM, generator=g) for _ in range(STEPS - 1)]
    ours = _run_steps(s, AnyAttnMultiStepDraftBackend(s.runner, topk, STEPS), batch(),
                      queries, keys, values, graph=graph)
    theirs = _run_steps(s, TritonMultiStepDraftBackend(s.runner, topk, STEPS), batch(),
                        queries, keys, values)
    for step, (mine, ref) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(mine, ref, atol=2e-5, rtol=2e-5, msg=f"draft step {step}")
