"""Device-only tests (CUDA graphs, bf16 at size). Run on the H100: `pytest tests/core tests/gpu`."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        raise pytest.UsageError("tests/gpu needs a CUDA device; CPU CI runs tests/core only")
