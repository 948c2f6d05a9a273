"""Core tests run the Triton kernels through the interpreter when no GPU is present, and on a
GPU compiled: anyattn's own kernels, whatever provider a plan would pick (test_providers.py
and test_fa4_selection.py set ANYATTN_KERNELS themselves; tests/gpu/test_fa3_provider.py and
test_fa4_provider.py check FA3 and FA4 on the device)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ANYATTN_KERNELS", "triton")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launches of anyattn's own Triton attention kernel."""
    from anyattn.core.providers.triton import attention as kernels

    calls = []
    original = kernels.run_attention
    monkeypatch.setattr(kernels, "run_attention",
                        lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls
