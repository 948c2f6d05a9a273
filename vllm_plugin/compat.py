"""What differs between the vLLM releases the adapter supports (0.26 through 0.33), in one place.

Each difference is detected by feature, not by version number:

- Backend names. 0.32+ lets a plugin add its own member to ``AttentionBackendEnum``
  (``AttentionBackendEnum.register``): users pass ``--attention-backend anyattn``. 0.26 only
  lets a plugin occupy ``CUSTOM``: users pass ``--attention-backend CUSTOM``.
- KV-cache layout. 0.32+ negotiates the physical layout model-wide from each backend's
  ``supported_kv_cache_layouts()``. 0.26 asks each backend for its logical shape
  (``get_kv_cache_shape``) and physical order (``get_kv_cache_stride_order``). Either way the
  impl receives the logical view ``[num_blocks, Hk, block_size, 2 * D]`` (K then V).
- Uniform decode width. 0.32+ exports ``max_decode_query_len``; in 0.26 it is
  ``1 + num_speculative_tokens``.
"""
from __future__ import annotations

from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

try:
    from vllm.v1.attention.backend import max_decode_query_len
except ImportError:  # vLLM 0.26
    def max_decode_query_len(vllm_config) -> int:
        spec = getattr(vllm_config, "speculative_config", None)
        return 1 + (getattr(spec, "num_speculative_tokens", None) or 0)

try:
    from vllm.v1.kv_cache_layout import KVCacheLayout
except ImportError:  # vLLM 0.26
    KVCacheLayout = None

NAMED_BACKENDS = hasattr(AttentionBackendEnum, "register")


def register(name: str, class_path: str) -> AttentionBackendEnum:
    """Register the backend; returns the enum member users select (``name`` or CUSTOM)."""
    if not NAMED_BACKENDS:
        register_backend(AttentionBackendEnum.CUSTOM, class_path)
        return AttentionBackendEnum.CUSTOM
    member = AttentionBackendEnum.__members__.get(name)
    if member is None:
        register_backend(name, class_path)
        member = AttentionBackendEnum[name]
    return member


if KVCacheLayout is not None:
    class KVCacheDeclarations:
        """vLLM 0.32+: the physical layouts the kernels accept, negotiated model-wide."""

        @classmethod
        def supported_kv_cache_layouts(cls) -> tuple:
            # The kernels read K and V through the cache's strides, so every layout works;
            # token-major block interiors (NHD) first, since a tile then reads contiguous rows.
            return (KVCacheLayout.LBNHC, KVCacheLayout.BLNHC, KVCacheLayout.LBHNC,
                    KVCacheLayout.BLHNC, KVCacheLayout.BHLNC, KVCacheLayout.LHBNC)
else:
    class KVCacheDeclarations:
        """vLLM 0.26: the logical shape vLLM 0.32 hands every backend, stored NHD (or HND
        when ``VLLM_KV_CACHE_LAYOUT=HND``; the kernels take either through strides)."""

        @staticmethod
        def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                               head_size: int, cache_dtype_str: str = "auto") -> tuple[int, ...]:
            return (num_blocks, num_kv_heads, block_size, 2 * head_size)

        @staticmethod
        def get_kv_cache_stride_order(include_num_layers_dimension: bool = False
                                      ) -> tuple[int, ...]:
            from vllm.v1.attention.backends.utils import get_kv_cache_layout

            nhd = get_kv_cache_layout() == "NHD"
            if include_num_layers_dimension:
                return (1, 0, 3, 2, 4) if nhd else (1, 2, 0, 3, 4)
            return (0, 2, 1, 3) if nhd else (0, 1, 2, 3)
