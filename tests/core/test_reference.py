"""The chunked reference against a naive dense float64 softmax."""
import math
import random

import pytest
import torch

from anyattn.core.semantics.params import AttnParams
from anyattn.core.semantics.reference import merge_state_reference, reference_attention

from batches import dense_attention, paged_batch, sequence_kv

FEATURES = [
    dict(),
    dict(causal=False),
    dict(window=(7, 0)),
    dict(window=(5, 3), causal=False),
    dict(chunk=16),
    dict(softcap=5.0),
    dict(sinks=True),
    dict(window=(20, 0), softcap=2.0, sinks=True),
]


@pytest.mark.parametrize("feat", FEATURES, ids=lambda f: "-".join(f) or "causal")
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_dense(feat, seed):
    rng = random.Random(seed)
    hk = rng.choice([1, 2])
    hq = hk * rng.choice([1, 4])
    k_lens = [rng.randint(1, 90) for _ in range(3)]
    q_lens = [rng.randint(1, k) for k in k_lens]
    batch = paged_batch(q_lens, k_lens, hq=hq, hk=hk, d=16, dv=8 if seed else 16,
                        page_size=rng.choice([1, 4, 16]), seed=seed)
    sinks = torch.randn(hq) if feat.get("sinks") else None
    window = feat.get("window", (-1, -1))
    params = AttnParams(softmax_scale=0.3, causal=feat.get("causal", True), window_left=window[0],
                        window_right=window[1], chunk_size=feat.get("chunk", 0),
                        softcap=feat.get("softcap", 0.0))
    # Small chunks so the online softmax crosses several chunk boundaries.
    out, lse = reference_attention(batch.q, batch.k_cache, batch.v_cache, batch.plan, params,
                                   sinks=sinks, q_chunk=5, k_chunk=7)
    start = 0
    for b, (lq, lk) in enumerate(zip(q_lens, k_lens)):
        k, v = sequence_kv(batch, b, lk)
        ref_o, ref_lse = dense_attention(batch.q[start:start + lq], k, v, scale=0.3,
                                         causal=params.causal, window=window,
                                         chunk=params.chunk_size, softcap=params.softcap,
                                         sinks=sinks)
        torch.testing.assert_close(out[start:start + lq].double(), ref_o, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[:, start:start + lq].double(), ref_lse, atol=1e-5, rtol=1e-5)
        start += lq


def test_reference_empty_rows_are_zero_not_nan():
    """Non-causal attention over an empty prefix (the cascade's first step): 0 and LSE -inf."""
    batch = paged_batch([3, 2], [0, 5], hq=4, hk=2, d=16)
    out, lse = reference_attention(batch.q, batch.k_cache, batch.v_cache, batch.plan,
                                   AttnParams(softmax_scale=0.25, causal=False))
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))
    assert bool(torch.isneginf(lse[:, :3]).all())
    assert not out.isnan().any()


def test_merge_state_reference_equals_unsplit():
    torch.manual_seed(0)
    q, k, v = torch.randn(6, 4, 16), torch.randn(40, 2, 16), torch.randn(40, 2, 16)
    whole_o, whole_lse = dense_attention(q, k, v, scale=0.25, causal=False)
    a_o, a_lse = dense_attention(q, k[:13], v[:13], scale=0.25, causal=False)
    b_o, b_lse = dense_attention(q, k[13:], v[13:], scale=0.25, causal=False)
    o, lse = merge_state_reference(a_o.float(), a_lse.float(), b_o.float(), b_lse.float())
    torch.testing.assert_close(o.double(), whole_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), whole_lse, atol=1e-5, rtol=1e-5)
    empty = torch.full_like(a_lse, -math.inf).float()
    o2, lse2 = merge_state_reference(a_o.float(), empty, a_o.float() * 0, empty)
    assert torch.equal(o2, torch.zeros_like(o2)) and bool(torch.isneginf(lse2).all())
