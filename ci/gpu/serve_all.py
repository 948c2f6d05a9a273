"""vLLM on the GPU with anyattn against FLASH_ATTN (FA3) and TRITON_ATTN, in one go.

  PYTHONPATH=/tmp/vsite python3 ci/gpu/serve_all.py OUTDIR [--backend CUSTOM]

Runs, as concurrent processes on the one GPU (each engine takes a fixed 3 GiB KV cache):
the GQA d128, MQA d64 and Gemma-2-like models of models.py x {anyattn, FLASH_ATTN,
TRITON_ATTN} (serve_one.py), ngram speculative decoding (models.SPEC_MODEL) x the same three
backends, and the OpenAI API server with anyattn on loopback. Then compares each model's runs (compare.py) and writes
OUTDIR/summary.json (``ok`` is the verdict) plus every run's JSON and log.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent / "tests")]

import compare  # noqa: E402
import models  # noqa: E402
from local_server import free_port, post_json, running_server  # noqa: E402
from serve_one import MAX_TOKENS, prompts  # noqa: E402

PEERS = ("FLASH_ATTN", "TRITON_ATTN")
SPEC_K = 3
API_PROMPTS = (0, 8, 15)  # 1, 300 and 2000 tokens


def launch(out: Path, model: Path, backend: str, spec: int, env: dict) -> tuple[str, subprocess.Popen]:
    tag = f"{model.name}.{backend}" + (f".spec{spec}" if spec else "")
    cmd = [sys.executable, str(HERE / "serve_one.py"), str(model), backend,
           str(out / f"{tag}.json")] + (["--spec-ngram", str(spec)] if spec else [])
    log = open(out / f"{tag}.log", "w")
    return tag, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def api_server_check(out: Path, model: Path, backend: str, env: dict) -> dict:
    """The OpenAI server with anyattn answers completions (token-id prompts)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--attention-backend", backend, "--host", "127.0.0.1", "--port", str(port),
           "--skip-tokenizer-init", "--dtype", "bfloat16", "--max-model-len", "4096",
           "--max-num-seqs", "32", "--max-num-batched-tokens", "512",
           "--enable-prefix-caching", "--gpu-memory-utilization", "0.05",
           "--kv-cache-memory-bytes", str(3 << 30), "--seed", "0"]
    log = out / "api_server.log"
    ps = prompts(models.COMMON["vocab_size"])
    replies = {}
    with running_server(cmd, log, f"{base}/health", env=env, startup_s=420):
        for i in API_PROMPTS:
            reply = post_json(f"{base}/v1/completions", {
                "model": str(model), "prompt": ps[i], "max_tokens": MAX_TOKENS,
                "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}, timeout=300)
            replies[i] = reply["choices"][0]["token_ids"]
    text = log.read_text()
    return dict(tokens=replies, selected_log=f"Using AttentionBackendEnum.{backend} backend." in text,
                anyattn_log="anyattn attention backend" in text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", default="CUSTOM", help="how anyattn is selected (0.26: CUSTOM)")
    ap.add_argument("--timeout", type=float, default=540)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.get("ANYATTN_MODELS", "/tmp/anyattn-models"))
    tiny = [models.make_tiny(name, root) for name in models.TINY if name != models.SPEC_MODEL]
    spec_model = models.make_tiny(models.SPEC_MODEL, root)
    # Identical engines compiling at once must not share vLLM's compile cache.
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="2", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", VLLM_DISABLE_COMPILE_CACHE="1")
    backends = (args.backend,) + PEERS
    t0 = time.perf_counter()
    procs = [launch(out, m, b, 0, env) for m in tiny for b in backends]
    procs += [launch(out, spec_model, b, SPEC_K, env) for b in backends]
    api: dict = {}
    try:
        api = api_server_check(out, tiny[0], args.backend, env)
    except Exception as e:  # reported in the summary; the engine runs go on
        api = dict(error=f"{type(e).__name__}: {e}"[:500])
    deadline = t0 + args.timeout
    runs: dict[str, dict] = {}
    for tag, p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            p.kill()
        path = out / f"{tag}.json"
        runs[tag] = json.loads(path.read_text()) if path.exists() else {"error": f"rc {p.returncode}"}
    summary = dict(wall_s=round(time.perf_counter() - t0, 1), models={}, api_server=api)
    ok = True
    for m, spec in [(m, 0) for m in tiny] + [(spec_model, SPEC_K)]:
        key = m.name + (f" (ngram spec {spec})" if spec else "")
        tags = {b: f"{m.name}.{b}" + (f".spec{spec}" if spec else "") for b in backends}
        missing = [b for b, t in tags.items() if "error" in runs[t]]
        if missing:
            summary["models"][key] = dict(ok=False, failed_runs={b: runs[tags[b]]["error"]
                                                                 for b in missing})
            ok = False
            continue
        res = compare.compare_model({b: runs[t] for b, t in tags.items()},
                                    ours=args.backend)
        ours = runs[tags[args.backend]]
        res["anyattn_impls"] = ours["impls"]
        res["anyattn_cudagraph_steps"] = ours["cudagraph_steps"]
        res["anyattn_full_graph_replays"] = ours["full_graph_replays"]
        res["anyattn_cached_prompt_tokens"] = sum(ours["cached_tokens"])
        res["generate_s"] = {b: runs[t]["generate_s"] for b, t in tags.items()}
        if spec:
            res["spec_metrics"] = {b: runs[t].get("spec_metrics") for b, t in tags.items()}
        full = sum(ours["full_graph_replays"].values())
        res["ok"] = res["ok"] and full > 0 and ours["impls"] == ["AnyAttnImpl"]
        ok &= res["ok"]
        summary["models"][key] = res
    if "tokens" in api:
        ref = runs[f"{tiny[0].name}.{args.backend}"]
        sub = {"tokens": [api["tokens"][i] for i in API_PROMPTS],
               "top2": [ref["top2"][i] for i in API_PROMPTS]}
        base = {"tokens": [ref["tokens"][i] for i in API_PROMPTS], "top2": sub["top2"]}
        api["vs_llm"] = compare.token_agreement(sub, base, summary["models"][tiny[0].name].get(
            "tol", compare.MIN_TOL) if tiny[0].name in summary["models"] else compare.MIN_TOL)
        api["ok"] = api["vs_llm"]["diverged"] == 0 and api["selected_log"]
    ok &= bool(api.get("ok"))
    summary["ok"] = bool(ok)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()
