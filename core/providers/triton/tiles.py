"""Tile shapes and launch settings of the attention kernel, from static sizes only."""
from __future__ import annotations

import torch


def tile_config(head_dim: int, rows_per_seq: int, max_keys: int, deterministic: bool,
                device: torch.device, num_splits: int = 1) -> dict:
    """Tile shape and launch settings, chosen from static sizes only (never autotuned).

    ``rows_per_seq`` is ``max_seqlen_q * group``: the packed rows one sequence contributes;
    ``max_keys`` is ``max_seqlen_k``, split ``num_splits`` ways. Deterministic mode uses one
    shape for every batch so a row's reduction order is fixed. Picked on the H100 with
    ``bench/tune.py`` and a small-batch split sweep (graph replays).
    """
    if device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1)
    big_d = head_dim > 128
    if deterministic or rows_per_seq > 64:
        if not (deterministic or big_d) and max_keys <= 1024:
            # Short rows: narrow key tiles and 4 warps need less shared memory and fewer
            # registers per program, so more programs share an SM (16x1K: +14%).
            return dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=3)
        return dict(BLOCK_M=64 if big_d else 128, BLOCK_N=32 if big_d else 128,
                    num_warps=8, num_stages=2 if big_d else 3)
    block_m = 16 if rows_per_seq <= 16 else (32 if rows_per_seq <= 32 else 64)
    if big_d or (num_splits > 1 and max_keys <= 512 * num_splits):
        # Big heads, or short splits (small-batch decode): a program sees a few tiles, so
        # narrow tiles with one buffer start sooner (8x1K: 27.7 -> 26.7 us, 1x4K: 21.1 -> 20.3).
        return dict(BLOCK_M=block_m, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=block_m, BLOCK_N=128, num_warps=4, num_stages=3)
