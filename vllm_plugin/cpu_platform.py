"""vLLM's CPU platform, honouring ``--attention-backend anyattn`` (see platform.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from vllm.logger import init_logger
from vllm.platforms.cpu import CpuPlatform

from . import selected_name

if TYPE_CHECKING:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

# Under vLLM's logger namespace, so the line shows in vLLM's own log output.
logger = init_logger("vllm.platforms.anyattn_cpu")


class AnyAttnCpuPlatform(CpuPlatform):
    @classmethod
    def get_attn_backend_cls(cls, selected_backend: AttentionBackendEnum | None,
                             attn_selector_config: AttentionSelectorConfig,
                             num_heads: int | None = None) -> str:
        if selected_backend is None or selected_backend.name != selected_name():
            return super().get_attn_backend_cls(selected_backend, attn_selector_config,
                                                num_heads)
        backend = selected_backend.get_class()
        # Same check and message as vLLM's CUDA platform for a selected backend.
        reasons = backend.validate_configuration(device_capability=cls.get_device_capability(),
                                                 **attn_selector_config._asdict())
        if reasons:
            raise ValueError(f"Selected backend {selected_backend} is not valid for this "
                             f"configuration. Reason: {reasons}")
        logger.info("Using %s backend.", selected_backend)
        return selected_backend.get_path()
