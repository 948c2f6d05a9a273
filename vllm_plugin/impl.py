"""Per-layer attention: views of vLLM's KV cache handed to core's ``attention``.

vLLM hands each layer its cache as the logical view ``[num_blocks, Hk, block_size, D + Dv]``
(K then V in the last dim) over whatever physical layout the engine negotiated. Slicing
and transposing give core's ``[num_pages, page_size, Hk, D]`` views with the cache's own
strides: nothing is copied, and core's kernels take the strides as they are.

ALiBi (BLOOM, Falcon with ``alibi``, MPT): vLLM hands each layer its heads' slopes as
``alibi_slopes`` (a list, one per query head of this rank); core adds ``-slope * |q_pos - k|``
to the scaled scores (FlashAttention-2's convention; vLLM's TRITON_ATTN adds
``slope * (k - context_len)``, the same softmax for every key at or before the query).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from vllm.v1.attention.backend import AttentionImpl, AttentionLayer, AttentionType

from anyattn.core import AttnParams, attention, check_alibi_slopes, write_kv_cache

from .backend import SUPPORTED_ATTN_TYPES, fp8_storage_dtype
from .builder import AnyAttnMetadata

class AnyAttnImpl(AttentionImpl[AnyAttnMetadata]):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 alibi_slopes: list[float] | None, sliding_window: int | None,
                 kv_cache_dtype: str, logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None,
                 sinks: torch.Tensor | None = None) -> None:
        self.alibi_slopes = None
        if alibi_slopes is not None:
            self.alibi_slopes = torch.as_tensor(alibi_slopes, dtype=torch.float32)
            check_alibi_slopes(self.alibi_slopes, num_heads)
        if attn_type not in SUPPORTED_ATTN_TYPES:
            raise ValueError(f"anyattn: attention type {attn_type} is not supported "
                             f"({', '.join(t.value for t in SUPPORTED_ATTN_TYPES)} are)")
        if sinks is not None and tuple(sinks.shape) != (num_heads,):
            raise ValueError(f"sinks: expected shape ({num_heads},) [num_heads], "
                             f"got {tuple(sinks.shape)}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.sinks = sinks
        self.fp8_dtype = fp8_storage_dtype(kv_cache_dtype)
        decoder = attn_type == AttentionType.DECODER
        if sliding_window is not None and attn_type == AttentionType.ENCODER_DECODER:
            raise ValueError("anyattn: sliding window on cross attention has no positions "
                             "to slide over")
        # vLLM's sliding_window counts the query's own token: a window of W sees keys
        # [p - (W - 1), p] (decoder), or [p - (W - 1), p + (W - 1)] bidirectionally.
        left = -1 if sliding_window is None else sliding_window - 1
        right = -1 if sliding_window is None or decoder else sliding_window - 1
        # Encoder-only and cross attention see every key of their sequence.
        self.params = AttnParams(softmax_scale=self.scale, causal=decoder,
                                 window_left=left, window_right=right,
                                 softcap=float(logits_soft_cap or 0.0))

    def _cache_views(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[num_blocks, Hk, block_size, D + Dv]`` -> K, V as ``[num_blocks, block_size, Hk, *]``."""
        if self.fp8_dtype is not None and kv_cache.dtype != self.fp8_dtype:
            kv_cache = kv_cache.view(self.fp8_dtype)
        kv = kv_cache.transpose(1, 2)
        return kv[..., : self.head_size], kv[..., self.head_size:]

    def forward(self, layer: AttentionLayer, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: AnyAttnMetadata | None, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Attention for this step's ``query [T, Hq, D]``, written into ``output [T, Hq, Dv]``."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("anyattn: fused output quantization is not supported")
        if attn_metadata is None:
            return output  # profiling run: no plan and no cache to read
        n = attn_metadata.num_query_rows
        params = self._step_params(layer, attn_metadata)
        if self.alibi_slopes is not None and self.alibi_slopes.device != query.device:
            # Built at init, where vLLM's device context decides the device; moved once, on
            # the first (eager) step, never inside a captured graph.
            self.alibi_slopes = self.alibi_slopes.to(query.device)
        if self.attn_type == AttentionType.ENCODER_ONLY:
            attention(query[:n], key[:n], value[:n], attn_metadata.plan, params,
                      sinks=self.sinks, out=output[:n], alibi_slopes=self.alibi_slopes)
            return output
        k_cache, v_cache = self._cache_views(kv_cache)
        fp8 = self.fp8_dtype is not None  # per-tensor scales
        attention(query[:n], k_cache, v_cache, attn_metadata.plan, params, sinks=self.sinks,
                  k_descale=layer._k_scale if fp8 else None,
                  v_descale=layer._v_scale if fp8 else None,
                  out=output[:n], alibi_slopes=self.alibi_slopes)
        return output

    def _step_params(self, layer: AttentionLayer, md: AnyAttnMetadata) -> AttnParams:
        """The layer's semantics for this step's spans: applied unless the model cleared them
        from the metadata (Gemma-4's full-attention layers), and kept inside the sliding
        window when the layer says ``mm_prefix_clamp_sliding_window`` (Gemma-4's sliding
        layers; read from the layer, as TRITON_ATTN does)."""
        if md.plan.spans is None:
            return self.params
        return replace(self.params, use_spans=md.mm_prefix_range_tensor is not None,
                       spans_in_window=bool(getattr(layer, "mm_prefix_clamp_sliding_window",
                                                    False)))

    def do_kv_cache_update(self, layer: AttentionLayer, key: torch.Tensor,
                           value: torch.Tensor, kv_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
        """Store this step's K/V at ``slot_mapping`` (-1 marks padding tokens).

        For cross attention vLLM's wrapper calls this with the encoder output and its own
        slot mapping on the step that first sees the encoder; later steps pass no K/V.
        """
        if self.attn_type == AttentionType.ENCODER_ONLY or kv_cache.numel() == 0:
            return  # encoder-only layers keep no cache; profiling binds an empty one
        k_cache, v_cache = self._cache_views(kv_cache)
        scales = {}
        if self.fp8_dtype is not None:
            scales = dict(k_scale=layer._k_scale, v_scale=layer._v_scale)
        n = slot_mapping.shape[0]
        write_kv_cache(key[:n], value[:n], k_cache, v_cache, slot_mapping, **scales)
