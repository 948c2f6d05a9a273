"""``core.spec_tree``: draft key lists from SGLang's custom mask, against direct expansions."""
from __future__ import annotations

import random

import pytest
import torch

from anyattn.core import spec_tree

from trees import ancestor_mask, custom_mask, random_parents


def _random_step(seed: int, prefix_lens: list[int], n: int):
    rng = random.Random(seed)
    masks = [ancestor_mask(random_parents(rng, n)) for _ in prefix_lens]
    return masks, custom_mask(masks, prefix_lens), torch.tensor(prefix_lens)


@pytest.mark.parametrize("seed", range(4))
def test_draft_visibility_is_the_draft_block_of_each_request(seed):
    masks, flat, prefix = _random_step(seed, [0, 7, 3, 19], 4 + seed)
    visible = spec_tree.draft_visibility(flat, prefix, 4 + seed)
    torch.testing.assert_close(visible, torch.cat(masks))


def test_draft_visibility_ignores_the_prefix_columns():
    """Only the last num_draft columns of each row are read: hiding a prefix key changes
    nothing (EAGLE trees see their whole prefix; the prefix pass reads it)."""
    masks, flat, prefix = _random_step(5, [6, 2], 3)
    flat[0] = False
    torch.testing.assert_close(spec_tree.draft_visibility(flat, prefix, 3), torch.cat(masks))


@pytest.mark.parametrize("seed", range(4))
def test_tree_token_table_lists_each_tokens_visible_slots_in_order(seed):
    n, prefix_lens = 5 + seed % 3, [4, 0, 11]
    masks, flat, prefix = _random_step(seed, prefix_lens, n)
    slots = torch.randperm(100, generator=torch.Generator().manual_seed(seed))[:3 * n].view(3, n)
    seqused, table = spec_tree.tree_token_table(flat, prefix, slots)
    assert seqused.dtype == table.dtype == torch.int32 and table.shape == (3 * n, n)
    for b in range(3):
        for i in range(n):
            row = b * n + i
            want = slots[b][masks[b][i]]
            assert int(seqused[row]) == len(want)
            assert table[row, :len(want)].tolist() == want.tolist()
            # Entries past seqused are slots of the same request (valid, never read).
            assert set(table[row].tolist()) <= set(slots[b].tolist())


def test_chain_token_table_gives_each_branch_its_first_tokens():
    branch_slots = torch.arange(24).view(6, 4)
    seqused, table = spec_tree.chain_token_table(branch_slots, 3)
    assert seqused.tolist() == [3] * 6
    assert table.tolist() == branch_slots[:, :3].tolist()


def test_token_table_plan_has_page_size_one_and_one_query_per_row():
    seqused, table = torch.tensor([1, 3, 2], dtype=torch.int32), torch.zeros(3, 4, dtype=torch.int32)
    plan = spec_tree.build_token_table_plan(seqused, table, num_kv_heads=2)
    assert plan.page_size == 1 and plan.max_seqlen_q == 1 and plan.max_seqlen_k == 4
    assert plan.cu_seqlens_q.tolist() == [0, 1, 2, 3]


def test_check_chain_accepts_a_chain_and_refuses_a_tree():
    chain = torch.ones(4, 4, dtype=torch.bool).tril()
    prefix = torch.tensor([3, 0, 5])
    spec_tree.check_chain(custom_mask([chain] * 3, [3, 0, 5]), prefix, 4)
    tree = ancestor_mask([-1, 0, 0, 1])
    with pytest.raises(ValueError, match="draft mask of request 2 is a tree"):
        spec_tree.check_chain(custom_mask([chain, chain, tree], [3, 0, 5]), prefix, 4)


@pytest.mark.parametrize("call,match", [
    (lambda: spec_tree.draft_visibility(torch.ones(2, 3, dtype=torch.bool), torch.tensor([1]), 1),
     "custom_mask: expected a flattened 1-D mask"),
    (lambda: spec_tree.draft_visibility(torch.ones(8, dtype=torch.bool), torch.tensor([[1]]), 2),
     "prefix_lens: expected"),
    (lambda: spec_tree.draft_visibility(torch.ones(8, dtype=torch.bool), torch.tensor([1]), 0),
     "num_draft: expected a positive"),
    (lambda: spec_tree.tree_token_table(torch.ones(8, dtype=torch.bool), torch.tensor([1, 2]),
                                        torch.zeros(3, 2, dtype=torch.int32)),
     "draft_slots: expected"),
    (lambda: spec_tree.chain_token_table(torch.zeros(4, 2, dtype=torch.int32), 3),
     "branch_slots/depth"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
