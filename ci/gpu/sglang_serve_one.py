"""One SGLang engine on the GPU: a tiny random model, one attention backend, greedy; one JSON.

  python ci/gpu/sglang_serve_one.py MODEL_DIR BACKEND OUT.json [--eagle DRAFT_DIR --topk K
                                    --steps S --draft-tokens N] [--page-size P] [--no-spec]

The output has the shape ``ci/gpu/compare.py`` reads (``prompt_logprobs``, ``tokens``,
``top2``), as ``serve_one.py`` writes for vLLM. SGLang's defaults otherwise: bf16, CUDA graphs
for decode (and target verify / draft steps under EAGLE) and, in 0.5.17, the target prefill in
a breakable graph; the radix cache on; chunked prefill at 512 tokens, so the long prompts
arrive in several extend steps. Two passes over the same prompts: (1) the logprob of every
prompt token, (2) 32 generated tokens with the top-2 logprobs at each step; the second pass
reuses the first one's cached prefixes.

CUDA-graph replays are counted where they happen, in the scheduler process: ``graph_hooks/``
(put on PYTHONPATH by this script) registers hooks on SGLang's graph backends' ``replay`` that
append one byte per replay to a file per kind under ``ANYATTN_REPLAY_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_one import MAX_TOKENS, prompts  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "SGLANG_USE_SGL_FA3_KERNEL": "1", "SGLANG_ENABLE_JIT_DEEPGEMM": "0"}


def replay_counts(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("backend")
    ap.add_argument("out")
    ap.add_argument("--eagle", help="EAGLE draft model dir")
    ap.add_argument("--topk", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--load-dummy", action="store_true", help="random weights from SGLang")
    ap.add_argument("--no-prompt-logprobs", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: the script's plumbing, no GPU")
    args = ap.parse_args()

    replays = Path(tempfile.mkdtemp(prefix="anyattn-replays-"))
    os.environ.update(OFFLINE, ANYATTN_REPLAY_DIR=str(replays))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE / "graph_hooks")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    import sglang

    spec = {}
    if args.eagle:
        spec = dict(speculative_algorithm="EAGLE", speculative_draft_model_path=args.eagle,
                    speculative_eagle_topk=args.topk, speculative_num_steps=args.steps,
                    speculative_num_draft_tokens=args.draft_tokens)
    t0 = time.perf_counter()
    engine = sglang.Engine(model_path=args.model, attention_backend=args.backend,
                           skip_tokenizer_init=True, device=args.device,
                           dtype="bfloat16" if args.device == "cuda" else "float32", random_seed=0,
                           mem_fraction_static=0.3, page_size=args.page_size,
                           chunked_prefill_size=512, context_length=4096,
                           load_format="dummy" if args.load_dummy else "auto",
                           log_level="warning", **spec)
    result = dict(model=Path(args.model).name, backend=args.backend, eagle=bool(args.eagle),
                  topk=args.topk, page_size=args.page_size,
                  engine_start_s=round(time.perf_counter() - t0, 1))
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    ids = prompts(vocab)
    try:
        if not args.no_prompt_logprobs:
            outs = engine.generate(input_ids=ids, sampling_params={"temperature": 0.0,
                                                                   "max_new_tokens": 1},
                                   return_logprob=True, logprob_start_len=0)
            result["prompt_logprobs"] = [[lp for lp, _, _ in o["meta_info"]["input_token_logprobs"]]
                                         for o in outs]
        for f in replays.iterdir():  # from here on: the generation pass only
            f.unlink()
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=ids, sampling_params={
            "temperature": 0.0, "max_new_tokens": MAX_TOKENS, "ignore_eos": True},
            return_logprob=True, top_logprobs_num=2)
        result["generate_s"] = round(time.perf_counter() - t0, 3)
        result["tokens"] = [list(o["output_ids"]) for o in outs]
        result["top2"] = [[sorted((lp for lp, _, _ in step), reverse=True)[:2]
                           for step in o["meta_info"]["output_top_logprobs"]] for o in outs]
        result["cached_tokens"] = [o["meta_info"].get("cached_tokens", 0) for o in outs]
        result["graph_replays"] = replay_counts(replays)
        if args.eagle:
            result["accept_lengths"] = [o["meta_info"].get("spec_accept_length") for o in outs]
    finally:
        engine.shutdown()
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("prompt_logprobs", "tokens", "top2")}))


if __name__ == "__main__":
    main()
