"""One vLLM attention step built by hand: real CommonAttentionMetadata, specs and caches,
run through anyattn's builder and impl, with the dense float64 oracle for the expected
output (shared by test_builder.py and test_vllm_kernels.py)."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm.config import set_current_vllm_config
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec

from anyattn.vllm_plugin.builder import AnyAttnMetadataBuilder
from anyattn.vllm_plugin.impl import AnyAttnImpl
from oracle import dense_attention

HQ, HK, D, PAGE, NUM_BLOCKS = 4, 2, 32, 16, 48
SCALE = D ** -0.5


def make_builder(vllm_config, spec=None):
    spec = spec or FullAttentionSpec(block_size=PAGE, num_kv_heads=HK, head_size=D,
                                     dtype=torch.float32)
    return AnyAttnMetadataBuilder(spec, ["layer.0"], vllm_config, torch.device("cpu"))


def make_impl(vllm_config, **kwargs):
    args = dict(alibi_slopes=None, sliding_window=None, kv_cache_dtype="auto")
    args.update(kwargs)
    with set_current_vllm_config(vllm_config):
        return AnyAttnImpl(HQ, D, SCALE, HK, **args)


def layer(k_scale=1.0, v_scale=1.0):
    """The attributes of vLLM's Attention layer that the impl (and vLLM's wrappers) read."""
    return SimpleNamespace(_k_scale=torch.tensor(k_scale), _v_scale=torch.tensor(v_scale),
                           kv_sharing_target_layer_name=None)


def kv_cache(layout: str, dtype=torch.float32) -> torch.Tensor:
    """vLLM's logical [num_blocks, Hk, block_size, 2D] over an NHD or HND physical layout."""
    if layout == "NHD":
        return torch.zeros(NUM_BLOCKS, PAGE, HK, 2 * D, dtype=dtype).transpose(1, 2)
    return torch.zeros(NUM_BLOCKS, HK, PAGE, 2 * D, dtype=dtype)


def oracle(q, k, v, *, causal=True, window=(-1, -1), softcap=0.0, sinks=None, **images):
    """Dense attention of q [Tq, HQ, D] over k/v [Tk, HK, D]; queries are the last Tq keys
    (``images``: the dense oracle's image_ids / image_in_window / alibi)."""
    out, _ = dense_attention(q, k, v, scale=SCALE, causal=causal, window=window,
                             softcap=softcap, sinks=sinks, **images)
    return out.float()


