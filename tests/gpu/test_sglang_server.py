"""``python -m sglang.launch_server --attention-backend anyattn`` on loopback, on the GPU.

The server (bf16, SGLang's default CUDA graphs, radix cache, chunked prefill at 512 tokens,
``ci/gpu/sglang_serve_one.py``'s settings) serves ``models.make_tiny("llama_gqa_d128")``
with a word-level tokenizer of its own (``tests/local_tokenizer.py``; the tiny models carry
none, and ``--skip-tokenizer-init`` cannot serve ``/v1/completions``). Three greedy
completions of 16 tokens, one at a time: 7 and 2,000 prompt tokens as token ids (2,000: four
extend chunks), 300 as text. Each must equal what ``sglang.Engine(attention_backend=
"anyattn")`` with the same settings generates for the same prompt alone (tokens, text, and
the server's echo of the prompt's token ids for the text prompt): the same kernels on the same
batches. The server must report ``attention_backend == "anyattn"``, and its scheduler must
replay full CUDA graphs (decode), counted by ``ci/gpu/graph_hooks``.

The anyattn backend reaches the server's processes through its ``sglang.srt.plugins`` entry
point (``pip install -e .``; launch_server and each scheduler call ``load_plugins()``).

Needs SGLang with CUDA kernels (the carried 0.5.17 site on the H200); ``ANYATTN_SERVING_OUT``
keeps the JSON results and logs. ``ANYATTN_SGLANG_DEVICE=cpu`` runs the same steps on the
CPU in fp32 without graphs (a dry run of the plumbing, outside tests/gpu's conftest:
``pytest --noconftest`` with tests/sglang's environment, see ci/test_sglang.sh).
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "ci" / "gpu"), str(ROOT / "tests")]
DEVICE = os.environ.get("ANYATTN_SGLANG_DEVICE", "cuda")

pytest.importorskip("sgl_kernel", reason="SGLang's CUDA kernels are not installed")
if DEVICE == "cuda":
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device", allow_module_level=True)

from local_tokenizer import write_tokenizer  # noqa: E402
from models import make_tiny  # noqa: E402
from sglang_openai import compare, engine_outputs, server_outputs  # noqa: E402
from sglang_serve_one import OFFLINE  # noqa: E402  (offline; sgl_kernel FA3; no DeepGEMM)

OUT = Path(os.environ.get("ANYATTN_SERVING_OUT") or tempfile.mkdtemp(prefix="sglang-server-"))
OUT.mkdir(parents=True, exist_ok=True)
MODELS = Path(os.environ.get("ANYATTN_MODELS", OUT / "models"))
HOOKS = ROOT / "ci" / "gpu" / "graph_hooks"
MAX_TOKENS = 16
if DEVICE == "cuda":
    SETTINGS = dict(dtype="bfloat16", random_seed=0, mem_fraction_static=0.3,
                    chunked_prefill_size=512, context_length=4096)
    LENS, TEXT = (7, 300, 2000), (1,)
else:  # the CPU dry run: shorter prompts, still more than one chunk
    SETTINGS = dict(device="cpu", dtype="float32", random_seed=0, mem_fraction_static=0.3,
                    chunked_prefill_size=64, context_length=1024, disable_cuda_graph=True)
    LENS, TEXT = (7, 100, 200), (1,)


def make_prompts(vocab: int, lens=LENS, seed: int = 0) -> list[list[int]]:
    """Random ids in 3..vocab-1, each prompt with its own first token."""
    rng = random.Random(seed)
    firsts = rng.sample(range(3, vocab), len(lens))
    return [[first] + [rng.randrange(3, vocab) for _ in range(n - 1)]
            for first, n in zip(firsts, lens)]


def env_with_replay_counter(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        f.unlink()
    env = dict(os.environ, **OFFLINE, ANYATTN_REPLAY_DIR=str(folder))
    if DEVICE == "cuda":
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HOOKS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def replays(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir())}


def test_openai_completions_match_engine():
    model = make_tiny("llama_gqa_d128", MODELS)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    tokenizer = write_tokenizer(MODELS / f"wordlevel_{vocab}", vocab)
    prompts = make_prompts(vocab)

    engine_env = env_with_replay_counter(OUT / "replays-engine")
    engine = engine_outputs(model, tokenizer, "anyattn", SETTINGS, prompts, MAX_TOKENS,
                            OUT / "engine-anyattn.json", env=engine_env, timeout=300)
    engine_replays = replays(OUT / "replays-engine")

    server_env = env_with_replay_counter(OUT / "replays-server")
    server = server_outputs(model, tokenizer, "anyattn", SETTINGS, prompts, MAX_TOKENS,
                            OUT / "server.log", text_prompts=TEXT, env=server_env,
                            startup_s=240)
    server["graph_replays"] = replays(OUT / "replays-server")
    server["engine_graph_replays"] = engine_replays
    verdict = compare(server, engine, prompts)
    (OUT / "server.json").write_text(json.dumps(dict(server=server, verdict=verdict), indent=1))
    print(json.dumps(dict(verdict=verdict, server_info=server["server_info"],
                          graph_replays=server["graph_replays"],
                          engine_graph_replays=engine_replays)))

    info = server["server_info"]
    assert info["attention_backend"] == "anyattn", info
    assert info["prefill_attention_backend"] in (None, "anyattn"), info
    assert info["decode_attention_backend"] in (None, "anyattn"), info
    assert [c["finish_reason"] for c in server["completions"]] == ["length"] * len(prompts)
    assert all(len(c["tokens"]) == MAX_TOKENS for c in server["completions"])
    assert verdict["ok"], verdict
    if DEVICE == "cuda":
        assert server["graph_replays"].get("full", 0) > 0, server["graph_replays"]
