"""256K-token prefill and decode on one sequence: time and peak extra device memory.

Extra memory is the peak allocated during the call minus what q, the paged cache, the output
(and the key-side mask) already hold: no q_len x k_len tensor exists anywhere.
"""
from __future__ import annotations

import torch

from anyattn import core
from anyattn.core.semantics.params import AttnParams

from common import emit, paged_cache, plan_for, time_ms

HQ, HK, D, PAGE, N = 32, 8, 128, 16, 262144


def measure(rows, tag, q_len, **kw):
    k_cache, v_cache, table = paged_cache([N], HK, D, PAGE)
    q = torch.randn(q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    plan = plan_for([q_len], [N], table, HK, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    extra = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    core.attention(q, k_cache, v_cache, plan, params, out=out, **extra)  # compile
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    core.attention(q, k_cache, v_cache, plan, params, out=out, **extra)
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - held
    ms = time_ms(lambda: core.attention(q, k_cache, v_cache, plan, params, out=out, **extra))
    flops = 4 * q_len * N * HQ * D / (2 if q_len == N else 1)
    emit(rows, bench="long_context", shape=f"{tag} 1x{N}", impl="anyattn (paged)" + (
        " + key-side mask" if "attn_mask" in kw else ""), ms=ms, tflops=flops / ms / 1e9,
         peak_extra_mib=peak_extra / 2**20, held_mib=held / 2**20)
    del k_cache, v_cache, q, out
    torch.cuda.empty_cache()


def main() -> None:
    rows: list[dict] = []
    measure(rows, "prefill", N)
    measure(rows, "prefill", N, attn_mask=torch.rand(N, 1) < 0.9)
    measure(rows, "decode", 1)
    measure(rows, "decode", 1, attn_mask=torch.rand(N, 1) < 0.9)


if __name__ == "__main__":
    main()
