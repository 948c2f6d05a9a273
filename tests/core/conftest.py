"""Core tests run the Triton kernels through the interpreter when no GPU is present, and on a
GPU compiled: anyattn's own kernels, whatever provider a plan would pick (test_providers.py
sets ANYATTN_KERNELS itself; tests/gpu/test_fa3_provider.py checks FA3 on the device)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ANYATTN_KERNELS", "triton")
