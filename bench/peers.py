"""Peer kernels fetched into .peers/ by bench/fetch_peers.sh (never committed).

vLLM's Triton unified attention reads our paged cache as is (``[pages, page, Hk, D]`` with
an int32 page table), so it runs on the same tensors as anyattn. It is called the way vLLM's
Triton backend (``vllm/v1/attention/backends/triton_attn.py``) calls it, split-KV ("3D")
scratch included, so decode batches below its threshold take the split path there too.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton

PEERS = Path(__file__).resolve().parent.parent / ".peers"
VLLM_UNIFIED = "vllm triton unified (paged)"

# Constants of vLLM's Triton backend: grid floor of the 2D kernel (below it, split-KV),
# softmax segments per sequence, longest query split-KV takes.
MIN_LAUNCH_GRID_SIZE_2D = 128
NUM_PAR_SOFTMAX_SEGMENTS = 16
MAX_3D_QUERY_LEN = 8


def load_vllm_unified() -> tuple[Callable | None, str]:
    """``(unified_attention, "")`` from .peers, or ``(None, why it is unavailable)``."""
    if not (PEERS / "vllm").is_dir():
        return None, f"{PEERS} absent: run bash bench/fetch_peers.sh and carry .peers"
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention
    except Exception as e:  # a stale or partial .peers is reported, not fatal
        return None, f"import failed: {type(e).__name__}: {e}"[:200]
    return unified_attention, ""


def vllm_unified_call(kernel: Callable, q: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, table: torch.Tensor, q_lens: list[int],
                      k_lens: list[int], scale: float, out: torch.Tensor) -> Callable[[], None]:
    """A no-argument causal call of vLLM's kernel writing ``out`` (inputs prepared once).

    ``q``/``out`` are ``[total_q, Hq, D]``; ``table`` is ``[B, max_pages]`` int32.
    """
    dev, (hq, d), hk = q.device, q.shape[1:], k_cache.shape[2]
    cu_q = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=dev)
    cu_q[1:] = torch.tensor(q_lens, device=dev).cumsum(0)
    seqused_k = torch.tensor(k_lens, dtype=torch.int32, device=dev)
    threshold = MIN_LAUNCH_GRID_SIZE_2D // hk
    rows = min(threshold, len(q_lens)) * min(max(q_lens), MAX_3D_QUERY_LEN)
    segm = (rows, hq, NUM_PAR_SOFTMAX_SEGMENTS)
    segm_out = torch.empty(*segm, triton.next_power_of_2(d), dtype=torch.float32, device=dev)
    segm_max = torch.empty(segm, dtype=torch.float32, device=dev)
    segm_sum = torch.empty(segm, dtype=torch.float32, device=dev)

    def run() -> None:
        kernel(q, k_cache, v_cache, out, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
               seqused_k=seqused_k, max_seqlen_k=max(k_lens), softmax_scale=scale,
               causal=True, window_size=(-1, -1), block_table=table, softcap=0.0,
               q_descale=None, k_descale=None, v_descale=None, seq_threshold_3D=threshold,
               num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS, softmax_segm_output=segm_out,
               softmax_segm_max=segm_max, softmax_segm_expsum=segm_sum)
    return run


def vllm_unified_or_skip(bench: str) -> Callable | None:
    """The vLLM kernel, or None after printing one JSON line saying why it is skipped."""
    kernel, why = load_vllm_unified()
    if kernel is None:
        print(json.dumps({"bench": bench, "impl": VLLM_UNIFIED, "skipped": why}), flush=True)
    return kernel