class Batch:
    """Random sequences laid out the way vLLM hands a step to the backend.

    ``q_lens``/``k_lens`` per request; the first ``k - q`` keys of each request were
    written by earlier steps (stored straight into the cache here), the last ``q`` arrive
    as this step's key/value. ``pad_reqs`` / ``pad_tokens`` add CUDA-graph-style padding.
    """

    def __init__(self, q_lens, k_lens, cache, *, pad_reqs=0, pad_tokens=0, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.q_lens, self.k_lens = list(q_lens), list(k_lens)
        n_pages = [-(-k // PAGE) for k in k_lens]
        pages = torch.randperm(NUM_BLOCKS, generator=g)[: sum(n_pages)].tolist()
        width = 512 // PAGE
        reqs = len(q_lens) + pad_reqs
        self.block_table = torch.zeros(reqs, width, dtype=torch.int32)
        self.keys, self.values, self.q = [], [], []
        slots, new_k, new_v = [], [], []
        kv = cache.transpose(1, 2)  # [blocks, page, Hk, 2D]
        for b, (ql, kl) in enumerate(zip(q_lens, k_lens)):
            own, pages = pages[: n_pages[b]], pages[n_pages[b]:]
            self.block_table[b, : len(own)] = torch.tensor(own, dtype=torch.int32)
            k = torch.randn(kl, HK, D, generator=g)
            v = torch.randn(kl, HK, D, generator=g)
            self.keys.append(k)
            self.values.append(v)
            self.q.append(torch.randn(ql, HQ, D, generator=g))
            for pos in range(kl):
                slot = own[pos // PAGE] * PAGE + pos % PAGE
                if pos < kl - ql:
                    kv[slot // PAGE, slot % PAGE, :, :D] = k[pos].to(cache.dtype)
                    kv[slot // PAGE, slot % PAGE, :, D:] = v[pos].to(cache.dtype)
                else:
                    slots.append(slot)
                    new_k.append(k[pos])
                    new_v.append(v[pos])
        total = sum(q_lens) + pad_tokens
        self.query = torch.cat(self.q + [torch.randn(pad_tokens, HQ, D, generator=g)])
        self.key = torch.stack(new_k + [torch.randn(HK, D, generator=g)] * pad_tokens)
        self.value = torch.stack(new_v + [torch.randn(HK, D, generator=g)] * pad_tokens)
        self.slot_mapping = torch.tensor(slots + [-1] * pad_tokens, dtype=torch.int64)
        qsl = torch.zeros(reqs + 1, dtype=torch.int32)
        qsl[1: len(q_lens) + 1] = torch.tensor(q_lens).cumsum(0)
        qsl[len(q_lens) + 1:] = qsl[len(q_lens)]
        seq_lens = torch.tensor(list(k_lens) + [0] * pad_reqs, dtype=torch.int32)
        self.cm = CommonAttentionMetadata(
            query_start_loc=qsl, query_start_loc_cpu=qsl.clone(), seq_lens=seq_lens,
            num_reqs=reqs, num_actual_tokens=total, max_query_len=max(q_lens),
            max_seq_len=max(k_lens), block_table_tensor=self.block_table,
            slot_mapping=self.slot_mapping, causal=True,
            seq_lens_cpu_upper_bound=seq_lens.clone())

    def expected(self, **kw) -> torch.Tensor:
        return torch.cat([oracle(q, k, v, **kw) for q, k, v in zip(self.q, self.keys, self.values)])


def run_step(builder, impl, batch, cache, lay=None, **kw):
    lay = lay or layer()
    meta = builder.build(0, batch.cm)
    impl.do_kv_cache_update(lay, batch.key, batch.value, cache, batch.slot_mapping)
    out = torch.full_like(batch.query, float("nan"))
    res = impl.forward(lay, batch.query, batch.key, batch.value, cache, meta, out)
    assert res is out
    return meta, out


CASES = {
    "decode": dict(q_lens=[1, 1, 1], k_lens=[1, 40, 97]),
    "prefill": dict(q_lens=[1, 33, 70], k_lens=[1, 33, 70]),
    "mixed": dict(q_lens=[1, 5, 50, 1], k_lens=[60, 20, 90, 17]),
    "padded": dict(q_lens=[1, 7, 1], k_lens=[30, 45, 9], pad_reqs=2, pad_tokens=5),
}


def image_ids(ranges, k_len):
    """One request's ``mm_req_doc_ranges`` (``end`` inclusive, as vLLM's model runner passes
    them) as the dense oracle's image id per key position."""
    ids = torch.full((k_len,), -1)
    for i, (start, end) in enumerate(ranges):
        ids[start:min(end + 1, k_len)] = i
    return ids


# Per request (q_len, k_len): a prefill; a chunk after 50 cached tokens (an earlier chunk or
# a prefix-cache hit); a decode; a text-only prefill.
SPAN_STEP = [(40, 40), (20, 70), (1, 60), (33, 33)]
# Their mm_req_doc_ranges (end inclusive): an image inside the prefill; for the chunk, an
# image its cached part ends inside and a later one this step does not reach; the decode's
# prompt image. SHORT_RANGES: no image longer than 8 tokens, what vLLM's model runner passes
# to a layer with an 8-token sliding window unless the model clamps its images in the kernel.
SPAN_RANGES = {0: [(5, 30)], 1: [(40, 59), (75, 90)], 2: [(10, 49)]}
SHORT_RANGES = {0: [(5, 11), (20, 27)], 1: [(48, 55)], 2: [(10, 14)]}


def span_batch(cache, ranges=SPAN_RANGES, seed=0):
    """A :class:`Batch` of ``SPAN_STEP`` with ``ranges`` as its ``mm_req_doc_ranges``."""
    batch = Batch([q for q, _ in SPAN_STEP], [k for _, k in SPAN_STEP], cache, seed=seed)
    batch.cm.mm_req_doc_ranges = {b: list(r) for b, r in ranges.items()}
    return batch


def span_expected(batch, **kw):
    """The dense oracle of a :func:`span_batch` step (its images as image ids)."""
    ranges = batch.cm.mm_req_doc_ranges
    return torch.cat([oracle(q, k, v, image_ids=image_ids(ranges.get(b, ()), k.shape[0]), **kw)
                      for b, (q, k, v) in enumerate(zip(batch.q, batch.keys, batch.values))])
