"""Peer kernels: from an installed vLLM (on the lent GPU, the carried vLLM 0.26 site), else
vLLM's Triton kernel fetched into .peers/ by bench/fetch_peers.sh (never committed).

All read our paged cache as is (``[pages, page, Hk, D]`` with an int32 page table), so they
run on the same tensors as anyattn. vLLM's Triton unified attention is called the way vLLM's
Triton backend (``vllm/v1/attention/backends/triton_attn.py``) calls it, split-KV ("3D")
scratch included; FlashAttention-3 (``vllm.vllm_flash_attn``, ``fa_version=3``) the way
vLLM's FLASH_ATTN backend calls it, with the ahead-of-time scheduler metadata it computes
once per step; FlashAttention-4 (whichever install ``anyattn.core.providers.fa4.source``
finds) through the same entry point and modifiers as anyattn's FA4 provider, without anyattn's
plan and checks around it.
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


FA3 = "fa3 vllm_flash_attn (paged)"


def load_vllm_unified() -> tuple[Callable | None, str]:
    """``(unified_attention, "")`` from vLLM or .peers, or ``(None, why it is unavailable)``."""
    try:
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention
        return unified_attention, ""
    except Exception:
        pass
    if not (PEERS / "vllm").is_dir():
        return None, f"no vLLM and {PEERS} absent: run bash bench/fetch_peers.sh and carry .peers"
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention
    except Exception as e:  # a stale or partial .peers is reported, not fatal
        return None, f"import failed: {type(e).__name__}: {e}"[:200]
    return unified_attention, ""


def vllm_unified_call(kernel: Callable, q: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, table: torch.Tensor, q_lens: list[int],
                      k_lens: list[int], scale: float, out: torch.Tensor,
                      **extra) -> Callable[[], None]:
    """A no-argument causal call of vLLM's kernel writing ``out`` (inputs prepared once).

    ``q``/``out`` are ``[total_q, Hq, D]``; ``table`` is ``[B, max_pages]`` int32; ``extra``
    are more of its keyword arguments (``mm_prefix_range``, ``alibi_slopes``, ``window_size``).
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

    extra.setdefault("window_size", (-1, -1))

    def run() -> None:
        kernel(q, k_cache, v_cache, out, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
               seqused_k=seqused_k, max_seqlen_k=max(k_lens), softmax_scale=scale,
               causal=True, block_table=table, softcap=0.0,
               q_descale=None, k_descale=None, v_descale=None, seq_threshold_3D=threshold,
               num_par_softmax_segments=NUM_PAR_SOFTMAX_SEGMENTS, softmax_segm_output=segm_out,
               softmax_segm_max=segm_max, softmax_segm_expsum=segm_sum, **extra)
    return run


def vllm_unified_or_skip(bench: str) -> Callable | None:
    """The vLLM kernel, or None after printing one JSON line saying why it is skipped."""
    kernel, why = load_vllm_unified()
    if kernel is None:
        print(json.dumps({"bench": bench, "impl": VLLM_UNIFIED, "skipped": why}), flush=True)
    return kernel


def fa3_or_skip(bench: str):
    """vLLM's FA3 module, or None after printing one JSON line saying why it is skipped."""
    try:
        from vllm.vllm_flash_attn import flash_attn_interface as fa
        if fa.FA3_AVAILABLE:
            return fa
        why = fa.FA3_UNAVAILABLE_REASON
    except Exception as e:
        why = f"import failed: {type(e).__name__}: {e}"[:200]
    print(json.dumps({"bench": bench, "impl": FA3, "skipped": why}), flush=True)
    return None


