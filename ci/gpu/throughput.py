"""End-to-end serving throughput on the GPU: a Llama-3-8B-shaped random model through vLLM,
one attention backend per process, the same requests for each.

  PYTHONPATH=/tmp/vsite python3 ci/gpu/throughput.py OUT.jsonl [--backends CUSTOM,FLASH_ATTN,TRITON_ATTN]

The model has Llama-3-8B's layer shape (hidden 4096, 32 query / 8 kv heads of 128, MLP 14336,
vocab 128256) with ``--layers`` of its 32 layers, random weights (``load_format="dummy"``), bf16,
vLLM's default compilation and CUDA graphs. ``--requests`` prompts of 1K-4K random tokens, 256
output tokens each (ignore_eos), all submitted at once. Reports output tokens/s, total
tokens/s and time to first token (median, p90) from vLLM's per-request metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(model: str, backend: str, requests: int, out_len: int, cudagraph_mode: str | None
            ) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(0)
    lens = [rng.randint(1024, 4096) for _ in range(requests)]
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(3, 128000) for _ in range(n)])
               for n in lens]
    extra = {}
    if cudagraph_mode:
        extra["compilation_config"] = {"cudagraph_mode": cudagraph_mode}
    t0 = time.perf_counter()
    llm = LLM(model=model, attention_backend=backend, skip_tokenizer_init=True,
              load_format="dummy", dtype="bfloat16", seed=0, max_model_len=8192,
              gpu_memory_utilization=0.85, disable_log_stats=False, **extra)
    start = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True,
                            detokenize=False)
    llm.generate(prompts[:8], SamplingParams(max_tokens=4, detokenize=False), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    ttft = sorted(o.metrics.first_token_latency for o in outs
                  if o.metrics is not None and getattr(o.metrics, "first_token_latency", None))
    gen = sum(len(o.outputs[0].token_ids) for o in outs)
    mode = cudagraph_mode or "default"
    return dict(bench="e2e throughput", shape=f"{requests} requests x {out_len} tokens",
                impl=f"{'anyattn' if backend in ('CUSTOM', 'ANYATTN') else backend} (cudagraph {mode})",
                backend=backend, cudagraph_mode=mode,
                requests=requests, prompt_tokens=sum(lens), output_tokens=gen,
                wall_s=round(wall, 3), output_tok_s=round(gen / wall, 1),
                total_tok_s=round((gen + sum(lens)) / wall, 1),
                ttft_median_s=round(statistics.median(ttft), 3) if ttft else None,
                ttft_p90_s=round(ttft[int(0.9 * (len(ttft) - 1))], 3) if ttft else None,
                engine_start_s=round(start, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--backends", default="CUSTOM,FLASH_ATTN,TRITON_ATTN")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--out-len", type=int, default=256)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--cudagraph-mode", default=None)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = run_one(args.model, args.one, args.requests, args.out_len, args.cudagraph_mode)
        print("RESULT " + json.dumps(row), flush=True)
        os._exit(0)
    sys.path.insert(0, str(HERE))
    import models

    model = models.make_llama8b(Path(os.environ.get("ANYATTN_MODELS", "/tmp/anyattn-models")),
                                args.layers)
    env = dict(os.environ, VLLM_NO_USAGE_STATS="1")
    for spec in args.backends.split(","):
        backend, _, mode = spec.partition(":")
        cmd = [sys.executable, __file__, args.out, "--one", backend, "--model", str(model),
               "--requests", str(args.requests), "--out-len", str(args.out_len)]
        if mode:
            cmd += ["--cudagraph-mode", mode]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        rows = [json.loads(l[7:]) for l in res.stdout.splitlines() if l.startswith("RESULT ")]
        row = rows[0] if rows else dict(backend=backend, error=(res.stdout + res.stderr)[-1500:])
        row.update(model=f"Llama-3-8B-shaped, {args.layers} of 32 layers, random weights")
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
