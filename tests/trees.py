"""Speculative-decoding draft trees for tests: parent arrays, masks, SGLang's custom_mask."""
from __future__ import annotations

import random

import torch


def random_parents(rng: random.Random, n: int) -> list[int]:
    """A random tree of ``n`` draft tokens: token 0 is the root (-1), every later token's
    parent is any earlier token (so chains, stars and everything between occur)."""
    return [-1] + [rng.randrange(i) for i in range(1, n)]


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """``[n, n]`` bool: token i sees token j when j is i or an ancestor of i."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


def custom_mask(draft_masks: list[torch.Tensor], prefix_lens: list[int]) -> torch.Tensor:
    """SGLang's flattened ``spec_info.custom_mask``: per request a row-major
    ``n x (prefix + n)`` block, prefix columns visible, then the request's draft mask."""
    blocks = []
    for draft, prefix in zip(draft_masks, prefix_lens):
        block = torch.ones(draft.shape[0], prefix + draft.shape[1], dtype=torch.bool)
        block[:, prefix:] = draft
        blocks.append(block.reshape(-1))
    return torch.cat(blocks)
