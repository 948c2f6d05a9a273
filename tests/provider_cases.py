"""What the device tests of the called providers (FA3, FA4) share: random batch lengths and the
comparison of a call against the reference."""
from __future__ import annotations

import math
import random

import torch


def random_lengths(rng: random.Random) -> tuple[list[int], list[int], int, int]:
    """``(q_lens, k_lens, num_kv_heads, group)``: 1-5 sequences, empty and 1-token ones among
    them, short and long keys, queries up to the keys; GQA 1/4/8/16 and MQA."""
    k_lens, q_lens = [], []
    for _ in range(rng.randint(1, 5)):
        k = rng.choice([0, 1, rng.randint(2, 200), rng.randint(200, 1500)])
        q = rng.choice([0, 1, rng.randint(1, max(1, k)), k]) if k else 0
        k_lens.append(k)
        q_lens.append(min(q, k))
    hk, group = rng.choice([(8, 1), (2, 4), (1, 8), (1, 16), (4, 4)])
    return q_lens, k_lens, hk, group


def assert_matches_reference(got: torch.Tensor, lse: torch.Tensor, ref: torch.Tensor,
                             ref_lse: torch.Tensor, tol: float) -> None:
    """Output and LSE against the reference; rows with nothing visible: LSE -inf in both."""
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    assert torch.equal(lse == -math.inf, ref_lse == -math.inf), "empty rows: LSE must be -inf"
    finite = ref_lse.isfinite()
    torch.testing.assert_close(lse[finite], ref_lse[finite], atol=tol, rtol=tol)
