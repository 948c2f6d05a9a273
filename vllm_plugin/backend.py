"""What the anyattn backend supports, in vLLM's ``AttentionBackend`` vocabulary.

vLLM checks a selected backend against these declarations (``validate_configuration``)
before it builds a layer, so an unsupported model fails at start-up with vLLM's reasons
instead of computing something else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from vllm.v1.attention.backend import AttentionBackend, AttentionType, MultipleOf

from anyattn.core import MAX_HEAD_DIM

from . import selected_name
from .compat import KVCacheDeclarations

if TYPE_CHECKING:
    from vllm.config.cache import CacheDType

    from .builder import AnyAttnMetadataBuilder
    from .impl import AnyAttnImpl

# The kernels pad the head dim to a power of two (masked); tl.dot needs >= 16.
HEAD_SIZES = list(range(16, MAX_HEAD_DIM + 1, 8))


# Cross attention (ENCODER_DECODER) reaches the builder through vLLM's CrossAttention
# wrapper as a non-causal batch whose keys are the cached encoder output.
SUPPORTED_ATTN_TYPES = (AttentionType.DECODER, AttentionType.ENCODER_ONLY,
                        AttentionType.ENCODER_DECODER)
_FP8_KV_DTYPES = {"fp8", "fp8_e4m3", "fp8_e5m2"}


def fp8_storage_dtype(kv_cache_dtype: str) -> torch.dtype | None:
    """vLLM allocates fp8 caches as uint8; the kernels read them as this dtype."""
    if kv_cache_dtype not in _FP8_KV_DTYPES:
        return None
    from vllm.platforms import current_platform

    return torch.float8_e5m2 if kv_cache_dtype == "fp8_e5m2" else current_platform.fp8_dtype()


class AnyAttnBackend(KVCacheDeclarations, AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16,
                                                     torch.float32]
    # fp8 caches store k / k_scale; the layer's scales reach the kernels as descales.
    supported_kv_cache_dtypes: ClassVar[list[CacheDType]] = [
        "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]
    # The impl writes the cache in do_kv_cache_update (core's write_kv_cache).
    forward_includes_kv_cache_update: bool = False

    @staticmethod
    def get_name() -> str:
        return selected_name()

    @staticmethod
    def get_impl_cls() -> type[AnyAttnImpl]:
        from .impl import AnyAttnImpl
        return AnyAttnImpl

    @staticmethod
    def get_builder_cls() -> type[AnyAttnMetadataBuilder]:
        from .builder import AnyAttnMetadataBuilder
        return AnyAttnMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        # Kernels address every key through page_table[pos // page_size]: any page size.
        return [MultipleOf(1)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return HEAD_SIZES

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_mm_prefix(cls) -> bool:
        # Bidirectional image spans (mm_req_doc_ranges) become the plan's span table: a
        # kernel predicate over O(spans) memory (builder.py, core.spans).
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        # ENCODER (the encoder half of an encoder-decoder model) is left out: no test here
        # runs such a model's encoder through an attention backend.
        return attn_type in SUPPORTED_ATTN_TYPES

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        # Under VLLM_BATCH_INVARIANT the builder asks core for deterministic plans (one
        # fixed split schedule); tests/vllm/test_builder.py checks batch independence.
        return True
