"""Sweep tile shapes for prefill (4x4K by default) and decode 64x4K (GQA 32/8, d 128, bf16,
page 16).

Prints one JSON line per config; the winners go into ``core.kernels.attention.tile_config``.
Usage: python bench/tune.py [--prefill-shapes 4x4096,16x1024] [--no-decode]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from anyattn.core.providers import Call
from anyattn.core.providers.triton.attention import run_attention
from anyattn.core.semantics.params import AttnParams

from common import emit, paged_cache, plan_for, time_ms

HQ, HK, D, PAGE = 32, 8, 128, 16


def sweep(rows, tag, batch, q_len, k_len, configs, flop_or_byte):
    k_cache, v_cache, table = paged_cache([k_len] * batch, HK, D, PAGE)
    q = torch.randn(batch * q_len, HQ, D, device="cuda", dtype=torch.bfloat16)
    plan = plan_for([q_len] * batch, [k_len] * batch, table, HK, PAGE)
    params = AttnParams(softmax_scale=D ** -0.5)
    out = torch.empty_like(q)
    for bm, bn, w, st in configs:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
        try:
            call = Call(q, k_cache, v_cache, plan, params, out, want_lse=False)
            memo: dict = {}
            ms = time_ms(lambda: run_attention(call, cfg, memo))
            emit(rows, bench=f"tune_{tag}", shape=f"{batch}x{k_len}", impl=str(cfg), ms=ms,
                 rate=flop_or_byte / ms / 1e9)
        except Exception as e:
            emit(rows, bench=f"tune_{tag}", shape=f"{batch}x{k_len}", impl=str(cfg), error=str(e)[:100])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill-shapes", default="4x4096")
    ap.add_argument("--no-decode", action="store_true")
    args = ap.parse_args()
    rows: list[dict] = []
    prefill = [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 32, 4, 3),
               (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 3), (128, 64, 4, 3)]
    for shape in args.prefill_shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        sweep(rows, "prefill", batch, seq, seq, prefill, 4 * batch * seq * seq * HQ * D / 2)
    if not args.no_decode:
        decode = [(16, bn, w, st) for bn, w, st in itertools.product((64, 128, 256), (4, 8), (2, 3, 4))]
        sweep(rows, "decode", 64, 1, 4096, decode, 2 * 64 * 4096 * HK * D * 2)
    for r in rows:
        r.setdefault("rate", 0.0)
    for key in dict.fromkeys((r["bench"], r["shape"]) for r in rows):
        best = max((r for r in rows if (r["bench"], r["shape"]) == key), key=lambda r: r["rate"])
        print(f"best {key[0]} {key[1]}: {best['impl']} {best['rate']:.2f}")


if __name__ == "__main__":
    main()
