"""``core.plan.views``: a cache in the pages a plan counts in, FP8 descales as [batch, Hk]."""
from __future__ import annotations

import pytest
import torch

from anyattn.core import build_plan, uniform_cu_seqlens
from anyattn.core.plan.views import cache_view, expand_descale


def _plan(page_size):
    return build_plan(uniform_cu_seqlens(2, 1, "cpu"), torch.tensor([3, 5]), max_seqlen_q=1,
                      max_seqlen_k=8, page_table=torch.zeros(2, 8, dtype=torch.int32),
                      page_size=page_size)


def test_token_major_buffer_viewed_in_the_plans_pages():
    buf = torch.randn(70, 2, 8)  # SGLang's [num_slots, Hk, D]; 70 is not a multiple of 16
    pages = cache_view(buf, _plan(16))
    assert pages.shape == (4, 16, 2, 8) and pages.data_ptr() == buf.data_ptr()
    assert torch.equal(pages[2, 5], buf[2 * 16 + 5])
    assert torch.equal(cache_view(buf, _plan(1))[37, 0], buf[37])


def test_paged_cache_regrouped_or_left_alone():
    cache = torch.randn(5, 16, 2, 8)
    assert cache_view(cache, _plan(16)) is cache
    slots = cache_view(cache, _plan(1))
    assert slots.shape == (80, 1, 2, 8) and torch.equal(slots[3 * 16 + 7, 0], cache[3, 7])


def test_cache_whose_slots_are_not_evenly_spaced_is_refused():
    # vLLM's [blocks, Hk, block, D] storage viewed as NHD: slots of one block are not spaced
    # like the blocks themselves, so there is no token-major view.
    nhd = torch.randn(5, 2, 16, 8).transpose(1, 2)
    with pytest.raises(ValueError, match="cannot be viewed in pages of 1"):
        cache_view(nhd, _plan(1))


def test_contiguous_key_plans_take_the_cache_as_it_is():
    plan = build_plan(uniform_cu_seqlens(1, 2, "cpu"), torch.tensor([2]), max_seqlen_q=2,
                      max_seqlen_k=2, cu_seqlens_k=torch.tensor([0, 2]))
    keys = torch.randn(2, 2, 8)
    assert cache_view(keys, plan) is keys


@pytest.mark.parametrize("scale,values", [
    (0.5, [[0.5, 0.5]] * 3),
    (torch.tensor(0.25), [[0.25, 0.25]] * 3),
    (torch.tensor([[2.0]]), [[2.0, 2.0]] * 3),
    (torch.tensor([1.0, 3.0]), [[1.0, 3.0]] * 3),
])
def test_expand_descale_per_tensor_and_per_head(scale, values):
    got = expand_descale(scale, 3, 2, "cpu")
    assert got.dtype == torch.float32 and got.tolist() == values and got.stride(0) == 0


def test_expand_descale_bad_shape_and_none():
    assert expand_descale(None, 3, 2, "cpu") is None
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        expand_descale(torch.ones(3), 4, 2, "cpu")


def test_paged_plans_must_say_their_page_size():
    with pytest.raises(ValueError, match="page_size: required with page_table"):
        _plan(None)
