"""Core tests run the Triton kernels through the interpreter when no GPU is present, and on a
GPU compiled: anyattn's own kernels, whatever provider a plan would pick (test_providers.py
and test_fa4_provider.py set ANYATTN_KERNELS themselves; tests/gpu/test_fa3_provider.py and
test_fa4_provider.py check FA3 and FA4 on the device)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ANYATTN_KERNELS", "triton")
