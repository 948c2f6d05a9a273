"""End-to-end offline throughput on the GPU through SGLang: a Llama-3-8B-shaped random model,
anyattn against SGLang's fa3 and triton backends, one ``sglang.Engine`` per process.

  PYTHONPATH=/tmp/ssite python3 ci/gpu/sglang_throughput.py OUT.jsonl
      [--backends anyattn,fa3,triton] [--runs 3] [--layers 8] [--requests 128]
      [--out-len 256] [--deadline-s 360] [--engine-arg KEY=VALUE ...]

The model is ``models.make_llama8b`` (hidden 4096, 32 query / 8 kv heads of 128, MLP 14336,
vocab 128256) with ``--layers`` of its 32 layers and SGLang's random weights
(``load_format="dummy"``), as ``ci/gpu/throughput.py`` runs it through vLLM. SGLang's defaults
otherwise: bf16, CUDA graphs (decode; 0.5.17's breakable prefill graphs), radix cache, its
chunked-prefill size for the GPU. ``--requests`` prompts of 1K-4K random token ids (seed 0,
the same for every backend and run), ``--out-len`` output tokens each (ignore_eos), all
submitted in one ``generate`` call after a warmup call on other prompts (so the measured
prompts find nothing in the radix cache).

Each run is one backend in a fresh process (its own session, killed with its process group
afterwards so no scheduler outlives it); the backends alternate: run 1 in the given order,
run 2 rotated by one, run 3 by two. One JSON line per run (backend, run, output and total
tokens/s, wall seconds of the generate call, engine start) is appended to OUT and printed,
then a summary line (per backend: mean / min / max, and anyattn's ratio to each peer).
``--deadline-s`` bounds the whole script: a run is started only if the time left covers the
backend's longest run so far (before its first, any backend's), and its timeout is the time
left (at most ``--run-timeout-s``); skipped runs get a line saying so. The pipeline stage
``sglang_e2e`` passes ``$SGLANG_E2E_ARGS`` on (e.g. ``--deadline-s 480``).

``--device cpu`` runs the same plumbing on the CPU (a tiny dummy Llama, fp32, no graphs;
backends e.g. ``anyattn,torch_native``, with ``--requests 4 --min-len 16 --max-len 64
--out-len 8``; tests/sglang's environment, see ci/test_sglang.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402
from sglang_serve_one import OFFLINE  # noqa: E402  (offline; sgl_kernel FA3; no DeepGEMM)

CPU_SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=1024)
TAG = "[sglang_throughput]"


def log(msg: str) -> None:
    print(f"{TAG} {time.strftime('%H:%M:%S')} {msg}", flush=True)


def make_prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lens = [rng.randint(lo, hi) for _ in range(n)]
    top = min(vocab, 128000)
    return [[rng.randrange(3, top) for _ in range(k)] for k in lens]


def run_one(args) -> dict:
    os.environ.update(OFFLINE)
    import sglang

    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(args.requests, args.min_len, args.max_len, vocab, seed=0)
    warm = make_prompts(8, args.min_len, args.min_len, vocab, seed=1)
    kwargs = dict(model_path=args.model, attention_backend=args.one, skip_tokenizer_init=True,
                  load_format="dummy", random_seed=0, log_level="warning", device=args.device)
    if args.device == "cuda":
        kwargs.update(dtype="bfloat16")
    else:
        kwargs.update(dtype="float32", disable_cuda_graph=True, mem_fraction_static=0.3)
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    t0 = time.perf_counter()
    engine = sglang.Engine(**kwargs)
    start = time.perf_counter() - t0
    try:
        info = engine.get_server_info()
        assert info["attention_backend"] == args.one, (info["attention_backend"], args.one)
        t0 = time.perf_counter()
        engine.generate(input_ids=warm, sampling_params={"temperature": 0.0, "max_new_tokens": 4,
                                                         "ignore_eos": True})
        warmup = time.perf_counter() - t0
        params = {"temperature": 0.0, "max_new_tokens": args.out_len, "ignore_eos": True}
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        wall = time.perf_counter() - t0
    finally:
        engine.shutdown()
    prompt_tokens = sum(map(len, prompts))
    gen = sum(len(o["output_ids"]) for o in outs)
    cached = sum(o["meta_info"].get("cached_tokens", 0) or 0 for o in outs)
    e2e = sorted(o["meta_info"]["e2e_latency"] for o in outs if o["meta_info"].get("e2e_latency"))
    return dict(bench="sglang e2e throughput",
                shape=f"{args.requests} requests x {args.out_len} tokens", impl=args.one,
                backend=args.one, run=args.run, sglang=sglang.__version__,
                device=args.device, requests=args.requests, prompt_tokens=prompt_tokens,
                output_tokens=gen, cached_prompt_tokens=cached, wall_s=round(wall, 3),
                output_tok_s=round(gen / wall, 1),
                total_tok_s=round((gen + prompt_tokens) / wall, 1),
                e2e_latency_median_s=round(statistics.median(e2e), 3) if e2e else None,
                e2e_latency_p90_s=round(e2e[int(0.9 * (len(e2e) - 1))], 3) if e2e else None,
                engine_start_s=round(start, 1), warmup_s=round(warmup, 1),
                chunked_prefill_size=info.get("chunked_prefill_size"),
                disable_cuda_graph=info.get("disable_cuda_graph"))


def make_model(args) -> Path:
    root = Path(os.environ.get("ANYATTN_MODELS", "/tmp/anyattn-models"))
    if args.device == "cuda":
        return models.make_llama8b(root, args.layers)
    path = root / f"llama_cpu_dummy_{args.layers}l"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(
        {**models.LLAMA_8B, **CPU_SHAPE, "num_hidden_layers": args.layers,
         "torch_dtype": "float32"}))
    return path


def stop_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the run's process group (SGLang's scheduler / detokenizer)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def summarize(rows: list[dict], backends: list[str]) -> dict:
    per: dict = {}
    for b in backends:
        done = [r for r in rows if r.get("backend") == b and "output_tok_s" in r]
        if not done:
            per[b] = dict(runs=0)
            continue
        out = [r["output_tok_s"] for r in done]
        tot = [r["total_tok_s"] for r in done]
        per[b] = dict(runs=len(done), output_tok_s_mean=round(statistics.mean(out), 1),
                      output_tok_s_min=min(out), output_tok_s_max=max(out),
                      total_tok_s_mean=round(statistics.mean(tot), 1),
                      wall_s_mean=round(statistics.mean(r["wall_s"] for r in done), 3))
    ours = per.get("anyattn", {})
    ratios = {f"anyattn/{b}": round(ours["output_tok_s_mean"] / per[b]["output_tok_s_mean"], 3)
              for b in backends if b != "anyattn" and per[b].get("runs") and ours.get("runs")}
    return dict(summary=True, bench="sglang e2e throughput", backends=per,
                output_tok_s_ratio=ratios,
                runs_failed=sum(1 for r in rows if "error" in r),
                runs_skipped=sum(1 for r in rows if "skipped" in r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--backends", default="anyattn,fa3,triton")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--min-len", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--out-len", type=int, default=256)
    ap.add_argument("--deadline-s", type=float, default=360, help="for the whole script")
    ap.add_argument("--run-timeout-s", type=float, default=240, help="for one run's process")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra sglang.Engine keyword for every backend (VALUE as JSON, "
                         "else a string), e.g. cuda_graph_max_bs_decode=128")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = run_one(args)
        print("RESULT " + json.dumps(row), flush=True)
        os._exit(0)

    t_start = time.monotonic()
    backends = [b for b in args.backends.split(",") if b]
    model = make_model(args)
    desc = (f"Llama-3-8B-shaped, {args.layers} of 32 layers, random weights"
            if args.device == "cuda" else f"tiny dummy Llama ({args.layers} layers), CPU")
    log(f"model {model} ({desc}); {args.runs} runs of {backends}, deadline {args.deadline_s:.0f} s"
        + (f", engine args {args.engine_arg}" if args.engine_arg else ""))
    env = dict(os.environ, **OFFLINE)
    rows: list[dict] = []
    durations: dict[str, list[float]] = {}
    for r in range(args.runs):
        k = r % len(backends)
        for backend in backends[k:] + backends[:k]:
            left = args.deadline_s - (time.monotonic() - t_start)
            # This backend's longest run so far, else any backend's (a first run also compiles).
            need = max(durations.get(backend) or [d for ds in durations.values() for d in ds],
                       default=0.0)
            base = dict(bench="sglang e2e throughput", backend=backend, run=r + 1, model=desc)
            if left < max(need, 10.0):
                row = dict(base, skipped=f"{left:.0f} s left, the longest run took {need:.0f} s")
                log(f"run {r + 1}/{args.runs} {backend}: skipped ({row['skipped']})")
            else:
                log(f"run {r + 1}/{args.runs} {backend}: start ({left:.0f} s left)")
                cmd = [sys.executable, __file__, args.out, "--one", backend, "--run", str(r + 1),
                       "--model", str(model), "--device", args.device,
                       "--requests", str(args.requests), "--min-len", str(args.min_len),
                       "--max-len", str(args.max_len), "--out-len", str(args.out_len)]
                cmd += [f"--engine-arg={item}" for item in args.engine_arg]
                # Output to a file, not a pipe: a scheduler left behind would hold a pipe open.
                run_log = Path(args.out).with_name(
                    f"{Path(args.out).stem}-{backend}-run{r + 1}.log")
                t0 = time.monotonic()
                with open(run_log, "w") as sink:
                    proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True)
                    try:
                        rc = proc.wait(timeout=min(args.run_timeout_s, left))
                    except subprocess.TimeoutExpired:
                        rc = f"timeout after {time.monotonic() - t0:.0f} s"
                    finally:
                        stop_group(proc)
                text = run_log.read_text(errors="replace")
                durations.setdefault(backend, []).append(time.monotonic() - t0)
                found = [json.loads(line[7:]) for line in text.splitlines()
                         if line.startswith("RESULT ")]
                row = dict(base, **found[0]) if found else dict(
                    base, error=f"rc {rc}", log_tail=text[-1500:])
                row.update(model=desc, process_s=round(durations[backend][-1], 1))
                log(f"run {r + 1}/{args.runs} {backend}: "
                    + (f"{row['output_tok_s']} output tok/s, {row['total_tok_s']} total tok/s, "
                       f"generate {row['wall_s']} s, start {row['engine_start_s']} s, "
                       f"process {row['process_s']} s" if found else f"FAILED ({row['error']})"))
            rows.append(row)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    summary = dict(summarize(rows, backends), model=desc,
                   wall_s=round(time.monotonic() - t_start, 1))
    with open(args.out, "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
