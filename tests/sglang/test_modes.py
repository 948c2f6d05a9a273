"""Extend / decode / mixed through real SGLang objects, against SGLang's torch_native backend."""
from __future__ import annotations

import pytest
import torch

from sglang.srt.model_executor.forward_batch_info import ForwardMode

CASES = {
    "extend_no_prefix": dict(mode=ForwardMode.EXTEND, prefix_lens=(0, 0), new_lens=(5, 9)),
    "extend_prefix": dict(mode=ForwardMode.EXTEND, prefix_lens=(3, 17, 0), new_lens=(4, 2, 6)),
    "mixed": dict(mode=ForwardMode.MIXED, prefix_lens=(7, 12), new_lens=(5, 1)),
    "decode": dict(mode=ForwardMode.DECODE, prefix_lens=(6, 15, 30), new_lens=(1, 1, 1)),
}


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_native(scenario_factory, name, page_size):
    s = scenario_factory(page_size=page_size, **CASES[name])
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("torch_native"))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=2e-5)
