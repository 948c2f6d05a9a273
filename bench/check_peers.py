"""Check the fetched peers against anyattn's reference on tiny paged cases (CPU-runnable).

On CPU the Triton kernels run under TRITON_INTERPRET=1 (set here) in float16: the
interpreter's ``tl.dot`` on bfloat16 is wrong (triton 3.9), fp16 takes the same kernel path
(2-byte tiles). ``--device cuda`` runs them natively in bf16. GQA 32/8, head dim 128, page
16 in random order, as the benchmarks.
Prints one JSON line per case and exits non-zero on a mismatch or a missing peer.
Usage: bash bench/fetch_peers.sh && python bench/check_peers.py [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

HQ, HK, D, PAGE = 32, 8, 128, 16
# (case, q_lens, k_lens): the last q_lens[b] keys of each sequence are its queries.
CASES = [
    ("prefill + prefix (2D kernel)", [40, 17], [40, 50]),
    ("decode (split-KV 3D kernel)", [1, 1, 1], [37, 100, 16]),
    ("verify q_len 4 (split-KV 3D kernel)", [4, 4], [30, 64]),
    ("decode, batch over split threshold (2D kernel)", [1] * 17, [20 + 3 * b for b in range(17)]),
]
TOLERANCE = 2e-2  # 16-bit output against a float32-accumulated oracle


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        # The interpreter's numpy reports inf/nan arithmetic on masked lanes; outputs are checked.
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    import torch

    from anyattn.core import build_plan, cu_seqlens
    from anyattn.core.semantics.params import AttnParams
    from anyattn.core.semantics.reference import reference_attention
    from peers import VLLM_UNIFIED, load_vllm_unified, vllm_unified_call

    kernel, why = load_vllm_unified()
    if kernel is None:
        print(json.dumps({"peer": VLLM_UNIFIED, "skipped": why}))
        return 1
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float16
    gen = torch.Generator().manual_seed(0)
    failed = 0
    for name, q_lens, k_lens in CASES:
        pages = [(k + PAGE - 1) // PAGE for k in k_lens]
        perm = torch.randperm(sum(pages), generator=gen).to(torch.int32)
        table = torch.zeros(len(k_lens), max(pages), dtype=torch.int32)
        for b, start in enumerate(torch.tensor([0] + pages).cumsum(0)[:-1].tolist()):
            table[b, :pages[b]] = perm[start:start + pages[b]]
        k, v = (torch.randn(sum(pages), PAGE, HK, D, generator=gen).to(dtype) for _ in range(2))
        q = torch.randn(sum(q_lens), HQ, D, generator=gen).to(dtype)
        params = AttnParams(softmax_scale=D ** -0.5)
        plan = build_plan(cu_seqlens(torch.tensor(q_lens)), torch.tensor(k_lens, dtype=torch.int32),
                          max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens), page_table=table,
                          page_size=PAGE, num_kv_heads=HK)
        ref, _ = reference_attention(q, k, v, plan, params)
        dev = torch.device(args.device)
        q, k, v, table = (t.to(dev) for t in (q, k, v, table))
        out = torch.full_like(q, float("nan"))
        vllm_unified_call(kernel, q, k, v, table, q_lens, k_lens, params.softmax_scale, out)()
        err = (out.cpu().float() - ref.float()).abs().max().item()
        ok = err <= TOLERANCE
        failed += not ok
        print(json.dumps({"peer": VLLM_UNIFIED, "case": name, "device": args.device,
                          "dtype": str(dtype), "max_abs_err": err, "ok": ok}), flush=True)
    print(f"{len(CASES) - failed}/{len(CASES)} cases agree with anyattn's reference")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
