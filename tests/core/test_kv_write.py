"""KV-cache write kernel against indexed assignment, incl. padding, strided and fp8 caches."""
import pytest
import torch

from anyattn import core

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _expected(k, v, k_cache, v_cache, slots, scale=1.0):
    ek, ev = k_cache.clone(), v_cache.clone()
    ps = k_cache.shape[1]
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            ek[s // ps, s % ps] = (k[t].float() / scale).to(ek.dtype)
            ev[s // ps, s % ps] = (v[t].float() / scale).to(ev.dtype)
    return ek, ev


@pytest.mark.parametrize("layout", ["nhd", "vllm"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_kv_write_matches_indexing(layout, page_size):
    gen = torch.Generator().manual_seed(page_size)
    pages, hk, d, dv = 6, 2, 32, 16
    if layout == "vllm":
        kv = torch.randn(pages, hk, page_size, d + dv, generator=gen).to(DEVICE)
        k_cache, v_cache = kv[..., :d].transpose(1, 2), kv[..., d:].transpose(1, 2)
    else:
        k_cache = torch.randn(pages, page_size, hk, d, generator=gen).to(DEVICE)
        v_cache = torch.randn(pages, page_size, hk, dv, generator=gen).to(DEVICE)
    n = 5
    k = torch.randn(n, hk, d, generator=gen).to(DEVICE)
    v = torch.randn(n, hk, dv, generator=gen).to(DEVICE)
    slots = torch.randperm(pages * page_size, generator=gen)[:n].to(DEVICE)
    slots[2] = -1
    ek, ev = _expected(k.cpu(), v.cpu(), k_cache.cpu(), v_cache.cpu(), slots.cpu())
    core.write_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.cpu(), ek) and torch.equal(v_cache.cpu(), ev)


@pytest.mark.parametrize("representable", [True, False])
def test_kv_write_fp8_with_scale(representable):
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.zeros(4, 16, 2, 32, dtype=torch.float8_e4m3fn, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k, v = (torch.randn(3, 2, 32, generator=gen) for _ in range(2))
    if representable:
        k, v = (x.to(torch.float8_e4m3fn).float() * 0.5 for x in (k, v))
    slots = torch.tensor([5, -1, 40], device=DEVICE)
    ek, ev = _expected(k, v, k_cache.cpu(), v_cache.cpu(), slots.cpu(), scale=0.5)
    core.write_kv_cache(k.to(DEVICE), v.to(DEVICE), k_cache, v_cache, slots,
                       k_scale=torch.tensor([0.5], device=DEVICE), v_scale=0.5)
    assert torch.equal(k_cache.cpu().float(), ek.float())
    assert torch.equal(v_cache.cpu().float(), ev.float())


@pytest.mark.parametrize("layout", ["nhd", "vllm"])
def test_writes_of_one_signature_use_their_own_tensors(layout):
    """A write signature's checks and launch are prepared once; each later write with it
    must still store its own keys at its own slots, into the cache it is given (an engine's
    layers each have their own cache of one layout)."""
    gen = torch.Generator().manual_seed(3)
    pages, page_size, hk, d = 5, 4, 2, 16
    caches = []
    for _ in range(2):
        if layout == "vllm":
            kv = torch.randn(pages, hk, page_size, 2 * d, generator=gen).to(DEVICE)
            caches.append((kv[..., :d].transpose(1, 2), kv[..., d:].transpose(1, 2)))
        else:
            caches.append(tuple(torch.randn(pages, page_size, hk, d, generator=gen).to(DEVICE)
                                for _ in range(2)))
    for step in range(4):
        k_cache, v_cache = caches[step % 2]
        k, v = (torch.randn(3, hk, d, generator=gen).to(DEVICE) for _ in range(2))
        slots = torch.randperm(pages * page_size, generator=gen)[:3].to(DEVICE)
        slots[step % 3] = -1
        ek, ev = _expected(k.cpu(), v.cpu(), k_cache.cpu(), v_cache.cpu(), slots.cpu())
        core.write_kv_cache(k, v, k_cache, v_cache, slots)
        assert torch.equal(k_cache.cpu(), ek) and torch.equal(v_cache.cpu(), ev)
