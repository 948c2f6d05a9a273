"""Cross-compile (no launch, no GPU) FA4's forward kernel for every variant anyattn's FA4
provider routes to it, through ``run_fa4`` itself on fake tensors: checks that the CuTe-DSL
modifiers (``core/providers/fa4_mods.py``) trace and compile with an install's FA4 and CuTe DSL,
and that a variant's second call hits FA4's compile cache.

Needs an FA4 install on the path (flash-attn-4's ``flash_attn.cute``, or a vLLM tree whose
``vllm.vllm_flash_attn.cute`` imports) with its CuTe DSL, and torch; no CUDA device. Usage:
    FLASH_ATTENTION_ARCH=sm_90 CUTE_DSL_ARCH=sm_90a FLASH_ATTENTION_NUM_SMS=132 \\
        python ci/fa4_compile.py [CASE ...]
(``sm_100`` / ``sm_100a`` / 148 for Blackwell). Prints one line per case, exits 1 on a failure.
"""
from __future__ import annotations

import sys
import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from anyattn.core import AttnParams, build_plan
from anyattn.core.providers import Call, fa4

B, TOTAL_Q, MAX_Q, MAX_K, PAGES = 4, 1024, 512, 1024, 512

# name -> (params, ALiBi, spans per sequence, sinks, head dim, page size, GQA group, paged)
CASES = {
    "plain": (AttnParams(softmax_scale=0.1), False, 0, False, 128, 16, 4, True),
    "alibi": (AttnParams(softmax_scale=0.1), True, 0, False, 128, 16, 4, True),
    "alibi bidirectional softcap": (AttnParams(softmax_scale=0.1, causal=False, softcap=30.0),
                                    True, 0, False, 128, 16, 4, True),
    "alibi window": (AttnParams(softmax_scale=0.1, window_left=100), True, 0, False, 64, 1, 1,
                     True),
    "alibi d256 page64": (AttnParams(softmax_scale=0.1), True, 0, False, 256, 64, 8, True),
    "alibi contiguous": (AttnParams(softmax_scale=0.1), True, 0, False, 128, 0, 4, False),
    "spans": (AttnParams(softmax_scale=0.1), False, 2, False, 128, 16, 4, True),
    "spans window": (AttnParams(softmax_scale=0.1, window_left=64), False, 2, False, 128, 16, 4,
                     True),
    "spans in window": (AttnParams(softmax_scale=0.1, window_left=64, spans_in_window=True),
                        False, 3, False, 128, 16, 4, True),
    "spans bidirectional window": (AttnParams(softmax_scale=0.1, causal=False, window_left=64,
                                              window_right=5), False, 2, False, 128, 16, 4, True),
    "spans bidirectional right window": (AttnParams(softmax_scale=0.1, causal=False,
                                                    window_right=7), False, 1, False, 128, 16, 4,
                                         True),
    "alibi spans sinks": (AttnParams(softmax_scale=0.1), True, 2, True, 128, 16, 4, True),
    "alibi slopes in kernel": (AttnParams(softmax_scale=0.1), True, 0, False, 128, 16, 4, True),
    "alibi spans slopes in kernel": (AttnParams(softmax_scale=0.1), True, 2, False, 128, 16, 4,
                                     True),
}
# ALiBi cases compile the slopes in (read to the host first, as fa4.host_slopes does on a
# GPU); these read them from an aux tensor, as a call first seen in a CUDA-graph capture does.
IN_KERNEL = {"alibi slopes in kernel", "alibi spans slopes in kernel"}


def heads(group: int) -> tuple[int, int]:
    hk = 8 // min(group, 8)
    return hk * group, hk


def call_for(params, alibi, spans, sinks, d, page, group, paged, slopes=None) -> Call:
    """A fake-tensor call on the CUDA device (inside FakeTensorMode); ``slopes``: real ALiBi
    slopes already read to the host (else, with ``alibi``, a fake tensor read in the kernel)."""
    dev = torch.device("cuda")
    hq, hk = heads(group)
    i32 = dict(dtype=torch.int32, device=dev)
    q = torch.empty(TOTAL_Q, hq, d, dtype=torch.bfloat16, device=dev)
    cu_q, used = torch.empty(B + 1, **i32), torch.empty(B, **i32)
    if paged:
        k = torch.empty(PAGES, page, hk, d, dtype=torch.bfloat16, device=dev)
        keys = dict(page_table=torch.empty(B, MAX_K // page, **i32), page_size=page)
    else:
        k = torch.empty(B * MAX_K, hk, d, dtype=torch.bfloat16, device=dev)
        keys = dict(cu_seqlens_k=torch.empty(B + 1, **i32))
    table = (torch.empty(B, spans, 2, **i32), torch.empty(B, **i32)) if spans else None
    plan = build_plan(cu_q, used, max_seqlen_q=MAX_Q, max_seqlen_k=MAX_K, num_splits=1,
                      spans=table, **keys)
    return Call(q, k, torch.empty_like(k), plan, params, torch.empty_like(q), True,
                sinks=torch.empty(hq, dtype=torch.bfloat16, device=dev) if sinks else None,
                alibi_slopes=slopes if slopes is not None else (
                    torch.empty(hq, dtype=torch.float32, device=dev) if alibi else None),
                spans=bool(spans) and params.use_spans)


def main(names: list[str]) -> int:
    src = fa4.source()
    if src is None:
        print(f"FA4: {fa4.unavailable(torch.device('cpu'))}")
        return 1
    cache = src.forward.compile_cache.cache
    capturing, failed = fa4._capturing, 0
    for name in names or CASES:
        case, in_kernel = CASES[name], name in IN_KERNEL
        slopes = None
        if case[1] and not in_kernel:  # host values, cached by fa4.host_slopes (no op later)
            hq = heads(case[6])[0]
            slopes = 2.0 ** (-8.0 * torch.arange(1, hq + 1) / hq)
            fa4.host_slopes(slopes)
        fa4._capturing = (lambda t: True) if in_kernel else capturing
        try:
            with FakeTensorMode():
                call = call_for(*case, slopes=slopes)
                memo: dict = {}
                start, before = time.time(), len(cache)
                fa4.run_fa4(call, memo)
                compiled, seconds = len(cache) - before, time.time() - start
                fa4.run_fa4(call, memo)  # the next layer of the same kind: a cache hit
                again = len(cache) - before - compiled
            print(f"{name}: compiled {compiled} kernel(s) in {seconds:.1f} s, "
                  f"{again} more on the second call ({src.name})", flush=True)
            failed += again != 0
        except Exception as e:  # report every case
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:2000]}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
