"""anyattn serving inside SGLang on the GPU, against SGLang's own ``fa3`` and ``triton``.

Each backend runs ``sglang.Engine`` in its own process (``ci/gpu/sglang_serve_one.py``: bf16,
CUDA graphs as SGLang captures them, radix cache, chunked prefill at 512 tokens, 16 prompts of
1-2,000 tokens with a shared prefix). Compared with ``ci/gpu/compare.py``'s rule, the one the
vLLM serving test uses (``triton`` runs the plain models only): prompt logprobs within ``tol`` of ``fa3`` and generated tokens equal up
to the first near-tie, where ``tol`` is at least 0.125 nats and twice ``triton``'s largest
prompt-logprob difference from ``fa3``. The graph replays counted in SGLang's scheduler must
be non-zero for anyattn (decode graphs, and 0.5.17's breakable prefill graphs).

EAGLE: a one-layer random draft, topk 1 (chain) and topk 4 (trees, anyattn's cascade), pages
1 and 16. Greedy speculative output must equal greedy non-speculative output up to near-ties,
and match ``fa3`` running the same speculation.

Needs SGLang with CUDA kernels on PYTHONPATH (the carried 0.5.17 site on the H200);
``ANYATTN_SERVING_OUT`` keeps the JSON results.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci" / "gpu"))
from compare import compare_model  # noqa: E402
from models import make_eagle_draft, make_tiny  # noqa: E402

pytest.importorskip("sgl_kernel", reason="SGLang's CUDA kernels are not installed")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

OUT = Path(os.environ.get("ANYATTN_SERVING_OUT") or tempfile.mkdtemp(prefix="sglang-serving-"))
OUT.mkdir(parents=True, exist_ok=True)
MODELS = Path(os.environ.get("ANYATTN_MODELS", OUT / "models"))


def serve(model: Path, backend: str, tag: str, *extra: str) -> dict:
    out = OUT / f"{model.name}-{tag}-{backend}.json"
    if not out.exists():
        cmd = [sys.executable, str(ROOT / "ci/gpu/sglang_serve_one.py"), str(model), backend,
               str(out), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        (OUT / f"{out.stem}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"{backend} on {model.name}:\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


def check(runs: dict, ours: str = "anyattn", reference: str = "fa3") -> dict:
    verdict = compare_model(runs, ours=ours, reference=reference, peer="triton")
    (OUT / f"verdict-{runs[ours]['model']}-{len(list(OUT.glob('verdict-*')))}.json").write_text(
        json.dumps(verdict))
    assert verdict["ok"], verdict
    return verdict


@pytest.mark.parametrize("name", ["llama_gqa_d128", "llama_mqa_d64", "gemma2_swa_softcap"])
def test_serving_matches_fa3(name):
    model = make_tiny(name, MODELS)
    runs = {b: serve(model, b, "plain") for b in ("fa3", "triton", "anyattn")}
    check(runs)
    replays = runs["anyattn"]["graph_replays"]
    assert replays.get("full", 0) > 0, replays
    assert replays.get("breakable", 0) > 0, replays
    assert sum(runs["anyattn"]["cached_tokens"]) > 0  # the radix cache served shared prefixes


@pytest.mark.parametrize("topk,page_size", [(4, 1), (1, 16), (1, 1), (4, 16)])
def test_eagle_matches_greedy_and_fa3(topk, page_size):
    model = make_tiny("llama_gqa_d128", MODELS)
    draft = make_eagle_draft(model, MODELS)
    steps, tokens = (3, 4) if topk == 1 else (3, 8)
    spec = ("--eagle", str(draft), "--topk", str(topk), "--steps", str(steps),
            "--draft-tokens", str(tokens), "--page-size", str(page_size), "--no-prompt-logprobs")
    tag = f"eagle{topk}-p{page_size}"
    plain = {b: serve(model, b, f"p{page_size}", "--page-size", str(page_size),
                      "--no-prompt-logprobs") for b in ("fa3", "anyattn")}
    spec_runs = {b: serve(model, b, tag, *spec) for b in ("fa3", "anyattn")}
    check(spec_runs)
    # Speculation changes nothing but speed: anyattn's speculative run against its own greedy
    # run, and against fa3's greedy run.
    check({"anyattn": spec_runs["anyattn"], "fa3": plain["anyattn"]})
    check({"anyattn": spec_runs["anyattn"], "fa3": plain["fa3"]})
    assert spec_runs["anyattn"]["graph_replays"].get("full", 0) > 0
