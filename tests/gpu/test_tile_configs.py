"""Every tile config the device picks, at the model shape (GQA 32/8, head dim 128, bf16), with
every mask/bias layout: each launch must fit the SM's shared memory (the interpreter has no
such limit, and the CPU tests use small heads) and match the reference."""
import pytest
import torch

from anyattn import core
from anyattn.core import build_plan, cu_seqlens
from anyattn.core.semantics.params import AttnParams
from oracle import reference_path

HQ, HK, D, PAGE = 32, 8, 128, 16
LAYOUTS = [None, "key", "query"]


def _layout(kind, layout, total_q, total_k, max_k, gen):
    if layout is None:
        return None
    shape = (total_k, 1) if layout == "key" else (total_q, HK, max_k)
    if kind == "mask":
        return torch.rand(shape, generator=gen, device="cuda") < 0.8
    return torch.randn(shape, generator=gen, device="cuda")


@pytest.mark.parametrize("mask_layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("bias_layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("q_len,k_len", [(300, 300), (8, 700), (1, 3000)],
                         ids=["prefill", "verify", "decode"])
def test_configs_fit_and_match_reference(q_len, k_len, mask_layout, bias_layout):
    gen = torch.Generator(device="cuda").manual_seed(q_len + k_len)
    batch = 2
    pages = (k_len + PAGE - 1) // PAGE
    table = torch.randperm(batch * pages, generator=gen, device="cuda").int().view(batch, pages)
    k_cache = torch.randn(batch * pages, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    v_cache = torch.randn(batch * pages, PAGE, HK, D, generator=gen, device="cuda").bfloat16()
    q = torch.randn(batch * q_len, HQ, D, generator=gen, device="cuda").bfloat16()
    plan = build_plan(cu_seqlens(torch.tensor([q_len] * batch, device="cuda")),
                      torch.full((batch,), k_len, dtype=torch.int32, device="cuda"),
                      max_seqlen_q=q_len, max_seqlen_k=k_len, page_table=table, page_size=PAGE,
                      num_kv_heads=HK)
    kw = dict(attn_mask=_layout("mask", mask_layout, q.shape[0], batch * k_len, k_len, gen),
              attn_bias=_layout("bias", bias_layout, q.shape[0], batch * k_len, k_len, gen))
    params = AttnParams(softmax_scale=D ** -0.5, causal=True)
    got = core.attention(q, k_cache, v_cache, plan, params, **kw)
    want = reference_path(q, k_cache, v_cache, plan, params, **kw)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