def fa3_call(fa, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             table: torch.Tensor, q_lens: list[int], k_lens: list[int], scale: float,
             out: torch.Tensor, window_left: int = -1) -> Callable[[], None]:
    """A no-argument causal FA3 call writing ``out``, as vLLM's FLASH_ATTN issues it
    (``window_left``: a sliding window's left edge, as ``window_size=(left, 0)``)."""
    dev, (hq, d), hk = q.device, q.shape[1:], k_cache.shape[2]
    cu_q = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=dev)
    cu_q[1:] = torch.tensor(q_lens, device=dev).cumsum(0)
    seqused_k = torch.tensor(k_lens, dtype=torch.int32, device=dev)
    meta = fa.get_scheduler_metadata(
        batch_size=len(q_lens), max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens),
        num_heads_q=hq, num_heads_kv=hk, headdim=d, cache_seqlens=seqused_k,
        qkv_dtype=q.dtype, cu_seqlens_q=cu_q, page_size=k_cache.shape[1], causal=True,
        window_size=(window_left, 0))

    def run() -> None:
        fa.flash_attn_varlen_func(q, k_cache, v_cache, max_seqlen_q=max(q_lens),
                                  cu_seqlens_q=cu_q, max_seqlen_k=max(k_lens),
                                  seqused_k=seqused_k, block_table=table, softmax_scale=scale,
                                  causal=True, window_size=(window_left, 0), out=out,
                                  scheduler_metadata=meta, fa_version=3)
    return run


FA4 = "fa4 (paged)"


def fa4_or_skip(bench: str):
    """The installed FA4 (``anyattn.core.providers.fa4.Source``), or None after printing one
    JSON line saying why it is skipped."""
    from anyattn.core.providers import fa4

    why = fa4.unavailable(torch.device("cuda"))
    if why is None:
        return fa4.source()
    print(json.dumps({"bench": bench, "impl": FA4, "skipped": why}), flush=True)
    return None


def fa4_call(src, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             table: torch.Tensor, q_lens: list[int], k_lens: list[int], scale: float,
             out: torch.Tensor, *, spans: tuple[torch.Tensor, torch.Tensor] | None = None,
             alibi_slopes: torch.Tensor | None = None,
             slopes_in_aux: bool = False) -> Callable[[], None]:
    """A no-argument causal FA4 call writing ``out``: plain, with the plan's ``spans``
    (``span_table``'s pair) through anyattn's spans ``mask_mod``, or with ALiBi through its
    ``score_mod`` (the slopes compiled in, without pack-GQA, as anyattn's provider calls it;
    ``slopes_in_aux``: read from the tensor per score instead); one compile per variant, made
    here."""
    from anyattn.core.providers.fa4 import AlibiScore, SpanMask

    dev = q.device
    cu_q = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=dev)
    cu_q[1:] = torch.tensor(q_lens, device=dev).cumsum(0)
    seqused_k = torch.tensor(k_lens, dtype=torch.int32, device=dev)
    aux, causal, mask_mod, score_mod, pack_gqa = [], True, None, None, None
    if spans is not None:  # the mask_mod carries causality: FA4 drops its own flag under one
        aux += list(spans)
        causal, mask_mod = False, src.mask_mod(SpanMask(0, None, False, spans[0].shape[1]))
    if alibi_slopes is not None and slopes_in_aux:
        aux.append(alibi_slopes.float())
        score_mod = src.score_mod(AlibiScore(0.0, slopes_at=len(aux) - 1))
    elif alibi_slopes is not None:
        values = tuple(alibi_slopes.float().tolist())
        score_mod = src.score_mod(AlibiScore(0.0, slopes_at=0, slopes=values,
                                             keys_behind=causal))
        pack_gqa = False

    def run() -> None:
        src.forward(q, k_cache, v_cache, cu_seqlens_q=cu_q, max_seqlen_q=max(q_lens),
                    max_seqlen_k=max(k_lens), page_table=table, seqused_k=seqused_k,
                    softmax_scale=scale, causal=causal, window_size_left=None,
                    window_size_right=None, softcap=0.0, learnable_sink=None, num_splits=1,
                    score_mod=score_mod, mask_mod=mask_mod, aux_tensors=aux or None,
                    return_lse=False, out=out, pack_gqa=pack_gqa)
    run()
    return run
