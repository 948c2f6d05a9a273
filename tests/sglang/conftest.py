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


@pytest.fixture(autouse=True)
def gpu_tree_mask_layout(monkeypatch):
    """SGLang's tree-mask layout as on a GPU (FULL_MASK: each draft row spans prefix + drafts).

    SGLang's CPU engine has its tree builder write QLEN_ONLY masks (drafts only, for its
    intel_amx kernel), and anyattn reads the layout SGLang says it writes. SGLang's attention
    kit, this harness and SGLang's Triton backend (the reference) all build or read FULL
    masks, so the backend-level tests run in that layout; test_topology.py covers QLEN_ONLY.
    """
    from sglang.srt.layers.attention import verify_mask
    from sglang.srt.speculative import eagle_utils

    def full_mask():
        return eagle_utils.TreeMaskMode.FULL_MASK

    for module in (eagle_utils, verify_mask):
        monkeypatch.setattr(module, "default_tree_mask_mode", full_mask)


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
