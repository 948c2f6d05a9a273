"""One vLLM engine on the GPU: a tiny random model, one attention backend, greedy; one JSON.

  python ci/gpu/serve_one.py MODEL_DIR BACKEND OUT.json [--spec-ngram K]

vLLM's defaults otherwise: bf16, torch.compile + CUDA graphs (FULL_AND_PIECEWISE), prefix
caching and chunked prefill on (a 512-token step budget splits the long prompts, so steps mix
prefill chunks with decodes). Two passes over the same prompts: (1) prompt logprobs of every
prompt token, (2) 32 generated tokens with the top-2 logprobs at each step (the second pass
reads the first one's cached prefixes). The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) so vLLM's own CUDA-graph counters (``CUDAGraphStat``: how
many steps ran FULL / PIECEWISE / NONE) can be read here.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

PROMPT_LENS = [1, 2, 7, 31, 64, 100, 128, 255, 300, 511, 700, 1000, 1024, 1500, 1999, 2000]
SHARED_PREFIX = 384  # the last eight prompts start with the same 384 tokens
MAX_TOKENS = 32


def prompts(vocab: int, seed: int = 0, min_len: int = 1) -> list[list[int]]:
    """Token-id prompts of ``min_len``..2000 tokens over ids 3..vocab-1 (0-2 are special)."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(SHARED_PREFIX)]
    out = []
    for i, n in enumerate(max(n, min_len) for n in PROMPT_LENS):
        head = prefix if i >= 8 and n > SHARED_PREFIX else []
        out.append(head + [rng.randrange(3, vocab) for _ in range(n - len(head))])
    return out


def record_cudagraph_modes() -> tuple[collections.Counter, collections.Counter]:
    """vLLM's own per-step CUDA-graph decisions: ``(modes, full_replays)``.

    Model runner V1 reports each step as a ``CUDAGraphStat`` (``cudagraph_metrics``); model
    runner V2 (0.26's default for these models) dispatches each step through
    ``CudaGraphManager.dispatch`` and replays FULL graphs in ``run_fullgraph``. Both are
    counted: mode -> steps, and (uniform tokens per request, padded tokens) -> FULL replays.
    """
    from vllm.compilation import cuda_graph
    from vllm.v1.worker.gpu import cudagraph_utils as v2

    modes: collections.Counter = collections.Counter()
    replays: collections.Counter = collections.Counter()
    observe = cuda_graph.CUDAGraphLogging.observe

    def counting_observe(self, stat):
        modes[str(stat.runtime_mode)] += 1
        if "FULL" in str(stat.runtime_mode) and "PIECEWISE" not in str(stat.runtime_mode):
            replays[f"v1 {stat.num_unpadded_tokens}->{stat.num_padded_tokens} tokens"] += 1
        return observe(self, stat)

    dispatch, run_full = v2.CudaGraphManager.dispatch, v2.CudaGraphManager.run_fullgraph

    def counting_dispatch(self, *args, **kwargs):
        desc = dispatch(self, *args, **kwargs)
        modes[desc.cg_mode.name] += 1
        return desc

    def counting_run_full(self, desc):
        replays[f"v2 {desc.num_reqs} reqs x {desc.uniform_token_count} tokens "
                f"({desc.num_tokens} padded)"] += 1
        return run_full(self, desc)

    cuda_graph.CUDAGraphLogging.observe = counting_observe
    v2.CudaGraphManager.dispatch = counting_dispatch
    v2.CudaGraphManager.run_fullgraph = counting_run_full
    return modes, replays


def attention_impls(model) -> list[str]:
    from vllm.model_executor.layers.attention import Attention
    return sorted({type(m.impl).__name__ for m in model.modules() if isinstance(m, Attention)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("backend")
    ap.add_argument("out")
    ap.add_argument("--spec-ngram", type=int, default=0, help="ngram speculative tokens")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--eager", action="store_true", help="no torch.compile, no CUDA graphs")
    args = ap.parse_args()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    modes, replays = record_cudagraph_modes()
    spec = None
    if args.spec_ngram:
        # Drafts from the longest earlier match of the last 1-3 tokens.
        spec = dict(method="ngram", num_speculative_tokens=args.spec_ngram,
                    prompt_lookup_min=1, prompt_lookup_max=3)
    t0 = time.perf_counter()
    llm = LLM(model=args.model, attention_backend=args.backend, skip_tokenizer_init=True,
              dtype=args.dtype, enforce_eager=args.eager, seed=0, max_model_len=4096, max_num_seqs=32,
              enable_prefix_caching=True, enable_chunked_prefill=True,
              max_num_batched_tokens=512, gpu_memory_utilization=0.05,
              kv_cache_memory_bytes=3 << 30, speculative_config=spec,
              disable_log_stats=False, cudagraph_metrics=True)
    start_s = time.perf_counter() - t0
    impls = sorted({n for names in llm.apply_model(attention_impls) for n in names})
    vocab = llm.llm_engine.vllm_config.model_config.hf_config.vocab_size
    # With speculation every prompt is long enough to hold earlier matches.
    toks = [TokensPrompt(prompt_token_ids=p)
            for p in prompts(vocab, min_len=64 if spec else 1)]
    result = dict(model=os.path.basename(args.model.rstrip("/")), backend=args.backend,
                  spec_ngram=args.spec_ngram, impls=impls, engine_start_s=round(start_s, 1))
    try:
        outs = llm.generate(toks, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True,
                                                 detokenize=False, prompt_logprobs=1),
                            use_tqdm=False)
        result["prompt_logprobs"] = [
            [None if lp is None else lp[tok].logprob
             for tok, lp in zip(o.prompt_token_ids, o.prompt_logprobs)] for o in outs]
    except Exception as e:  # recorded; the generation pass still runs
        result["prompt_logprobs_error"] = f"{type(e).__name__}: {e}"[:300]
    modes.clear()  # from here on: the generation pass only
    replays.clear()
    t0 = time.perf_counter()
    outs = llm.generate(toks, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                             ignore_eos=True, detokenize=False, logprobs=2),
                        use_tqdm=False)
    result["generate_s"] = round(time.perf_counter() - t0, 3)
    result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
    result["top2"] = [[sorted((v.logprob for v in step.values()), reverse=True)[:2]
                       for step in o.outputs[0].logprobs] for o in outs]
    result["cached_tokens"] = [o.num_cached_tokens or 0 for o in outs]
    result["cudagraph_steps"] = dict(modes)
    result["full_graph_replays"] = dict(replays.most_common(12))
    if spec:
        result["spec_metrics"] = spec_metrics(llm)
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("prompt_logprobs", "tokens", "top2")}), flush=True)


def spec_metrics(llm) -> dict:
    """vLLM's speculative-decoding counters (drafts proposed / accepted)."""
    out = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode") and hasattr(m, "value"):
            out[m.name] = m.value
    return out


if __name__ == "__main__":
    main()
    os._exit(0)  # vLLM can leave non-daemon threads behind; the JSON is written
