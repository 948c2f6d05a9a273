"""``cascade_attention`` (prefix pass + draft pass + merge) against the dense float64 oracle.

Each case lays requests out as SGLang does: a token-major cache ``[num_slots, Hk, D]`` whose
whole pages are shuffled between requests (slot = page * page_size + offset), NaN wherever
no key lives; a request's prefix is read through its page ids, its draft tokens through the
key lists ``core.spec_tree`` builds from the flattened custom mask. The oracle attends each
draft token over the request's prefix and draft keys with a dense mask.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch

from anyattn import core
from anyattn.core import spec_tree
from anyattn.core import build_plan, page_table_from_token_table, uniform_cu_seqlens
from anyattn.core.semantics.params import AttnParams
from anyattn.core import AttnPlan

from batches import plan_to
from oracle import dense_attention, on_reference_path
from trees import ancestor_mask, custom_mask, random_parents

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = 3e-2 if DEVICE == "cuda" else 1e-4
FP8 = torch.float8_e4m3fn


@dataclass
class TreeStep:
    q: torch.Tensor             # [B * n, Hq, D]
    k_buf: torch.Tensor         # [num_slots, Hk, D], token-major like SGLang's pool
    v_buf: torch.Tensor
    slots: list[torch.Tensor]   # per request: the cache slot of each of its P + n tokens
    prefix_lens: list[int]
    draft_masks: list[torch.Tensor]
    prefix_plan: AttnPlan
    draft_plan: AttnPlan


def _slots(rng: random.Random, lens: list[int], page_size: int) -> list[torch.Tensor]:
    """Token slots of each request: whole pages in random order, page 0 left unused."""
    need = [-(-n // page_size) + 1 for n in lens]
    pages = list(range(1, 1 + sum(need)))
    rng.shuffle(pages)
    out = []
    for n, k in zip(lens, need):
        mine, pages = pages[:k], pages[k:]
        out.append(torch.tensor([mine[t // page_size] * page_size + t % page_size
                                 for t in range(n)], dtype=torch.int32))
    return out


def tree_step(prefix_lens: list[int], parents: list[list[int]], *, hq: int = 8, hk: int = 2,
              d: int = 32, page_size: int = 16, seed: int = 0,
              cache_dtype: torch.dtype | None = None) -> TreeStep:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    n = len(parents[0])
    lens = [p + n for p in prefix_lens]
    slots = _slots(rng, lens, page_size)
    num_slots = (2 + sum(-(-t // page_size) + 1 for t in lens)) * page_size
    k_buf = torch.full((num_slots, hk, d), math.nan)
    v_buf = torch.full((num_slots, hk, d), math.nan)
    for s in slots:
        k_buf[s.long()] = torch.randn(len(s), hk, d, generator=gen)
        v_buf[s.long()] = torch.randn(len(s), hk, d, generator=gen)
    q = torch.randn(len(prefix_lens) * n, hq, d, generator=gen)
    width = -(-max(lens) // page_size) * page_size
    table = torch.stack([torch.cat([s, s[-1:].expand(width - len(s))]) for s in slots])
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    prefix_plan = build_plan(uniform_cu_seqlens(len(prefix_lens), n, "cpu"), prefix,
                             max_seqlen_q=n, max_seqlen_k=max(prefix_lens),
                             page_table=page_table_from_token_table(table, page_size),
                             num_kv_heads=hk, page_size=page_size)
    draft_masks = [ancestor_mask(p) for p in parents]
    draft_slots = torch.stack([s[p:] for s, p in zip(slots, prefix_lens)])
    seqused, keys = spec_tree.tree_token_table(custom_mask(draft_masks, prefix_lens), prefix,
                                               draft_slots)
    draft_plan = spec_tree.build_token_table_plan(seqused, keys, num_kv_heads=hk)
    to = dict(device=DEVICE)
    if cache_dtype is not None:
        k_buf, v_buf = k_buf.to(cache_dtype), v_buf.to(cache_dtype)
    else:
        k_buf, v_buf = k_buf.to(DTYPE), v_buf.to(DTYPE)
    return TreeStep(q.to(DTYPE).to(**to), k_buf.to(**to), v_buf.to(**to), slots, prefix_lens,
                    draft_masks, _to_device(prefix_plan), _to_device(draft_plan))


def _to_device(plan: AttnPlan) -> AttnPlan:
    return plan_to(plan, DEVICE)


def expected(step: TreeStep, params: AttnParams, *, sinks=None, k_scale=1.0, v_scale=1.0):
    """Dense float64 attention of each request's draft tokens over its prefix + draft keys."""
    n = step.draft_masks[0].shape[0]
    hq = step.q.shape[1]
    outs = []
    for b, (s, p) in enumerate(zip(step.slots, step.prefix_lens)):
        k = step.k_buf[s.long().to(DEVICE)].double().cpu() * k_scale
        v = step.v_buf[s.long().to(DEVICE)].double().cpu() * v_scale
        mask = torch.ones(n, p + n, dtype=torch.bool)
        mask[:, p:] = step.draft_masks[b]
        out, _ = dense_attention(step.q[b * n:(b + 1) * n].cpu(), k, v, scale=params.softmax_scale,
                                 causal=False, window=(params.window_left, -1),
                                 softcap=params.softcap, mask=mask[None].expand(hq, -1, -1),
                                 sinks=None if sinks is None else sinks.cpu())
        outs.append(out)
    return torch.cat(outs)


