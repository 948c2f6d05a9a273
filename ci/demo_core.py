"""Main job until an engine adapter lands: the kernels on a generated paged batch vs the reference.

Runs the Triton kernels (compiled on CUDA, interpreted on CPU) on a mixed prefill/decode batch
over a paged cache with pages in random order, and prints the agreement with the chunked
PyTorch reference and the time each took.
"""
from __future__ import annotations

import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from anyattn import core  # noqa: E402
from anyattn.core import build_plan, cu_seqlens  # noqa: E402
from anyattn.core.semantics.params import AttnParams  # noqa: E402
from anyattn.core.semantics.reference import reference_attention  # noqa: E402


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    torch.manual_seed(0)
    q_lens, k_lens = [37, 1, 1, 8], [300, 517, 64, 40]  # prefill with prefix, decodes, verify
    hq, hk, d, page = 8, 2, 64, 16
    pages = [(k + page - 1) // page for k in k_lens]
    perm = torch.randperm(sum(pages)).to(torch.int32)
    table = torch.zeros(len(k_lens), max(pages), dtype=torch.int32)
    start = 0
    for b, n in enumerate(pages):
        table[b, :n] = perm[start:start + n]
        start += n
    k_cache = torch.randn(sum(pages), page, hk, d, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(sum(q_lens), hq, d, device=device, dtype=dtype)
    plan = build_plan(cu_seqlens(torch.tensor(q_lens)).to(device),
                      torch.tensor(k_lens, dtype=torch.int32, device=device),
                      max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens),
                      page_table=table.to(device), page_size=page, num_kv_heads=hk)
    params = AttnParams(softmax_scale=d ** -0.5, causal=True)
    t0 = time.perf_counter()
    out = core.attention(q, k_cache, v_cache, plan, params)
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    ref, _ = reference_attention(q, k_cache, v_cache, plan, params)
    t2 = time.perf_counter()
    err = (out.float() - ref.float()).abs().max().item()
    mode = "compiled" if device == "cuda" else "interpreter"
    print(f"anyattn kernels ({mode}, {dtype}) on {len(q_lens)} sequences, q_lens={q_lens}, "
          f"k_lens={k_lens}, GQA {hq}/{hk}, d={d}, page {page}, splits={plan.num_splits}")
    print(f"max |kernel - reference| = {err:.2e}  "
          f"(kernel {1e3 * (t1 - t0):.0f} ms, reference {1e3 * (t2 - t1):.0f} ms)")
    ok = err < 2e-2 and not out.isnan().any()
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
