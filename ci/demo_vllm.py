"""Engine demo: a tiny random Llama generated through vLLM with anyattn, next to vLLM's
own CPU_ATTN backend; prints both token lists and whether they match (exit 1 if not).

Run through ci/demo_vllm.sh (builds .venv-vllm first), or directly with .venv-vllm's python.
"""
from __future__ import annotations

import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

CI_DIR = Path(__file__).resolve().parent


def _engine_environment() -> None:
    """vLLM's spawned processes must find ci/ (the worker-side probes) and the shim."""
    paths = [str(CI_DIR / "pyshim"), str(CI_DIR)]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])
    sys.path[:0] = paths
    runpy.run_path(str(CI_DIR / "pyshim" / "sitecustomize.py"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # for the probes
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the demo's own lines only


def main() -> int:
    _engine_environment()
    from tiny_model import make_prompts, make_tiny_llama
    from vllm_engine import generate_greedy

    model = str(make_tiny_llama(Path(tempfile.gettempdir()) / "anyattn-tiny-llama"))
    prompts = make_prompts(8, min_len=1, max_len=300, shared_prefix=96)
    print(f"model: tiny random Llama at {model}; {len(prompts)} prompts of "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, greedy, fp32, "
          "prefix caching + chunked prefill", flush=True)
    runs = {}
    for backend in ("anyattn", "CPU_ATTN"):
        start = time.monotonic()
        runs[backend] = generate_greedy(model, backend, prompts, max_tokens=12)
        print(f"{backend}: impl {runs[backend].impls}, {time.monotonic() - start:.0f} s "
              "(engine start included)", flush=True)
    ours, theirs = runs["anyattn"], runs["CPU_ATTN"]
    for i, (a, b) in enumerate(zip(ours.tokens, theirs.tokens)):
        print(f"prompt {i} ({len(prompts[i])} tokens, {ours.cached_tokens[i]} from the "
              f"prefix cache): anyattn {a}  CPU_ATTN {b}  {'match' if a == b else 'DIFFER'}")
    same = ours.tokens == theirs.tokens
    print(f"anyattn tokens {'MATCH' if same else 'DO NOT MATCH'} vLLM's own CPU_ATTN backend")
    return 0 if same else 1


if __name__ == "__main__":  # vLLM's CPU platform spawns processes: keep the guard
    sys.exit(main())
