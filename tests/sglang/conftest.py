"""SGLang adapter tests: CPU, SGLang 0.5.23 in .venv-sglang (ci/setup_sglang.sh).

The import stubs (torchvision, sgl_kernel) live in tests/sglang/stubs and are put on
sys.path and PYTHONPATH (for the engine's subprocesses) before SGLang is imported.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

STUBS = Path(__file__).parent / "stubs"
if str(STUBS) not in sys.path:
    sys.path.insert(0, str(STUBS))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(STUBS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
# SGLang's Triton backend (a reference in these tests) runs under the interpreter on CPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
# anyattn: the PyTorch reference unless a test asks for the Triton kernels.
os.environ.setdefault("ANYATTN_IMPL", "reference")

import pytest  # noqa: E402

from sglang.srt.plugins import load_plugins  # noqa: E402

# The real entry point: runs anyattn.sglang_backend:register, then applies its hooks.
load_plugins()


@pytest.fixture
def scenario_factory():
    """Build harness Scenarios and release their published server args afterwards."""
    from harness import Scenario

    made = []

    def make(**kwargs):
        s = Scenario(**kwargs)
        made.append(s)
        return s

    yield make
    for s in reversed(made):
        s.close()
