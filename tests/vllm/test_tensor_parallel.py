"""Tensor parallelism on the CPU build: two worker processes (vLLM's multiprocessing
executor), each loading the plugin, selecting anyattn and attending over its share of the
heads (the tiny Llama's 4 query / 2 kv heads: one kv head per rank). Tokens must equal vLLM's
own CPU_ATTN at the same TP=2 in fp32. The GPU run at TP=2 needs two GPUs (issue 14)."""
from __future__ import annotations

from conftest import PROMPTS
from vllm_engine import generate_greedy

TP = dict(tensor_parallel_size=2, distributed_executor_backend="mp")
N_TOKENS = 6


def test_two_ranks_match_cpu_attn(tiny_model, monkeypatch):
    # Two CPU workers need one core each; vLLM's auto-binding wants one NUMA node per rank.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    monkeypatch.setenv("ANYATTN_IMPL", "reference")
    prompts = PROMPTS[:6]
    ours = generate_greedy(tiny_model, "anyattn", prompts, N_TOKENS, **TP)
    theirs = generate_greedy(tiny_model, "CPU_ATTN", prompts, N_TOKENS, **TP)
    assert ours.worker_impls == [["AnyAttnImpl"], ["AnyAttnImpl"]]
    assert theirs.worker_impls == [["CPUAttentionBackendImpl"]] * 2
    assert ours.tokens == theirs.tokens
