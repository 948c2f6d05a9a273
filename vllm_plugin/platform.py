"""``vllm.platform_plugins`` entry point for vLLM's CPU build.

vLLM's ``CpuPlatform`` ignores the selected attention backend and always returns CPU_ATTN.
On the CPU build only, this plugin swaps in a subclass that honours ``anyattn`` when it is
selected and defers to ``CpuPlatform`` for everything else. It returns None (stays out)
wherever vLLM would not pick ``CpuPlatform`` itself: GPU builds, CUDA machines, zentorch.

This module stays light: vLLM imports it while it is still choosing the platform.
"""
from __future__ import annotations

CPU_PLATFORM_PATH = "vllm.platforms.cpu.CpuPlatform"
ANYATTN_CPU_PLATFORM_PATH = "anyattn.vllm_plugin.cpu_platform.AnyAttnCpuPlatform"


def cpu_platform_plugin() -> str | None:
    from vllm.platforms import cpu_platform_plugin as builtin_cpu_plugin
    from vllm.platforms import cuda_platform_plugin as builtin_cuda_plugin

    if builtin_cpu_plugin() != CPU_PLATFORM_PATH:
        return None
    if builtin_cuda_plugin() is not None:
        return None
    return ANYATTN_CPU_PLATFORM_PATH