IMPLS = ["triton", "reference"]


def cascade(impl: str, step: TreeStep, params: AttnParams, **kw) -> torch.Tensor:
    args = (step.q, step.k_buf, step.v_buf, step.prefix_plan, step.draft_plan, params)
    if impl == "reference":
        with on_reference_path():
            return core.cascade_attention(*args, **kw)
    return core.cascade_attention(*args, **kw)


# (prefix lengths, draft tokens, page size): prefixes of 0, shorter than the draft, page
# boundaries; 4-8 draft tokens; GQA 8/2.
TREE_CASES = [([0, 5, 37], 4, 16), ([16, 0, 9], 6, 1), ([3, 31, 17, 1], 8, 16), ([12, 2], 5, 1)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(TREE_CASES)))
def test_random_trees_against_dense(impl, case):
    prefix_lens, n, page_size = TREE_CASES[case]
    rng = random.Random(case)
    parents = [random_parents(rng, n) for _ in prefix_lens]
    step = tree_step(prefix_lens, parents, page_size=page_size, seed=case)
    params = AttnParams(softmax_scale=0.3)
    out = cascade(impl, step, params)
    torch.testing.assert_close(out.double().cpu(), expected(step, params), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("window", [6, 9, 30])
def test_sliding_window_against_dense(impl, window):
    """Draft token i at position P + i sees prefix keys from P + i - window (SGLang's
    convention); windows 6 and 9 cut into prefixes of 3, 11 and 30 for a 6-token tree."""
    rng = random.Random(window)
    prefix_lens = [3, 11, 30]
    parents = [random_parents(rng, 6) for _ in prefix_lens]
    step = tree_step(prefix_lens, parents, page_size=16, seed=window)
    params = AttnParams(softmax_scale=0.3, window_left=window)
    out = cascade(impl, step, params)
    want = expected(step, params)
    torch.testing.assert_close(out.double().cpu(), want, atol=TOL, rtol=TOL)
    if window < 30:
        full = expected(step, AttnParams(softmax_scale=0.3))
        assert (want - full).abs().max() > 1e-2, "the case does not exercise the window"


@pytest.mark.parametrize("impl", IMPLS)
def test_sinks_and_softcap_against_dense(impl):
    rng = random.Random(7)
    prefix_lens = [0, 7, 20]
    parents = [random_parents(rng, 5) for _ in prefix_lens]
    step = tree_step(prefix_lens, parents, page_size=1, seed=7)
    sinks = torch.linspace(-1.0, 2.0, 8, device=DEVICE)
    params = AttnParams(softmax_scale=0.3, softcap=2.0)
    out = cascade(impl, step, params, sinks=sinks)
    torch.testing.assert_close(out.double().cpu(), expected(step, params, sinks=sinks),
                               atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp8_cache_with_per_head_descales(impl):
    """Per-kv-head descales reach both passes, each expanded to its own row count."""
    rng = random.Random(3)
    prefix_lens = [9, 0, 21]
    parents = [random_parents(rng, 4) for _ in prefix_lens]
    step = tree_step(prefix_lens, parents, page_size=16, seed=3, cache_dtype=FP8)
    k_scale = torch.tensor([0.5, 2.0], device=DEVICE)
    v_scale = torch.tensor([0.25, 1.5], device=DEVICE)
    params = AttnParams(softmax_scale=0.3)
    out = cascade(impl, step, params, k_descale=k_scale, v_descale=v_scale)
    want = expected(step, params, k_scale=k_scale.cpu().double()[None, :, None],
                    v_scale=v_scale.cpu().double()[None, :, None])
    torch.testing.assert_close(out.double().cpu(), want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_draft_decode_branches_against_dense(impl):
    """Multi-step draft decode, topk 3: every branch's token sees the prefix (one prefix row
    per request, its branches as queries) and its own chain so far (chain_token_table)."""
    gen = torch.Generator().manual_seed(11)
    prefix_lens, topk, steps, depth, hq, hk, d = [4, 0, 19], 3, 3, 2, 4, 2, 16
    slots = _slots(random.Random(11), [p + topk * steps for p in prefix_lens], 16)
    k_buf = torch.randn(256, hk, d, generator=gen).to(DTYPE).to(DEVICE)
    v_buf = torch.randn(256, hk, d, generator=gen).to(DTYPE).to(DEVICE)
    q = torch.randn(len(prefix_lens) * topk, hq, d, generator=gen).to(DTYPE).to(DEVICE)
    width = 32
    table = torch.stack([torch.cat([s, s[-1:].expand(width - len(s))]) for s in slots])
    prefix_plan = build_plan(uniform_cu_seqlens(3, topk, "cpu"),
                             torch.tensor(prefix_lens, dtype=torch.int32), max_seqlen_q=topk,
                             max_seqlen_k=max(prefix_lens),
                             page_table=page_table_from_token_table(table, 16), num_kv_heads=hk,
                             page_size=16)
    branch_slots = torch.stack([s[p:].view(topk, steps) for s, p in zip(slots, prefix_lens)])
    seqused, keys = spec_tree.chain_token_table(branch_slots.view(-1, steps), depth)
    draft_plan = spec_tree.build_token_table_plan(seqused, keys, num_kv_heads=hk)
    params = AttnParams(softmax_scale=0.25)
    step = TreeStep(q, k_buf, v_buf, [], prefix_lens, [], _to_device(prefix_plan),
                    _to_device(draft_plan))
    out = cascade(impl, step, params)
    for b, (s, p) in enumerate(zip(slots, prefix_lens)):
        for k in range(topk):
            mine = torch.cat([s[:p], branch_slots[b, k, :depth]]).long().to(DEVICE)
            row = b * topk + k
            want, _ = dense_attention(q[row:row + 1].cpu(), k_buf[mine].cpu(), v_buf[mine].cpu(),
                                      scale=0.25, causal=False)
            torch.testing.assert_close(out[row:row + 1].double().cpu(), want, atol=TOL, rtol=TOL)


def _small_step() -> TreeStep:
    return tree_step([5, 2], [[-1, 0, 0, 1], [-1, 0, 1, 2]], page_size=1)


@pytest.mark.parametrize("params,error,match", [
    (AttnParams(softmax_scale=0.3, chunk_size=8), NotImplementedError, "chunked-local"),
    (AttnParams(softmax_scale=0.3, window_left=3), NotImplementedError, "narrower than the 4"),
    (AttnParams(softmax_scale=0.3, causal=False), ValueError, "causal"),
])
def test_unsupported_semantics_are_refused(params, error, match):
    step = _small_step()
    with pytest.raises(error, match=match):
        core.cascade_attention(step.q, step.k_buf, step.v_buf, step.prefix_plan,
                              step.draft_plan, params)


def test_draft_plan_must_have_one_row_per_token():
    step = _small_step()
    with pytest.raises(ValueError, match="draft_plan: expected one query per row and 8 rows"):
        core.cascade_attention(step.q, step.k_buf, step.v_buf, step.prefix_plan,
                              step.prefix_plan, AttnParams(softmax_scale=0.3))
