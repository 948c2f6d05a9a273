"""Extend / decode / mixed through real SGLang objects, against SGLang's torch_native backend."""
from __future__ import annotations

import pytest
import torch

from harness import count_kernel_launches
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


@pytest.mark.parametrize("mode,prefix_lens,new_lens", [
    (ForwardMode.EXTEND, (3, 9, 0), (5, 4, 12)),
    (ForwardMode.DECODE, (2, 8, 20), (1, 1, 1)),
])
def test_sliding_window_matches_torch_native(scenario_factory, mode, prefix_lens, new_lens):
    # SGLang's sliding_window_size (here 5) is the model's window minus one.
    s = scenario_factory(mode=mode, prefix_lens=prefix_lens, new_lens=new_lens, page_size=16,
                         sliding_window=5)
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("torch_native"))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=2e-5)


def test_softcap_matches_triton(scenario_factory):
    s = scenario_factory(mode=ForwardMode.EXTEND, prefix_lens=(4, 0), new_lens=(3, 6),
                         logit_cap=0.5)
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("triton"))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=2e-5)
    # The cap changes the result (so the comparison above exercises it).
    s.layer.logit_cap = 0.0
    assert (s.run(s.backend("anyattn")) - ours).abs().max() > 1e-3


@pytest.mark.parametrize("mode,new_lens", [(ForwardMode.EXTEND, (3, 5)),
                                           (ForwardMode.DECODE, (1, 1))])
def test_encoder_decoder_matches_torch_native(scenario_factory, mode, new_lens):
    """Decoder self-attention (tokens after the encoder's) and cross-attention."""
    s = scenario_factory(mode=mode, prefix_lens=(2, 6), new_lens=new_lens, encoder_lens=(7, 3))
    self_ours = s.run(s.backend("anyattn"))
    self_theirs = s.run(s.backend("torch_native"))
    torch.testing.assert_close(self_ours, self_theirs, atol=2e-5, rtol=2e-5)
    s.layer.is_cross_attention = True
    cross_ours = s.run(s.backend("anyattn"), write_kv=False)
    cross_theirs = s.run(s.backend("torch_native"), write_kv=False)
    torch.testing.assert_close(cross_ours, cross_theirs, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["extend_prefix", "decode"])
def test_triton_kernels_match_torch_native(scenario_factory, monkeypatch, name):
    """anyattn's own Triton kernels (interpreter), small shapes."""
    monkeypatch.setenv("ANYATTN_IMPL", "triton")
    calls = count_kernel_launches(monkeypatch)
    s = scenario_factory(page_size=16, **CASES[name])
    ours = s.run(s.backend("anyattn"))
    theirs = s.run(s.backend("torch_native"))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert calls, "the Triton kernels did not run"
